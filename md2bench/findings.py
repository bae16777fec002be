"""Findings: a grid's claims (``[[findings]]``, ``md2bench.grid.Finding``) judged on per-seed numbers.

One rule decides every verdict, so that a claim only counts where the runs separate beyond their own noise:

    Row A is *shown* better than row B on a metric when
      1. both have at least 2 seeds (with one seed the spread is unknown),
      2. A's mean is better than B's by more than the sum of their sample standard deviations (ddof = 1), and
      3. every seed both rows ran pairs the same way (A's value better than B's at that seed).

Kinds (lower is better for error metrics, higher for ``a1``/``a2``/``a3``):

- ``contrast``: *shown* when ``better`` is shown better than ``worse`` by the rule; *not shown* otherwise (the
  reason says which condition failed, including "reversed" when ``worse`` has the better mean).
- ``best``: *shown* when no other row is shown better than ``row`` by the rule and every row with a better
  mean has at least 2 seeds; the verdict says "best" or "tied with ..." (a better mean within the spread is a
  tie). With ``rows`` only those rows are compared.
- ``floor``: *shown* when every row has at least 2 seeds and beats ``factor`` × the floor beyond its spread:
  for errors mean + std < floor / factor and every seed < floor / factor; for accuracies mean − std >
  factor × floor and every seed > factor × floor (the floor is one deterministic number: no spread). With
  ``rows`` only those rows are judged.
- ``target``: *shown* when ``row`` has at least 2 seeds and reaches ``value`` beyond its spread: for errors
  mean + std <= value and every seed <= value; for accuracies mean − std >= value and every seed >= value.

*not run*: a row the claim needs (for ``best`` and ``floor`` without ``rows``: every row of the grid) has no finished run with
the metric, or the floor was not computed. Verdicts are never dropped: a claim that does not show is reported
as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from md2bench.grid import Finding
from md2bench.regions import lower_is_better

if TYPE_CHECKING:
    import pandas as pd

SHOWN, NOT_SHOWN, NOT_RUN = "shown", "not shown", "not run"
RULE = ("shown = both rows have >= 2 seeds, the means differ by more than the sum of the two sample stds in the "
        "claimed direction, and every seed run by both rows pairs the same way; floor claims: every row has >= 2 "
        "seeds and mean ± std and every seed beat factor × the floor; target claims: the row has >= 2 seeds and "
        "mean ± std and every seed reach the value; not shown otherwise; not run when a row "
        "(or the floor) has no numbers")


@dataclass(frozen=True)
class Series:
    """One row's values of one metric, per seed.

    Attributes:
        label: the row's printed label.
        values: seed -> value (finished runs only).
    """

    label: str
    values: Mapping[int, float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.values.values()))) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof = 1); NaN below 2 seeds."""
        return float(np.std(list(self.values.values()), ddof=1)) if self.n > 1 else math.nan

    def describe(self) -> str:
        """``label 0.123 ± 0.004 (n=3)``."""
        if not self.n:
            return f"{self.label}: not run"
        spread = "" if math.isnan(self.std) else f" ± {self.std:.3f}"
        return f"{self.label} {self.mean:.3f}{spread} (n={self.n})"


@dataclass(frozen=True)
class Verdict:
    """The judgement of one finding.

    Attributes:
        finding: the claim.
        status: ``shown``, ``not shown`` or ``not run``.
        reason: why, in words.
        numbers: the numbers it rests on, in words (mean ± std, n per row; the floor's value).
    """

    finding: Finding
    status: str
    reason: str
    numbers: str


def _better(x: float, y: float, lower: bool) -> bool:
    return x < y if lower else x > y


def beats(a: Series, b: Series, lower: bool) -> tuple[bool, str]:
    """Whether ``a`` is shown better than ``b`` by the rule, and why (or why not) in words."""
    if a.n < 2 or b.n < 2:
        few = ", ".join(f"{s.label} has {s.n} seed{'s' if s.n != 1 else ''}" for s in (a, b) if s.n < 2)
        return False, f"fewer than 2 seeds ({few}): the spread is unknown"
    gap = (b.mean - a.mean) if lower else (a.mean - b.mean)
    spread = a.std + b.std
    if gap <= 0:
        return False, f"reversed: {b.label} has the better mean (by {-gap:.3f})"
    if gap <= spread:
        return False, f"difference {gap:.3f} is within the spread (sum of stds {spread:.3f})"
    common = sorted(set(a.values) & set(b.values))
    crossing = [s for s in common if not _better(a.values[s], b.values[s], lower)]
    if crossing:
        return False, (f"difference {gap:.3f} exceeds the spread {spread:.3f} but seed "
                       f"{', '.join(map(str, crossing))} pairs the other way")
    return True, f"difference {gap:.3f} exceeds the spread {spread:.3f}; all {len(common)} shared seeds agree"


def _contrast(finding: Finding, series: Mapping[str, Series], lower: bool) -> tuple[str, str, str]:
    a, b = series[finding.better], series[finding.worse]
    numbers = f"{a.describe()} vs {b.describe()}"
    missing = [s.label for s in (a, b) if s.n == 0]
    if missing:
        return NOT_RUN, f"no finished runs with this metric: {', '.join(missing)}", numbers
    shown, why = beats(a, b, lower)
    return (SHOWN if shown else NOT_SHOWN), why, numbers


