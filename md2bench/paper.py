"""The paper's ablation numbers as data, each with the table it comes from.

Source: Godard et al., "Digging Into Self-Supervised Monocular Depth Estimation", ICCV 2019 (arXiv
1806.01260 v4). Tables: **Table 2** (the ablation, monocular training, KITTI Eigen test split, 640×192),
**Table 6** (supplementary: Table 2 repeated plus extra rows), **Table 12** (pose-network ablation). Every
depth row is evaluated on the 697 Eigen test images with the Garg crop, depth capped at 80 m and per-image
median scaling. Metrics: ``abs_rel``, ``sq_rel``, ``rmse``, ``rmse_log`` (lower is better) and ``a1``, ``a2``,
``a3`` = δ < 1.25, 1.25², 1.25³ (higher is better).

Each ``PaperRow`` also says how the row maps onto an md2bench config: ``overrides`` are dotted config keys
applied on top of the ``paper`` preset (the full Monodepth2), following the reference flags of
REFERENCE.md §6.1–6.3.

Erratum: the team's shared ``paper_ablation.csv`` once gave "Monodepth2 w/o min reprojection" the full
model's δ values (0.877, 0.959, 0.981). The paper prints **0.870, 0.957, 0.980** in both Table 2 and Table 6;
this module holds the printed values, and ``CSV_ERRATA`` records the correction so that a test can tell a
deliberate difference from a typo.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from md2bench.names import DEPTH_METRICS, PAPER_FLAGS

METRICS: tuple[str, ...] = DEPTH_METRICS
"""The seven depth metrics in the paper's column order."""

LOWER_IS_BETTER: Mapping[str, bool] = MappingProxyType(
    {"abs_rel": True, "sq_rel": True, "rmse": True, "rmse_log": True, "a1": False, "a2": False, "a3": False}
)

METRIC_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "abs_rel": "Abs Rel",
        "sq_rel": "Sq Rel",
        "rmse": "RMSE",
        "rmse_log": "RMSE log",
        "a1": "δ<1.25",
        "a2": "δ<1.25²",
        "a3": "δ<1.25³",
    }
)

FLAG_NAMES: tuple[str, ...] = PAPER_FLAGS
"""Flag columns of Table 2 (switch keys of ``md2bench.names``; the shared CSV's columns: ``names.PAPER_COLUMNS``)."""

# Config overrides of the ablation switches, relative to the full model (the ``paper`` preset).
_BASELINE = {"loss.multiscale": "per_scale", "loss.automask": False, "loss.reprojection": "avg"}
# The paper trains the "w/o pretraining" models for 30 epochs (reference: --weights_init scratch --num_epochs 30).
_SCRATCH = {"model.pretrained": "scratch", "train.epochs": 30}


@dataclass(frozen=True)
class PaperRow:
    """One row of one of the paper's tables.

    Attributes:
        key: stable identifier (``"monodepth2_full"``), what grids and reports refer to.
        name: the row as printed.
        table: where it is printed, e.g. ``"Table 2 (a)"``.
        flags: the Table 2 flag columns (``automask``, ``min_reprojection``, ``full_res``,
            ``pretrained``).
        metrics: the seven metrics (see ``METRICS``).
        overrides: dotted config overrides on top of the ``paper`` preset that reproduce the row.
        note: caveats (unverified marks, errata, assumptions).
    """

    key: str
    name: str
    table: str
    flags: Mapping[str, bool]
    metrics: Mapping[str, float]
    overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    note: str = ""


def _row(
    key: str,
    name: str,
    table: str,
    flags: tuple[int, int, int, int],
    values: tuple[float, float, float, float, float, float, float],
    overrides: Mapping[str, Any] | None = None,
    note: str = "",
) -> PaperRow:
    return PaperRow(
        key=key,
        name=name,
        table=table,
        flags=MappingProxyType({n: bool(f) for n, f in zip(FLAG_NAMES, flags)}),
        metrics=MappingProxyType(dict(zip(METRICS, values))),
        overrides=MappingProxyType(dict(overrides or {})),
        note=note,
    )


