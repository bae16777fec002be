"""What to do with each run of a grid: ``plan`` decides skip (``DONE`` marker or a FINISHED MLflow run), busy (a
live claim on its key anywhere in the store), resume (``checkpoint.pt`` present) or train, as ``PlanItem``s."""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from md2bench.grid import RunSpec
from md2bench.tracking import Claim, MLflowTracker
from md2bench.train.rundir import CHECKPOINT_NAME, is_done


@dataclass(frozen=True)
class PlanItem:
    """What ``run_grid`` will do with one run.

    Attributes:
        spec: the run.
        action: ``"train"`` (from scratch), ``"resume"`` (checkpoint present), ``"skip"`` (already finished) or
            ``"busy"`` (a live claim on its run key: trained elsewhere right now).
        reason: why, e.g. ``"DONE marker"`` or ``"FINISHED MLflow run 1a2b..."``.
    """

    spec: RunSpec
    action: str
    reason: str = ""


def finished_run_keys(tracker: MLflowTracker | None, experiment: str) -> dict[str, str]:
    """``{run_key: mlflow run id}`` of FINISHED runs in ``experiment`` (empty when there is no store/experiment)."""
    if tracker is None:
        return {}
    out: dict[str, str] = {}
    for run in tracker.find_runs(experiment, statuses=["FINISHED"]):
        key = run.data.tags.get("md2bench.run_key")
        if key and key not in out:
            out[key] = run.info.run_id
    return out


def live_claims(tracker: MLflowTracker | None) -> dict[str, Claim]:
    """``{run_key: claim}`` of the live claims in the whole store (RUNNING runs whose process is alive or whose
    heartbeat is fresh); empty without a store."""
    if tracker is None:
        return {}
    now = time.time()
    claims: dict[str, Claim] = {}
    for claim in tracker.running_claims(None):
        if claim.run_key and claim.run_key not in claims and claim.is_live(now):
            claims[claim.run_key] = claim
    return claims


def plan(specs: Sequence[RunSpec], tracker: MLflowTracker | None = None, experiment: str | None = None) -> list[PlanItem]:
    """Decide skip / busy / resume / train for each run from its folder and the MLflow store.

    Args:
        specs: the runs (``Grid.expand``).
        tracker: the store to ask for FINISHED runs and live claims; None looks at run folders only.
        experiment: MLflow experiment to search (default: each spec's grid name).
    """
    finished: dict[str, dict[str, str]] = {}
    claims = live_claims(tracker)
    items: list[PlanItem] = []
    for spec in specs:
        exp = experiment or spec.grid
        if exp not in finished:
            finished[exp] = finished_run_keys(tracker, exp)
        run_dir = spec.run_dir
        if is_done(run_dir):
            items.append(PlanItem(spec, "skip", f"DONE marker in {run_dir}"))
        elif spec.run_key in finished[exp]:
            items.append(PlanItem(spec, "skip", f"FINISHED MLflow run {finished[exp][spec.run_key]}"))
        elif spec.run_key in claims:
            items.append(PlanItem(spec, "busy", f"being trained elsewhere: {claims[spec.run_key].describe()}"))
        elif (run_dir / CHECKPOINT_NAME).is_file():
            items.append(PlanItem(spec, "resume", f"checkpoint from {_mtime(run_dir / CHECKPOINT_NAME)}"))
        else:
            items.append(PlanItem(spec, "train", ""))
    return items


def _mtime(path: Path) -> str:
    return _dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")



def describe_plan(items: Iterable[PlanItem]) -> str:
    """One line per planned run: ``row/seedK  run_key  action  reason``."""
    return "\n".join(f"{i.spec.run_name}  {i.spec.run_key}  {i.action}  {i.reason}".rstrip() for i in items)
