"""The `stfn` command: parse, call a stage, the registry or an op, print. No logic of its own.

One module per group of commands (`pipeline`, `data`, `registry`, `serving`, `ops`), the tables
they print in `render`, what they share in `common`. The list below is `stfn --help`'s order.

Each command imports the stages, registry or ops it calls inside its body, on purpose: they pull
torch, MLflow, Prefect and Great Expectations (3-5 s together), which `stfn --help`, `stfn servers
stop` or `stfn models` must not pay for."""

from __future__ import annotations

import sys

from stfn.cli import data, ops, pipeline, registry, serving
from stfn.cli.common import app, err_console

__all__ = ["app", "entrypoint"]

app.command()(pipeline.run)
app.command(name="import")(data.import_)
app.command()(data.validate)
app.command()(data.ingest)
app.command()(registry.models)
app.command()(registry.promote)
app.command()(registry.rollback)
app.command()(serving.predict)
app.command()(serving.monitor)
app.command()(serving.serve)
app.command()(ops.servers)
app.command()(ops.ui)
app.command()(ops.deploy)
app.command()(pipeline.ablate)
app.command()(pipeline.tune)
app.command()(pipeline.stage)


def entrypoint() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
