"""MLflow -> DataFrame: which experiment a target names, the tidy table of its runs, the runs the table averages
over, the table's lines, validation histories and the report's provenance.

Nothing here formats or draws; ``md2bench.report.tables`` and ``md2bench.report.figures`` take these frames.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from md2bench.names import SWITCH_CONFIG, flags_from_params
from md2bench.tracking import TAG, MLflowTracker

PARENT_KINDS = ("grid", "study")


class ReportError(RuntimeError):
    """The report cannot be built; the message says why and what to run."""


@dataclass(frozen=True)
class ReportRow:
    """One line of the table: a grid row, or a row name found only in the runs.

    Attributes:
        name: row id (``md2bench.row`` tag).
        label: printed label.
        flags: the paper's ✓/✗ columns.
        paper: the paper's numbers for this row (may be empty).
    """

    name: str
    label: str
    flags: Mapping[str, bool] = field(default_factory=dict)
    paper: Mapping[str, float] = field(default_factory=dict)


def resolve_target(target: str | Path, tracker: MLflowTracker) -> tuple[str, Any]:
    """``(experiment name, Grid or None)`` for a grid file, a grid name or an experiment name.

    Raises:
        ReportError: a grid file that does not load, or nothing by that name (listing the experiments).
    """
    from md2bench.grid import GridError, load_grid, resolve_grid_path

    try:
        path = resolve_grid_path(target)
    except GridError:
        path = None
    if path is not None:
        try:
            grid = load_grid(path)
        except GridError as exc:
            raise ReportError(str(exc)) from exc
        return grid.name, grid
    name = str(target)
    if tracker.experiment_id(name, create=False) is None:
        existing = tracker.experiment_names()
        raise ReportError(
            f"no grid file and no MLflow experiment called {name!r} in {tracker.uri}; experiments there: "
            f"{', '.join(existing) or 'none'} (pass one of them, a grid name from experiments/, or "
            f"--tracking-uri for another store)"
        )
    grid = None
    try:
        grid = load_grid(name)
    except GridError:
        grid = None
    return name, grid


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def load_runs(tracker: MLflowTracker, experiment: str, grid: Any = None) -> pd.DataFrame:
    """The tidy table: one row per training run of ``experiment`` (every status), newest first.

    Columns: ``run_id``, ``run_name``, ``experiment``, ``grid``, ``row``, ``label``, ``seed``, ``status``,
    ``start_time``, ``end_time`` (UTC timestamps), ``duration_s``, ``device``, ``commit``, ``run_key``,
    ``dataset``, ``split``, ``parent_run_id``, ``flags_not_config`` (the grid row's paper switches that the run's
    logged config contradicts, e.g. ``pretrained: model.pretrained = scratch``; empty where they agree),
    ``flag.<key>`` per flag, and one column per final metric with the
    ``test/`` prefix dropped (``abs_rel``, ..., ``moving/abs_rel``, ``static/abs_rel``...). Runs tagged
    ``md2bench.kind = grid | study`` (parents) are excluded.

    Args:
        tracker: the store.
        experiment: experiment name.
        grid: the grid (labels and flags of its rows); None reads flags from the runs' params.
    """
    grid_rows = {r.name: r for r in grid.rows} if grid is not None else {}
    records: list[dict[str, Any]] = []
    for run in tracker.find_runs(experiment):
        tags = run.data.tags
        if tags.get(TAG + "kind") in PARENT_KINDS:
            continue
        params = run.data.params
        row = tags.get(TAG + "row") or params.get("name") or run.info.run_name
        grid_row = grid_rows.get(row)
        flags = dict(grid_row.flags) if grid_row is not None else flags_from_params(params)
        logged = flags_from_params(params)
        start = pd.Timestamp(run.info.start_time, unit="ms", tz="UTC") if run.info.start_time else pd.NaT
        end = pd.Timestamp(run.info.end_time, unit="ms", tz="UTC") if run.info.end_time else pd.NaT
        rec: dict[str, Any] = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "experiment": experiment,
            "grid": tags.get(TAG + "grid", grid.name if grid is not None else ""),
            "row": row,
            "label": grid_row.label if grid_row is not None else row,
            "seed": _int_or_none(tags.get(TAG + "seed", params.get("train.seed"))),
            "status": run.info.status,
            "start_time": start,
            "end_time": end,
            "duration_s": (end - start).total_seconds() if pd.notna(start) and pd.notna(end) else math.nan,
            "device": tags.get(TAG + "device", ""),
            "commit": tags.get(TAG + "commit", ""),
            "data_fingerprint": tags.get(TAG + "data.fingerprint", ""),
            "run_key": tags.get(TAG + "run_key", ""),
            "dataset": tags.get(TAG + "dataset", params.get("data.dataset", "")),
            "split": tags.get(TAG + "split", params.get("data.split", "")),
            "parent_run_id": tags.get("mlflow.parentRunId", ""),
            "out_dir": params.get("train.out_dir", ""),
            "flags_not_config": "; ".join(
                f"{key}: {SWITCH_CONFIG[key][0]} = {params[SWITCH_CONFIG[key][0]]}"
                for key in sorted(flags) if key in logged and logged[key] != bool(flags[key])),
        }
        for key, value in flags.items():
            rec[f"flag.{key}"] = bool(value)
        for key, value in run.data.metrics.items():
            if key.startswith("test/"):
                rec[key[len("test/"):]] = float(value)
        records.append(rec)
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return frame
    frame["seed"] = frame["seed"].astype("Int64")
    return frame.sort_values("start_time", ascending=False, kind="stable").reset_index(drop=True)


def select_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The newest FINISHED run of each (row, seed): what the table averages over."""
    if runs.empty:
        return runs
    done = runs[runs["status"] == "FINISHED"]
    if done.empty:
        return done
    done = done.sort_values("start_time", ascending=False, kind="stable")
    keyed = done.assign(_seed=done["seed"].fillna(-1))
    return done.loc[~keyed.duplicated(subset=["row", "_seed"], keep="first")].reset_index(drop=True)


