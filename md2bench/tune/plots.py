"""The study's results as a table and figures: ``trials_frame``, ``plot_history``, ``plot_importance``."""

from __future__ import annotations

from typing import Any

from md2bench.tune.storage import RUN_ID_ATTR


def trials_frame(study: Any) -> Any:
    """One row per trial: number, state, value, params, MLflow run id, retry origin, duration."""
    import pandas as pd

    records = []
    for t in study.get_trials(deepcopy=False):
        rec: dict[str, Any] = {
            "number": t.number, "state": t.state.name, "value": t.value,
            "last_epoch": max(t.intermediate_values) if t.intermediate_values else None,
            "mlflow_run_id": t.user_attrs.get(RUN_ID_ATTR, ""),
            "retry_of": t.system_attrs.get("failed_trial"),
            "duration_s": (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start else None,
        }
        rec.update({f"param.{k}": v for k, v in t.params.items()})
        records.append(rec)
    return pd.DataFrame.from_records(records)


def plot_history(study: Any, direction: str) -> Any:
    """Objective per trial (dots: complete; ×: pruned, at their last reported value) and the best so far."""
    import seaborn as sns

    from md2bench.report.figures import new_figure

    frame = trials_frame(study)
    fig = new_figure(6.5, 4.0)
    with sns.axes_style("whitegrid"):
        ax = fig.subplots()
    complete = frame[frame["state"] == "COMPLETE"].sort_values("number") if len(frame) else frame
    if len(complete):
        ax.scatter(complete["number"], complete["value"], color="#1f77b4", label="complete", zorder=3)
        best = complete["value"].cummin() if direction == "minimize" else complete["value"].cummax()
        ax.step(complete["number"], best, where="post", color="#c0392b", label="best so far")
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state.name == "PRUNED" and t.intermediate_values]
    if pruned:
        ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                   marker="x", color="#7f7f7f", label="pruned (last value)", zorder=3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.set_title(f"Optimisation history ({direction})")
    if len(complete) or pruned:
        ax.legend(fontsize=8)
    return fig


def plot_importance(study: Any) -> Any:
    """Horizontal bars of Optuna's parameter importances (needs at least two complete trials)."""
    import optuna

    from md2bench.report.figures import new_figure

    importances = optuna.importance.get_param_importances(study)
    fig = new_figure(6.0, 0.5 * len(importances) + 1.2)
    ax = fig.subplots()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="#4c72b0")
    ax.set_xlabel("importance")
    ax.set_title("Parameter importance")
    return fig
