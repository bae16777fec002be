"""The one definition of the depth-evaluation protocol: constants, crop, scaling and the seven metrics.

Everything here follows the reference evaluation (``evaluate_depth.py`` of Monodepth2, REFERENCE §3.4) and is
defined exactly once: the trainer's validation, ``md2bench evaluate`` and the reports all call these functions.
Arrays are NumPy (metrics are accumulated in float64 so that the third decimal does not depend on the
prediction dtype); ``post_process_disparity`` works on torch tensors because it runs on the prediction device.

Per image (``evaluate_image``):
    1. valid pixels: ``gt_min < GT < gt_max`` (and inside the Garg crop for the Eigen split);
    2. prediction × ``scale_factor`` (5.4 for stereo-trained models), then × median(GT)/median(pred) over the
       valid pixels when median scaling is on (monocular models);
    3. prediction clamped to [MIN_DEPTH, MAX_DEPTH];
    4. the seven metrics over the valid pixels (and over valid ∩ each extra mask, e.g. moving / static).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from md2bench.names import DEPTH_METRICS, POSE_METRICS

# Predictions are clamped to this range before the metrics, and the Eigen split only scores GT inside it
# (reference evaluate_depth.py: MIN_DEPTH = 1e-3, MAX_DEPTH = 80; 80 m is the usual KITTI cap since Eigen et
# al. 2014 - the velodyne returns beyond it are sparse and noisy).
MIN_DEPTH: float = 1e-3
MAX_DEPTH: float = 80.0

# Stereo-trained models learn metric depth up to the ratio between KITTI's real stereo baseline (~0.54 m)
# and the baseline used during training (0.1, `stereo_transform`): 0.54 / 0.1 = 5.4. The reference multiplies
# by this instead of median scaling (`--eval_stereo`); median scaling a stereo model hides scale errors
# (nianticlabs/monodepth2#390).
STEREO_SCALE_FACTOR: float = 5.4
STEREO_TRAIN_BASELINE: float = 0.1

# Garg et al. (ECCV 2016) crop used for the Eigen split, as fractions of the GT image height/width:
# rows [0.40810811 h, 0.99189189 h), cols [0.03594771 w, 0.96405229 w), truncated to int. For 375×1242 this is
# rows 153..370, cols 44..1196 (the crop Garg et al. defined on the 375×1242 KITTI frame; the top ~40% has
# no LiDAR returns).
GARG_CROP_TOP: float = 0.40810811
GARG_CROP_BOTTOM: float = 0.99189189
GARG_CROP_LEFT: float = 0.03594771
GARG_CROP_RIGHT: float = 0.96405229

# δ thresholds of a1, a2, a3 (Eigen et al. 2014): δ = max(g/p, p/g) < 1.25^k.
DELTA_BASE: float = 1.25

METRIC_NAMES: tuple[str, ...] = DEPTH_METRICS
LOWER_IS_BETTER: frozenset[str] = frozenset({"abs_rel", "sq_rel", "rmse", "rmse_log"})


@dataclass(frozen=True)
class EvalProtocol:
    """Which pixels count for one test split.

    Attributes:
        crop: ``"garg"`` (Eigen split) or ``"none"``.
        gt_min: GT must be strictly greater than this.
        gt_max: GT must be strictly less than this (``math.inf``: no cap).
    """

    crop: str
    gt_min: float
    gt_max: float


def protocol_for_split(test_split: str) -> EvalProtocol:
    """The valid-pixel rule of a test split.

    * ``eigen`` (velodyne GT): Garg crop, ``1e-3 < GT < 80`` (reference).
    * ``eigen_benchmark`` (improved GT): no crop, ``GT > 0``, no GT cap (reference: "other splits").
    * ``synth`` (our synthetic world, dense exact GT): no crop (the crop exists to skip the LiDAR-free sky
      band of KITTI; the world has exact depth everywhere), ``0 < GT < 80`` so that the far background/sky
      of the world is scored on the same range as KITTI.

    Raises:
        ValueError: for an unknown split.
    """
    if test_split == "eigen":
        return EvalProtocol("garg", MIN_DEPTH, MAX_DEPTH)
    if test_split == "eigen_benchmark":
        return EvalProtocol("none", 0.0, math.inf)
    if test_split == "synth":
        return EvalProtocol("none", 0.0, MAX_DEPTH)
    raise ValueError(f"no evaluation protocol for test split {test_split!r}; choose eigen, eigen_benchmark or synth")


def garg_crop_mask(height: int, width: int) -> np.ndarray:
    """Boolean H×W mask of the Garg/Eigen crop (True inside).

    Args:
        height: GT image height.
        width: GT image width.

    Returns:
        bool array of shape (height, width).
    """
    top, bottom = int(GARG_CROP_TOP * height), int(GARG_CROP_BOTTOM * height)
    left, right = int(GARG_CROP_LEFT * width), int(GARG_CROP_RIGHT * width)
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def valid_mask(gt: np.ndarray, protocol: EvalProtocol) -> np.ndarray:
    """Pixels that are scored: GT in (gt_min, gt_max), inside the crop where the protocol has one.

    Args:
        gt: H×W ground-truth depth in metres (0 = none).
        protocol: the split's rule.

    Returns:
        bool H×W.
    """
    mask = (gt > protocol.gt_min) & (gt < protocol.gt_max)
    if protocol.crop == "garg":
        mask &= garg_crop_mask(*gt.shape[-2:])
    elif protocol.crop != "none":
        raise ValueError(f"crop must be 'garg' or 'none', got {protocol.crop!r}")
    return mask


def compute_depth_errors(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The seven standard depth metrics over matching GT/prediction values.

    Definitions (means over the N given pixels):
        abs_rel = mean(|g − p| / g); sq_rel = mean((g − p)² / g); rmse = sqrt(mean((g − p)²));
        rmse_log = sqrt(mean((ln g − ln p)²)); a_k = fraction with max(g/p, p/g) < 1.25^k.

    Args:
        gt: N positive GT depths (any shape; flattened).
        pred: N positive predicted depths, same shape.

    Returns:
        ``{"abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3"}`` as floats; NaN for each if N = 0.
    """
    g = np.asarray(gt, dtype=np.float64).ravel()
    p = np.asarray(pred, dtype=np.float64).ravel()
    if g.shape != p.shape:
        raise ValueError(f"gt and pred must have the same number of values, got {g.shape} and {p.shape}")
    if g.size == 0:
        return {name: math.nan for name in METRIC_NAMES}
    thresh = np.maximum(g / p, p / g)
    diff = g - p
    return {
        "abs_rel": float(np.mean(np.abs(diff) / g)),
        "sq_rel": float(np.mean(diff**2 / g)),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(g) - np.log(p)) ** 2))),
        "a1": float(np.mean(thresh < DELTA_BASE)),
        "a2": float(np.mean(thresh < DELTA_BASE**2)),
        "a3": float(np.mean(thresh < DELTA_BASE**3)),
    }