def report_rows(grid: Any, runs: pd.DataFrame) -> list[ReportRow]:
    """The table's lines: the grid's rows in file order, then rows found only in the runs (oldest first)."""
    rows: list[ReportRow] = []
    if grid is not None:
        rows = [ReportRow(r.name, r.label, dict(r.flags), dict(r.paper)) for r in grid.rows]
    known = {r.name for r in rows}
    if not runs.empty:
        for _, run in runs.sort_values("start_time", kind="stable").iterrows():
            if run["row"] in known:
                continue
            flags = {c[len("flag."):]: bool(run[c]) for c in runs.columns if c.startswith("flag.") and pd.notna(run[c])}
            rows.append(ReportRow(run["row"], run["label"], flags, {}))
            known.add(run["row"])
    return rows


def val_histories(tracker: MLflowTracker, selected: pd.DataFrame, key: str = "val/abs_rel") -> pd.DataFrame:
    """``row, seed, epoch, value`` of one per-epoch validation metric for each selected run."""
    records = []
    for _, run in selected.iterrows():
        # The trainer logs validation at the global step and the epoch as ``val/epoch`` at the same step.
        epoch_at = dict(tracker.metric_history(run["run_id"], "val/epoch"))
        for step, value in tracker.metric_history(run["run_id"], key):
            epoch = epoch_at.get(step, step)
            records.append({"row": run["row"], "seed": run["seed"], "epoch": int(epoch), "step": int(step),
                            "value": float(value)})
    return pd.DataFrame.from_records(records, columns=["row", "seed", "epoch", "step", "value"])


def provenance(tracker: MLflowTracker, experiment: str, grid: Any, runs: pd.DataFrame,
               selected: pd.DataFrame) -> dict[str, str]:
    """What produced the report: grid, experiment, store, commits, devices, datasets, counts, time."""
    from md2bench import __version__

    def counts(col: str) -> str:
        if selected.empty or col not in selected:
            return "unknown"
        vc = selected[col].replace("", "unknown").value_counts()
        return ", ".join(f"{k} ({v} runs)" for k, v in vc.items())

    info = {
        "grid": f"{grid.name} ({display_path(grid.path)})" if grid is not None else "none (runs read by experiment name)",
        "experiment": experiment,
        "tracking store": tracker.uri,
        "commits": counts("commit"),
        "devices": counts("device"),
        "data": counts("dataset") + "; split: " + counts("split"),
        "data content": counts("data_fingerprint") + " (a synthetic world's fingerprint, md2bench.data.fingerprint:"
                        " runs on different bytes are not comparable seed by seed)",
        "runs": f"{len(selected)} finished runs used (newest per row and seed) of {len(runs)} training runs",
        "wall time": _wall_time(selected),
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") + f" by md2bench {__version__}",
    }
    if grid is not None and grid.paper_table:
        info["paper numbers"] = grid.paper_table
    return info


def _wall_time(selected: pd.DataFrame) -> str:
    """How long the runs took: the time while at least one run was running (the union of the runs' intervals,
    with its stretches when a grid was run in parts), first start to last end, and the sum of the runs' own
    durations."""
    if selected.empty or "start_time" not in selected or selected["start_time"].isna().all():
        return "unknown"
    stretches = busy_stretches(list(zip(selected["start_time"], selected["end_time"])))
    busy = sum((end - start).total_seconds() for start, end in stretches)
    span = (selected["end_time"].max() - selected["start_time"].min()).total_seconds()
    total = float(selected["duration_s"].sum())
    if len(stretches) == 1:
        head = (f"{span / 60:.1f} min from the first run's start to the last run's end "
                f"({selected['start_time'].min():%Y-%m-%d %H:%M} – {selected['end_time'].max():%H:%M} UTC)")
    else:
        parts = ", ".join(f"{a:%Y-%m-%d %H:%M} – {b:%H:%M} ({(b - a).total_seconds() / 60:.1f} min)"
                          for a, b in stretches)
        head = (f"{busy / 60:.1f} min while runs were running, in {len(stretches)} stretches ({parts} UTC); "
                f"{span / 60:.1f} min from the first run's start to the last run's end")
    return f"{head}; {total / 60:.1f} min of run time in all, {total / max(1, len(selected)) / 60:.1f} min per run"


def busy_stretches(intervals: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Merge (start, end) intervals into the disjoint stretches when at least one was running, in time order
    (intervals that touch or overlap merge; intervals with a missing end are left out)."""
    stretches: list[list[Any]] = []
    for start, end in sorted((s, e) for s, e in intervals if not pd.isna(s) and not pd.isna(e)):
        if stretches and start <= stretches[-1][1]:
            stretches[-1][1] = max(stretches[-1][1], end)
        else:
            stretches.append([start, end])
    return [(a, b) for a, b in stretches]


def display_path(path: object) -> str:
    """A path relative to the working directory where it lies below it (reports are committed and shared)."""
    try:
        return str(Path(str(path)).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
