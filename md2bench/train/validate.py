"""Validation during training: ``validate`` (mean ``val/...`` losses, depth and pose metrics) and the epoch picture.

The depth metrics follow the protocol of ``md2bench evaluate`` through ``md2bench.metrics`` (no crop,
1e-3 < GT < 80, the model's scaling), per image at the loader's GT resolution; the pose metrics are
``md2bench.metrics.relative_pose_errors`` of every temporal source. Validation runs under a forked RNG, so it
never moves the training RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader

from md2bench import metrics
from md2bench.config import Config
from md2bench.train.device import autocast_for
from md2bench.train.step import scalar_diagnostics


@dataclass
class ValidationOutput:
    """Mean validation metrics (``val/...``) and the first batch's pictures for the epoch figure."""

    metrics: dict[str, float]
    picture: dict[str, np.ndarray] | None


def per_image_depth_errors(
    disp: torch.Tensor, depth_gt: torch.Tensor, median_scaling: bool, scale_factor: float
) -> list[dict[str, float]]:
    """Depth errors of a batch, per image: the validation protocol of ``md2bench.evaluate`` (no crop,
    1e-3 < GT < 80, the model's scaling), at the loader's GT resolution.

    Args:
        disp: B×1×H×W scaled disparity.
        depth_gt: B×1×Hg×Wg metres, 0 = no depth.
        median_scaling: per-image median scaling (monocular models).
        scale_factor: fixed factor (stereo-trained models).

    Returns:
        One dict of ``METRIC_NAMES`` per image with valid GT.
    """
    protocol = metrics.EvalProtocol("none", metrics.MIN_DEPTH, metrics.MAX_DEPTH)
    disp_up = torch.nn.functional.interpolate(disp.float(), size=depth_gt.shape[-2:], mode="bilinear",
                                              align_corners=False)
    pred = (1.0 / disp_up).double().cpu().numpy()
    gt = depth_gt.double().cpu().numpy()
    rows = []
    for b in range(pred.shape[0]):
        try:
            errors = metrics.evaluate_image(gt[b, 0], pred[b, 0], protocol, median_scaling, scale_factor)
        except ValueError:  # no valid GT pixel in this image
            continue
        rows.append({k: float(errors[k]) for k in metrics.METRIC_NAMES})
    return rows


def pose_errors(outputs: Any, pose_gt: torch.Tensor, cfg: Config) -> dict[str, np.ndarray]:
    """Errors of the predicted camera motion of every temporal source against the exact one (``pose_gt``,
    B×F×4×4 metres; the scale-free ``t_cos`` and ``rot_deg`` do not care about units, ``ate`` is in metres
    after the least-squares scale)."""
    pred, true = [], []
    for i, frame in enumerate(cfg.source_ids):
        if frame != "s":
            pred.append(outputs.T_src_tgt[:, i].detach().double().cpu().numpy())
            true.append(pose_gt[:, cfg.frames.index(frame)].double().cpu().numpy())
    return metrics.relative_pose_errors(np.concatenate(pred), np.concatenate(true))


