"""The docs' measured tables and CLI reference, generated (`make docs` runs this before mkdocs).

Every figure in a table of the docs comes from a snapshot in docs/data/, written by the command that
measured it (`make bench` -> bench.json, `stfn ablate` -> ablation.json, benchmarks/patch_study.py,
benchmarks/monitor_power.py), never typed into a page. Each table says which machine and date its
figures come from ("not recorded" where the command did not record them). The CLI reference is
Typer's own rendering of the `stfn` app. Output: markdown files in docs/generated/ (git-ignored),
which the pages include with pymdownx.snippets (`--8<-- "docs/generated/NAME.md"`).

    python docs/generate.py          # from the project's root, with the project installed
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

DOCS = Path(__file__).resolve().parent
DATA = DOCS / "data"
OUT = DOCS / "generated"


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def provenance(snapshot: dict, source: str) -> str:
    """One line: where the figures come from, on which machine and when."""
    m, date = snapshot.get("machine") or {}, snapshot.get("date") or "not recorded"
    if not isinstance(m, dict) or m.get("cpu") in (None, "not recorded"):
        committed = snapshot.get("committed")
        when = f"; the snapshot was committed on {committed}" if committed else ""
        return f"*From `{source}`. Machine and date: not recorded{when}.*\n"
    cpu = m["cpu"] if isinstance(m["cpu"], dict) else {"model": m["cpu"]}
    units = [u for u, key in (("AVX-512", "avx512f"), ("AMX", "amx_bf16")) if cpu.get(key)]
    cpu_text = cpu.get("model", "an unnamed CPU") + (f" ({', '.join(units)})" if units else "")
    cores = m.get("cores")
    cores_text = f", {cores} cores" if cores not in (None, "not recorded") else ""
    gpu = m.get("gpu") or m.get("cuda")
    gpu_text = f", GPU {gpu}" if gpu else ", no GPU"
    torch = f", torch {m['torch']}" if m.get("torch") else ""
    load = m.get("load_average_1min")
    load_text = (
        f"; the machine's 1-minute load average during the run: median {load['median']:g}, max {load['max']:g}"
        if load
        else ""
    )
    return f"*From `{source}`, measured on {date[:10]} on {cpu_text}{cores_text}{gpu_text}{torch}{load_text}.*\n"


def x(v: float, digits: int = 2) -> str:
    return f"{v:.{digits}f}×"


# --- make bench: docs/data/bench.json --------------------------------------------------------------


def bench() -> str:
    b = load("bench.json")
    rates, rounds = b["train_samples_per_s"], b["train_samples_per_s_rounds"]
    spread = lambda k: f"{min(rounds[k]):.0f}–{max(rounds[k]):.0f}"  # noqa: E731
    g = b["gflops"]
    pipe = b["pipeline_seconds"]
    n_rounds = len(rounds["ours"])
    q, cq = b["patch_encoder_vs_vivit_quartiles"], b.get("patch_encoder_control")
    out = [provenance(b, "docs/data/bench.json")]
    out.append(f"\n### Training and the pipeline (`make bench`, {b['bench_seconds']:.0f} s)\n\n")
    out.append(
        table(
            ("benchmark", "ours", "peer", "ratio", "target"),
            [
                (
                    f"STFN training, default dataset and model (samples/s, best of {n_rounds} rounds; their range)",
                    f"{rates['ours']:.0f} ({spread('ours')})",
                    f"plain loop over tensors in RAM: {rates['plain']:.0f} ({spread('plain')})",
                    f"`train_vs_plain_loop` **{x(b['train_vs_plain_loop'])}**",
                    "≥ 0.95×",
                ),
                (
                    "the same",
                    "",
                    f"PyTorch Lightning `Trainer`: {rates['lightning']:.0f} ({spread('lightning')})",
                    f"`train_vs_lightning` **{x(b['train_vs_lightning'])}**",
                    "≥ 1.0× within the noise",
                ),
                (
                    "the same",
                    "",
                    f"`Dataset` reading parquet per sample: {rates['parquet_per_sample']:.0f}",
                    f"`train_vs_parquet_per_sample` {x(b['train_vs_parquet_per_sample'], 1)}",
                    "",
                ),
                (
                    "spatial branch: `SpacetimePatchEmbed` + factorised blocks vs vit-pytorch ViViT at the same "
                    "size (samples/s, forward + backward + AdamW)",
                    f"{b['patch_encoder_samples_per_s']['ours']:.0f}",
                    f"{b['patch_encoder_samples_per_s']['vivit']:.0f}",
                    f"`patch_encoder_vs_vivit` **{x(b['patch_encoder_vs_vivit'])}** (rounds' quartiles "
                    f"{q[0]:.2f}–{q[1]:.2f}; control, ours vs ours: {x(cq)})",
                    "parity or better",
                ),
                (
                    f"achieved GFLOP/s of a training step ({g['flops_train_step_per_sample'] / 1e6:.1f} MFLOP per "
                    "sample) vs the fp32 matmul measured before each round",
                    f"{g['achieved']:.1f}",
                    f"{g['matmul_fp32_peak']:.1f} ({min(g['matmul_fp32_peak_rounds']):.0f}–"
                    f"{max(g['matmul_fp32_peak_rounds']):.0f})",
                    f"`gflops_vs_matmul_peak` **{b['gflops_vs_matmul_peak']:.2f}** (rounds: "
                    + ", ".join(f"{s:.2f}" for s in b["gflops_vs_matmul_peak_rounds"])
                    + ")",
                    "≥ 0.50",
                ),
                (
                    "the whole Prefect flow + MLflow tracking + registry vs the same stage functions in a bare loop",
                    f"{pipe['flow_with_tracking']:.1f} s",
                    f"{pipe['bare_loop']:.1f} s",
                    f"`pipeline_overhead_s` **{b['pipeline_overhead_s']:.1f} s** "
                    f"({x(b['pipeline_overhead_ratio'], 3)}); Prefect's temporary API start-up apart: "
                    f"{pipe['prefect_api_startup']:.1f} s once per process",
                    f"≤ {b['pipeline_overhead_target_s']:.0f} s (max of 10 %, 10 s)",
                ),
                (
                    "peak RSS at 4N / N (fresh process each)",
                    f"featurize **{x(b['featurize_rss_growth_4x'])}**, validate {x(b['validate_rss_growth_4x'])}",
                    "",
                    "",
                    "featurize ≤ 1.3×",
                ),
                (
                    "time at 4N / N",
                    ", ".join(f"{k} {x(v)}" for k, v in b["time_growth_4x"].items()),
                    "",
                    "",
                    "linear or below",
                ),
            ],
        )
    )
    prof = b["train_step_profile"]
    out.append(
        f"\n### Where a training step's time goes\n\n`torch.profiler`, {prof['steps']} steps of {prof['batch']} "
        f"samples, {prof['ms_per_step']:.0f} ms per step under the profiler:\n\n"
    )
    out.append(
        table(
            ("part", "ms per step", "share"),
            [(k, f"{v:.1f}", f"{prof['shares'][k]:.1%}") for k, v in prof["parts_ms"].items()],
        )
    )
    out.append(
        "\n### Serving: `stfn serve` against MLflow's bare scoring server\n\n"
        "One worker each, the same model, alternated rounds (req/s: the median of the rounds):\n\n"
    )
    rows = []
    for key, f in b["serving"].items():
        m = re.fullmatch(r"batch(\d+)_clients(\d+)", key)
        label = f"batch {m[1]}, {m[2]} client{'s' if m[2] != '1' else ''}" if m else key
        ours, bare = f["stfn serve"], f["mlflow models serve"]
        rows.append(
            (
                label,
                f"{ours['rps']:.1f}",
                f"{bare['rps']:.1f}",
                x(f["ratio_rps"], 3),
                f"{ours['p50_ms']:.1f} / {bare['p50_ms']:.1f}",
                f"{ours['p99_ms']:.1f} / {bare['p99_ms']:.1f}",
                ours["errors"] + bare["errors"],
            )
        )
    out.append(table(("load", "`stfn serve` req/s", "bare req/s", "ours / bare", "p50 ms", "p99 ms", "errors"), rows))
    out.append(f"\nWorst ratio **{b['serving_worst_ratio']:.3f}** (target ≥ 0.90).\n")
    br = b["serving_breakdown_ms"]
    sizes = list(br)
    out.append("\nWhere one request's time goes, in-process (median ms):\n\n")
    out.append(
        table(
            ("step", *(f"batch {n}" for n in sizes)), [(s, *(f"{br[n][s]:.2f}" for n in sizes)) for s in br[sizes[0]]]
        )
    )
    return "".join(out)


# --- stfn ablate: docs/data/ablation.json ---------------------------------------------------------

VARIANTS = {
    "stfn": "**stfn** (fusion: aligned, gated attention)",
    "time_only": "time_only (the series alone)",
    "space_only": "space_only (the frames alone)",
    "late_concat": "late_concat (pooled series ‖ pooled frames → MLP)",
}


def ablation() -> str:
    a = load("ablation.json")
    metric = a["metric"]
    rows, seen = [], set()
    for name in VARIANTS:  # by model, then encoder: each model's encoders side by side
        for encoder, e in a["encoders"].items():
            m = e["models"].get(name)
            if m is None:
                continue
            has_frames = name != "time_only"
            key = (name, encoder if has_frames else None, tuple(m["seeds"]))
            if key in seen:  # time_only sees no frames: the same model under either encoder
                continue
            seen.add(key)
            points = [r.get("pointing") for r in m["runs"]]
            rows.append(
                (
                    VARIANTS[name],
                    encoder if has_frames else "— (no frames)",
                    f"**{m['mean']:.3f}**" if name == "stfn" else f"{m['mean']:.3f}",
                    f"{m['std']:.3f}",
                    " / ".join(f"{s:.3f}" for s in m["seeds"]),
                    " / ".join(f"{p:.3f}" for p in points) if all(p is not None for p in points) else "—",
                    f"{m['runs'][0]['n_parameters']:,}",
                )
            )
    seeds = sorted({s for e in a["encoders"].values() for s in e["seeds"]})
    return (
        provenance(a, "docs/data/ablation.json")
        + f"\nTest {metric} on {a['dataset']}, seeds {', '.join(map(str, seeds))}:\n\n"
        + table(("model", "spatial encoder", "mean", "std", "per seed", "pointing", "parameters"), rows)
    )


# --- benchmarks/patch_study.py: docs/data/patch_study.json ----------------------------------------


def patch_study() -> str:
    p = load("patch_study.json")
    out = []
    s = p["screen"]
    out.append(f"#### Screen: one seed, {s['n_train']:,} training videos, {s['epochs']} epochs\n\n")
    out.append(provenance(s, "docs/data/patch_study.json") + "\n")
    out.append(
        table(
            ("configuration (lever)", "test accuracy", "pointing", "training samples/s", "parameters"),
            [
                (
                    f"`{r['lever']}`",
                    f"{r['test_accuracy']:.3f}",
                    "—" if r["pointing"] is None else f"{r['pointing']:.3f}",
                    f"{r['samples_per_s']:.0f}",
                    f"{r['parameters']:,}",
                )
                for r in sorted(s["rows"], key=lambda r: -r["test_accuracy"])
            ],
        )
    )
    for key, title in (("confirm", "Confirmation against the CNN"), ("vivit", "Against ViViT inside STFN")):
        c = p[key]
        out.append(
            f"\n#### {title}: seeds {', '.join(map(str, c['seeds']))}, {c['n_train']:,} training videos, "
            f"{c['epochs']} epochs, in turn with `{c['reference']}`\n\n"
        )
        out.append(provenance(c, "docs/data/patch_study.json") + "\n")
        rows = []
        for lever, sm in c["summary"].items():
            accs = [r["test_accuracy"] for r in c["rows"] if r["lever"] == lever]
            rows.append(
                (
                    f"`{lever}`",
                    " / ".join(f"{a:.3f}" for a in accs),
                    f"**{sm['test_accuracy_mean']:.3f}**",
                    f"{sm['pointing_mean']:.3f}",
                    x(sm["time_vs_reference"]),
                )
            )
        out.append(
            table(
                (
                    "configuration",
                    "test accuracy per seed",
                    "mean",
                    "pointing (mean)",
                    "training time vs the reference",
                ),
                rows,
            )
        )
    v = p.get("vivit_step")
    if v:
        ratios = [r["ratio"] for r in v["runs"]]
        controls = [r["control"] for r in v["runs"]]
        out.append(
            "\n#### Training step of the spatial branch alone, ours / ViViT\n\n"
            + provenance(v, "docs/data/patch_study.json")
            + "\n"
            + table(
                ("runs", "ours / ViViT per run", "median", "control (ours / ours)", "parameters (ours / ViViT)"),
                [
                    (
                        len(v["runs"]),
                        ", ".join(f"{r:.3f}" for r in ratios),
                        f"**{statistics.median(ratios):.3f}**",
                        ", ".join(f"{r:.3f}" for r in controls),
                        f"{v['parameters']['ours']:,} / {v['parameters']['vivit']:,}",
                    )
                ],
            )
        )
    return "".join(out)


# --- benchmarks/monitor_power.py: docs/data/monitor_power.json ------------------------------------


KINDS = {
    "clean": "clean (no shift)",
    "validation split": "the champion's validation split (unseen, calibrates)",
    "test split": "the champion's test split (unseen, checks)",
    "gain": "sensor zone-0's gain × 1.5",
    "offset": "sensor zone-0 + 1 training std",
    "missing": "30 % of zone-0's readings missing",
    "darker": "frames 30 % darker",
    "3 classes": "labels on 3 classes only",
}


def monitor_power() -> str:
    d = load("monitor_power.json")["by_batch_size"]
    sizes = sorted(d, key=int, reverse=True)
    big = d[sizes[0]]
    out = [provenance(big, "docs/data/monitor_power.json")]
    out.append(
        f"\nChampion version {big['champion_version']} of {big['dataset']}; {big['batches']} batches per kind, "
        "each a new draw from the generator (the splits' batches: drawn from the champion's own data); "
        "alarms out of the batches, unlabelled / labelled:\n\n"
    )
    header = ["kind"]
    for n in sizes:
        header += [f"alarms at {n} per batch"]
    header += [f"checks that fired (labelled, {sizes[0]})", f"champion's accuracy (median, {sizes[0]})"]
    rows = []
    for kind, s in big["summary"].items():
        row = [KINDS.get(kind, kind)]
        for n in sizes:
            t = d[n]["summary"][kind]
            row.append(f"{t['alarms_unlabelled']} / {t['alarms_labelled']}")
        fired = ", ".join(f"{c} {k}" for c, k in s["fired_labelled"].items()) or "—"
        row += [fired, f"{s['accuracy_median']:.3f}"]
        rows.append(row)
    out.append(table(header, rows))
    w = big["clean_batches_worst"]
    out.append(
        f"\nOn the clean batches of {sizes[0]}: the largest KS statistic {w['max_ks_statistic']:.3f} (threshold "
        f"at least {big['thresholds']['min_ks']}, more where unseen data lie further: the calibration), "
        f"the smallest p-value {w['min_p_value']:.2g} (threshold "
        f"{w['p_threshold']:.2g}, alpha {big['thresholds']['alpha']} with Bonferroni).\n"
    )
    return "".join(out)


# --- benchmarks/tune_scaling.py: docs/data/tune_scaling.json ---------------------------------------


def tune_scaling() -> str:
    d = load("tune_scaling.json")
    out = [provenance(d, "docs/data/tune_scaling.json")]
    out.append(
        f"\nCommand: `{d['command'].strip()}`; {d['trials']} trials for one worker, {2 * d['trials']} for two, "
        f"{d['epochs']} epochs of {d['n_train']} training samples each, one torch thread per worker, "
        f"{d['cpus']} CPUs.\n\n"
    )
    rows = [
        (
            r["repeat"] + 1,
            f"{r['one']['per_hour_span']:.0f} ({r['one']['per_hour_wall']:.0f})",
            f"{r['two']['per_hour_span']:.0f} ({r['two']['per_hour_wall']:.0f})",
            f"**{r['ratio_span']:.2f}x** ({r['ratio_wall']:.2f}x)",
            f"{r['one']['training_share']:.0%} / {r['two']['training_share']:.0%}",
        )
        for r in d["rows"]
    ]
    out.append(
        table(
            ("repeat", "one worker: trials/h, span (wall)", "two workers", "two / one", "time training, one / two"),
            rows,
        )
    )
    out.append(
        f"\nMedian over the repeats: **{d['median_ratio_span']:.2f}x** over the study's span, "
        f"{d['median_ratio_wall']:.2f}x over the workers' wall time (their start-up included); a trial spends "
        f"{d['median_training_share']:.0%} of its time training (median).\n"
    )
    return "".join(out)


# --- benchmarks/tune_real_records.py: docs/data/tune_real_records.json -----------------------------


def tune_real_records() -> str:
    d = load("tune_real_records.json")
    out = [provenance(d, "docs/data/tune_real_records.json")]
    out.append(
        f"\nCommand: `{d['command']}`: up to {d['trials']} trials or {d['timeout_minutes']:g} minutes a study. "
        "Test MAE on the same rows for every model (lower is better); the tuned model's margin over the "
        "default one by a block bootstrap over the time-ordered rows.\n\n"
    )
    rows = []
    for r in d["datasets"]:
        m = r["tuned_minus_default"]
        lo, hi = m["ci95"]
        verdict = "better, beyond noise" if hi < 0 else ("worse, beyond noise" if lo > 0 else "within noise")
        settings = "; ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for section in r["tuned_settings"].values()
            for k, v in section.items()
        )
        rows.append(
            (
                f"**{r['dataset']}** ({r['test_rows']} test rows)",
                f"{r['default_mae']:.3f} ({r['default_epochs']} epochs)",
                f"{r['tuned_mae']:.3f} ({r['tuned_epochs']} epochs)",
                f"{m['mean_difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]: {verdict}",
                f"{r['best_baseline_mae']:.3f} ({r['best_baseline']})",
                f"{r['tuning_seconds'] / 60:.1f} min, {r['trials']} trials ({r['pruned']} pruned)",
                settings,
            )
        )
    out.append(
        table(
            ("recording", "default", "tuned", "tuned − default, 95 %", "best baseline", "tuning", "tuned settings"),
            rows,
        )
    )
    return "".join(out) + "\n"


# --- the CLI reference: Typer's rendering of stfn.cli:app ------------------------------------------


def cli() -> str:
    """`typer stfn.cli utils docs`, with its headings one level down (the page has its own title)."""
    typer = shutil.which("typer", path=str(Path(sys.executable).parent)) or "typer"
    target = OUT / "cli.raw.md"
    subprocess.run(
        [typer, "stfn.cli", "utils", "docs", "--name", "stfn", "--output", str(target)],
        check=True,
        stdout=subprocess.DEVNULL,  # its "Docs saved to ..."
    )
    text = target.read_text()
    target.unlink()
    return re.sub(r"^(#+) ", r"#\1 ", text, flags=re.M)


# --- benchmarks/real_records.py: docs/data/real_records.json --------------------------------------


def real_records() -> str:
    r = load("real_records.json")
    out = [provenance(r, "docs/data/real_records.json")]
    out.append(f"\nCommand: `{r['command']}`. Test MAE on the same rows for every model (lower is better).\n\n")
    names = ("persistence", "climatology", "ridge")
    rows = []
    for d in r["datasets"]:
        m, best = d["margin"], d["best_baseline"]
        best_mae = d["baselines_mae"][best]
        lo, hi = m["ci95"]
        verdict = "better, beyond noise" if hi < 0 else ("worse, beyond noise" if lo > 0 else "within noise")
        source = d.get("source") or {}
        rows.append(
            (
                f"**{d['dataset']}** ({source.get('package', 'generated')}; {m['rows']} test rows)",
                f"**{d['stfn_mae']:.3f}** (starts from {d['starts_from'].get('choice', '-')}, "
                f"{d['epochs_run']} epochs)",
                *(f"{d['baselines_mae'][n]:.3f}" if n in d["baselines_mae"] else "—" for n in names),
                f"{d['stfn_mae'] - best_mae:+.3f} vs {best} ({(d['stfn_mae'] - best_mae) / best_mae:+.1%})",
                f"[{lo:+.3f}, {hi:+.3f}], p = {m['p_not_below_zero']:.3f}: {verdict} (block {m['block_length']})",
            )
        )
    out.append(
        table(
            ("dataset", "STFN, default settings", *names, "margin to the best baseline", "95 % interval"),
            rows,
        )
    )
    return "".join(out)


# --- make soak: docs/data/soak.json -----------------------------------------------------------------


def soak() -> str:
    d = load("soak.json")
    out = [provenance(d, "docs/data/soak.json")]
    retrains = [t for r in d["rows"] for t in r["retrains"]]
    promotions = [m for m in d["moves"] if m["cause"] != "first run" and m["cause"] != "rollback"]
    rollbacks = [m for m in d["moves"] if m["cause"] == "rollback"]
    kinds = [r["kind"] for r in d["rows"]]
    out.append(
        f"\nCommand: `{d['command']}` ({d['minutes']:.0f} minutes): {d['weeks']} weeks of {d['batch']} samples, "
        f"{kinds.count('clean')} clean, {kinds.count('drifted')} drifted and {kinds.count('corrupt')} corrupt batches; "
        f"{len(retrains)} retrains, {len(promotions)} promotions after the first champion, {len(rollbacks)} "
        f"rollback; {d['requests']['ok']:,} requests answered.\n\n"
    )
    out.append(
        table(
            ("invariant", "held", "what was checked"),
            [(r["invariant"], "yes" if r["passed"] else "**NO**", r["detail"]) for r in d["invariants"]],
        )
    )
    out.append("\nThe faults, where the seed put them:\n\n")
    out.append(
        table(
            ("week", "fault", "what happened"),
            [
                (f["week"], f["fault"], "; ".join(str(f[k]) for k in ("detail", "flow_run", "then") if f.get(k)))
                for f in sorted(d["faults"], key=lambda f: f["week"])
            ],
        )
    )
    return "".join(out)


PAGES = {
    "real_records.md": real_records,
    "bench.md": bench,
    "ablation.md": ablation,
    "patch_study.md": patch_study,
    "monitor_power.md": monitor_power,
    "tune_scaling.md": tune_scaling,
    "tune_real_records.md": tune_real_records,
    "soak.md": soak,
    "cli.md": cli,
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, make in PAGES.items():
        (OUT / name).write_text(make())
        print(f"docs/generated/{name}")


if __name__ == "__main__":
    main()
