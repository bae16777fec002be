"""``build_report``: the whole report folder (tables, figures, README.md, report.html), the no-learning floors it
needs (``floor_config``, ``compute_floors``, ``log_floors``) and logging it to MLflow (``log_report``).

``build_report("synth-ablation", out="reports/synth-ablation")`` does it all:

1. ``collect.resolve_target``: the argument is a grid (file or name in ``experiments/``; its MLflow experiment is
   named after it) or an experiment name.
2. ``collect.load_runs``: one row per training run of the experiment (grid, row, seed, flags, metrics, status,
   duration, device, commit, ...); parent runs (grids, studies) are left out.
3. ``collect.select_runs`` keeps the newest finished run per (row, seed); ``tables.summarize`` gives one line per
   grid row (grid order) with mean ± sample std (ddof = 1) and n over seeds, the paper's number and our
   difference, and the best mean per metric. Rows never run stay in the table with n = 0 and empty (NaN) metrics.
4. Writers (``tables``): ``to_markdown``, ``to_latex`` (booktabs), ``to_html`` (self-contained page with figures
   inlined), CSV; on the synthetic world also the moving-object / static-pixel table (``motion_summary``).
5. Figures (``figures``, ``qualitative``; seaborn on matplotlib ``Figure`` objects, no pyplot state; PNG + PDF):
   per-metric bars with seed error bars and the paper's value, validation curves (``val/abs_rel`` per epoch), and
   a qualitative grid (the same test images; input, each row's predicted disparity, GT where it exists) from each
   row's checkpoint.
6. ``README.md`` (tables, figures, provenance: grid, commits, devices) and every file are also logged as
   artifacts under ``report/`` on the grid's newest parent run.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from md2bench.findings import Verdict, judge, series_of
from md2bench.paper import METRICS
from md2bench.report.collect import (ReportError, ReportRow, display_path, load_runs, provenance, report_rows,
                                     resolve_target, select_runs, val_histories)
from md2bench.report.figures import plot_metric_bars, plot_val_curves
from md2bench.report.qualitative import plot_qualitative
from md2bench.names import FLAG_DESCRIPTIONS, FLAG_LABELS
from md2bench.report.tables import (FINDINGS_TEXT, MISSING, REGIONS_TEXT,
                                    findings_markdown, flag_keys, floor_table, floor_values, learned_sentence,
                                    mark_learned, motion_latex, motion_markdown, motion_summary, region_summary,
                                    summarize, to_html, to_latex, to_markdown)
from md2bench.tracking import TAG, MLflowTracker


@dataclass
class Report:
    """What ``build_report`` produced.

    Attributes:
        out_dir: the report folder.
        experiment: the MLflow experiment read.
        grid: the grid name (None when the runs did not come from a known grid).
        runs: the tidy table of all training runs (``load_runs``).
        summary: one line per row (``summarize``).
        motion: the moving/static table, or None off the synthetic world.
        files: every file written.
        logged_to: the parent run the report was logged to, or None.
        notes: things skipped or worth knowing (e.g. a figure that could not be drawn).
        floors: the no-learning floors (``floor_table``), or None where not computed.
        regions: the per-region table (``region_summary``), or None off the synthetic world.
        verdicts: the grid's findings, judged (``md2bench.findings``).
        headline: the summary in words (which rows did not learn depth; the findings' tally).
    """

    out_dir: Path
    experiment: str
    grid: str | None
    runs: pd.DataFrame
    summary: pd.DataFrame
    motion: pd.DataFrame | None
    files: list[Path]
    logged_to: str | None
    notes: list[str]
    floors: pd.DataFrame | None = None
    regions: pd.DataFrame | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    headline: list[str] = field(default_factory=list)


def _readme(title: str, description: str, info: Mapping[str, str], table_md: str, motion_md: str | None,
            figures: Sequence[Path], notes: Sequence[str], *, headline: Sequence[str] = (),
            regions_md: str | None = None, findings_md: str | None = None, flag_keys: Sequence[str] = (),
            paper_only: Sequence[str] = ()) -> str:
    lines = [f"# {title}", ""]
    if description:
        lines += [description, ""]
    lines += ["## Provenance", ""] + [f"- **{k}**: {v}" for k, v in info.items()] + [""]
    if headline:
        lines += ["## Summary", ""] + [f"{line}\n" for line in headline]
    lines += ["## Ablation", "",
              "Mean ± sample std over seeds (n = number of seeds); best mean per column in **bold**; "
              "flags: " + ", ".join(f"{FLAG_LABELS[k]} = {FLAG_DESCRIPTIONS[k]}"
                                    + (" (the paper's row, not these runs: see Notes)" if k in paper_only else "")
                                    for k in flag_keys if k in FLAG_LABELS) + ".",
              "", table_md]
    if regions_md:
        lines += ["## Errors per region", "", REGIONS_TEXT, "", regions_md]
    if findings_md:
        lines += ["## Findings", "", FINDINGS_TEXT, "", findings_md]
    if motion_md:
        lines += ["## Moving objects vs static pixels", "",
                  "Errors restricted to pixels of moving objects and to static pixels (synthetic world GT masks).",
                  "", motion_md]
    pngs = [f for f in figures if f.suffix == ".png"]
    if pngs:
        lines += ["## Figures", ""]
        for f in pngs:
            lines += [f"![{f.stem}]({f.name})", f"[PDF]({f.with_suffix('.pdf').name})", ""]
    lines += ["## Files", "", "- `table.md`, `table.tex` (booktabs), `table.csv` (numbers), `runs.csv` (every run), "
              "`report.html` (self-contained); where computed: `floors.csv` (the no-learning floors), "
              "`regions.csv` / `regions.tex` (errors per region), `findings.csv`", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _flag_disagreements(runs: pd.DataFrame) -> dict[str, int]:
    """``"key: param = value"`` -> how many runs' grid flags that logged setting contradicts."""
    counts: dict[str, int] = {}
    if "flags_not_config" not in runs.columns:
        return counts
    for value in runs["flags_not_config"].fillna(""):
        for part in filter(None, (p.strip() for p in str(value).split(";"))):
            counts[part] = counts.get(part, 0) + 1
    return counts


def paper_only_flags(runs: pd.DataFrame) -> list[str]:
    """The switch keys whose column shows the paper's row rather than some of the runs' own config."""
    return sorted({part.split(":", 1)[0] for part in _flag_disagreements(runs)})


def flag_notes(runs: pd.DataFrame) -> list[str]:
    """One note per paper switch whose ✓/✗ column shows the paper's row rather than the runs' own config (a grid
    row's ``flags`` against the logged params, ``flags_not_config``), naming the runs' setting and how many."""
    counts = _flag_disagreements(runs)
    notes = []
    for part, count in sorted(counts.items()):
        key, setting = part.split(":", 1)
        notes.append(f"the {FLAG_LABELS.get(key, key)} column ({FLAG_DESCRIPTIONS.get(key, key)}) shows what the "
                     f"paper's row did, not these runs: {count} of {len(runs)} runs logged{setting}")
    return notes


def floor_config(tracker: MLflowTracker, grid: Any, selected: pd.DataFrame, scratch: Path) -> tuple[Any, str]:
    """The config whose dataset and test split the floors are computed on, and where it came from.

    With a grid: its shared config (base + ``[set]``; the world the runs trained on). Without one: the
    ``config.toml`` artifact of the newest finished run. ``(None, why)`` when neither is available.
    """
    from md2bench.config import ConfigError, load_config

    if grid is not None:
        try:
            return grid.shared_config(), f"grid {grid.name}'s base config with its [set]"
        except Exception as exc:  # noqa: BLE001 - GridError/ConfigError: the floors are optional
            return None, f"the grid's base config does not load: {exc}"
    run = selected.sort_values("start_time", ascending=False).iloc[0]
    try:
        path = tracker.download_artifact(run["run_id"], "config.toml", scratch / "floor-config")
        return load_config(path), f"the config of run {run['run_id']}"
    except (ConfigError, OSError, Exception) as exc:  # noqa: BLE001 - MLflow raises several types
        return None, f"no grid file and no config.toml artifact on run {run['run_id']} ({type(exc).__name__})"


def compute_floors(cfg: Any) -> Any:
    """``md2bench.floors.evaluate_floors`` on the config's test split (never raises for missing data)."""
    from md2bench.floors import Floors, evaluate_floors

    try:
        return evaluate_floors(cfg)
    except Exception as exc:  # noqa: BLE001 - e.g. a world that cannot be rendered here; the report goes on
        return Floors(notes=[f"floors not computed: {type(exc).__name__}: {exc}"])


def log_floors(tracker: MLflowTracker, experiment: str, grid_name: str, metrics: Mapping[str, float]) -> str | None:
    """Log ``floor/<name>/<metric>`` on the newest grid parent run (step 0); its id, or None if there is none."""
    parents = tracker.find_runs(experiment, tags={TAG + "kind": "grid", TAG + "grid": grid_name})
    if not parents or not metrics:
        return None
    run = parents[0]
    tracker.run(run.info.run_id).log_metrics(metrics, step=0)
    return run.info.run_id


def build_report(
    target: str | Path,
    out: str | Path | None = None,
    tracking_uri: str | None = None,
    *,
    figures: bool = True,
    qualitative: bool = True,
    log_to_mlflow: bool = True,
    num_images: int = 3,
    device: str = "cpu",
    floors: bool = True,
) -> Report:
    """Read a grid's (or an experiment's) runs from MLflow and write the report folder.

    Args:
        target: grid file, grid name (``experiments/<name>.toml``) or MLflow experiment name.
        out: report folder (default ``reports/<experiment>``).
        tracking_uri: MLflow store (default: see ``md2bench.tracking.resolve_uri``).
        figures: draw the figures.
        qualitative: draw the qualitative grid (loads each row's checkpoint and the test data).
        log_to_mlflow: log the folder as artifacts ``report/`` (and the floors as ``floor/<name>/<metric>``
            metrics) on the grid's newest parent run.
        num_images: test images in the qualitative grid.
        device: where the qualitative predictions run.
        floors: compute the no-learning floors on the grid's test split (reference rows in every table; rows that
            do not beat the row prior are marked *not learned*).

    Raises:
        ReportError: no such grid or experiment (listing those that exist), or no finished runs (naming the
            command that produces them).
    """
    tracker = MLflowTracker(tracking_uri)
    experiment, grid, runs, selected, grid_cmd = _finished_runs(tracker, target)
    rows = report_rows(grid, runs)
    paper_ref = grid.paper_table if grid is not None else None
    grid_name = grid.name if grid is not None else experiment
    out_dir = Path(out) if out is not None else Path("reports") / experiment
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    floor_frame, floor_metrics, floor_note = _floors(tracker, grid, selected, notes) if floors else \
        (None, {}, "--no-floors")
    prior = floor_values(floor_frame).get("row_prior", {}).get("abs_rel")
    summary = mark_learned(summarize(selected, rows), prior)
    learned = dict(zip(summary["row"], summary["learned"]))
    motion = motion_summary(selected, rows)
    regions = region_summary(selected, rows, floor_frame)
    if regions is not None:
        regions = mark_learned(regions, prior, learned)
    verdicts = [judge(f, series_of(selected, [(r.name, r.label) for r in grid.rows], f.metric),
                      floor_values(floor_frame)) for f in grid.findings] if grid is not None else []
    headline = [learned_sentence(summary, prior, floor_note)]
    if verdicts:
        counts = {status: sum(v.status == status for v in verdicts) for status in ("shown", "not shown", "not run")}
        headline.append(f"Findings: {counts['shown']} of {len(verdicts)} shown, {counts['not shown']} not shown, "
                        f"{counts['not run']} not run (see Findings).")
    notes += flag_notes(selected)
    missing = [line["label"] for _, line in summary.iterrows() if line["n"] == 0]
    if missing:
        notes.append(f"not run yet (shown as {MISSING}): {', '.join(missing)}; run: {grid_cmd}")

    table_md = to_markdown(summary, METRICS, paper_ref, floor_frame)
    motion_md = motion_markdown(motion) if motion is not None else None
    regions_md = motion_markdown(regions, floor_frame) if regions is not None else None
    findings_md = findings_markdown(verdicts) if verdicts else None
    files = _write_tables(out_dir, summary, runs, motion, floor_frame, regions, verdicts, paper_ref,
                          table_md, motion_md, regions_md, findings_md)
    figure_files = _draw_figures(tracker, selected, rows, out_dir, floor_frame, notes, qualitative, num_images,
                                 device) if figures else []
    files += figure_files

    info = provenance(tracker, experiment, grid, runs, selected)
    title = f"md2bench report: {experiment}"
    description = grid.description if grid is not None else ""
    (out_dir / "report.html").write_text(to_html(title, info, summary, motion, figure_files, paper_ref, notes,
                                                 floors=floor_frame, regions=regions, verdicts=verdicts,
                                                 headline=headline, description=description))
    (out_dir / "README.md").write_text(_readme(title, description, info, table_md, motion_md, figure_files, notes,
                                               headline=headline, regions_md=regions_md, findings_md=findings_md,
                                               flag_keys=flag_keys(rows), paper_only=paper_only_flags(selected)))
    files += [out_dir / "report.html", out_dir / "README.md"]

    logged_to = None
    if log_to_mlflow:
        log_floors(tracker, experiment, grid_name, floor_metrics)
        logged_to = log_report(tracker, experiment, grid_name, files)
    return Report(out_dir, experiment, grid.name if grid is not None else None, runs, summary, motion, files,
                  logged_to, notes, floors=floor_frame, regions=regions, verdicts=verdicts, headline=headline)


def _finished_runs(tracker: MLflowTracker, target: str | Path) -> tuple[str, Any, pd.DataFrame, pd.DataFrame, str]:
    """``(experiment, grid or None, all runs, the selected finished runs, the command that produces them)``;
    ``ReportError`` when there is nothing finished to report."""
    experiment, grid = resolve_target(target, tracker)
    grid_cmd = f"md2bench run-ablation {display_path(grid.path)}" if grid is not None and grid.path else \
        f"md2bench run-ablation experiments/{experiment}.toml"
    if tracker.experiment_id(experiment, create=False) is None:
        raise ReportError(f"grid {experiment!r} has no runs in {tracker.uri} yet; produce them with: {grid_cmd}")
    runs = load_runs(tracker, experiment, grid)
    selected = select_runs(runs)
    if selected.empty:
        states = ", ".join(f"{k}: {v}" for k, v in runs["status"].value_counts().items()) if not runs.empty else "none"
        raise ReportError(
            f"experiment {experiment!r} in {tracker.uri} has no finished training runs (runs by status: {states}); "
            f"produce them with: {grid_cmd}"
        )
    return experiment, grid, runs, selected, grid_cmd


def _floors(tracker: MLflowTracker, grid: Any, selected: pd.DataFrame,
            notes: list[str]) -> tuple[pd.DataFrame | None, dict[str, float], str]:
    """The no-learning floors on the grid's test split: ``(table or None, floor/<name>/<metric> values, note)``;
    appends what happened to ``notes``."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg, source = floor_config(tracker, grid, selected, Path(tmp))
    if cfg is None:
        notes.append(f"floors not computed: {source}")
        return None, {}, source
    computed = compute_floors(cfg)
    notes += computed.notes
    frame = floor_table(computed)
    if frame is not None:
        notes.append(f"floors: {cfg.data.dataset} test split {cfg.data.test_split!r} "
                     f"({cfg.data.path or cfg.data.synth_preset + ' world in .md2bench_cache'}), from {source}")
    return frame, computed.metrics(), "; ".join(computed.notes)


def _write_tables(out_dir: Path, summary: pd.DataFrame, runs: pd.DataFrame, motion: pd.DataFrame | None,
                  floor_frame: pd.DataFrame | None, regions: pd.DataFrame | None, verdicts: Sequence[Any],
                  paper_ref: str | None, table_md: str, motion_md: str | None, regions_md: str | None,
                  findings_md: str | None) -> list[Path]:
    """Write table.md/.tex/.csv, runs.csv and, where present, motion, floors, regions and findings; the paths."""
    files: list[Path] = []
    sections = [table_md] + [f"\n## {t}\n\n{md}" for t, md in (("Errors per region", regions_md),
                                                                  ("Findings", findings_md)) if md]
    for name, text in (("table.md", "".join(sections) + ("\n" + motion_md if motion_md else "")),
                       ("table.tex", to_latex(summary, METRICS, paper_ref, floor_frame))):
        (out_dir / name).write_text(text)
        files.append(out_dir / name)
    summary.to_csv(out_dir / "table.csv", index=False)
    runs.to_csv(out_dir / "runs.csv", index=False)
    files += [out_dir / "table.csv", out_dir / "runs.csv"]
    for name, frame in (("motion.csv", motion), ("floors.csv", floor_frame), ("regions.csv", regions)):
        if frame is not None:
            frame.to_csv(out_dir / name, index=False)
            files.append(out_dir / name)
    if regions is not None:
        (out_dir / "regions.tex").write_text(motion_latex(regions, floor_frame))
        files.append(out_dir / "regions.tex")
    if verdicts:
        pd.DataFrame.from_records([{"claim": v.finding.claim, "kind": v.finding.kind, "metric": v.finding.metric,
                                    "verdict": v.status, "why": v.reason, "numbers": v.numbers}
                                   for v in verdicts]).to_csv(out_dir / "findings.csv", index=False)
        files.append(out_dir / "findings.csv")
    return files


def _draw_figures(tracker: MLflowTracker, selected: pd.DataFrame, rows: Sequence[ReportRow], out_dir: Path,
                  floor_frame: pd.DataFrame | None, notes: list[str], qualitative: bool, num_images: int,
                  device: str) -> list[Path]:
    """The metric bars, validation curves and (optionally) the qualitative grid; their paths (notes appended)."""
    paths = plot_metric_bars(selected, rows, out_dir, floor_values(floor_frame))
    history = val_histories(tracker, selected)
    if history.empty:
        notes.append("validation curves: no val/abs_rel history logged; figure skipped")
    else:
        paths += plot_val_curves(history, rows, out_dir)
    if qualitative:
        try:
            q_paths, q_notes = plot_qualitative(tracker, selected, rows, out_dir, num_images, device)
            paths += q_paths
            notes += q_notes
        except Exception as exc:  # noqa: BLE001 - the tables are still worth writing
            notes.append(f"qualitative grid skipped: {type(exc).__name__}: {exc}")
    return paths


def log_report(tracker: MLflowTracker, experiment: str, grid_name: str, files: Iterable[Path]) -> str | None:
    """Log the report files under ``report/`` on the newest grid parent run; its id, or None if there is none."""
    parents = tracker.find_runs(experiment, tags={TAG + "kind": "grid", TAG + "grid": grid_name})
    if not parents:
        return None
    run_id = parents[0].info.run_id
    run = tracker.run(run_id)
    for path in files:
        run.log_artifact(path, "report")
    return run_id
