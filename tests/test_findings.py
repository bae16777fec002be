"""Findings: the verdict rule on hand-made per-seed numbers (shown / not shown / not run), every kind."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from md2bench.findings import NOT_RUN, NOT_SHOWN, SHOWN, Series, beats, judge, series_of
from md2bench.grid import Finding


def _series(**rows: dict[int, float]) -> dict[str, Series]:
    return {name: Series(name.upper(), values) for name, values in rows.items()}


def contrast(metric: str = "occluded/abs_rel") -> Finding:
    return Finding("full beats no_min on occluded pixels", "contrast", metric, better="full", worse="no_min")


def test_series_statistics() -> None:
    s = Series("A", {0: 0.1, 1: 0.2, 2: 0.3})
    # mean 0.2; sample std sqrt((0.01 + 0 + 0.01) / 2) = 0.1
    assert s.n == 3 and s.mean == pytest.approx(0.2) and s.std == pytest.approx(0.1)
    assert s.describe() == "A 0.200 ± 0.100 (n=3)"
    assert math.isnan(Series("B", {0: 1.0}).std) and Series("B", {0: 1.0}).describe() == "B 1.000 (n=1)"


def test_contrast_shown_when_the_gap_exceeds_both_spreads_and_seeds_agree() -> None:
    # full: 0.10, 0.12, 0.14 (mean 0.12, std 0.02); no_min: 0.20, 0.22, 0.24 (mean 0.22, std 0.02)
    # gap 0.10 > 0.02 + 0.02; every seed: full < no_min -> shown
    series = _series(full={0: 0.10, 1: 0.12, 2: 0.14}, no_min={0: 0.20, 1: 0.22, 2: 0.24})
    verdict = judge(contrast(), series, {})
    assert verdict.status == SHOWN and "0.100 exceeds the spread 0.040" in verdict.reason
    assert verdict.numbers == "FULL 0.120 ± 0.020 (n=3) vs NO_MIN 0.220 ± 0.020 (n=3)"


def test_contrast_not_shown_within_the_spread() -> None:
    # full: 0.10, 0.20 (mean 0.15, std 0.0707); no_min: 0.16, 0.24 (mean 0.20, std 0.0566): gap 0.05 < 0.127
    series = _series(full={0: 0.10, 1: 0.20}, no_min={0: 0.16, 1: 0.24})
    verdict = judge(contrast(), series, {})
    assert verdict.status == NOT_SHOWN and "within the spread" in verdict.reason


def test_contrast_not_shown_when_a_seed_pairs_the_other_way() -> None:
    # means 0.133 vs 0.300 (gap 0.167 > stds 0.058 + 0.095 = 0.153) but at seed 2 full (0.2) > no_min (0.19)
    series = _series(full={0: 0.1, 1: 0.1, 2: 0.2}, no_min={0: 0.35, 1: 0.36, 2: 0.19})
    assert beats(series["full"], series["no_min"], lower=True)[0] is False
    verdict = judge(contrast(), series, {})
    assert verdict.status == NOT_SHOWN and "seed 2 pairs the other way" in verdict.reason


def test_contrast_reversed_one_seed_and_not_run() -> None:
    reversed_ = judge(contrast(), _series(full={0: 0.3, 1: 0.31}, no_min={0: 0.1, 1: 0.11}), {})
    assert reversed_.status == NOT_SHOWN and reversed_.reason.startswith("reversed: NO_MIN has the better mean")
    single = judge(contrast(), _series(full={0: 0.1}, no_min={0: 0.9, 1: 0.95}), {})
    assert single.status == NOT_SHOWN and "fewer than 2 seeds (FULL has 1 seed)" in single.reason
    missing = judge(contrast(), _series(full={0: 0.1, 1: 0.12}, no_min={}), {})
    assert missing.status == NOT_RUN and "NO_MIN" in missing.reason and "NO_MIN: not run" in missing.numbers


def test_higher_is_better_for_delta_accuracies() -> None:
    # a1: full 0.80, 0.82 vs no_min 0.60, 0.62: full is better because it is *higher*
    series = _series(full={0: 0.80, 1: 0.82}, no_min={0: 0.60, 1: 0.62})
    assert judge(contrast("occluded/a1"), series, {}).status == SHOWN
    assert judge(contrast("occluded/abs_rel"), series, {}).status == NOT_SHOWN  # as an error it is reversed


def test_best_shown_tied_and_not_shown() -> None:
    best = Finding("full is best", "best", "abs_rel", row="full")
    # full clearly lowest -> "best"
    clear = judge(best, _series(full={0: 0.10, 1: 0.11}, base={0: 0.30, 1: 0.31}, other={0: 0.20, 1: 0.21}), {})
    assert clear.status == SHOWN and clear.reason == "best"
    # other has the lower mean but within the spread: full 0.10, 0.11 (mean 0.105, std 0.0071); other 0.08,
    # 0.11 (mean 0.095, std 0.0212): gap 0.010 < 0.0071 + 0.0212 = 0.028 -> tied
    tied = judge(best, _series(full={0: 0.10, 1: 0.11}, other={0: 0.08, 1: 0.11}), {})
    assert tied.status == SHOWN and tied.reason == "tied (within the spread) with OTHER"
    # other is better beyond the spread with every seed agreeing -> not shown
    beaten = judge(best, _series(full={0: 0.20, 1: 0.21}, other={0: 0.10, 1: 0.11}), {})
    assert beaten.status == NOT_SHOWN and beaten.reason.startswith("OTHER is better beyond the spread")
    # a better mean with one seed: a tie cannot be told
    lone = judge(best, _series(full={0: 0.20, 1: 0.21}, other={0: 0.10}), {})
    assert lone.status == NOT_SHOWN and "a tie cannot be told" in lone.reason
    # any row without runs -> not run
    assert judge(best, _series(full={0: 0.1, 1: 0.1}, other={}), {}).status == NOT_RUN


def test_best_among_rows_ignores_the_other_rows() -> None:
    # "other" beats full beyond the spread, but the claim is about full and base only
    series = _series(full={0: 0.20, 1: 0.21}, base={0: 0.30, 1: 0.31}, other={0: 0.10, 1: 0.11})
    among = Finding("full is best of the two", "best", "abs_rel", row="full", only=("full", "base"))
    assert judge(among, series, {}).status == SHOWN and judge(among, series, {}).reason == "best"
    assert judge(Finding("full is best", "best", "abs_rel", row="full"), series, {}).status == NOT_SHOWN


def test_floor_claim() -> None:
    claim = Finding("every row beats the row prior by 2x", "floor", "abs_rel", factor=2.0)
    floors = {"row_prior": {"abs_rel": 0.46}}
    # threshold 0.46 / 2 = 0.23: a (0.10 ± 0.01) and b (0.20 ± 0.01: 0.21 < 0.23, seeds 0.19, 0.21) pass
    ok = _series(a={0: 0.09, 1: 0.11}, b={0: 0.19, 1: 0.21})
    verdict = judge(claim, ok, floors)
    assert verdict.status == SHOWN and verdict.numbers.startswith("row_prior 0.460, threshold 0.230")
    # b at 0.21, 0.24: mean 0.225 < 0.23 but a seed and mean + std (0.246) are above -> not shown, naming b
    bad = judge(claim, _series(a={0: 0.09, 1: 0.11}, b={0: 0.21, 1: 0.24}), floors)
    assert bad.status == NOT_SHOWN and "B (0.225 ± 0.021)" in bad.reason and "A" not in bad.reason
    assert judge(claim, ok, {}).status == NOT_RUN  # the floor was not computed
    # accuracies: a1 must exceed factor × floor (0.18 × 2 = 0.36)
    a1 = Finding("δ doubles the prior's", "floor", "a1", factor=2.0)
    assert judge(a1, _series(a={0: 0.5, 1: 0.52}), {"row_prior": {"a1": 0.18}}).status == SHOWN
    assert judge(a1, _series(a={0: 0.3, 1: 0.32}), {"row_prior": {"a1": 0.18}}).status == NOT_SHOWN


def test_floor_claim_on_named_rows_only() -> None:
    claim = Finding("the warm-up row beats the prior by 2x", "floor", "abs_rel", factor=2.0, only=("warm",))
    floors = {"row_prior": {"abs_rel": 0.46}}
    rows = _series(ref={0: 0.50, 1: 0.60}, warm={0: 0.19, 1: 0.20})
    verdict = judge(claim, rows, floors)
    assert verdict.status == SHOWN and "REF" not in verdict.numbers  # the reference row is not judged
    assert judge(Finding("every row", "floor", "abs_rel", factor=2.0), rows, floors).status == NOT_SHOWN
    assert claim.rows() == ("warm",)


def test_target_claim() -> None:
    claim = Finding("warm reaches 0.20", "target", "abs_rel", row="warm", value=0.20)
    assert claim.rows() == ("warm",)
    ok = judge(claim, _series(warm={0: 0.18, 1: 0.19, 2: 0.185}), {})
    assert ok.status == SHOWN and ok.numbers == "target 0.200; WARM 0.185 ± 0.005 (n=3)"
    missed = judge(claim, _series(warm={0: 0.18, 1: 0.21, 2: 0.185}), {})
    assert missed.status == NOT_SHOWN and missed.reason == "not reached by seed 1"
    # every seed at or under 0.20 but mean + std (0.193 + 0.012) above it
    edge = judge(claim, _series(warm={0: 0.18, 1: 0.20, 2: 0.20}), {})
    assert edge.status == NOT_SHOWN and "spread" in edge.reason
    assert judge(claim, _series(warm={0: 0.1}), {}).status == NOT_SHOWN  # one seed: spread unknown
    assert judge(claim, _series(warm={}), {}).status == NOT_RUN
    a1 = Finding("δ reaches 0.8", "target", "a1", row="warm", value=0.8)  # accuracies: at least the value
    assert judge(a1, _series(warm={0: 0.85, 1: 0.86}), {}).status == SHOWN
    assert judge(a1, _series(warm={0: 0.75, 1: 0.86}), {}).status == NOT_SHOWN


def test_series_of_reads_the_selected_runs() -> None:
    selected = pd.DataFrame({"row": ["full", "full", "base"], "seed": pd.array([0, 1, 0], dtype="Int64"),
                             "occluded/abs_rel": [0.1, 0.2, float("nan")]})
    series = series_of(selected, [("full", "Full"), ("base", "Base"), ("never", "Never")], "occluded/abs_rel")
    assert dict(series["full"].values) == {0: 0.1, 1: 0.2} and series["full"].label == "Full"
    assert series["base"].n == 0 and series["never"].n == 0  # NaN metric = no number; row never run
    assert series_of(selected, [("full", "Full")], "comoving/abs_rel")["full"].n == 0  # metric never logged