def median_scale(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, float]:
    """Scale a prediction so that its median matches the GT median (per image, monocular models).

    Args:
        gt: N valid GT depths.
        pred: N predicted depths at the same pixels.

    Returns:
        (pred × ratio, ratio) with ratio = median(gt) / median(pred).
    """
    ratio = float(np.median(gt) / np.median(pred))
    return pred * ratio, ratio


def post_process_disparity(disp: torch.Tensor, disp_flipped_back: torch.Tensor) -> torch.Tensor:
    """Monodepth-v1 flip-and-blend test-time augmentation (REFERENCE §3.4 step 2).

    With x ∈ [0, 1] the normalised column (``linspace(0, 1, W)``), m_l(x) = 1 − clip(20 (x − 0.05), 0, 1)
    and m_r the mirror of m_l, the result is m_r·disp + m_l·flipped + (1 − m_l − m_r)·(disp + flipped)/2: the
    left 5 % comes from the flipped pass, the right 5 % from the plain pass, the middle is their mean.

    Args:
        disp: ...×H×W disparity of the plain image.
        disp_flipped_back: ...×H×W disparity predicted on the flipped image, flipped back.

    Returns:
        ...×H×W blended disparity.
    """
    if disp.shape != disp_flipped_back.shape:
        raise ValueError(f"shapes differ: {tuple(disp.shape)} vs {tuple(disp_flipped_back.shape)}")
    width = disp.shape[-1]
    x = torch.linspace(0.0, 1.0, width, device=disp.device, dtype=disp.dtype)
    mask_l = 1.0 - torch.clamp(20.0 * (x - 0.05), 0.0, 1.0)
    mask_r = torch.flip(mask_l, dims=(0,))
    mean = 0.5 * (disp + disp_flipped_back)
    return mask_r * disp + mask_l * disp_flipped_back + (1.0 - mask_l - mask_r) * mean


