"""The tables: per-row summaries (ablation, moving/static, regions, floors, the not-learned mark) and their
Markdown, LaTeX and HTML writers (the HTML writer renders the whole self-contained page).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from md2bench.findings import RULE
from md2bench.names import FLAG_LABELS
from md2bench.paper import LOWER_IS_BETTER, METRIC_LABELS, METRICS
from md2bench.regions import REGION_NAMES, lower_is_better
from md2bench.report.collect import ReportRow

# Column headings and legends of the ✓/✗ switches: md2bench.names (one vocabulary).
# Moving-object / static-pixel metrics shown in the synthetic world's second table.
MOTION_METRICS: tuple[str, ...] = ("abs_rel", "rmse", "a1")
MISSING = "—"


def flag_keys(rows: Sequence[ReportRow]) -> list[str]:
    """The flags any row sets: the paper's in ``FLAG_LABELS`` order, then the others sorted."""
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
    keys = flag_keys(rows)
    lines: list[dict[str, Any]] = []
    for row in rows:
        mine = selected[selected["row"] == row.name] if not selected.empty else selected
        line: dict[str, Any] = {"row": row.name, "label": row.label}
        for key in keys:
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


def _not_learned(line: Mapping[str, Any]) -> bool:
    """The row has runs and its mean abs rel does not beat the row prior (``mark_learned``)."""
    value = line.get("learned") if hasattr(line, "get") else None
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and not bool(value)


def _floor_cell(line: Mapping[str, Any], m: str) -> str:
    value = line.get(f"{m}_mean", math.nan)
    return _fmt(float(value)) if value is not None else MISSING


def format_table(summary: pd.DataFrame, metrics: Sequence[str] = METRICS,
                 floors: pd.DataFrame | None = None) -> pd.DataFrame:
    """The table as the writers print it, built once: one line per printed line, every cell a string.

    The first columns are the printed headings: ``Row``, one per flag (``✓``, ``✗`` or blank), ``n``, one per
    metric (``0.123 ± 0.004``, just the mean for one seed, ``—`` when not run). Then ``kind``: ``row`` (a table
    row), ``paper`` (under a row with paper numbers: the paper's value and Δ = ours − paper) or ``floor`` (a
    no-learning reference row, ``floor_table``); ``marks``: what is said after a row's label (``not run``,
    ``not learned``); ``bold``: the positions of the cells set in bold (the best mean of their column, never in a
    not-learned row). ``to_markdown``, ``to_latex`` and the HTML tables only escape and style these cells.
    """
    flag_cols = [c for c in summary.columns if c.startswith("flag.")]
    heads = ["Row"] + [FLAG_LABELS.get(c[5:], c[5:]) for c in flag_cols] + ["n"] + [_metric_heading(m) for m in metrics]
    first = len(flag_cols) + 2  # position of the first metric cell
    records: list[list[Any]] = []
    for _, line in summary.iterrows():
        marks = ("not run",) if line["n"] <= 0 else ()
        marks += ("not learned",) if _not_learned(line) else ()
        cells = [_cell(line, m) for m in metrics]
        bold = tuple(first + i for i, m in enumerate(metrics) if bool(line[f"{m}_best"]) and cells[i] != MISSING)
        records.append([line["label"]] + [_flag_mark(line[c]) for c in flag_cols] + [str(line["n"])] + cells
                       + ["row", marks, bold])
        if any(not math.isnan(line[f"{m}_paper"]) for m in metrics):
            records.append(["paper"] + [""] * (len(flag_cols) + 1) + [_paper_cell(line, m) for m in metrics]
                           + ["paper", (), ()])
    for _, line in (floors.iterrows() if floors is not None else ()):
        records.append([line["label"]] + [""] * len(flag_cols) + [MISSING] + [_floor_cell(line, m) for m in metrics]
                       + ["floor", (), ()])
    return pd.DataFrame(records, columns=heads + ["kind", "marks", "bold"], dtype=object)


def _printed(cells: pd.DataFrame, metrics: Sequence[str]) -> tuple[list[str], int, list[tuple[Any, ...]]]:
    """``format_table`` output unpacked: the headings, the number of flag columns, and per line
    ``(kind, cells, marks, bold)``."""
    heads = list(cells.columns[:-3])
    lines = [(row[-3], list(row[:-3]), row[-2], row[-1]) for row in cells.itertuples(index=False, name=None)]
    return heads, len(heads) - 2 - len(metrics), lines


