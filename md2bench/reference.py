"""The loss as the reference trainer writes it: the oracle ``method.compute_loss`` is tested and benchmarked against.

Loops over scales and sources, one ``grid_sample`` per source, its own backprojection, projection, SSIM and
smoothness (REFERENCE.md §2). Slow; never used for training. ``tests/test_method.py`` holds it equal to
``compute_loss`` and ``md2bench bench`` (part ``reference``) times it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from md2bench.config import Config
from md2bench.geometry import disp_to_depth, pose_vec_to_mat
from md2bench.method import Inputs, Outputs, no_autocast

__all__ = ["reference_loss"]


def _ref_backproject(depth: Tensor, inv_K: Tensor) -> Tensor:
    batch, _, height, width = depth.shape
    xs, ys = torch.meshgrid(
        torch.arange(width, dtype=depth.dtype, device=depth.device),
        torch.arange(height, dtype=depth.dtype, device=depth.device),
        indexing="xy",
    )
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], 0).unsqueeze(0).repeat(batch, 1, 1)
    pix = torch.cat([pix, torch.ones(batch, 1, height * width, dtype=depth.dtype, device=depth.device)], 1)
    cam = torch.matmul(inv_K[:, :3, :3], pix)
    cam = depth.view(batch, 1, -1) * cam
    return torch.cat([cam, torch.ones(batch, 1, height * width, dtype=depth.dtype, device=depth.device)], 1)


def _ref_project(points: Tensor, K: Tensor, T: Tensor, height: int, width: int) -> Tensor:
    P = torch.matmul(K, T)[:, :3, :]
    cam = torch.matmul(P, points)
    pix = cam[:, :2, :] / (cam[:, 2, :].unsqueeze(1) + 1e-7)
    pix = pix.view(points.shape[0], 2, height, width).permute(0, 2, 3, 1).clone()
    pix[..., 0] /= width - 1
    pix[..., 1] /= height - 1
    return (pix - 0.5) * 2


def _ref_ssim(x: Tensor, y: Tensor) -> Tensor:
    pad = nn.ReflectionPad2d(1)
    pool = nn.AvgPool2d(3, 1)
    x, y = pad(x), pad(y)
    mu_x, mu_y = pool(x), pool(y)
    sigma_x = pool(x**2) - mu_x**2
    sigma_y = pool(y**2) - mu_y**2
    sigma_xy = pool(x * y) - mu_x * mu_y
    n = (2 * mu_x * mu_y + 0.01**2) * (2 * sigma_xy + 0.03**2)
    d = (mu_x**2 + mu_y**2 + 0.01**2) * (sigma_x + sigma_y + 0.03**2)
    return torch.clamp((1 - n / d) / 2, 0, 1)


def _ref_pe(pred: Tensor, target: Tensor, cfg: Config) -> Tensor:
    l1 = torch.abs(target - pred).mean(1, True)
    if not cfg.loss.ssim:
        return l1
    alpha = cfg.loss.ssim_weight
    return alpha * _ref_ssim(pred, target).mean(1, True) + (1 - alpha) * l1


def _ref_smooth(disp: Tensor, img: Tensor) -> Tensor:
    gdx = torch.abs(disp[:, :, :, :-1] - disp[:, :, :, 1:])
    gdy = torch.abs(disp[:, :, :-1, :] - disp[:, :, 1:, :])
    gix = torch.mean(torch.abs(img[:, :, :, :-1] - img[:, :, :, 1:]), 1, keepdim=True)
    giy = torch.mean(torch.abs(img[:, :, :-1, :] - img[:, :, 1:, :]), 1, keepdim=True)
    return (gdx * torch.exp(-gix)).mean() + (gdy * torch.exp(-giy)).mean()


def reference_loss(outputs: Outputs, inputs: Inputs, cfg: Config) -> tuple[Tensor, dict[str, Tensor]]:
    """The same loss as :func:`compute_loss`, written as the reference does (slow; for tests only).

    Draws the tie-break noise in the same order and shapes as :func:`compute_loss`, so with the same RNG state
    the two agree to float tolerance.

    Args:
        outputs: from :func:`forward`.
        inputs: from :func:`prepare_inputs`.
        cfg: the run's config.

    Returns:
        ``(total, diagnostics)`` with ``loss/s{s}`` per scale.
    """
    with no_autocast(inputs.aug.device):
        opt = cfg.loss
        height, width = inputs.raw[0].shape[-2:]
        total = torch.zeros((), device=inputs.aug.device)
        diagnostics: dict[str, Tensor] = {}
        for scale in cfg.loss_scales:
            loss = torch.zeros((), device=inputs.aug.device)
            source_scale = scale if opt.multiscale == "per_scale" else 0
            disp = outputs.disp[scale].float()
            if opt.multiscale != "per_scale":
                disp = F.interpolate(disp, [height, width], mode="bilinear", align_corners=False)
            _, depth = disp_to_depth(disp, cfg.model.min_depth, cfg.model.max_depth)
            frames = inputs.raw[source_scale].float()
            h, w = frames.shape[-2:]
            target = frames[:, 0]
            K, inv_K = inputs.K[source_scale].float(), inputs.inv_K[source_scale].float()
            reprojection_losses = []
            for i, frame_id in enumerate(cfg.source_ids):
                if frame_id == "s":
                    T = inputs.stereo_T.float()
                elif cfg.model.pose_net == "posecnn":
                    assert outputs.axisangle is not None and outputs.translation is not None
                    mean_inv_depth = (1 / depth).mean(3, True).mean(2, True)
                    T = pose_vec_to_mat(
                        outputs.axisangle[:, i], outputs.translation[:, i] * mean_inv_depth[:, 0, 0], outputs.invert[i]
                    )
                else:
                    T = outputs.T_src_tgt[:, i].float()
                cam_points = _ref_backproject(depth, inv_K)
                pix_coords = _ref_project(cam_points, K, T, h, w)
                warped = F.grid_sample(
                    frames[:, i + 1], pix_coords, mode="bilinear", padding_mode="border", align_corners=True
                )
                reprojection_losses.append(_ref_pe(warped, target, cfg))
            reprojection = torch.cat(reprojection_losses, 1)
            identity = None
            if opt.automask:
                identity = torch.cat([_ref_pe(frames[:, i + 1], target, cfg) for i in range(cfg.num_sources)], 1)
                if opt.reprojection == "avg":
                    identity = identity.mean(1, keepdim=True)
            elif opt.predictive_mask:
                assert outputs.mask is not None
                mask = outputs.mask[scale].float()
                if opt.multiscale != "per_scale":
                    mask = F.interpolate(mask, [height, width], mode="bilinear", align_corners=False)
                reprojection = reprojection * mask
                loss = loss + opt.predictive_mask_weight * F.binary_cross_entropy(mask, torch.ones_like(mask))
            if opt.reprojection == "avg":
                reprojection = reprojection.mean(1, keepdim=True)
            if identity is not None:
                if opt.automask_noise > 0:
                    identity = identity + torch.randn(identity.shape, device=identity.device) * opt.automask_noise
                combined = torch.cat([identity, reprojection], 1)
            else:
                combined = reprojection
            if combined.shape[1] == 1:
                to_optimise = combined
            else:
                to_optimise, _ = torch.min(combined, dim=1)
            loss = loss + to_optimise.mean()
            native = outputs.disp[scale].float()
            norm_disp = native / (native.mean(2, True).mean(3, True) + 1e-7)
            loss = loss + opt.smoothness * _ref_smooth(norm_disp, inputs.raw[scale][:, 0].float()) / (2**scale)
            total = total + loss
            diagnostics[f"loss/s{scale}"] = loss.detach()
        total = total / len(cfg.loss_scales)
        diagnostics["loss/total"] = total.detach()
        return total, diagnostics
