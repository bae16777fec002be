"""The pixel subsets that evaluation scores separately, and the metric names they give (no heavy imports).

The synthetic world knows, for every test pixel, whether it belongs to an independently moving object
(``moving``; the rest is ``static``) and to three regions that single out one of the paper's innovations
(rendered by ``md2bench.data.synth_regions``):

- ``occluded``: visible in the target frame, hidden (or outside the image) in at least one temporal source
  frame: what per-pixel *minimum reprojection* is for;
- ``comoving``: pixels of moving objects whose image motion to every temporal source is below one pixel
  because they move with the camera: what *auto-masking* is for;
- ``low_texture``: pixels whose local image texture is near zero: what *full-resolution multi-scale* is for.

Evaluation adds ``"<subset>/<metric>"`` for each (``occluded/abs_rel``, ``comoving/a1``, ...); the trainer logs
them as ``test/<subset>/<metric>``.
"""

from __future__ import annotations

from md2bench.names import DEPTH_METRICS

REGION_NAMES: tuple[str, ...] = ("occluded", "comoving", "low_texture")
"""Region masks of the synthetic world, in the channel order of the batch key ``region_masks``."""

SUBSET_NAMES: tuple[str, ...] = ("moving", "static") + REGION_NAMES
"""Every pixel subset with its own metrics (``moving``/``static`` come from the motion mask)."""


def metric_names() -> tuple[str, ...]:
    """Every test metric a depth evaluation can report: the seven, then ``<subset>/<metric>`` per subset."""
    return DEPTH_METRICS + tuple(f"{s}/{m}" for s in SUBSET_NAMES for m in DEPTH_METRICS)


def lower_is_better(metric: str) -> bool:
    """True for error metrics (``abs_rel``, ``occluded/rmse``, ...), False for the δ accuracies (``a1``...)."""
    return metric.split("/")[-1] not in ("a1", "a2", "a3")
