"""The vocabulary, defined once: the seven depth metrics, the pose metrics and the ablation switches.

Every module that names a metric or a ✓/✗ switch imports it from here (torch-free, so grids, the paper's tables,
the orchestrator and the report can all use it). A switch has one key everywhere inside md2bench (grid files'
``flags``, the ``md2bench.flag.<key>`` MLflow tags, report columns, ``paper.PaperRow.flags``); the only other
spellings are at the borders, written down here: the table label, the column of the paper's ablation CSV
(``../shared/data/paper_ablation.csv``) and the config key and value that turn it on.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

DEPTH_METRICS: tuple[str, ...] = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
"""The seven depth metrics of the standard protocol (Eigen et al.), in the paper's column order."""

POSE_METRICS: tuple[str, ...] = ("t_cos", "rot_deg", "ate")
"""Validation pose metrics (synthetic world): translation-direction cosine, rotation error, trajectory error."""


@dataclass(frozen=True)
class Switch:
    """One ✓/✗ column of an ablation table.

    Attributes:
        key: the name inside md2bench (grid ``flags``, MLflow tag ``md2bench.flag.<key>``, report columns).
        label: the table column heading.
        description: what ✓ means, for legends.
        paper_column: the column of the paper's ablation CSV (Table 2 switches only).
        config: ``(dotted config key, value as logged)`` that ✓ means: the paper's four, which the report reads
            off a run's params when the run is not a row of a grid file.
    """

    key: str
    label: str
    description: str
    paper_column: str | None = None
    config: tuple[str, str] | None = None


SWITCHES: tuple[Switch, ...] = (
    Switch("automask", "AM", "auto-masking", "auto_masking", ("loss.automask", "True")),
    Switch("min_reprojection", "MR", "min reprojection", "min_reprojection", ("loss.reprojection", "min")),
    Switch("full_res", "FR", "full-res multi-scale", "full_res_multiscale", ("loss.multiscale", "full_res")),
    Switch("pretrained", "PT", "ImageNet pretrained", "pretrained", ("model.pretrained", "imagenet")),
    Switch("full_eigen", "FE", "full Eigen split"),
    Switch("zhou_mask", "Zhou", "Zhou et al. mask"),
    Switch("ssim", "SSIM", "SSIM"),
    Switch("stereo", "S", "stereo"),
    Switch("mono", "M", "monocular"),
    Switch("small_res", "416×128", "416×128"),
    Switch("high_res", "1024×320", "1024×320"),
    Switch("resnet50", "R50", "ResNet-50"),
    Switch("gt_pose", "GT pose", "ground-truth poses in place of the pose network"),
    Switch("automask_warmup", "AM warm-up", "auto-masking starts after a warm-up (loss.automask_warmup_steps)"),
    Switch("oov_mask", "OOV mask", "a source's sample outside its image is left out of the min/avg "
           "(loss.mask_out_of_view; not in the paper's code)"),
    Switch("random_source", "random src", "one source per pixel, drawn at every step, in place of the min/avg "
           "(loss.reprojection = \"random\"; not in the paper's code)"),
    Switch("single_scale", "1 scale", "the loss at scale 0 only (loss.multiscale = \"single\"; FR ✗ then means "
           "no coarse-scale losses, not Monodepth v1's per-scale ones)"),
    Switch("smooth_finest", "smooth s0", "the smoothness term at scale 0 only, at the single-scale loss's weight; the "
           "coarse photometric terms stay (loss.smoothness_scales = \"finest\"; not in the paper's code)"),
    Switch("coarse_light", "coarse ×w", "the coarse scales' loss terms weighted below scale 0's (loss.coarse_weight "
           "< 1; the reference weighs every scale alike; not in the paper's code)"),
)

FLAG_KEYS: tuple[str, ...] = tuple(s.key for s in SWITCHES)
"""Every switch key, in report column order (the paper's four first)."""

PAPER_FLAGS: tuple[str, ...] = tuple(s.key for s in SWITCHES if s.paper_column)
"""The four switches of the paper's Table 2."""

FLAG_LABELS: Mapping[str, str] = MappingProxyType({s.key: s.label for s in SWITCHES})
FLAG_DESCRIPTIONS: Mapping[str, str] = MappingProxyType({s.key: s.description for s in SWITCHES})
PAPER_COLUMNS: Mapping[str, str] = MappingProxyType({s.key: s.paper_column for s in SWITCHES if s.paper_column})
"""Switch key -> column of the paper's ablation CSV."""
SWITCH_CONFIG: Mapping[str, tuple[str, str]] = MappingProxyType({s.key: s.config for s in SWITCHES if s.config})
"""Switch key -> (config key, logged value meaning ✓), for the paper's four switches."""


def flags_from_params(params: Mapping[str, str]) -> dict[str, bool]:
    """The paper's switches read off a run's logged params (``SWITCH_CONFIG``), e.g. ``{"automask": True, ...}``."""
    return {key: str(params[param]).lower() == value.lower()
            for key, (param, value) in SWITCH_CONFIG.items() if param in params}
