"""Reports: MLflow runs → a tidy table → the paper's ablation table, figures and a README.

``build_report("synth-ablation", out="reports/synth-ablation")`` does it all:

1. ``resolve_target``: the argument is a grid (file or name in ``experiments/``; its MLflow experiment is named
   after it) or an experiment name.
2. ``load_runs``: one row per training run of the experiment (grid, row, seed, flags, metrics, status,
   duration, device, commit, ...); parent runs (grids, studies) are left out.
3. ``select_runs`` keeps the newest finished run per (row, seed); ``summarize`` gives one line per grid row
   (grid order) with mean ± sample std (ddof = 1) and n over seeds, the paper's number and our difference, and
   the best mean per metric. Rows never run stay in the table with n = 0 and empty (NaN) metrics.
4. Writers: ``to_markdown``, ``to_latex`` (booktabs), ``to_html`` (self-contained page with figures inlined),
   CSV; on the synthetic world also the moving-object / static-pixel table (``motion_summary``).
5. Figures (seaborn on matplotlib ``Figure`` objects, no pyplot state; PNG + PDF): per-metric bars with seed
   error bars and the paper's value, validation curves (``val/abs_rel`` per epoch), and a qualitative grid
   (the same test images; input, each row's predicted disparity, GT where it exists) from each row's checkpoint.
6. ``README.md`` (tables, figures, provenance: grid, commits, devices) and every file are also logged as
   artifacts under ``report/`` on the grid's newest parent run.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from md2bench.findings import RULE, Verdict, judge, series_of
from md2bench.paper import LOWER_IS_BETTER, METRIC_LABELS, METRICS
from md2bench.regions import REGION_NAMES, lower_is_better
from md2bench.tracking import TAG, MLflowTracker

# Columns of the paper's table, in its order; keys as in ``md2bench.grid.FLAG_KEYS``.
FLAG_LABELS: Mapping[str, str] = {
    "automask": "AM",
    "min_reprojection": "MR",
    "full_res": "FR",
    "pretrained": "PT",
    "full_eigen": "FE",
    "zhou_mask": "Zhou",
    "ssim": "SSIM",
    "stereo": "S",
    "mono": "M",
    "small_res": "416×128",
    "high_res": "1024×320",
    "resnet50": "R50",
    "gt_pose": "GT pose",
    "automask_warmup": "AM warm-up",
}
FLAG_DESCRIPTIONS: Mapping[str, str] = {
    "automask": "auto-masking",
    "min_reprojection": "min reprojection",
    "full_res": "full-res multi-scale",
    "pretrained": "ImageNet pretrained",
    "full_eigen": "full Eigen split",
    "zhou_mask": "Zhou et al. mask",
    "ssim": "SSIM",
    "stereo": "stereo",
    "mono": "monocular",
    "small_res": "416×128",
    "high_res": "1024×320",
    "resnet50": "ResNet-50",
    "gt_pose": "ground-truth poses in place of the pose network",
    "automask_warmup": "auto-masking starts after a warm-up (loss.automask_warmup_steps)",
}
# Moving-object / static-pixel metrics shown in the synthetic world's second table.
MOTION_METRICS: tuple[str, ...] = ("abs_rel", "rmse", "a1")
PARENT_KINDS = ("grid", "study")
MISSING = "—"


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


# --------------------------------------------------------------------------------------------- reading runs
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


def _flags_from_params(params: Mapping[str, str]) -> dict[str, bool]:
    """The paper's flags read off a run's logged config (for rows that are not in a grid file)."""
    flags: dict[str, bool] = {}
    if "loss.automask" in params:
        flags["automask"] = params["loss.automask"].lower() == "true"
    if "loss.reprojection" in params:
        flags["min_reprojection"] = params["loss.reprojection"] == "min"
    if "loss.multiscale" in params:
        flags["full_res"] = params["loss.multiscale"] == "full_res"
    if "model.pretrained" in params:
        flags["pretrained"] = params["model.pretrained"] == "imagenet"
    return flags


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def load_runs(tracker: MLflowTracker, experiment: str, grid: Any = None) -> pd.DataFrame:
    """The tidy table: one row per training run of ``experiment`` (every status), newest first.

    Columns: ``run_id``, ``run_name``, ``experiment``, ``grid``, ``row``, ``label``, ``seed``, ``status``,
    ``start_time``, ``end_time`` (UTC timestamps), ``duration_s``, ``device``, ``commit``, ``run_key``,
    ``dataset``, ``split``, ``parent_run_id``, ``flag.<key>`` per flag, and one column per final metric with the
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
        flags = dict(grid_row.flags) if grid_row is not None else _flags_from_params(params)
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
            "run_key": tags.get(TAG + "run_key", ""),
            "dataset": tags.get(TAG + "dataset", params.get("data.dataset", "")),
            "split": tags.get(TAG + "split", params.get("data.split", "")),
            "parent_run_id": tags.get("mlflow.parentRunId", ""),
            "out_dir": params.get("train.out_dir", ""),
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


def _flag_keys(rows: Sequence[ReportRow]) -> list[str]:
    used = {k for r in rows for k in r.flags}
    return [k for k in FLAG_LABELS if k in used] + sorted(used - set(FLAG_LABELS))