@torch.no_grad()
def validate(
    models: torch.nn.ModuleDict,
    loader: DataLoader,
    cfg: Config,
    device: torch.device,
    max_batches: int = 0,
    picture: bool = False,
    scaling: tuple[bool, float] = (True, 1.0),
) -> ValidationOutput:
    """Validation losses (and depth metrics where the batch has ``depth_gt``) in eval mode, no gradients.

    Runs under a forked RNG seeded from the run seed, so it is repeatable and leaves the training RNG alone.

    Args:
        max_batches: stop after this many batches (0: the whole loader).
        picture: also return the first image's input, disparity, GT depth and error for the epoch figure.
        scaling: ``(median_scaling, scale_factor)`` of the depth metrics (``md2bench.evaluate.scaling_for``).
    """
    from md2bench import method

    was_training = models.training
    models.eval()
    sums: dict[str, float] = {}
    loss_batches = 0
    depth_rows: list[dict[str, float]] = []
    pose_rows: list[dict[str, np.ndarray]] = []
    pic: dict[str, np.ndarray] | None = None
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.train.seed + 1)
        for i, batch in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            with autocast_for(device, cfg):
                total, diagnostics, outputs = method.training_loss(models, batch, cfg, device)
            if "pose_gt" in batch and cfg.needs_pose_net:
                pose_rows.append(pose_errors(outputs, batch["pose_gt"], cfg))
            scalars = {"loss": total.detach().float(), **scalar_diagnostics(diagnostics)}
            for key, value in scalars.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            loss_batches += 1
            if "depth_gt" in batch or (picture and pic is None):
                images = batch["images"][:, 0].to(device).float() / 255.0
                with autocast_for(device, cfg):
                    disp = method.predict_disparity(models, images, cfg).float()
                if "depth_gt" in batch:
                    depth_rows += per_image_depth_errors(disp, batch["depth_gt"], *scaling)
                if picture and pic is None:
                    pic = picture_arrays(images[0], disp[0], batch.get("depth_gt"))
    metrics_out = {f"val/{k}": v / loss_batches for k, v in sums.items()} if loss_batches else {}
    if depth_rows:
        for key in depth_rows[0]:
            metrics_out[f"val/{key}"] = float(np.mean([row[key] for row in depth_rows]))
    for key in metrics.POSE_METRIC_NAMES if pose_rows else ():
        values = np.concatenate([row[key] for row in pose_rows])
        metrics_out[f"val/pose/{key}"] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    models.train(was_training)
    return ValidationOutput(metrics_out, pic)


# ============================================================================================ the picture
def picture_arrays(image: torch.Tensor, disp: torch.Tensor, depth_gt: torch.Tensor | None) -> dict[str, np.ndarray]:
    """Arrays for the epoch figure: input H×W×3, disparity H×W, and (when GT exists) GT depth and abs-rel error.

    The error map is the per-pixel abs rel ``|pred − gt| / gt`` (0 where there is no GT) of the prediction
    median-scaled over the pixels with GT (``md2bench.metrics.median_scale``).

    Args:
        image: 3×H×W in [0, 1]. disp: 1×H×W scaled disparity. depth_gt: B×1×Hg×Wg or None (first image used).
    """
    out = {"input": image.permute(1, 2, 0).float().cpu().numpy(), "disparity": disp[0].float().cpu().numpy()}
    if depth_gt is not None:
        gt = depth_gt[0, 0].float().cpu().numpy()
        disp_up = torch.nn.functional.interpolate(disp[None].float().cpu(), size=gt.shape, mode="bilinear",
                                                  align_corners=False)[0, 0]
        pred = (1.0 / disp_up.clamp_min(1e-8)).numpy()
        valid = gt > 0
        if valid.any():
            _, ratio = metrics.median_scale(gt[valid], pred[valid])
            pred = pred * np.float32(ratio)
        out["depth_gt"] = gt
        out["abs_rel_error"] = np.where(valid, np.abs(pred - gt) / np.maximum(gt, 1e-6), np.zeros_like(gt))
    return out


def epoch_figure(arrays: Mapping[str, np.ndarray], title: str) -> Any:
    """A matplotlib figure (Agg canvas, no pyplot state) with one panel per array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(arrays)
    fig = Figure(figsize=(4.0 * len(names), 2.2), dpi=100)
    FigureCanvasAgg(fig)
    cmaps = {"disparity": "magma", "depth_gt": "magma_r", "abs_rel_error": "viridis"}
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        data = arrays[name]
        if name == "input":
            ax.imshow(np.clip(data, 0.0, 1.0))
        elif name == "abs_rel_error":
            ax.imshow(data, cmap=cmaps[name], vmin=0.0, vmax=0.5)
        elif name == "depth_gt":
            positive = data[data > 0]
            ax.imshow(np.where(data > 0, data, np.nan), cmap=cmaps[name], vmin=0.0,
                      vmax=float(np.percentile(positive, 95)) if positive.size else 1.0)
        else:
            lo, hi = np.percentile(data, [5, 95])  # spread the (often narrow) disparity range over the map
            ax.imshow(data, cmap=cmaps.get(name, "magma"), vmin=float(lo), vmax=float(max(hi, lo + 1e-6)))
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


__all__ = ["ValidationOutput", "epoch_figure", "per_image_depth_errors", "picture_arrays", "pose_errors", "validate"]