def _best(finding: Finding, series: Mapping[str, Series], lower: bool) -> tuple[str, str, str]:
    target = series[finding.row]
    missing = [s.label for s in series.values() if s.n == 0]
    rivals = [s for name, s in series.items() if name != finding.row and s.n
              and not _better(target.mean, s.mean, lower)]  # rows whose mean is better or equal
    numbers = "; ".join([target.describe()] + [s.describe() for s in rivals])
    if missing:
        return NOT_RUN, f"no finished runs with this metric: {', '.join(missing)}", numbers
    if target.n < 2:
        return NOT_SHOWN, f"{target.label} has {target.n} seed: the spread is unknown", numbers
    ties = []
    for rival in rivals:
        shown, why = beats(rival, target, lower)
        if shown:
            return NOT_SHOWN, f"{rival.label} is better beyond the spread ({why})", numbers
        if rival.n < 2:
            return NOT_SHOWN, f"{rival.label} has a better mean and {rival.n} seed: a tie cannot be told", numbers
        ties.append(rival.label)
    return SHOWN, ("best" if not ties else f"tied (within the spread) with {', '.join(ties)}"), numbers


def _floor(finding: Finding, series: Mapping[str, Series], floor: float | None, lower: bool) -> tuple[str, str, str]:
    factor = finding.factor
    threshold = math.nan if floor is None else (floor / factor if lower else floor * factor)
    head = f"{finding.floor} {floor:.3f}, threshold {threshold:.3f}" if floor is not None else f"{finding.floor}: —"
    numbers = "; ".join([head] + [s.describe() for s in series.values()])
    if floor is None or not math.isfinite(floor):
        return NOT_RUN, f"the {finding.floor} floor was not computed for this metric", numbers
    missing = [s.label for s in series.values() if s.n == 0]
    if missing:
        return NOT_RUN, f"no finished runs with this metric: {', '.join(missing)}", numbers
    failing = []
    for s in series.values():
        values = list(s.values.values())
        edge = s.mean + s.std if lower else s.mean - s.std
        ok = s.n >= 2 and _better(edge, threshold, lower) and all(_better(v, threshold, lower) for v in values)
        if not ok:
            failing.append(f"{s.label} ({'1 seed' if s.n < 2 else f'{s.mean:.3f} ± {s.std:.3f}'})")
    if failing:
        return NOT_SHOWN, f"not beyond {factor:g}× the floor: {', '.join(failing)}", numbers
    return SHOWN, f"every row beats {factor:g}× the floor beyond its spread", numbers


def _target(finding: Finding, s: Series, lower: bool) -> tuple[str, str, str]:
    value = finding.value
    numbers = f"target {value:.3f}; {s.describe()}"
    if s.n == 0:
        return NOT_RUN, f"no finished runs with this metric: {s.label}", numbers
    reached = (lambda v: v <= value) if lower else (lambda v: v >= value)
    edge = s.mean + s.std if lower else s.mean - s.std
    missed = [seed for seed, v in sorted(s.values.items()) if not reached(v)]
    if s.n < 2:
        return NOT_SHOWN, "1 seed: the spread is unknown", numbers
    if missed:
        return NOT_SHOWN, f"not reached by seed {', '.join(str(m) for m in missed)}", numbers
    if not reached(edge):
        return NOT_SHOWN, "every seed reaches it, but not beyond the spread (mean ± std)", numbers
    return SHOWN, f"every seed reaches it, beyond the spread ({s.n} seeds)", numbers


def judge(finding: Finding, series: Mapping[str, Series], floors: Mapping[str, Mapping[str, float]]) -> Verdict:
    """One verdict.

    Args:
        finding: the claim.
        series: row name -> its values of ``finding.metric`` (every row of the table, table order; rows never run
            have no values).
        floors: floor name -> metric -> value (``md2bench.floors``; may be empty).
    """
    lower = lower_is_better(finding.metric)
    if finding.kind == "contrast":
        status, reason, numbers = _contrast(finding, series, lower)
    elif finding.kind == "best":
        judged = {k: v for k, v in series.items() if k in finding.only} if finding.only else series
        status, reason, numbers = _best(finding, judged, lower)
    elif finding.kind == "target":
        status, reason, numbers = _target(finding, series[finding.row], lower)
    else:
        floor = floors.get(finding.floor, {}).get(finding.metric)
        judged = {k: v for k, v in series.items() if k in finding.only} if finding.only else series
        status, reason, numbers = _floor(finding, judged, floor, lower)
    return Verdict(finding, status, reason, numbers)


def series_of(selected: "pd.DataFrame", rows: Sequence[tuple[str, str]], metric: str) -> dict[str, Series]:
    """Per-row series of one metric from the report's selected runs (columns ``row``, ``seed``, ``<metric>``).

    Args:
        selected: ``md2bench.report.select_runs`` output (a pandas DataFrame).
        rows: (name, label) of every row, in table order.
        metric: the metric column.
    """
    import pandas as pd

    frame = selected
    out: dict[str, Series] = {}
    for name, label in rows:
        values: dict[int, float] = {}
        if not frame.empty and metric in frame.columns:
            mine = frame[(frame["row"] == name) & frame[metric].notna()]
            for i, (_, run) in enumerate(mine.iterrows()):
                seed = int(run["seed"]) if pd.notna(run["seed"]) else -1 - i
                values[seed] = float(run[metric])
        out[name] = Series(label, values)
    return out
