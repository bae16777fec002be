"""The report's seaborn/matplotlib figures: per-metric bars and validation curves, drawn on pyplot-free ``Figure``
objects (``new_figure``, also used by ``md2bench.tune``) and saved as PNG + PDF (``save_figure``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from md2bench.paper import LOWER_IS_BETTER, METRIC_LABELS, METRICS
from md2bench.report.collect import ReportRow


def new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` with an Agg canvas, independent of pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, out_dir: Path, stem: str) -> list[Path]:
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
    fig = new_figure(3.2 * cols, 2.9 * nrows + 0.6)
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
    return save_figure(fig, out_dir, "metrics")


def plot_val_curves(history: pd.DataFrame, rows: Sequence[ReportRow], out_dir: Path,
                    key: str = "val/abs_rel") -> list[Path]:
    """Validation ``key`` against the optimiser step, one line per row labelled as in the table (mean over seeds,
    band: ± std); readable with a single validation too (the axis starts at step 0)."""
    import seaborn as sns

    fig = new_figure(7.0, 4.2)
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
    return save_figure(fig, out_dir, "val_curves")
