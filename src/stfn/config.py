"""The typed model of `params.yaml`: loading, `--set key=value` overrides, project paths.

`params.yaml` is the one source of parameters for DVC, Prefect and the CLI. Every section is a
pydantic model with `extra="forbid"`, so a typo is an error rather than a silent default.
Secrets and server URIs come from the environment, never from `params.yaml`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from stfn.errors import ConfigError

PARAMS_FILE = "params.yaml"
__all__ = ["ConfigError", "PARAMS_FILE", "Params", "Paths", "load_params"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataParams(_Section):
    dataset: str = "moving-digits"
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    # measured (docs, "Your own data": missing readings): real data within ~4 % of its complete-data MAE up to 30 %
    max_missing_ratio: float = Field(0.30, ge=0.0, le=1.0)
    # median: remove each sample's per-channel median (offsets vary per sample; moving-digits);
    # global: subtract the train mean per channel (the level itself matters; forecasting);
    # auto: chosen from the dataset's task (stfn.defaults says how and why)
    series_norm: Literal["auto", "median", "global"] = "auto"


class MovingDigitsParams(_Section):
    n_train: int = Field(12000, ge=1)
    n_val: int = Field(1500, ge=1)
    n_test: int = Field(1500, ge=1)
    canvas: int = Field(32, ge=16)
    digits_per_video: int = Field(4, ge=1)
    steps: int = Field(32, ge=4)
    frames: int = Field(8, ge=1)
    noise: float = Field(0.25, ge=0.0)
    drift: float = Field(1.0, ge=0.0)
    spike: float = Field(3.0, gt=0.0)
    missing_rate: float = Field(0.002, ge=0.0, lt=0.5)
    seed: int = 7


class PrepareParams(_Section):
    moving_digits: MovingDigitsParams = MovingDigitsParams()


class ModelParams(_Section):
    # patches is experimental: below the CNN on the default task (docs, "The model")
    spatial_encoder: Literal["cnn", "patches"] = "cnn"
    temporal_encoder: Literal["lstm", "gru", "tcn"] = "lstm"
    alignment: Literal["mfb", "film", "gmu", "bilinear"] = "mfb"
    variant: Literal["stfn", "time_only", "space_only", "late_concat"] = "stfn"
    tubelet: int = Field(1, ge=1)
    patch: int = Field(8, ge=2)
    patch_depth: int = Field(1, ge=0)
    # patches: how a tubelet becomes a token. linear: one linear map of its raw pixels (ViViT's
    # tubelet embedding); conv: two 3x3 convolutions and a 2x2 max-pool first (a convolutional stem,
    # Xiao et al. 2021), then a linear map of (patch/4)^2-cell tubelets of their 32 channels; cnn:
    # the cnn encoder's three convolutions and two max-pools first (ViT's "hybrid"), then a linear
    # map of (patch/8)^2-cell tubelets of its D channels
    patch_stem: Literal["linear", "conv", "cnn"] = "cnn"
    # patches: each token sees a window twice its patch (stride the patch, half-window overlap with
    # each neighbour) instead of its patch alone
    patch_overlap: bool = False
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)  # patches: stochastic depth of the last block
    # patches: LayerScale (CaiT): each residual branch times a learned per-channel gain starting
    # here, so a block starts near the identity; 0 = off (gain 1, no parameter)
    layer_scale: float = Field(1e-4, ge=0.0)
    heads: int = Field(4, ge=1)
    attention_heads: int = Field(1, ge=1)
    dim: int = Field(64, ge=4)
    mfb_factor: int = Field(4, ge=1)
    attention_hidden: int = Field(64, ge=4)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    # regression: add the ridge forecast on the whole series window to the output (fitted, frozen);
    # auto: on for regression, off for classification (stfn.defaults)
    linear_skip: bool | Literal["auto"] = "auto"
    # periodic encodings of the sample's timestamp the model sees as known covariates (sin and cos
    # of the first harmonics); auto: the periods the timestamps' spacing and span make meaningful
    # (stfn.defaults); [] = none
    calendar: list[Literal["hour_of_day", "day_of_week", "day_of_year"]] | Literal["auto"] = "auto"


def _on_off(value: Any) -> Any:
    """YAML 1.1 (PyYAML, and so params.yaml and `--set`) reads on/off and yes/no as booleans."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


# a GPU-path switch: "auto" = on when training on CUDA, off on the CPU; `on` / `off` as written
Switch = Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off)]