def evaluate_image(
    gt: np.ndarray,
    pred_depth: np.ndarray,
    protocol: EvalProtocol,
    median_scaling: bool,
    scale_factor: float = 1.0,
    extra_masks: Mapping[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Score one predicted depth map against its GT (REFERENCE §3.4 steps 4–7).

    Args:
        gt: H×W GT depth in metres (0 = none).
        pred_depth: H×W predicted depth at the GT resolution.
        protocol: valid-pixel rule (``protocol_for_split``).
        median_scaling: multiply by median(GT)/median(pred) over the valid pixels (monocular models).
        scale_factor: fixed factor applied first (``STEREO_SCALE_FACTOR`` for stereo-trained models).
        extra_masks: name → bool H×W; adds ``"<name>/<metric>"`` computed over valid ∩ mask with the same
            scaled prediction (e.g. ``moving`` / ``static``), NaN where the intersection is empty.

    Returns:
        The seven metrics, ``ratio`` (the applied median-scaling ratio; 1.0 without median scaling),
        ``median_ratio`` (median(GT)/median(pred × scale_factor), the ratio median scaling would apply: a
        diagnostic of the scale of stereo-trained models), ``valid_px``,
        and the extra-mask metrics and pixel counts (``"<name>/valid_px"``).

    Raises:
        ValueError: shapes differ or no pixel is valid.
    """
    if gt.shape != pred_depth.shape:
        raise ValueError(f"gt {gt.shape} and prediction {pred_depth.shape} must have the same shape")
    mask = valid_mask(gt, protocol)
    if not mask.any():
        raise ValueError("no valid GT pixel in this image (check the GT file and the split's depth range)")
    pred = pred_depth.astype(np.float64) * scale_factor
    g = gt[mask].astype(np.float64)
    p = pred[mask]
    median_ratio = float(np.median(g) / np.median(p))
    ratio = 1.0
    if median_scaling:
        p, ratio = median_scale(g, p)
        pred = pred * ratio
    p = np.clip(p, MIN_DEPTH, MAX_DEPTH)
    out: dict[str, float] = compute_depth_errors(g, p)
    out["ratio"] = ratio
    out["median_ratio"] = median_ratio
    out["valid_px"] = float(mask.sum())
    pred = np.clip(pred, MIN_DEPTH, MAX_DEPTH)
    for name, extra in (extra_masks or {}).items():
        if extra.shape != gt.shape:
            raise ValueError(f"mask {name!r} has shape {extra.shape}, expected {gt.shape}")
        sub = mask & extra.astype(bool)
        for metric, value in compute_depth_errors(gt[sub], pred[sub]).items():
            out[f"{name}/{metric}"] = value
        out[f"{name}/valid_px"] = float(sub.sum())
    return out


# ------------------------------------------------------------------------------------------------- pose
# Snippet length of the pose evaluation (SfMLearner / reference evaluate_pose.py): 5 frames = 4 transforms.
ATE_TRACK_LENGTH: int = 5


def chain_positions(transforms: np.ndarray) -> np.ndarray:
    """Camera positions along a chain of relative transforms, starting at the origin.

    Args:
        transforms: k×4×4; position i+1 is the translation of T_0 · T_1 · … · T_i.

    Returns:
        (k+1)×3 positions.
    """
    pose = np.eye(4)
    positions = [pose[:3, 3].copy()]
    for transform in transforms:
        pose = pose @ transform
        positions.append(pose[:3, 3].copy())
    return np.stack(positions)


def compute_ate(gt_xyz: np.ndarray, pred_xyz: np.ndarray) -> float:
    """Absolute trajectory error of one snippet with first-point alignment and a least-squares scale.

    The prediction is shifted so that its first position equals the GT's, scaled by
    s = Σ gt·pred / Σ pred², and the error is sqrt(Σ‖s·pred − gt‖²) / N (SfMLearner's convention, which the
    reference keeps: divided by N, not an RMS).

    Args:
        gt_xyz: N×3 GT positions.
        pred_xyz: N×3 predicted positions.
    """
    pred = pred_xyz + (gt_xyz[0] - pred_xyz[0])[None, :]
    denom = float(np.sum(pred**2))
    scale = float(np.sum(gt_xyz * pred)) / denom if denom > 0 else 0.0
    return float(np.sqrt(np.sum((pred * scale - gt_xyz) ** 2)) / gt_xyz.shape[0])


def relative_gt_poses(cam_to_world: np.ndarray) -> np.ndarray:
    """GT T_{i+1,i} = inv(G_i⁻¹ · G_{i+1}) from camera-to-world poses G (N×4×4) → (N−1)×4×4.

    This is the direction the pose network predicts for the pair (i, i+1) without inversion: it maps points
    of frame i into frame i+1.
    """
    return np.stack([np.linalg.inv(np.linalg.inv(cam_to_world[i - 1]) @ cam_to_world[i])
                     for i in range(1, len(cam_to_world))])


POSE_METRIC_NAMES: tuple[str, ...] = POSE_METRICS


def relative_pose_errors(T_pred: np.ndarray, T_gt: np.ndarray, min_motion: float = 1e-6) -> dict[str, np.ndarray]:
    """Per-pair errors of predicted camera motions against the truth (validation's pose diagnostics).

    For each pair, the source camera's position in the target camera's frame is ``c = inv(T_src_tgt)[:3, 3]``.

    - ``t_cos``: cosine between predicted and true camera displacement ``c`` (1 = right direction, −1 =
      reversed; NaN where the true displacement is below ``min_motion``: a standing camera has no direction).
      A pose net that settles on sideways motion while the camera drives forward shows here first.
    - ``rot_deg``: angle of ``R_pred⁻¹ · R_gt`` in degrees (geodesic rotation error).
    - ``ate``: the two-frame snippet's ATE in the reference's convention (:func:`compute_ate` on the positions
      [0, c] with the least-squares scale; the sum of errors divided by the two points), in the GT's units.

    Args:
        T_pred: N×4×4 predicted ``T_src_tgt``.
        T_gt: N×4×4 true ``T_src_tgt``.
        min_motion: true displacements shorter than this have no direction.

    Returns:
        ``{"t_cos": (N,), "rot_deg": (N,), "ate": (N,)}`` float64 arrays.
    """
    T_pred = np.asarray(T_pred, dtype=np.float64)
    T_gt = np.asarray(T_gt, dtype=np.float64)
    if T_pred.shape != T_gt.shape or T_pred.shape[-2:] != (4, 4) or T_pred.ndim != 3:
        raise ValueError(f"T_pred and T_gt must both be N×4×4, got {T_pred.shape} and {T_gt.shape}")
    c_pred = np.linalg.inv(T_pred)[:, :3, 3]
    c_gt = np.linalg.inv(T_gt)[:, :3, 3]
    norm_pred = np.linalg.norm(c_pred, axis=1)
    norm_gt = np.linalg.norm(c_gt, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.sum(c_pred * c_gt, axis=1) / (norm_pred * norm_gt)
    cos = np.where(norm_gt < min_motion, np.nan, np.where(norm_pred > 0, cos, 0.0))
    relative = np.transpose(T_pred[:, :3, :3], (0, 2, 1)) @ T_gt[:, :3, :3]
    trace = np.trace(relative, axis1=1, axis2=2)
    rot = np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))
    origin = np.zeros(3)
    ate = np.array([compute_ate(np.stack([origin, g]), np.stack([origin, p])) for g, p in zip(c_gt, c_pred)])
    return {"t_cos": cos, "rot_deg": rot, "ate": ate}


def snippet_ates(pred_relative: np.ndarray, gt_relative: np.ndarray,
                 track_length: int = ATE_TRACK_LENGTH) -> np.ndarray:
    """ATE of every snippet of ``track_length`` frames (REFERENCE §3.5); snippets near the end are shorter.

    Args:
        pred_relative: M×4×4 predicted T_{i+1,i}.
        gt_relative: M×4×4 GT T_{i+1,i}.

    Returns:
        M ATE values, one per start frame.
    """
    if pred_relative.shape != gt_relative.shape:
        raise ValueError(f"pred {pred_relative.shape} and GT {gt_relative.shape} must have the same shape")
    steps = track_length - 1
    return np.array([
        compute_ate(chain_positions(gt_relative[i:i + steps]), chain_positions(pred_relative[i:i + steps]))
        for i in range(len(gt_relative))
    ])
