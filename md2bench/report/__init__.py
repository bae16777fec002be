"""Reports: MLflow runs -> a tidy table -> the paper's ablation table, figures and a README (see ``build``)."""

from md2bench.report.build import Report, build_report, compute_floors, floor_config, log_floors, log_report
from md2bench.report.collect import (PARENT_KINDS, ReportError, ReportRow, load_runs, provenance, report_rows,
                                     resolve_target, select_runs, val_histories)
from md2bench.report.figures import new_figure, plot_metric_bars, plot_val_curves
from md2bench.report.qualitative import find_checkpoint, plot_qualitative
from md2bench.names import FLAG_DESCRIPTIONS, FLAG_LABELS
from md2bench.report.tables import (FINDINGS_TEXT, MISSING, MOTION_METRICS,
                                    REGION_TABLE_METRICS, REGION_TABLE_SUBSETS, REGIONS_TEXT, findings_markdown,
                                    floor_table, floor_values, learned_sentence, mark_learned, motion_markdown,
                                    motion_summary, region_summary, summarize, to_html, to_latex, to_markdown)

__all__ = [
    # build
    "Report", "build_report", "compute_floors", "floor_config", "log_floors", "log_report",
    # collect
    "PARENT_KINDS", "ReportError", "ReportRow", "load_runs", "provenance", "report_rows", "resolve_target",
    "select_runs", "val_histories",
    # figures, qualitative
    "new_figure", "plot_metric_bars", "plot_val_curves", "find_checkpoint", "plot_qualitative",
    # tables
    "FINDINGS_TEXT", "FLAG_DESCRIPTIONS", "FLAG_LABELS", "MISSING", "MOTION_METRICS", "REGION_TABLE_METRICS",
    "REGION_TABLE_SUBSETS", "REGIONS_TEXT", "findings_markdown", "floor_table", "floor_values", "learned_sentence",
    "mark_learned", "motion_markdown", "motion_summary", "region_summary", "summarize", "to_html", "to_latex",
    "to_markdown",
]