class TrainParams(_Section):
    # auto: about 1000 optimizer steps, at least 5 epochs (stfn.defaults); early stopping may end sooner
    epochs: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    grad_clip: float = Field(1.0, ge=0.0)
    # epochs without a better validation metric before training stops; auto: a fifth of the epochs, at least 4
    patience: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = Field(0, ge=0)
    regression_loss: Literal["mse", "l1", "huber"] = "mse"
    # processes of data-parallel training (torch DDP via torchrun; gloo on CPU, NCCL on GPUs)
    nproc: int = Field(1, ge=1)
    # the GPU path: "auto" = on when training on CUDA, off on the CPU
    amp_bf16: Switch = "auto"  # bf16 autocast
    tf32: Switch = "auto"  # TF32 matmuls and convolutions
    fused_adamw: Switch = "auto"
    pin_memory: Switch = "auto"  # pinned host batches, non-blocking copies
    compile: Switch = "auto"  # torch.compile of every submodule but the LSTM
    # "": train in the calling process; a work pool name: run the `training-pipeline/train`
    # deployment there (e.g. a pool whose workers run on GPU hosts)
    work_pool: str = ""
    # the type of that pool, and so its base job template in deploy/work-pools/: process (a worker
    # on the GPU host runs the code in place), docker (GPU device request) or kubernetes
    # (nvidia.com/gpu limit); the docker and kubernetes workers need prefect-docker / prefect-kubernetes
    work_pool_type: Literal["process", "docker", "kubernetes"] = "process"


class RetrainParams(_Section):
    cron: str = "0 3 * * 1"  # the scheduled retraining (prefect.yaml's deployment `retrain-scheduled`)
    timezone: str = "UTC"
    work_pool: str = "stfn-cpu"


class RegistryParams(_Section):
    min_improvement: float = Field(0.0, ge=0.0)
    alpha: float = Field(0.05, gt=0.0, lt=0.5)  # a gain must be beyond noise at this level (stfn.gate)
    max_ece_increase: float = Field(0.01, ge=0.0)  # calibration may get worse by at most this much
    max_size_ratio: float = Field(2.0, ge=1.0)  # the challenger's parameters at most this times the champion's
    beat_baselines: bool = True  # regression: never promote a model a simple baseline beats on the same rows


class TrackingParams(_Section):
    # how long tracking calls retry an unreachable MLflow server (back-off 0.5 s doubling to 10 s)
    # before the run fails with a clear message
    retry_seconds: float = Field(120.0, ge=0.0)


class ServeParams(_Section):
    """`stfn serve`: the champion over HTTP (MLflow's scoring protocol)."""

    host: str = "127.0.0.1"  # loopback unless you mean it
    port: int = Field(5001, ge=1, le=65535)  # 5000 is the MLflow UI's
    alias: str = "champion"  # the alias followed
    follow_seconds: float = Field(5.0, gt=0)  # how often the alias is re-read
    max_request_mb: float = Field(32.0, gt=0)  # larger bodies get a 413 (counted as read, whatever the headers say)
    max_batch: int = Field(128, ge=1)  # more samples in one request get a 413 (params.yaml: the latency measured)
    max_concurrent: int = Field(8, ge=1)  # more /invocations requests at a time get a 503 with Retry-After
    read_timeout_seconds: float = Field(30.0, gt=0)  # a body not all received by then gets a 408
    log_flush_seconds: float = Field(5.0, gt=0)  # the inference log is written this often
    log_keep_days: float = Field(30.0, gt=0)  # older inference-log files are deleted
    log_max_mb: float = Field(1024.0, gt=0)  # ... and the oldest while the log holds more than this


class MonitorParams(_Section):
    """`stfn monitor`: a new batch against the champion's reference statistics (docs, "Operating
    models"; the defaults come from benchmarks/monitor_power.py's measurements)."""

    alpha: float = Field(0.01, gt=0, lt=1)  # chance a batch from the training distribution alarms (Bonferroni)
    min_ks: float = Field(0.1, ge=0, le=1)  # KS statistic a summary's shift must reach besides significance
    min_tvd: float = Field(0.1, ge=0, le=1)  # total variation distance for the class distributions
    max_missing_increase: float = Field(0.05, ge=0, le=1)  # a channel's missing share above training's by more
    max_out_of_range: float = Field(0.01, ge=0, le=1)  # share of a channel's readings outside the training range
    max_metric_drop: float = Field(0.05, ge=0)  # relative change of the primary metric for the worse (labels)
    reference_samples: int = Field(
        2000, ge=100
    )  # training (and validation) samples whose summaries the reference keeps
    min_batch: int = Field(50, ge=1)  # a smaller batch is reported too small to judge, never an alarm
    retrain: bool = True  # the monitor flow runs the retrain deployment when a labelled batch alarms
    # the monitor flow appends a labelled batch to its dataset when it alarms, or always (every labelled
    # batch that passes validation becomes data, and the alarming ones also run the retrain)
    append: Literal["alarm", "always"] = "alarm"
    cron: str = "0 6 * * *"  # the deployment `monitor/watch`: the inference log, daily (timezone: retrain's)
    window_hours: float = Field(24.0, gt=0)  # ... of the last this many hours