#                                                              AM MR FR PT
TABLE2: tuple[PaperRow, ...] = (
    _row("baseline", "Baseline", "Table 2 (a)", (0, 0, 0, 1),
         (0.140, 1.610, 5.512, 0.223, 0.852, 0.946, 0.973), _BASELINE),
    _row("baseline_min_reproj", "Baseline + min reproj.", "Table 2 (a)", (0, 1, 0, 1),
         (0.122, 1.081, 5.116, 0.199, 0.866, 0.957, 0.980),
         {"loss.multiscale": "per_scale", "loss.automask": False}),
    _row("baseline_automask", "Baseline + automasking", "Table 2 (a)", (1, 0, 0, 1),
         (0.124, 0.936, 5.010, 0.206, 0.858, 0.952, 0.977),
         {"loss.multiscale": "per_scale", "loss.reprojection": "avg"},
         "the paper prints no pretraining mark on this row; taken as pretrained like the rest of block (a)"),
    _row("baseline_full_res", "Baseline + full-res m.s.", "Table 2 (a)", (0, 0, 1, 1),
         (0.124, 1.170, 5.249, 0.203, 0.865, 0.953, 0.978),
         {"loss.automask": False, "loss.reprojection": "avg"}),
    _row("monodepth2_no_min_reproj", "Monodepth2 w/o min reprojection", "Table 2 (a)", (1, 0, 1, 1),
         (0.117, 0.878, 4.846, 0.196, 0.870, 0.957, 0.980), {"loss.reprojection": "avg"},
         "δ values as printed in Tables 2 and 6 (0.870/0.957/0.980); an older shared CSV had 0.877/0.959/0.981"),
    _row("monodepth2_no_automask", "Monodepth2 w/o auto-masking", "Table 2 (a)", (0, 1, 1, 1),
         (0.120, 1.097, 5.074, 0.197, 0.872, 0.956, 0.979), {"loss.automask": False}),
    _row("monodepth2_no_full_res", "Monodepth2 w/o full-res m.s.", "Table 2 (a)", (1, 1, 0, 1),
         (0.117, 0.866, 4.864, 0.196, 0.871, 0.957, 0.981), {"loss.multiscale": "per_scale"}),
    _row("monodepth2_zhou_mask", "Monodepth2 with Zhou et al. mask", "Table 2 (a)", (0, 1, 1, 1),
         (0.123, 1.177, 5.210, 0.200, 0.869, 0.955, 0.978),
         {"loss.automask": False, "loss.predictive_mask": True}),
    _row("monodepth2_small", "Monodepth2 smaller (416x128)", "Table 2 (a)", (1, 1, 1, 1),
         (0.128, 1.087, 5.171, 0.204, 0.855, 0.953, 0.978), {"data.height": 128, "data.width": 416}),
    _row("monodepth2_full", "Monodepth2 (full)", "Table 2 (a)", (1, 1, 1, 1),
         (0.115, 0.903, 4.863, 0.193, 0.877, 0.959, 0.981)),
    _row("baseline_no_pt", "Baseline w/o pretraining", "Table 2 (b)", (0, 0, 0, 0),
         (0.150, 1.585, 5.671, 0.234, 0.827, 0.938, 0.971), {**_BASELINE, **_SCRATCH},
         "30 epochs assumed (the paper states it for the w/o pretraining models; no script for this row)"),
    _row("monodepth2_no_pt", "Monodepth2 w/o pretraining", "Table 2 (b)", (1, 1, 1, 0),
         (0.132, 1.044, 5.142, 0.210, 0.845, 0.948, 0.977), _SCRATCH),
    _row("baseline_full_eigen", "Baseline (full Eigen split)", "Table 2 (c)", (0, 0, 0, 1),
         (0.146, 1.876, 5.666, 0.230, 0.848, 0.945, 0.972), {**_BASELINE, "data.split": "eigen_full"}),
    _row("monodepth2_full_eigen", "Monodepth2 (full Eigen split)", "Table 2 (c)", (1, 1, 1, 1),
         (0.116, 0.918, 4.872, 0.193, 0.874, 0.959, 0.981), {"data.split": "eigen_full"}),
)

TABLE6_EXTRAS: tuple[PaperRow, ...] = (
    _row("monodepth2_no_ssim", "Monodepth2 w/o SSIM", "Table 6", (1, 1, 1, 1),
         (0.118, 0.853, 4.824, 0.198, 0.868, 0.956, 0.980), {"loss.ssim": False}),
    _row("no_pt_no_automask", "w/o pt or auto-masking", "Table 6", (0, 1, 1, 0),
         (0.138, 1.197, 5.369, 0.215, 0.842, 0.945, 0.975), {**_SCRATCH, "loss.automask": False}),
    _row("no_pt_no_min_reproj", "w/o pt or min reproj", "Table 6", (1, 0, 1, 0),
         (0.133, 1.021, 5.219, 0.214, 0.841, 0.945, 0.976), {**_SCRATCH, "loss.reprojection": "avg"}),
    _row("no_pt_no_full_res", "w/o pt or full-res m.s.", "Table 6", (1, 1, 0, 0),
         (0.131, 1.030, 5.206, 0.210, 0.846, 0.948, 0.978), {**_SCRATCH, "loss.multiscale": "per_scale"}),
    _row("resnet50_no_pt", "ResNet-50 w/o pt", "Table 6", (1, 1, 1, 0),
         (0.131, 1.023, 5.064, 0.206, 0.849, 0.951, 0.979), {**_SCRATCH, "model.num_layers": 50}),
    _row("resnet50", "ResNet-50", "Table 6", (1, 1, 1, 1),
         (0.110, 0.831, 4.642, 0.187, 0.883, 0.962, 0.982), {"model.num_layers": 50}),
)


def _pose(net: str, frames: int, pretrained: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"model.pose_net": net, "model.pose_input": "pairs" if frames == 2 else "all"}
    return {**out, **({} if pretrained else _SCRATCH)}