def to_markdown(summary: pd.DataFrame, metrics: Sequence[str] = METRICS, paper_ref: str | None = None,
                floors: pd.DataFrame | None = None) -> str:
    """The ablation table as GitHub Markdown: ✓/✗ flags, mean ± std, n; best mean per column in bold; under
    each row with paper numbers, an italic line ``↳ paper`` with the paper's value and (ours − paper). Rows that
    do not beat the row prior (``learned`` False) say *(not learned)* and are never bold; ``floors``
    (``floor_table``) are appended as italic reference rows."""
    heads, _, lines = _printed(format_table(summary, metrics, floors), metrics)
    out = ["| " + " | ".join(heads) + " |", "|" + "|".join([":---"] + [":-:"] * (len(heads) - 1)) + "|"]
    for kind, cells, marks, bold in lines:
        label = {"row": cells[0] + "".join(f" *({m})*" for m in marks), "paper": "↳ *paper (Δ)*",
                 "floor": f"*{cells[0]}*"}[kind]
        out.append("| " + " | ".join([label] + [f"**{c}**" if i in bold else c for i, c in enumerate(cells)][1:])
                   + " |")
    if any(kind == "paper" for kind, *_ in lines):
        ref = f" ({paper_ref})" if paper_ref else ""
        out += ["", f"↳ *paper*: the paper's value{ref}; in parentheses Δ = ours − paper."]
    if any(kind == "floor" for kind, *_ in lines):
        out += ["", "*floor* rows: no learning at all, evaluated with the same protocol (per-image median "
                "scaling); *(not learned)*: the row's mean abs rel does not beat the row prior."]
    return "\n".join(out) + "\n"


_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                  "×": r"$\times$", "δ": r"$\delta$", "²": r"$^2$", "³": r"$^3$", "±": r"$\pm$",
                  "—": "--", "<": r"$<$", ">": r"$>$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "Δ": r"$\Delta$"}
_LATEX_FLAGS = {"✓": "\\checkmark", "✗": "$\\times$", "": ""}


def _tex(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(summary: pd.DataFrame, metrics: Sequence[str] = METRICS, paper_ref: str | None = None,
             floors: pd.DataFrame | None = None) -> str:
    """The ablation table as a LaTeX ``tabular`` with booktabs rules (needs ``booktabs`` and ``amssymb``); floor
    reference rows (``floor_table``) below a rule, not-learned rows marked."""
    heads, n_flags, lines = _printed(format_table(summary, metrics, floors), metrics)
    out = [
        "% md2bench report table; needs \\usepackage{booktabs,amssymb}",
        f"\\begin{{tabular}}{{{'l' + 'c' * n_flags + 'r' + 'c' * (len(heads) - n_flags - 2)}}}",
        "\\toprule",
        " & ".join("$n$" if i == n_flags + 1 else _tex(h) for i, h in enumerate(heads)) + " \\\\",
        "\\midrule",
    ]
    for j, (kind, cells, marks, bold) in enumerate(lines):
        if kind == "floor" and (j == 0 or lines[j - 1][0] != "floor"):
            out.append("\\midrule")  # the reference rows below a rule
        flags, n, values = cells[1:n_flags + 1], cells[n_flags + 1], cells[n_flags + 2:]
        if kind == "row":
            label = _tex(cells[0]) + "".join(f" \\textit{{({m})}}" for m in marks)
            values = [f"\\textbf{{{_tex(v)}}}" if i + n_flags + 2 in bold else _tex(v) for i, v in enumerate(values)]
            row = [label] + [_LATEX_FLAGS[f] for f in flags] + [n] + values
        else:
            label = "\\quad\\textit{paper}" if kind == "paper" else f"\\textit{{{_tex(cells[0])}}}"
            row = [label] + flags + [_tex(n)] + [f"\\textit{{{_tex(v)}}}" if v else "" for v in values]
        out.append(" & ".join(row) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    if paper_ref:
        out.append(f"% paper numbers: {paper_ref}; in parentheses: ours minus paper")
    return "\n".join(out) + "\n"


def _html_table(summary: pd.DataFrame, metrics: Sequence[str], paper_ref: str | None,
                floors: pd.DataFrame | None = None) -> str:
    esc = html.escape
    heads, n_flags, lines = _printed(format_table(summary, metrics, floors), metrics)
    rows_html = ["<tr>" + "".join(f"<th>{esc(h)}</th>" for h in heads) + "</tr>"]
    for kind, cells, marks, bold in lines:
        if kind == "row":
            label = esc(cells[0]) + "".join(f" <em>({m})</em>" for m in marks)
            cls = ' class="notlearned"' if "not learned" in marks else ' class="missing"' if "not run" in marks else ""
            tds = [f"<td><strong>{esc(c)}</strong></td>" if i in bold else f"<td>{esc(c)}</td>"
                   for i, c in enumerate(cells)]
        else:
            label = "↳ paper" if kind == "paper" else esc(cells[0])
            cls = f' class="{kind}"'
            tds = [f"<td>{esc(c)}</td>" for c in cells]
        rows_html.append(f"<tr{cls}>" + f'<td class="label">{label}</td>' + "".join(tds[1:]) + "</tr>")
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


def motion_latex(motion: pd.DataFrame, floors: pd.DataFrame | None = None) -> str:
    """The moving/static (or region) table as LaTeX (same cell format as the ablation table)."""
    metrics = _table_metrics(motion)
    return to_latex(_as_table(motion, metrics), metrics, None, floors)