def _default_space() -> dict[str, dict[str, Any]]:
    return {
        "train.lr": {"low": 3e-4, "high": 1e-2, "log": True},
        "train.weight_decay": {"low": 1e-4, "high": 0.1, "log": True},
        "model.dim": {"choices": [32, 64, 128]},
        "model.dropout": {"low": 0.0, "high": 0.3},
        "model.alignment": {"choices": ["mfb", "film", "gmu"]},  # bilinear: D^3 weights, refused above dim 96
        "model.temporal_encoder": {"choices": ["lstm", "gru", "tcn"]},
        "budget": {"low": 0.5, "high": 3.0, "log": True},
    }


class TuneParams(_Section):
    """`stfn tune`: a search over the settings, on the validation split (stfn.tuning)."""

    trials: int = Field(20, ge=1)  # trials this call adds to the study (`--trials`)
    timeout_minutes: float = Field(0.0, ge=0)  # stop starting trials after this long; 0 = no limit (`--timeout`)
    sampler: Literal["tpe", "random"] = "tpe"  # optuna's TPESampler (seeded by `seed`) or RandomSampler
    pruner: Literal["median", "none"] = "median"  # optuna's MedianPruner on the per-epoch validation metric
    startup_trials: int = Field(5, ge=0)  # trials sampled at random, and never pruned against, first
    # `stfn tune --workers N`: the pool of the `tune/trials` deployment ("": retrain.work_pool)
    work_pool: str = ""
    # a trial's process records it is alive this often; one silent for grace_seconds (its worker
    # was killed, its host lost) is failed by the next trial started anywhere and run again once
    heartbeat_seconds: int = Field(30, ge=1)
    grace_seconds: int = Field(120, ge=2)
    # each key a parameter of the model or train section (`train.lr`), or `budget`: the training
    # budget as a multiple of `train.epochs: auto`'s (the data's own size decides the base);
    # a range {low, high, log?, step?} (an int range when low and high are ints) or {choices: [...]}
    space: dict[str, dict[str, Any]] = Field(default_factory=_default_space)


