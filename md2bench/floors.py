"""The no-learning floors: what depth evaluation gives without any learning, on the same split and protocol.

Two fixed predictors go through ``md2bench.evaluate.evaluate_depth`` itself (same split, crop, GT range,
per-image median scaling, per-region masks); only the prediction differs:

- ``constant``: the same depth everywhere; after per-image median scaling it predicts median(GT) at every pixel.
- ``row_prior``: per image row r, the mean over the training split's GT depth of that row, the same for every
  column; median-scaled per image like a monocular model. Only pixels whose GT the evaluation would score enter
  the mean: the test protocol's GT range (synthetic world 0 < GT < 80 m, KITTI Eigen 1e-3 < GT < 80 m,
  ``md2bench.metrics.protocol_for_split``), so far background the evaluation never sees does not inflate the top
  rows. (With every GT > 0 instead, the default world's row prior scores 0.480 abs rel rather than 0.464.)

Both are median-scaled whatever ``data.mode`` the config trains (``scaling="median"``): they are references for
the depth *shape*, not for the scale. A trained row that does not beat ``row_prior`` in mean abs rel has learned
nothing a per-row average of the training data does not already know (``md2bench report`` marks it "not
learned").

Where the training split has no GT depth (KITTI without the improved-GT PNGs), the row prior falls back to the
val split's GT; where neither has any it is skipped with a note (``evaluate_floors`` never raises for missing
data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from md2bench.evaluate import EvalResult, PredictFn, evaluate_depth

if TYPE_CHECKING:
    from md2bench.config import Config

FLOOR_NAMES: tuple[str, ...] = ("constant", "row_prior")
FLOOR_LABELS: dict[str, str] = {
    "constant": "floor: constant depth (median-scaled)",
    "row_prior": "floor: per-row mean training depth (median-scaled)",
}
ROW_PRIOR_MAX_IMAGES = 2000  # GT maps averaged at most (evenly spaced over the split; KITTI's has ~40,000)


class FloorUnavailable(ValueError):
    """A floor cannot be computed for this dataset (e.g. no GT depth on any training-side split)."""


@dataclass(frozen=True)
class RowPrior:
    """Mean GT depth per image row.

    Attributes:
        depth: (Hg,) float64 metres, the mean over the valid GT pixels of each row (rows without any: the mean
            of all valid pixels).
        split: the split it came from (``train``, or ``val`` when the training split has no GT).
        images: GT maps averaged.
    """

    depth: np.ndarray
    split: str
    images: int


def constant_predict(models: Any, images: torch.Tensor, cfg: "Config") -> torch.Tensor:
    """The constant predictor: disparity 1 everywhere (B×1×H×W, like ``images``); median scaling sets the level."""
    return torch.ones(images.shape[0], 1, *images.shape[-2:], dtype=torch.float32, device=images.device)


def row_prior(cfg: "Config", max_images: int = ROW_PRIOR_MAX_IMAGES) -> RowPrior:
    """Mean GT depth per row over the training split (the val split where the training split has no GT), over
    the pixels inside the test protocol's GT range (``gt_min < GT < gt_max``; the crop is not applied: rows
    outside it are never scored).

    Reads only the GT maps (no images), at the resolution the dataset returns them (the world's native size;
    KITTI: 375×1242), of every line of the split list. At most ``max_images`` maps, evenly spaced over the split.

    Raises:
        FloorUnavailable: neither split has GT depth.
    """
    from md2bench.data.kitti import build_dataset
    from md2bench.metrics import protocol_for_split

    protocol = protocol_for_split(cfg.data.test_split)

    for split in ("train", "val"):
        # every line of the split list (only GT is read, so no neighbour or stereo images are required)
        dataset = build_dataset(cfg, split, load_depth=True, check_files=False)
        if dataset.has_depth:
            break
    else:
        raise FloorUnavailable(f"neither the train nor the val split of {cfg.data.dataset} under "
                               f"{cfg.data.path or 'the cache'} has GT depth PNGs (proj_depth/groundtruth/); the "
                               "row-prior floor needs them")
    count = len(dataset)
    picks = np.unique(np.linspace(0, count - 1, min(count, max_images)).round().astype(np.int64))
    total: np.ndarray | None = None
    pixels: np.ndarray | None = None
    for index in picks:
        gt = dataset.load_depth_gt(int(index))[0].numpy().astype(np.float64)
        valid = (gt > protocol.gt_min) & (gt < protocol.gt_max)
        row_sum, row_count = np.where(valid, gt, 0.0).sum(axis=1), valid.sum(axis=1)
        total = row_sum if total is None else total + row_sum
        pixels = row_count if pixels is None else pixels + row_count
    assert total is not None and pixels is not None
    if not pixels.any():
        raise FloorUnavailable(f"the {split} split's GT depth maps under {dataset.root} have no valid pixel")
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = total / pixels
    depth = np.where(pixels > 0, depth, total.sum() / pixels.sum())
    return RowPrior(depth, split, int(picks.size))


def row_prior_predict(prior: RowPrior) -> PredictFn:
    """A predictor returning the row prior's disparity (B×1×Hg×W: one value per prior row, any width)."""
    disparity = torch.from_numpy(1.0 / prior.depth).float()

    def predict(models: Any, images: torch.Tensor, cfg: "Config") -> torch.Tensor:
        column = disparity.to(images.device)[None, None, :, None]
        return column.expand(images.shape[0], 1, disparity.shape[0], images.shape[-1])

    return predict