def summarize(selected: pd.DataFrame, rows: Sequence[ReportRow], metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """One line per row: flags, ``n``, and per metric ``<m>_mean``, ``<m>_std`` (ddof = 1), ``<m>_paper``,
    ``<m>_diff`` (ours − paper) and ``<m>_best`` (best mean of the column: lowest for errors, highest for δ).

    Rows without finished runs have ``n = 0`` and NaN metrics (never zeros).

    Args:
        selected: ``select_runs`` output.
        rows: ``report_rows`` output (table order).
        metrics: metric columns to summarise.
    """
    flag_keys = _flag_keys(rows)
    lines: list[dict[str, Any]] = []
    for row in rows:
        mine = selected[selected["row"] == row.name] if not selected.empty else selected
        line: dict[str, Any] = {"row": row.name, "label": row.label}
        for key in flag_keys:
            line[f"flag.{key}"] = row.flags.get(key)
        line["n"] = int(len(mine))
        line["seeds"] = ",".join(str(s) for s in sorted(int(s) for s in mine["seed"].dropna())) if len(mine) else ""
        for m in metrics:
            values = mine[m].dropna().to_numpy(dtype=float) if (len(mine) and m in mine) else np.array([])
            mean = float(values.mean()) if len(values) else math.nan
            std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            paper = float(row.paper[m]) if m in row.paper else math.nan
            line[f"{m}_mean"] = mean
            line[f"{m}_std"] = std
            line[f"{m}_n"] = int(len(values))
            line[f"{m}_paper"] = paper
            line[f"{m}_diff"] = mean - paper
        lines.append(line)
    table = pd.DataFrame.from_records(lines)
    for m in metrics:
        col = table[f"{m}_mean"] if len(table) else pd.Series(dtype=float)
        if col.notna().any():
            best = col.min() if LOWER_IS_BETTER.get(m, True) else col.max()
            table[f"{m}_best"] = col == best
        else:
            table[f"{m}_best"] = False
    return table


def motion_summary(selected: pd.DataFrame, rows: Sequence[ReportRow]) -> pd.DataFrame | None:
    """Moving-object vs static-pixel errors per row (synthetic world only; None when no run has them)."""
    keys = [f"{part}/{m}" for m in MOTION_METRICS for part in ("moving", "static")]
    if selected.empty or not any(k in selected.columns for k in keys):
        return None
    present = [k for k in keys if k in selected.columns]
    table = summarize(selected, [ReportRow(r.name, r.label) for r in rows], metrics=present)
    return table[["row", "label", "n"] + [c for k in present for c in (f"{k}_mean", f"{k}_std")]]


# --------------------------------------------------------------------------------------------- formatting
def _fmt(value: float, digits: int = 3) -> str:
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _cell(line: Mapping[str, Any], m: str) -> str:
    """``0.123 ± 0.004`` (or just the mean for one seed; ``—`` when not run)."""
    mean, std = line[f"{m}_mean"], line[f"{m}_std"]
    if math.isnan(mean):
        return MISSING
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _paper_cell(line: Mapping[str, Any], m: str) -> str:
    """``0.115 (+0.008)``: the paper's value and ours minus it."""
    paper, diff = line[f"{m}_paper"], line[f"{m}_diff"]
    if math.isnan(paper):
        return ""
    return f"{paper:.3f}" if math.isnan(diff) else f"{paper:.3f} ({diff:+.3f})"


def _flag_mark(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else ("✓" if value else "✗")


def _metric_heading(m: str) -> str:
    base = m.split("/")[-1]
    prefix = m.split("/")[0] + " " if "/" in m else ""
    arrow = "↓" if LOWER_IS_BETTER.get(base, True) else "↑"
    return f"{prefix}{METRIC_LABELS.get(base, base)} {arrow}"


def _has_paper(summary: pd.DataFrame, metrics: Sequence[str]) -> bool:
    return any(summary[f"{m}_paper"].notna().any() for m in metrics if f"{m}_paper" in summary)


def _not_learned(line: Mapping[str, Any]) -> bool:
    """The row has runs and its mean abs rel does not beat the row prior (``mark_learned``)."""
    value = line.get("learned") if hasattr(line, "get") else None
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and not bool(value)


def _floor_cell(line: Mapping[str, Any], m: str) -> str:
    value = line.get(f"{m}_mean", math.nan)
    return _fmt(float(value)) if value is not None else MISSING


def to_markdown(summary: pd.DataFrame, metrics: Sequence[str] = METRICS, paper_ref: str | None = None,
                floors: pd.DataFrame | None = None) -> str:
    """The ablation table as GitHub Markdown: ✓/✗ flags, mean ± std, n; best mean per column in bold; under
    each row with paper numbers, an italic line ``↳ paper`` with the paper's value and (ours − paper). Rows that
    do not beat the row prior (``learned`` False) say *(not learned)* and are never bold; ``floors``
    (``floor_table``) are appended as italic reference rows."""
    flag_cols = [c for c in summary.columns if c.startswith("flag.")]
    head = ["Row"] + [FLAG_LABELS.get(c[5:], c[5:]) for c in flag_cols] + ["n"] + [_metric_heading(m) for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] + [":-:"] * (len(head) - 1)) + "|"]
    paper_label = "↳ *paper (Δ)*"
    for _, line in summary.iterrows():
        label = line["label"] if line["n"] > 0 else f"{line['label']} *(not run)*"
        if _not_learned(line):
            label += " *(not learned)*"
        cells = [label] + [_flag_mark(line[c]) for c in flag_cols] + [str(line["n"])]
        for m in metrics:
            text = _cell(line, m)
            cells.append(f"**{text}**" if bool(line[f"{m}_best"]) and text != MISSING else text)
        lines.append("| " + " | ".join(cells) + " |")
        if any(not math.isnan(line[f"{m}_paper"]) for m in metrics):
            cells = [paper_label] + [""] * len(flag_cols) + [""] + [_paper_cell(line, m) for m in metrics]
            lines.append("| " + " | ".join(cells) + " |")
    for _, line in (floors.iterrows() if floors is not None else ()):
        cells = [f"*{line['label']}*"] + [""] * len(flag_cols) + [MISSING] + [_floor_cell(line, m) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    if _has_paper(summary, metrics):
        ref = f" ({paper_ref})" if paper_ref else ""
        lines += ["", f"↳ *paper*: the paper's value{ref}; in parentheses Δ = ours − paper."]
    if floors is not None and len(floors):
        lines += ["", "*floor* rows: no learning at all, evaluated with the same protocol (per-image median "
                  "scaling); *(not learned)*: the row's mean abs rel does not beat the row prior."]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                  "×": r"$\times$", "δ": r"$\delta$", "²": r"$^2$", "³": r"$^3$", "±": r"$\pm$",
                  "—": "--", "<": r"$<$", ">": r"$>$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "Δ": r"$\Delta$"}


def _tex(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(summary: pd.DataFrame, metrics: Sequence[str] = METRICS, paper_ref: str | None = None,
             floors: pd.DataFrame | None = None) -> str:
    """The ablation table as a LaTeX ``tabular`` with booktabs rules (needs ``booktabs`` and ``amssymb``); floor
    reference rows (``floor_table``) below a rule, not-learned rows marked."""
    flag_cols = [c for c in summary.columns if c.startswith("flag.")]
    spec = "l" + "c" * len(flag_cols) + "r" + "c" * len(metrics)
    out = [
        "% md2bench report table; needs \\usepackage{booktabs,amssymb}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(["Row"] + [_tex(FLAG_LABELS.get(c[5:], c[5:])) for c in flag_cols] + ["$n$"]
                   + [_tex(_metric_heading(m)) for m in metrics]) + " \\\\",
        "\\midrule",
    ]
    for _, line in summary.iterrows():
        label = _tex(line["label"]) + ("" if line["n"] > 0 else " \\textit{(not run)}")
        if _not_learned(line):
            label += " \\textit{(not learned)}"
        cells = [label]
        for c in flag_cols:
            v = line[c]
            cells.append("" if v is None or (isinstance(v, float) and math.isnan(v)) else ("\\checkmark" if v else "$\\times$"))
        cells.append(str(line["n"]))
        for m in metrics:
            text = _tex(_cell(line, m))
            cells.append(f"\\textbf{{{text}}}" if bool(line[f"{m}_best"]) and line["n"] > 0 else text)
        out.append(" & ".join(cells) + " \\\\")
        if any(not math.isnan(line[f"{m}_paper"]) for m in metrics):
            cells = ["\\quad\\textit{paper}"] + [""] * (len(flag_cols) + 1)
            cells += [f"\\textit{{{_tex(_paper_cell(line, m))}}}" if _paper_cell(line, m) else "" for m in metrics]
            out.append(" & ".join(cells) + " \\\\")
    if floors is not None and len(floors):
        out.append("\\midrule")
        for _, line in floors.iterrows():
            cells = [f"\\textit{{{_tex(line['label'])}}}"] + [""] * len(flag_cols) + ["--"]
            cells += [f"\\textit{{{_tex(_floor_cell(line, m))}}}" for m in metrics]
            out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    if paper_ref:
        out.append(f"% paper numbers: {paper_ref}; in parentheses: ours minus paper")
    return "\n".join(out) + "\n"


def _html_table(summary: pd.DataFrame, metrics: Sequence[str], paper_ref: str | None,
                floors: pd.DataFrame | None = None) -> str:
    flag_cols = [c for c in summary.columns if c.startswith("flag.")]
    esc = html.escape
    head = ["Row"] + [FLAG_LABELS.get(c[5:], c[5:]) for c in flag_cols] + ["n"] + [_metric_heading(m) for m in metrics]
    rows_html = ["<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    for _, line in summary.iterrows():
        cls = "" if line["n"] > 0 else ' class="missing"'
        label = esc(line["label"]) + ("" if line["n"] > 0 else " <em>(not run)</em>")
        if _not_learned(line):
            label += " <em>(not learned)</em>"
            cls = ' class="notlearned"'
        cells = [f'<td class="label">{label}</td>'] + [f"<td>{_flag_mark(line[c])}</td>" for c in flag_cols]
        cells.append(f"<td>{line['n']}</td>")
        for m in metrics:
            text = esc(_cell(line, m))
            cells.append(f"<td><strong>{text}</strong></td>" if bool(line[f"{m}_best"]) and line["n"] > 0 else f"<td>{text}</td>")
        rows_html.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
        if any(not math.isnan(line[f"{m}_paper"]) for m in metrics):
            cells = ['<td class="label">↳ paper</td>'] + ["<td></td>"] * (len(flag_cols) + 1)
            cells += [f"<td>{esc(_paper_cell(line, m))}</td>" for m in metrics]
            rows_html.append('<tr class="paper">' + "".join(cells) + "</tr>")
    for _, line in (floors.iterrows() if floors is not None else ()):
        cells = [f'<td class="label">{esc(line["label"])}</td>'] + ["<td></td>"] * len(flag_cols) + ["<td>—</td>"]
        cells += [f"<td>{esc(_floor_cell(line, m))}</td>" for m in metrics]
        rows_html.append('<tr class="floor">' + "".join(cells) + "</tr>")
    caption = f"<caption>paper numbers: {esc(paper_ref)}; in parentheses: ours − paper</caption>" if paper_ref else ""
    return "<table>" + caption + "".join(rows_html) + "</table>"


_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { padding: 0.3em 0.7em; text-align: center; border-bottom: 1px solid #ddd; }
th { border-bottom: 2px solid #444; } td.label { text-align: left; }
tr.paper td { color: #777; font-style: italic; font-size: 0.9em; border-bottom: 1px solid #eee; }
tr.missing td { color: #999; } tr.floor td { color: #555; font-style: italic; background: #f7f7f7; }
tr.notlearned td { color: #a33; } caption { caption-side: bottom; color: #777; font-size: 0.85em; }
img { max-width: 100%; margin: 0.5em 0; } code { background: #f4f4f4; padding: 0 0.2em; }
"""


def to_html(
    title: str, provenance: Mapping[str, str], summary: pd.DataFrame, motion: pd.DataFrame | None,
    figures: Sequence[Path], paper_ref: str | None = None, notes: Sequence[str] = (), *,
    floors: pd.DataFrame | None = None, regions: pd.DataFrame | None = None, verdicts: Sequence[Any] = (),
    headline: Sequence[str] = (), description: str = "",
) -> str:
    """A self-contained HTML page: the grid's description, provenance, the summary in words, the tables (floors as
    reference rows), the findings, and every PNG figure inlined as base64."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>"]
    if description.strip():
        parts.append(f"<p class='description'>{esc(' '.join(description.split()))}</p>")
    parts.append("<ul>")
    parts += [f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in provenance.items()]
    parts.append("</ul>")
    if headline:
        parts += ["<h2>Summary</h2>"] + [f"<p>{esc(line)}</p>" for line in headline]
    parts += ["<h2>Ablation</h2>", _html_table(summary, METRICS, paper_ref, floors)]
    if regions is not None:
        rm = _table_metrics(regions)
        parts += ["<h2>Errors per region</h2>", f"<p>{esc(REGIONS_TEXT)}</p>",
                  _html_table(_as_table(regions, rm), rm, None, floors)]
    if verdicts:
        head = "".join(f"<th>{h}</th>" for h in ("Claim", "Metric", "Numbers", "Verdict", "Why"))
        body = "".join(f"<tr><td class='label'>{esc(v.finding.claim)}</td><td>{esc(v.finding.metric)}</td>"
                       f"<td class='label'>{esc(v.numbers)}</td><td><b>{esc(v.status)}</b></td>"
                       f"<td class='label'>{esc(v.reason)}</td></tr>" for v in verdicts)
        parts += ["<h2>Findings</h2>", f"<p>{esc(FINDINGS_TEXT)}</p>", f"<table><tr>{head}</tr>{body}</table>"]
    if motion is not None:
        mm = [c[: -len("_mean")] for c in motion.columns if c.endswith("_mean")]
        parts += ["<h2>Moving objects vs static pixels</h2>", _html_table(_as_table(motion, mm), mm, None)]
    for fig in figures:
        if fig.suffix == ".png" and fig.exists():
            data = base64.b64encode(fig.read_bytes()).decode("ascii")
            parts.append(f"<h3>{esc(fig.stem)}</h3><img alt='{esc(fig.stem)}' src='data:image/png;base64,{data}'>")
    if notes:
        parts += ["<h2>Notes</h2><ul>"] + [f"<li>{esc(n)}</li>" for n in notes] + ["</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def _as_table(motion: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Give a secondary table the columns the table writers expect (no paper numbers; best marks kept where the
    table has them, else none)."""
    table = motion.copy()
    for m in metrics:
        table[f"{m}_paper"] = math.nan
        table[f"{m}_diff"] = math.nan
        if f"{m}_best" not in table:
            table[f"{m}_best"] = False
    return table


def _table_metrics(table: pd.DataFrame) -> list[str]:
    return [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]


# --------------------------------------------------------------------------------------------- floors, regions
REGION_TABLE_SUBSETS: tuple[str, ...] = ("", "occluded", "comoving", "low_texture", "moving", "static")
REGION_TABLE_METRICS: tuple[str, ...] = ("abs_rel", "a1")
REGIONS_TEXT = ("Abs rel and δ<1.25 on all valid pixels and restricted to the synthetic world's exact region masks: "
                "occluded = hidden or out of view in at least one temporal source frame (what minimum "
                "reprojection is for); comoving = moving objects with < 1 px image motion (what auto-masking is "
                "for); low_texture = near-constant image texture (what full-resolution multi-scale is for); "
                "moving / static = the motion mask. Mean ± std over seeds; best (learned) mean per column in bold.")
FINDINGS_TEXT = "Verdicts judged with the spread over seeds: " + RULE + "."


def floor_table(floors: Any) -> pd.DataFrame | None:
    """The floors (``md2bench.floors.Floors``) as reference lines for the table writers: ``row`` =
    ``floor/<name>``, ``label``, ``kind = "floor"``, ``n = 0`` and ``<metric>_mean`` for every metric computed
    (std NaN: a floor is one deterministic number). None when no floor was computed."""
    from md2bench.floors import FLOOR_LABELS

    if floors is None or not floors.results:
        return None
    lines = []
    for name, result in floors.results.items():
        line: dict[str, Any] = {"row": f"floor/{name}", "label": FLOOR_LABELS[name], "kind": "floor", "n": 0}
        for key, value in result.mean.items():
            line[f"{key}_mean"] = float(value)
            line[f"{key}_std"] = math.nan
        lines.append(line)
    return pd.DataFrame.from_records(lines)


def floor_values(floors: pd.DataFrame | None) -> dict[str, dict[str, float]]:
    """floor name -> metric -> value (from ``floor_table``)."""
    if floors is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for _, line in floors.iterrows():
        out[line["row"].split("/", 1)[1]] = {c[: -len("_mean")]: float(line[c]) for c in floors.columns
                                             if c.endswith("_mean") and pd.notna(line[c])}
    return out


def mark_learned(table: pd.DataFrame, prior_abs_rel: float | None,
                 learned: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Add ``learned`` and recompute the best-mean marks among the rows that learned.

    ``learned`` is True where the row's mean abs rel is below the row prior's, False where it is not (the row is
    marked *not learned* and never ranked best), None where the row has no runs or there is no prior.

    Args:
        table: ``summarize`` output (or a secondary table with ``row`` and ``<m>_mean``/``<m>_best`` columns).
        prior_abs_rel: the row-prior floor's abs rel (None: not computed).
        learned: use these per-row values instead of computing them (e.g. a secondary table takes the main
            table's verdict).
    """
    out = table.copy()
    if learned is not None:
        values = [learned.get(r) for r in out["row"]]
    else:
        values = [None if prior_abs_rel is None or "abs_rel_mean" not in out or math.isnan(mean) else
                  bool(mean < prior_abs_rel) for mean in out.get("abs_rel_mean", pd.Series([math.nan] * len(out)))]
    out["learned"] = pd.Series(values, index=out.index, dtype=object)
    ranked = out["learned"].map(lambda v: v is not False)
    for col in [c for c in out.columns if c.endswith("_best")]:
        m = col[: -len("_best")]
        means = out[f"{m}_mean"].where(ranked)
        if means.notna().any():
            best = means.min() if lower_is_better(m) else means.max()
            out[col] = means == best
        else:
            out[col] = False
    return out


def region_summary(selected: pd.DataFrame, rows: Sequence[ReportRow],
                   floors: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """Abs rel and δ<1.25 per region (all pixels, occluded, comoving, low-texture, moving, static) per row, mean ±
    std over seeds. None when neither the runs nor the floors have any region metric (e.g. KITTI, or a world
    rendered before the region masks)."""
    metrics = [f"{s}/{m}" if s else m for s in REGION_TABLE_SUBSETS for m in REGION_TABLE_METRICS]
    regional = [m for m in metrics if "/" in m and m.split("/")[0] in REGION_NAMES]
    have = set(selected.columns) | ({c[: -len("_mean")] for c in floors.columns} if floors is not None else set())
    if not any(m in have for m in regional):
        return None
    present = [m for m in metrics if m in have]
    table = summarize(selected, [ReportRow(r.name, r.label) for r in rows], metrics=present)
    keep = ["row", "label", "n"] + [c for m in present for c in (f"{m}_mean", f"{m}_std", f"{m}_best")]
    return table[keep]


def findings_markdown(verdicts: Sequence[Any]) -> str:
    """The findings as a Markdown table: claim, metric, the numbers, the verdict and why."""
    lines = ["| Claim | Metric | Numbers (mean ± std, n seeds) | Verdict | Why |", "|:---|:-:|:---|:-:|:---|"]
    for v in verdicts:
        cells = [v.finding.claim, f"`{v.finding.metric}`", v.numbers, f"**{v.status}**", v.reason]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def learned_sentence(summary: pd.DataFrame, prior_abs_rel: float | None, note: str = "") -> str:
    """The report's summary in words: which rows did not learn depth (or that every row did)."""
    ran = summary[summary["n"] > 0]
    if prior_abs_rel is None:
        return ("Whether the rows learned depth is not judged: the row-prior floor was not computed"
                + (f" ({note})" if note else "") + ".")
    failed = ran[ran["learned"].map(lambda v: v is False)]
    head = f"the row prior's mean abs rel is {prior_abs_rel:.3f}"
    if failed.empty:
        return f"All {len(ran)} rows with runs beat the no-learning row prior in mean abs rel ({head})."
    names = ", ".join(f"{line['label']} ({_cell(line, 'abs_rel')})" for _, line in failed.iterrows())
    return (f"{len(failed)} of {len(ran)} rows did not learn depth: {names} — their mean abs rel does not beat the "
            f"row prior ({head}); they are marked *not learned* and not ranked.")


def motion_markdown(motion: pd.DataFrame, floors: pd.DataFrame | None = None) -> str:
    """The moving/static (or region) table as Markdown (same cell format as the ablation table)."""
    metrics = [c[: -len("_mean")] for c in motion.columns if c.endswith("_mean")]
    return to_markdown(_as_table(motion, metrics), metrics, floors=floors)


# --------------------------------------------------------------------------------------------- figures
def _new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` with an Agg canvas, independent of pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    return paths


def plot_metric_bars(selected: pd.DataFrame, rows: Sequence[ReportRow], out_dir: Path,
                     floors: Mapping[str, Mapping[str, float]] | None = None) -> list[Path]:
    """One panel per metric: mean over seeds (bar), ± sample std (error bar), each seed (dot), the paper (red ▬),
    the no-learning floors (grey dashed: row prior; dotted: constant).

    Returns:
        ``[metrics.png, metrics.pdf]``.
    """
    import seaborn as sns

    order = [r.name for r in rows]
    metrics = [m for m in METRICS if m in selected.columns]
    cols = 4
    nrows = math.ceil(len(metrics) / cols)
    fig = _new_figure(3.2 * cols, 2.9 * nrows + 0.6)
    with sns.axes_style("whitegrid"):
        axes = fig.subplots(nrows, cols, squeeze=False).ravel()
        for ax, m in zip(axes, metrics):
            data = selected[["row", m]].dropna()
            sns.barplot(data=data, x="row", y=m, order=order, errorbar="sd", capsize=0.2, color="#8fb3d9", ax=ax,
                        err_kws={"linewidth": 1.2})
            sns.stripplot(data=data, x="row", y=m, order=order, color="#1f3b73", size=3.5, jitter=0.15, ax=ax)
            paper = [(i, r.paper[m]) for i, r in enumerate(rows) if m in r.paper]
            if paper:
                ax.scatter([p[0] for p in paper], [p[1] for p in paper], marker="_", s=400, linewidths=2.5,
                           color="#c0392b", zorder=5, label="paper")
            for name, style in (("row_prior", "--"), ("constant", ":")):
                value = (floors or {}).get(name, {}).get(m)
                if value is not None and math.isfinite(value):
                    ax.axhline(value, color="#666666", linestyle=style, linewidth=1.0, label=f"floor: {name}")
            arrow = "↓" if LOWER_IS_BETTER[m] else "↑"
            ax.set_title(f"{METRIC_LABELS[m]} {arrow}")
            ax.set_xlabel("")
            ax.set_ylabel("")
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels([r.label for r in rows], rotation=60, ha="right", fontsize=7)
        for ax in axes[len(metrics):]:
            ax.set_axis_off()
        if any(r.paper for r in rows) or floors:
            axes[len(metrics) - 1].legend(loc="best", fontsize=7)
    fig.suptitle("Test metrics: mean ± std over seeds (dots: seeds)")
    return _save(fig, out_dir, "metrics")


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


def plot_val_curves(history: pd.DataFrame, rows: Sequence[ReportRow], out_dir: Path,
                    key: str = "val/abs_rel") -> list[Path]:
    """Validation ``key`` against the optimiser step, one line per row labelled as in the table (mean over seeds,
    band: ± std); readable with a single validation too (the axis starts at step 0)."""
    import seaborn as sns

    fig = _new_figure(7.0, 4.2)
    present = set(history["row"])
    labels = {r.name: r.label for r in rows}
    order = [r.label for r in rows if r.name in present]
    data = history.assign(label=history["row"].map(lambda n: labels.get(n, n)))
    x = "step" if "step" in data.columns else "epoch"
    with sns.axes_style("whitegrid"):
        ax = fig.subplots()
        sns.lineplot(data=data, x=x, y="value", hue="label", hue_order=order, errorbar="sd", marker="o", ax=ax)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, max(1.0, float(data[x].max())) * 1.05)
    ax.set_xlabel("optimiser step" if x == "step" else "epoch")
    ax.set_ylabel(key)
    ax.set_title(f"Validation {key.split('/')[-1]} during training (band: ± std over seeds)")
    ax.legend(fontsize=7, loc="best", title=None)
    return _save(fig, out_dir, "val_curves")


def find_checkpoint(tracker: MLflowTracker, run: Mapping[str, Any], scratch: Path) -> Path | None:
    """A run's checkpoint: the local run folder (``<train.out_dir>/<run_key>/checkpoint.pt``) when it exists,
    else the MLflow artifact ``checkpoints/last.pt`` downloaded into ``scratch``; None when neither exists."""
    if run.get("out_dir") and run.get("run_key"):
        local = Path(run["out_dir"]) / run["run_key"] / "checkpoint.pt"
        if local.is_file():
            return local
    try:
        return tracker.download_artifact(run["run_id"], "checkpoints/last.pt", scratch / run["run_id"])
    except Exception:  # noqa: BLE001 - MLflow raises several types for a missing artifact
        return None


def _colour_disparity(disp: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """H×W disparity → H×W×3 magma image, mapped from its minimum to its 95th percentile as the reference's
    ``test_simple.py`` does; pixels outside ``valid`` are black."""
    from matplotlib import colormaps

    values = disp[valid] if valid is not None else disp.ravel()
    if values.size == 0:
        return np.zeros((*disp.shape, 3))
    low, top = float(values.min()), float(np.percentile(values, 95))
    image = colormaps["magma"](np.clip((disp - low) / max(top - low, 1e-12), 0, 1))[..., :3]
    if valid is not None:
        image[~valid] = 0.0
    return image


def plot_qualitative(
    tracker: MLflowTracker, selected: pd.DataFrame, rows: Sequence[ReportRow], out_dir: Path,
    num_images: int = 3, device: str = "cpu",
) -> tuple[list[Path], list[str]]:
    """The same test images for every row: columns input, each row's predicted disparity, GT inverse depth.

    Each row uses its finished run with the smallest seed. Rows whose checkpoint cannot be found are left out
    (and named in the returned notes).

    Returns:
        ``([qualitative.png, qualitative.pdf] or [], notes)``.
    """
    import torch

    from md2bench.checkpoint import load_for_inference
    from md2bench.data.kitti import build_dataset
    from md2bench.method import predict_disparity

    notes: list[str] = []
    columns: list[tuple[str, list[np.ndarray]]] = []
    inputs: list[np.ndarray] | None = None
    gts: list[np.ndarray | None] = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            mine = selected[selected["row"] == row.name].sort_values("seed")
            if mine.empty:
                continue
            run = mine.iloc[0].to_dict()
            ckpt = find_checkpoint(tracker, run, Path(tmp))
            if ckpt is None:
                notes.append(f"qualitative: no checkpoint for row {row.name!r} (run {run['run_id']})")
                continue
            cfg, models = load_for_inference(ckpt, device)
            dataset = build_dataset(cfg, "test", seed=0)
            picks = np.unique(np.linspace(0, len(dataset) - 1, num_images).round().astype(int))
            preds = []
            row_inputs, row_gts = [], []
            with torch.no_grad():
                for i in picks:
                    sample = dataset[int(i)]
                    image = sample["images"][0].float().div(255.0)  # 3×H×W in [0, 1]
                    disp = predict_disparity(models, image[None].to(device), cfg)[0, 0].cpu().numpy()
                    preds.append(_colour_disparity(disp))
                    row_inputs.append(image.permute(1, 2, 0).numpy())
                    gt = sample.get("depth_gt")
                    row_gts.append(gt[0].numpy() if gt is not None else None)
            if inputs is None:
                inputs, gts = row_inputs, row_gts
            columns.append((row.label, preds))
    if not columns or inputs is None:
        notes.append("qualitative: no row had a checkpoint; figure skipped")
        return [], notes
    show_gt = any(g is not None for g in gts)
    ncols = 1 + len(columns) + int(show_gt)
    fig = _new_figure(2.4 * ncols, 0.9 * len(inputs) + 0.6)
    axes = fig.subplots(len(inputs), ncols, squeeze=False)
    for r, image in enumerate(inputs):
        panels: list[tuple[str, np.ndarray | None]] = [("input", image)]
        panels += [(label, preds[r]) for label, preds in columns]
        if show_gt:
            gt = gts[r]
            panels.append(("GT (inverse depth)", None if gt is None else _colour_disparity(
                np.where(gt > 0, 1.0 / np.maximum(gt, 1e-3), 0.0), gt > 0)))
        for c, (title, panel) in enumerate(panels):
            ax = axes[r, c]
            if panel is not None:
                ax.imshow(panel)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title, fontsize=7)
    return _save(fig, out_dir, "qualitative"), notes


# --------------------------------------------------------------------------------------------- the report
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
        "grid": f"{grid.name} ({_display_path(grid.path)})" if grid is not None else "none (runs read by experiment name)",
        "experiment": experiment,
        "tracking store": tracker.uri,
        "commits": counts("commit"),
        "devices": counts("device"),
        "data": counts("dataset") + "; split: " + counts("split"),
        "runs": f"{len(selected)} finished runs used (newest per row and seed) of {len(runs)} training runs",
        "wall time": _wall_time(selected),
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") + f" by md2bench {__version__}",
    }
    if grid is not None and grid.paper_table:
        info["paper numbers"] = grid.paper_table
    return info


def _wall_time(selected: pd.DataFrame) -> str:
    """How long the runs took: first start to last end, and the sum of the runs' own durations."""
    if selected.empty or "start_time" not in selected or selected["start_time"].isna().all():
        return "unknown"
    span = (selected["end_time"].max() - selected["start_time"].min()).total_seconds()
    total = float(selected["duration_s"].sum())
    return (f"{span / 60:.1f} min from the first run's start to the last run's end "
            f"({selected['start_time'].min():%Y-%m-%d %H:%M} – {selected['end_time'].max():%H:%M} UTC); "
            f"{total / 60:.1f} min of run time in all, {total / max(1, len(selected)) / 60:.1f} min per run")


def _readme(title: str, description: str, info: Mapping[str, str], table_md: str, motion_md: str | None,
            figures: Sequence[Path], notes: Sequence[str], *, headline: Sequence[str] = (),
            regions_md: str | None = None, findings_md: str | None = None, flag_keys: Sequence[str] = ()) -> str:
    lines = [f"# {title}", ""]
    if description:
        lines += [description, ""]
    lines += ["## Provenance", ""] + [f"- **{k}**: {v}" for k, v in info.items()] + [""]
    if headline:
        lines += ["## Summary", ""] + [f"{line}\n" for line in headline]
    lines += ["## Ablation", "",
              "Mean ± sample std over seeds (n = number of seeds); best mean per column in **bold**; "
              "flags: " + ", ".join(f"{FLAG_LABELS[k]} = {FLAG_DESCRIPTIONS[k]}" for k in flag_keys
                                    if k in FLAG_LABELS) + ".",
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
    experiment, grid = resolve_target(target, tracker)
    grid_cmd = f"md2bench run-ablation {_display_path(grid.path)}" if grid is not None and grid.path else \
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
    rows = report_rows(grid, runs)
    paper_ref = grid.paper_table if grid is not None else None
    grid_name = grid.name if grid is not None else experiment

    out_dir = Path(out) if out is not None else Path("reports") / experiment
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    notes: list[str] = []

    # the no-learning floors, computed on the grid's test split
    floor_frame: pd.DataFrame | None = None
    floor_note = "--no-floors" if not floors else ""
    floor_metrics: dict[str, float] = {}
    if floors:
        with tempfile.TemporaryDirectory() as tmp:
            cfg, source = floor_config(tracker, grid, selected, Path(tmp))
        if cfg is None:
            floor_note = source
            notes.append(f"floors not computed: {source}")
        else:
            computed = compute_floors(cfg)
            notes += computed.notes
            floor_frame = floor_table(computed)
            floor_metrics = computed.metrics()
            if floor_frame is not None:
                notes.append(f"floors: {cfg.data.dataset} test split {cfg.data.test_split!r} "
                             f"({cfg.data.path or cfg.data.synth_preset + ' world in .md2bench_cache'}), from {source}")
            floor_note = "; ".join(computed.notes)
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

    missing = [line["label"] for _, line in summary.iterrows() if line["n"] == 0]
    if missing:
        notes.append(f"not run yet (shown as {MISSING}): {', '.join(missing)}; run: {grid_cmd}")

    table_md = to_markdown(summary, METRICS, paper_ref, floor_frame)
    motion_md = motion_markdown(motion) if motion is not None else None
    regions_md = motion_markdown(regions, floor_frame) if regions is not None else None
    findings_md = findings_markdown(verdicts) if verdicts else None
    sections = [table_md] + [f"\n## {t}\n\n{md}" for t, md in (("Errors per region", regions_md),
                                                                  ("Findings", findings_md)) if md]
    for name, text in (("table.md", "".join(sections) + ("\n" + motion_md if motion_md else "")),
                       ("table.tex", to_latex(summary, METRICS, paper_ref, floor_frame))):
        (out_dir / name).write_text(text)
        files.append(out_dir / name)
    summary.to_csv(out_dir / "table.csv", index=False)
    runs.to_csv(out_dir / "runs.csv", index=False)
    files += [out_dir / "table.csv", out_dir / "runs.csv"]
    if motion is not None:
        motion.to_csv(out_dir / "motion.csv", index=False)
        files.append(out_dir / "motion.csv")
    if floor_frame is not None:
        floor_frame.to_csv(out_dir / "floors.csv", index=False)
        files.append(out_dir / "floors.csv")
    if regions is not None:
        regions.to_csv(out_dir / "regions.csv", index=False)
        region_metrics = _table_metrics(regions)
        (out_dir / "regions.tex").write_text(to_latex(_as_table(regions, region_metrics), region_metrics, None,
                                                      floor_frame))
        files += [out_dir / "regions.csv", out_dir / "regions.tex"]
    if verdicts:
        pd.DataFrame.from_records([{"claim": v.finding.claim, "kind": v.finding.kind, "metric": v.finding.metric,
                                    "verdict": v.status, "why": v.reason, "numbers": v.numbers}
                                   for v in verdicts]).to_csv(out_dir / "findings.csv", index=False)
        files.append(out_dir / "findings.csv")

    figure_files: list[Path] = []
    if figures:
        figure_files += plot_metric_bars(selected, rows, out_dir, floor_values(floor_frame))
        history = val_histories(tracker, selected)
        if history.empty:
            notes.append("validation curves: no val/abs_rel history logged; figure skipped")
        else:
            figure_files += plot_val_curves(history, rows, out_dir)
        if qualitative:
            try:
                paths, q_notes = plot_qualitative(tracker, selected, rows, out_dir, num_images, device)
                figure_files += paths
                notes += q_notes
            except Exception as exc:  # noqa: BLE001 - the tables are still worth writing
                notes.append(f"qualitative grid skipped: {type(exc).__name__}: {exc}")
    files += figure_files

    info = provenance(tracker, experiment, grid, runs, selected)
    title = f"md2bench report: {experiment}"
    description = grid.description if grid is not None else ""
    (out_dir / "report.html").write_text(to_html(title, info, summary, motion, figure_files, paper_ref, notes,
                                                 floors=floor_frame, regions=regions, verdicts=verdicts,
                                                 headline=headline, description=description))
    (out_dir / "README.md").write_text(_readme(title, description, info, table_md, motion_md, figure_files, notes,
                                               headline=headline, regions_md=regions_md, findings_md=findings_md,
                                               flag_keys=_flag_keys(rows)))
    files += [out_dir / "report.html", out_dir / "README.md"]

    logged_to = None
    if log_to_mlflow:
        log_floors(tracker, experiment, grid_name, floor_metrics)
        logged_to = log_report(tracker, experiment, grid_name, files)
    return Report(out_dir, experiment, grid.name if grid is not None else None, runs, summary, motion, files,
                  logged_to, notes, floors=floor_frame, regions=regions, verdicts=verdicts, headline=headline)


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


def _display_path(path: object) -> str:
    """A path relative to the working directory where it lies below it (reports are committed and shared)."""
    from pathlib import Path

    try:
        return str(Path(str(path)).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