class Params(_Section):
    seed: int = 42
    data: DataParams = DataParams()
    prepare: PrepareParams = PrepareParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    registry: RegistryParams = RegistryParams()
    tracking: TrackingParams = TrackingParams()
    retrain: RetrainParams = RetrainParams()
    serve: ServeParams = ServeParams()
    monitor: MonitorParams = MonitorParams()
    tune: TuneParams = TuneParams()
    # per-dataset settings, merged over the sections above when `data.dataset` names the dataset
    datasets: dict[str, dict[str, Any]] = {}

    def digest(self) -> str:
        """A short stable hash of every parameter (tagged on each model version)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: CWD, or $STFN_PROJECT_ROOT) holding
    `params.yaml`; the start folder itself when there is none."""
    env = os.environ.get("STFN_PROJECT_ROOT")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PARAMS_FILE).is_file():
            return folder
    return here


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.epochs=3` -> (["train", "epochs"], 3); the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Return a copy of `raw` with each dotted `key=value` override set."""
    out = json.loads(json.dumps(raw))
    for item in overrides or []:
        parts, value = parse_override(item)
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _format_validation_error(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid parameters"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = "unknown key (typo?)" if err["type"] == "extra_forbidden" else err["msg"]
        got = err.get("input")
        lines.append(f"  - {key}: {msg}" + ("" if err["type"] == "extra_forbidden" else f" (got {got!r})"))
    return "\n".join(lines)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_params(path: Path | None = None, overrides: list[str] | None = None) -> Params:
    """Load and validate `params.yaml` (default: the project's), applying overrides.

    Precedence: command-line overrides > the `datasets.<name>` section of the dataset being run
    > the top-level sections. Every `datasets.<name>` section is checked, used or not."""
    path = path or find_project_root() / PARAMS_FILE
    raw: dict[str, Any] = {}
    if path.is_file():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    profiles = raw.get("datasets") or {}
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise ConfigError(f"{path}: datasets: expected a mapping of dataset name -> sections")
    base = {k: v for k, v in raw.items() if k != "datasets"}
    for name, profile in profiles.items():
        if "datasets" in profile:
            raise ConfigError(f"{path}: datasets.{name}: may not hold another 'datasets' section")
        try:
            Params.model_validate(_merge(base, profile))
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(f"{path} (datasets.{name})", exc)) from None
    merged = apply_overrides(raw, overrides)
    dataset = str((merged.get("data") or {}).get("dataset", DataParams().dataset))
    name = Path(dataset).name
    if name in profiles:
        merged = apply_overrides(_merge(merged, profiles[name]), overrides)
    try:
        return Params.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(str(path), exc)) from None


class Paths:
    """Every path the pipeline reads or writes, relative to the project root: the one catalog of
    file and folder names (the dataset contract's own files are named in `stfn.data`)."""

    CHECKPOINT = "model.pt"  # the best epoch's weights and config (what is registered)
    RESUME = "last.pt"  # the last epoch's full training state (what a rerun resumes from)
    HISTORY = "history.json"  # the training summary and per-epoch curves
    FEATURES_STAMP = "inputs.json"  # what the features were made from (featurize skips when unchanged)
    FEATURES_INDEX = "index.parquet"  # sample_id, split, row of each sample in the features
    FEATURES_STATS = "stats.json"  # the fitted normalisation, the split and the dataset's shapes

    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    @classmethod
    def here(cls) -> Paths:
        """The project around the current directory (or $STFN_PROJECT_ROOT)."""
        return cls(find_project_root())

    @property
    def params_file(self) -> Path:
        return self.root / PARAMS_FILE

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    def dataset_dir(self, name_or_path: str) -> Path:
        """A bare name is the ingested dataset `data/raw/<name>` when there is one (even when a
        folder of that name sits in the current directory: that is the copy before ingest);
        otherwise a dataset folder at that path; otherwise `data/raw/<name>` (checked later)."""
        candidate = Path(name_or_path)
        bare = "/" not in name_or_path and os.sep not in name_or_path and name_or_path not in (".", "..")
        if bare and (self.raw / name_or_path / "dataset.yaml").is_file():
            return self.raw / name_or_path
        if candidate.is_dir() and (candidate / "dataset.yaml").exists():
            return candidate.resolve()
        return self.raw / name_or_path

    def dataset_name(self, name_or_path: str) -> str:
        """The dataset's name: its folder's name (for a path as for a name)."""
        return self.dataset_dir(name_or_path).name

    def features_dir(self, dataset: str) -> Path:
        return self.root / "data" / "features" / dataset

    def features_stamp(self, dataset: str) -> Path:
        return self.features_dir(dataset) / self.FEATURES_STAMP

    def features_index(self, dataset: str) -> Path:
        return self.features_dir(dataset) / self.FEATURES_INDEX

    def model_dir(self, dataset: str) -> Path:
        return self.root / "models" / dataset

    def checkpoint(self, dataset: str) -> Path:
        return self.model_dir(dataset) / self.CHECKPOINT

    def history_file(self, dataset: str) -> Path:
        return self.model_dir(dataset) / self.HISTORY

    def ablation_dir(self, dataset: str, variant: str, seed: int) -> Path:
        return self.model_dir(dataset) / "ablation" / f"{variant}-seed{seed}"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def plots(self) -> Path:
        return self.reports / "plots"

    def validation_report(self, dataset: str) -> Path:
        return self.reports / "validation" / f"{dataset}.json"

    def refused_report(self, dataset: str) -> Path:
        """Where the report of a refused dataset goes: local state, never among the outputs."""
        return self.state / "refused" / f"{dataset}.json"

    @property
    def metrics_file(self) -> Path:
        return self.reports / "metrics.json"

    @property
    def per_class_file(self) -> Path:
        return self.reports / "per_class.json"

    @property
    def ablation_file(self) -> Path:
        return self.reports / "ablation.json"

    def reference_file(self, dataset: str) -> Path:
        """The reference statistics of the model evaluated last (logged with it when registered)."""
        return self.reports / "reference" / f"{dataset}.json"

    @property
    def monitoring(self) -> Path:
        """`stfn monitor`'s reports: <dataset>-<time>.json and .html."""
        return self.reports / "monitoring"

    def predictions_file(self, dataset: str, split: str | None = None) -> Path:
        return self.reports / "predictions" / f"{dataset}{'-' + split if split else ''}.parquet"

    def inference_log(self, dataset: str) -> Path:
        """Where `stfn serve` logs what it answered (parquet files; `stfn monitor` reads them)."""
        return self.state / "inference" / dataset

    @property
    def state(self) -> Path:
        """Git-ignored local state: Prefect home, caches."""
        return self.root / ".stfn"

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"
