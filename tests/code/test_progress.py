"""Long work shows progress: the stages open named bars on whatever display the entry point
installed (none: they cost nothing), and log lines scroll above the bars instead of tearing them."""

from __future__ import annotations

import io
import logging
import re

from rich.console import Console

from stfn import progress


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=300, color_system=None), buf  # long temp paths fit


def _final_lines(text: str) -> list[str]:
    """The bar lines as last drawn (the live display redraws them in place)."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "\n")
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_without_a_display_a_bar_is_free_and_silent(capsys, caplog):
    caplog.set_level(logging.DEBUG)
    assert progress._display is None  # no entry point installed one
    with progress.bar("nothing", 3) as update:
        assert update is progress._noop  # free: no task, no state, the same do-nothing function
        assert update(1, info="x") is None and update(total=5) is None
    assert progress._display is None  # the bar did not install a display either
    out = capsys.readouterr()
    assert (out.out, out.err, caplog.records) == ("", "", [])  # silent: nothing printed, nothing logged


def test_every_stage_shows_a_bar_that_ends_complete(tmp_path, write_tiny_params):
    from stfn.config import Paths, load_params
    from stfn.stages.evaluate import evaluate
    from stfn.stages.featurize import featurize
    from stfn.stages.prepare import prepare
    from stfn.stages.train import train
    from stfn.stages.validate import validate

    write_tiny_params(tmp_path / "params.yaml", **{"train.epochs": 2})
    params, paths = load_params(tmp_path / "params.yaml"), Paths(tmp_path)
    console, buf = _console()
    with progress.display(console):
        prepare(params, paths)
        validate(params, paths)
        featurize(params, paths)
        train(params, paths)
        evaluate(params, paths)
    lines = _final_lines(buf.getvalue())
    last = {name: [x for x in lines if name in x][-1] for name in ("generating", "validating", "featurizing",
                                                                   "training", "evaluating")}  # fmt: skip
    assert "256/256" in last["generating"]  # 160 + 48 + 48 samples
    assert "9/9" in last["validating"]
    assert "256/256" in last["featurizing"]
    assert "96/96" in last["evaluating"]  # val + test
    steps = 2 * (160 // 32)  # epochs x batches
    assert f"{steps}/{steps}" in last["training"]
    assert re.search(r"2 epochs, best \d: train_loss=\d\.\d{4} val_accuracy=\d\.\d{4}", last["training"])
    assert any(re.search(r"epoch 2/2 train_loss=", x) for x in lines)  # the epoch and its numbers while it runs


def test_log_lines_print_through_the_bars_console():
    console, buf = _console()
    logger = logging.getLogger("stfn.test_progress")
    handler = progress.ConsoleLogHandler(console, "%(levelname)s %(name)s: %(message)s")
    logger.addHandler(handler)
    try:
        with progress.display(console), progress.bar("working", 2) as update:
            update(1)
            logger.warning("half way")
    finally:
        logger.removeHandler(handler)
    text = "\n".join(_final_lines(buf.getvalue()))
    assert "WARNING stfn.test_progress: half way" in text and "2/2" in text


def test_stfn_progress_variable_decides(monkeypatch):
    console, _ = _console()
    plain = Console(file=io.StringIO())
    monkeypatch.setenv("STFN_PROGRESS", "never")
    assert not progress.wanted(console)
    monkeypatch.setenv("STFN_PROGRESS", "auto")
    assert progress.wanted(console) and not progress.wanted(plain)
    monkeypatch.setenv("STFN_PROGRESS", "always")
    assert progress.wanted(plain) and progress.forced()
