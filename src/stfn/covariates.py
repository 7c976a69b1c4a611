"""What the model knows besides the series and frames it encodes: the calendar of the sample's
timestamp (known covariates), and the simple forecasts a regression starts from.

- `CalendarFeatures`: calendar coordinates (`stfn.transforms.calendar_coords`) -> sin and cos of
  the first `HARMONICS` harmonics of each period the model was built with (hour of day, day of
  week, day of year).
- `ForecastTerms`: the simple forecasts beyond the window's linear map (the model's `skip`), as
  columns of a frozen linear map fitted before training (`stfn.base_forecast`): the climatology
  of the day of year (a 366-day table, in the model's state, so it travels with the registered
  model) and persistence (the last finite reading of the target's own channel).

Both are numpy-free torch modules: they run where the registered model is served.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from stfn.transforms import CALENDAR

HARMONICS = 2  # sin/cos of the period and of its half: a peak and a trough that need not be symmetric
DAYS = 366
TERMS = ("climatology", "persistence")


class CalendarFeatures(nn.Module):
    """(B, 3) calendar coordinates -> (B, size) periodic encodings."""

    def __init__(self, periods: list[str]):
        super().__init__()
        unknown = set(periods) - set(CALENDAR)
        if unknown:
            raise ValueError(f"model.calendar: unknown period(s) {sorted(unknown)} ({' | '.join(CALENDAR)})")
        self.periods = list(periods)
        cols = [CALENDAR[p][0] for p in periods]
        omega = [[2 * math.pi * k / CALENDAR[p][1] for k in range(1, HARMONICS + 1)] for p in periods]
        self.register_buffer("cols", torch.as_tensor(cols, dtype=torch.long), persistent=False)
        self.register_buffer("omega", torch.as_tensor(omega, dtype=torch.float32), persistent=False)
        self.size = 2 * HARMONICS * len(periods)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        angles = coords[:, self.cols].float()[..., None] * self.omega  # (B, P, HARMONICS)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(1)


def last_finite(x: torch.Tensor) -> torch.Tensor:
    """The last finite value of each row of (B, T); 0 where a row has none."""
    finite = torch.isfinite(x)
    t = x.shape[1]
    last = t - 1 - torch.argmax(finite.flip(1).to(torch.uint8), dim=1)
    value = torch.nan_to_num(x, nan=0.0).gather(1, last[:, None])[:, 0]
    return torch.where(finite.any(dim=1), value, torch.zeros_like(value))


class ForecastTerms(nn.Module):
    """Simple forecasts as columns (B, len(terms)) and their frozen weights -> (B, n_outputs)."""

    def __init__(self, terms: list[str], channel: int, n_outputs: int):
        super().__init__()
        unknown = set(terms) - set(TERMS)
        if unknown:
            raise ValueError(f"base forecast: unknown term(s) {sorted(unknown)} ({' | '.join(TERMS)})")
        if "persistence" in terms and channel < 0:
            raise ValueError("base forecast: persistence needs the target's channel")
        self.terms, self.channel = list(terms), channel
        self.weight = nn.Linear(len(terms), n_outputs, bias=False)
        # the day-of-year climatology in the standardised target's units (stfn.base_forecast fits it)
        self.register_buffer("climatology", torch.zeros(DAYS))

    @property
    def needs_time(self) -> bool:
        return "climatology" in self.terms

    def columns(self, series: torch.Tensor, coords: torch.Tensor | None) -> torch.Tensor:
        cols = []
        for term in self.terms:
            if term == "climatology":
                day = coords[:, 2].floor().long().clamp(0, DAYS - 1)
                cols.append(self.climatology[day])
            else:
                cols.append(last_finite(series[:, :, self.channel]))
        return torch.stack(cols, dim=1).to(series.dtype)

    def forward(self, series: torch.Tensor, coords: torch.Tensor | None) -> torch.Tensor:
        return self.weight(self.columns(series, coords))