def evaluate_floor(name: str, cfg: "Config", split: str | None = None, *, prior: RowPrior | None = None,
                   progress: bool = False, batch_size: int = 16, crop: str | None = None) -> EvalResult:
    """One floor through ``evaluate_depth`` (per-image median scaling).

    Args:
        name: ``constant`` or ``row_prior``.
        cfg: the config whose dataset and test split to use (a grid's base config, or a trained run's).
        split: as ``evaluate_depth`` (None: the config's test split).
        prior: the row prior (``row_prior(cfg)`` when None and needed).
        progress: progress bar.
        batch_size: images per batch.
        crop: as ``evaluate_depth`` (None: the split's crop).

    Returns:
        The evaluation; ``settings`` also holds ``floor`` and, for the row prior, ``prior_split`` and
        ``prior_images``.

    Raises:
        ValueError: unknown name (naming the valid ones); FloorUnavailable: no GT for the row prior; whatever
            ``evaluate_depth`` raises for a split without GT.
    """
    if name not in FLOOR_NAMES:
        raise ValueError(f"unknown floor {name!r}; choose one of: {', '.join(FLOOR_NAMES)}")
    extra: dict[str, Any] = {"floor": name}
    if name == "constant":
        predict = constant_predict
    else:
        prior = prior if prior is not None else row_prior(cfg)
        predict = row_prior_predict(prior)
        extra.update(prior_split=prior.split, prior_images=prior.images)
    result = evaluate_depth(None, cfg, split=split, progress=progress, batch_size=batch_size, predict=predict,
                            scaling="median", crop=crop)
    result.settings.update(extra)
    return result


@dataclass
class Floors:
    """The floors of one dataset/split.

    Attributes:
        results: floor name -> evaluation (only the floors that could be computed).
        notes: why a floor is missing, where one is.
    """

    results: dict[str, EvalResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Flat ``floor/<name>/<metric>`` (e.g. ``floor/row_prior/abs_rel``, ``floor/constant/occluded/a1``)."""
        return {f"floor/{name}/{key}": float(value) for name, result in self.results.items()
                for key, value in result.mean.items() if np.isfinite(value)}


def evaluate_floors(cfg: "Config", split: str | None = None, progress: bool = False) -> Floors:
    """Both floors; a floor that cannot be computed (no GT, no KITTI export) becomes a note, never an error."""
    from md2bench.data.kitti import DatasetFileError, DatasetNotFoundError

    floors = Floors()
    for name in FLOOR_NAMES:
        try:
            floors.results[name] = evaluate_floor(name, cfg, split, progress=progress)
        except (FloorUnavailable, FileNotFoundError, DatasetNotFoundError, DatasetFileError, ValueError) as exc:
            floors.notes.append(f"floor {name!r} not computed: {exc}")
    return floors
