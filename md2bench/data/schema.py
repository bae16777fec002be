"""The batch contract between datasets and the trainer.

A dataset item is a dict of tensors; the default collate stacks them into a batch with a leading B. The loader
returns *raw* scale-0 frames as uint8 (cheap to decode, pin and move); the pyramid of scales and the colour
jitter are computed on the training device from these (``md2bench.data.transforms``), with the per-sample
jitter parameters and flip decision drawn by the dataset from (seed, epoch, index), so the method is the
reference's (one jitter per sample, applied to every frame and scale) while the CPU does only decoding.

Keys of one item (B is added by collation):

| key            | dtype   | shape          | meaning |
|----------------|---------|----------------|---------|
| ``images``     | uint8   | F×3×H×W        | frames in ``Config.frames`` order: 0, temporal sources, then ``"s"`` |
| ``K``          | float32 | 4×4            | scale-0 intrinsics in pixels for H×W (normalised K × W, H) |
| ``stereo_T``   | float32 | 4×4            | ``T_src_tgt`` for the stereo source (identity where there is none) |
| ``color_aug``  | float32 | 4              | brightness, contrast, saturation factors and hue shift; (1,1,1,0) = none |
| ``color_order``| int64   | 4              | order in which the four jitter operations apply (a permutation of 0..3) |
| ``flip``       | bool    | ()             | the item was flipped horizontally |
| ``index``      | int64   | ()             | index of the item in its split |
| ``depth_gt``   | float32 | 1×Hg×Wg        | optional: ground-truth depth in metres, 0 = no depth |
| ``motion_mask``| uint8   | 1×Hg×Wg        | optional: 1 = independently moving object (synthetic world only) |
| ``pose_gt``    | float32 | F×4×4          | optional: exact ``T_src_tgt`` of every frame in metres (identity for 0; synthetic world) |
| ``region_masks``| uint8  | R×Hg×Wg        | optional, evaluation only: 1 = in region r (``md2bench.regions.REGION_NAMES`` order) |

The flip is already applied to ``images``, ``depth_gt`` and ``motion_mask`` (and ``stereo_T``'s sign); K needs no
change because the normalised principal point is at the image centre.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

REQUIRED: dict[str, torch.dtype] = {
    "images": torch.uint8,
    "K": torch.float32,
    "stereo_T": torch.float32,
    "color_aug": torch.float32,
    "color_order": torch.int64,
    "flip": torch.bool,
    "index": torch.int64,
}
OPTIONAL: dict[str, torch.dtype] = {"depth_gt": torch.float32, "motion_mask": torch.uint8, "pose_gt": torch.float32}
MAPS = ("depth_gt", "motion_mask")  # optional per-pixel maps, 1×Hg×Wg
REGION_KEY = "region_masks"  # uint8 R×Hg×Wg, checked separately (R channels, not 1)


class BatchError(ValueError):
    """A batch or item that breaks the contract above."""


def validate_batch(batch: Mapping[str, Any], num_frames: int, height: int, width: int, batched: bool = True) -> None:
    """Check keys, dtypes and shapes of an item (``batched=False``) or a collated batch.

    Raises:
        BatchError: naming the first key that is missing or wrong.
    """
    lead = 1 if batched else 0
    optional = {**OPTIONAL, REGION_KEY: torch.uint8}
    for key, dtype in {**REQUIRED, **{k: v for k, v in optional.items() if k in batch}}.items():
        if key not in batch:
            raise BatchError(f"batch is missing {key!r}; required keys: {', '.join(REQUIRED)}")
        value = batch[key]
        if not isinstance(value, torch.Tensor):
            raise BatchError(f"batch[{key!r}] must be a tensor, got {type(value).__name__}")
        if value.dtype != dtype:
            raise BatchError(f"batch[{key!r}] has dtype {value.dtype}, expected {dtype}")
    images = batch["images"]
    expected = (num_frames, 3, height, width)
    if tuple(images.shape[lead:]) != expected:
        raise BatchError(f"batch['images'] has shape {tuple(images.shape)}, expected (B,)+{expected}")
    for key, shape in (("K", (4, 4)), ("stereo_T", (4, 4)), ("color_aug", (4,)), ("color_order", (4,))):
        if tuple(batch[key].shape[lead:]) != shape:
            raise BatchError(f"batch[{key!r}] has shape {tuple(batch[key].shape)}, expected (B,)+{shape}")
    if "pose_gt" in batch and tuple(batch["pose_gt"].shape[lead:]) != (num_frames, 4, 4):
        raise BatchError(f"batch['pose_gt'] has shape {tuple(batch['pose_gt'].shape)}, expected (B,)+{(num_frames, 4, 4)}")
    for key in MAPS:
        if key in batch and (batch[key].dim() != 3 + lead or batch[key].shape[lead] != 1):
            raise BatchError(f"batch[{key!r}] has shape {tuple(batch[key].shape)}, expected (B,)1×Hg×Wg")
    if REGION_KEY in batch:
        from md2bench.regions import REGION_NAMES

        regions = batch[REGION_KEY]
        if regions.dim() != 3 + lead or regions.shape[lead] != len(REGION_NAMES):
            raise BatchError(f"batch[{REGION_KEY!r}] has shape {tuple(regions.shape)}, expected "
                             f"(B,){len(REGION_NAMES)}×Hg×Wg ({', '.join(REGION_NAMES)})")
