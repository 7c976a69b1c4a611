"""Exception families a user can act on: each carries what failed and where."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Failure:
    """One failed check: the file, the column or sample, the expectation, and examples."""

    file: str
    column: str | None
    expectation: str
    detail: str
    examples: list = field(default_factory=list)

    def __str__(self) -> str:
        where = f"{self.file}" + (f", column '{self.column}'" if self.column else "")
        ex = f"; e.g. {self.examples[:5]}" if self.examples else ""
        return f"{where}: {self.expectation} failed: {self.detail}{ex}"


class DataValidationError(ValueError):
    """The dataset breaks its contract; `failures` lists every failed check."""

    def __init__(self, dataset: str, failures: list[Failure], report: str | None = None):
        self.dataset = dataset
        self.failures = failures
        self.report = report
        head = f"dataset '{dataset}' failed validation ({len(failures)} problem{'s' * (len(failures) != 1)}):"
        lines = [head, *(f"  - {f}" for f in failures[:20])]
        if len(failures) > 20:
            lines.append(f"  ... and {len(failures) - 20} more")
        if report:
            lines.append(f"  full report: {report}")
        super().__init__("\n".join(lines))


class ConfigError(ValueError):
    """`params.yaml` or an override is malformed; the message names the key."""


class TrackingError(RuntimeError):
    """The MLflow tracking store or registry could not be reached or written."""


class DvcError(RuntimeError):
    """A dvc command failed; the message holds its output."""