_T12 = "Table 12"
TABLE12: tuple[PaperRow, ...] = (
    _row("pose_posecnn_2", "PoseCNN, 2 frames", _T12, (1, 1, 1, 1),
         (0.138, 1.122, 5.308, 0.209, 0.840, 0.950, 0.978), _pose("posecnn", 2, True)),
    _row("pose_posecnn_3", "PoseCNN, 3 frames", _T12, (1, 1, 1, 1),
         (0.148, 1.211, 5.595, 0.219, 0.815, 0.942, 0.976), _pose("posecnn", 3, True)),
    _row("pose_shared_2", "Shared encoder (arXiv v1), 2 frames", _T12, (1, 1, 1, 1),
         (0.125, 0.986, 5.070, 0.201, 0.857, 0.954, 0.979), _pose("shared", 2, True)),
    _row("pose_shared_3", "Shared encoder (arXiv v1), 3 frames", _T12, (1, 1, 1, 1),
         (0.123, 1.031, 5.052, 0.199, 0.863, 0.954, 0.979), _pose("shared", 3, True)),
    _row("pose_separate_2", "Separate ResNet (Monodepth2), 2 frames", _T12, (1, 1, 1, 1),
         (0.115, 0.919, 4.863, 0.193, 0.877, 0.959, 0.981), _pose("separate", 2, True),
         "the full model; Table 12 prints Sq Rel 0.919 where Tables 1, 2 and 6 print 0.903"),
    _row("pose_separate_3", "Separate ResNet, 3 frames", _T12, (1, 1, 1, 1),
         (0.115, 0.902, 4.847, 0.193, 0.877, 0.960, 0.981), _pose("separate", 3, True)),
    _row("pose_posecnn_2_no_pt", "PoseCNN, 2 frames, w/o pt", _T12, (1, 1, 1, 0),
         (0.147, 1.164, 5.445, 0.221, 0.818, 0.940, 0.974), _pose("posecnn", 2, False), "30 epochs assumed"),
    _row("pose_posecnn_3_no_pt", "PoseCNN, 3 frames, w/o pt", _T12, (1, 1, 1, 0),
         (0.147, 1.117, 5.403, 0.222, 0.815, 0.940, 0.976), _pose("posecnn", 3, False), "30 epochs assumed"),
    _row("pose_shared_2_no_pt", "Shared encoder (arXiv v1), 2 frames, w/o pt", _T12, (1, 1, 1, 0),
         (0.149, 1.153, 5.567, 0.229, 0.807, 0.934, 0.972), _pose("shared", 2, False), "30 epochs assumed"),
    _row("pose_shared_3_no_pt", "Shared encoder (arXiv v1), 3 frames, w/o pt", _T12, (1, 1, 1, 0),
         (0.145, 1.159, 5.482, 0.224, 0.818, 0.937, 0.973), _pose("shared", 3, False), "30 epochs assumed"),
    _row("pose_separate_2_no_pt", "Separate ResNet (Monodepth2), 2 frames, w/o pt", _T12, (1, 1, 1, 0),
         (0.132, 1.044, 5.142, 0.210, 0.845, 0.948, 0.977), _pose("separate", 2, False)),
    _row("pose_separate_3_no_pt", "Separate ResNet, 3 frames, w/o pt", _T12, (1, 1, 1, 0),
         (0.132, 1.017, 5.169, 0.211, 0.842, 0.947, 0.977), _pose("separate", 3, False), "30 epochs assumed"),
)

ALL_ROWS: tuple[PaperRow, ...] = TABLE2 + TABLE6_EXTRAS + TABLE12

CSV_ERRATA: Mapping[tuple[str, str], tuple[float, float]] = MappingProxyType(
    {
        ("Monodepth2 w/o min reprojection", "a1"): (0.877, 0.870),
        ("Monodepth2 w/o min reprojection", "a2"): (0.959, 0.957),
        ("Monodepth2 w/o min reprojection", "a3"): (0.981, 0.980),
    }
)
"""``{(csv row, metric): (wrong value once in the shared CSV, value printed in the paper)}``."""


def paper_row(key: str) -> PaperRow:
    """The row with this key (``"monodepth2_full"``) or printed name (``"Monodepth2 (full)"``).

    Raises:
        KeyError: naming the valid keys.
    """
    for row in ALL_ROWS:
        if key in (row.key, row.name):
            return row
    raise KeyError(f"no paper row {key!r}; valid keys: {', '.join(r.key for r in ALL_ROWS)}")


def paper_metrics(key: str) -> dict[str, float]:
    """The seven metrics of one row as a plain dict, e.g. ``paper_metrics("monodepth2_full")["abs_rel"] == 0.115``."""
    return dict(paper_row(key).metrics)


def rows_of(table: str) -> tuple[PaperRow, ...]:
    """Rows printed in one table: ``"Table 2"``, ``"Table 6"`` (the extras only) or ``"Table 12"``."""
    found = tuple(r for r in ALL_ROWS if r.table == table or r.table.startswith(table + " "))
    if not found:
        raise KeyError(f"no paper table {table!r}; choose 'Table 2', 'Table 6' or 'Table 12'")
    return found
