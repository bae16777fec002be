"""The Monodepth2 training step, assembled from ``geometry``, ``losses``, ``models`` and ``data.transforms``.

``training_loss(models, batch, cfg, device)`` = ``prepare_inputs`` → ``forward`` → ``compute_loss``
(REFERENCE.md §2.1–2.9). Which images go where (REFERENCE.md §7.10): the networks see the colour-jittered
("aug") scale-0 frames; every loss term uses the raw frames; the pose net sees pairs in temporal order and the
prediction for a pair (earlier, later) is read as ``T_later_earlier``, so it is ``T_src_tgt`` for a later
source and is inverted for an earlier one.

``compute_loss`` is the optimised formulation: one ``grid_sample`` per working resolution for all sources and,
in full-res mode, for all scales at once; target statistics are broadcast rather than repeated.
``md2bench.reference.reference_loss`` computes the same quantity the way the reference code writes it; the
tests hold the two equal, so optimisations here can be checked against it.

Precision: ``compute_loss`` (and the pose-matrix construction in ``forward``) run with autocast disabled and
cast everything to float32: under bf16 autocast a matmul of pixel coordinates (up to 640) would lose whole
pixels, and the SSIM variances (differences of squares) would lose all precision.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from md2bench.config import Config
from md2bench.data.transforms import color_jitter, make_pyramid
from md2bench.geometry import disp_to_depth, in_view, pose_vec_to_mat, sample_sources, scale_intrinsics, source_grids
from md2bench.losses import mask_regularisation, photometric_error, reprojection_loss, smoothness_loss
from md2bench.metrics import STEREO_SCALE_FACTOR

__all__ = [
    "Inputs",
    "Outputs",
    "prepare_inputs",
    "forward",
    "compute_loss",
    "loss_scale_weights",
    "training_loss",
    "predict_disparity",
]


@dataclass(frozen=True)
class Inputs:
    """A batch on the training device, ready for the networks and the loss.

    Attributes:
        raw: ``{s: B×F×3×H_s×W_s}`` float32 raw frames in [0, 1] for every scale the loss needs (0 and
            ``cfg.loss_scales``); frames in ``cfg.frames`` order (target first).
        aug: B×F×3×H×W colour-jittered scale-0 frames (what the networks see).
        K: ``{s: B×4×4}`` intrinsics in pixels of scale s.
        inv_K: ``{s: B×4×4}`` their inverses.
        stereo_T: B×4×4 ``T_src_tgt`` of the stereo source (identity where there is none).
        pose_gt: B×F×4×4 exact ``T_src_tgt`` of every frame in the network's units (the stereo baseline is
            0.1), where the batch has ``pose_gt`` (the synthetic world); else None.
    """

    raw: dict[int, Tensor]
    aug: Tensor
    K: dict[int, Tensor]
    inv_K: dict[int, Tensor]
    stereo_T: Tensor
    pose_gt: Tensor | None = None


@dataclass(frozen=True)
class Outputs:
    """What the networks predict for one batch.

    Attributes:
        disp: ``{s: B×1×H_s×W_s}`` sigmoid disparity of the target at every scale of ``cfg.model.scales``.
        T_src_tgt: B×N×4×4 float32, for each source in ``cfg.source_ids`` order the transform from the target
            camera into the source camera (the stereo source uses ``batch["stereo_T"]``). For ``posecnn`` these
            are the unscaled transforms; the loss rebuilds them per scale with the translation multiplied by
            the mean inverse depth.
        axisangle: B×Nt×3 float32 raw pose-net rotations of the Nt temporal sources, or None without a pose net.
        translation: B×Nt×3 float32 raw translations, or None.
        invert: per temporal source, whether its transform is the inverse of the prediction (earlier frames
            in ``pairs`` mode).
        mask: ``{s: B×N×H_s×W_s}`` predictive mask (sigmoid), or None.
    """

    disp: dict[int, Tensor]
    T_src_tgt: Tensor
    axisangle: Tensor | None = None
    translation: Tensor | None = None
    invert: tuple[bool, ...] = ()
    mask: dict[int, Tensor] | None = None


def _needed_scales(cfg: Config) -> tuple[int, ...]:
    return tuple(sorted(set(cfg.loss_scales) | {0}))


def no_autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


def prepare_inputs(batch: Mapping[str, Any], cfg: Config, device: torch.device | str) -> Inputs:
    """Move a loader batch to ``device`` and build raw pyramids, jittered frames and per-scale intrinsics.

    Args:
        batch: the batch contract of ``md2bench.data.schema`` (``images`` uint8 B×F×3×H×W, ``K``, ``stereo_T``,
            ``color_aug``, ``color_order``).
        cfg: the run's config (frames, loss scales).
        device: training device.

    Returns:
        :class:`Inputs`.
    """
    device = torch.device(device)
    images = batch["images"].to(device, non_blocking=True)
    num_frames = len(cfg.frames)
    if images.dim() != 5 or images.shape[1] != num_frames or images.shape[2] != 3:
        raise ValueError(
            f"batch['images'] must be B×{num_frames}×3×H×W (frames {cfg.frames} of data.mode "
            f"{cfg.data.mode!r}), got {tuple(images.shape)}"
        )
    scales = _needed_scales(cfg)
    raw = make_pyramid(images, scales)
    aug = color_jitter(
        raw[0], batch["color_aug"].to(device, non_blocking=True), batch["color_order"].to(device, non_blocking=True)
    )
    K0 = batch["K"].to(device, torch.float32, non_blocking=True)
    K = {s: scale_intrinsics(K0, s) for s in scales}
    # inv_ex: no error check, so no host sync; K of a camera is always invertible.
    inv_K = {s: torch.linalg.inv_ex(K[s]).inverse for s in scales}
    stereo_T = batch["stereo_T"].to(device, torch.float32, non_blocking=True)
    pose_gt = None
    if "pose_gt" in batch:
        pose_gt = batch["pose_gt"].to(device, torch.float32, non_blocking=True).clone()
        pose_gt[..., :3, 3] /= STEREO_SCALE_FACTOR  # metres -> network units (stereo baseline 0.54 m -> 0.1)
    elif cfg.model.pose_source == "gt" and cfg.has_temporal_sources:
        raise ValueError("model.pose_source = 'gt' but the batch has no 'pose_gt' (exact poses exist only in the "
                         "synthetic world, whose drive folders hold poses.txt)")
    return Inputs(raw=raw, aug=aug, K=K, inv_K=inv_K, stereo_T=stereo_T, pose_gt=pose_gt)


def _pose_inputs_order(frame: int) -> tuple[int, int]:
    """The temporal order of a (target, source) pair: (source, 0) for an earlier source, else (0, source)."""
    return (frame, 0) if frame < 0 else (0, frame)


def forward(models: nn.ModuleDict, inputs: Inputs, cfg: Config) -> Outputs:
    """Run depth, pose and (optional) mask networks on the jittered frames (REFERENCE.md §2.1, §4.5).

    Pose: ``pairs`` runs the pose net once per temporal source on (earlier, later) frames and inverts the
    prediction for earlier sources; ``all`` runs it once on every temporal frame in ``data.frame_ids`` order
    and uses output i for source i as is. ``shared`` sends all frames (the stereo one too, as the reference)
    through the depth encoder in one batch. No pose net is run for stereo-only training.

    Args:
        models: from ``md2bench.models.build_models(cfg)``.
        inputs: from :func:`prepare_inputs`.
        cfg: the run's config.

    Returns:
        :class:`Outputs`.
    """
    aug = inputs.aug
    batch = aug.shape[0]
    index = {frame: i for i, frame in enumerate(cfg.frames)}
    pose_net = cfg.model.pose_net

    frame_features: list[list[Tensor]] = []
    if pose_net == "shared" and cfg.needs_pose_net:
        # All frames (stereo included, as the reference) through the depth encoder in one batch.
        stacked = aug.transpose(0, 1).reshape(-1, *aug.shape[2:])  # (F·B)×3×H×W, frame-major
        frame_features = [list(level) for level in zip(*(f.split(batch) for f in models["encoder"](stacked)))]
        features = frame_features[0]
    else:
        features = models["encoder"](aug[:, 0])
    disp = models["depth"](features)
    mask = models["mask"](features) if cfg.loss.predictive_mask else None

    def run_pose(frames: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        if pose_net == "shared":
            return models["pose"]([frame_features[index[f]] for f in frames])
        stacked_frames = torch.cat([aug[:, index[f]] for f in frames], dim=1)  # B×3n×H×W
        if pose_net == "posecnn":
            return models["pose"](stacked_frames)
        return models["pose"]([models["pose_encoder"](stacked_frames)])

    temporal = [f for f in cfg.source_ids if f != "s"]
    axisangles: list[Tensor] = []
    translations: list[Tensor] = []
    invert: list[bool] = []
    if cfg.needs_pose_net:
        if cfg.model.pose_input == "pairs":
            for frame in temporal:
                axisangle, translation = run_pose(_pose_inputs_order(int(frame)))
                axisangles.append(axisangle[:, 0, 0])
                translations.append(translation[:, 0, 0])
                invert.append(int(frame) < 0)
        else:
            # All temporal frames in frame_ids order (0, -1, 1: not temporal order); output i is source i.
            axisangle, translation = run_pose(tuple(int(f) for f in cfg.temporal_ids))
            for i in range(len(temporal)):
                axisangles.append(axisangle[:, i, 0])
                translations.append(translation[:, i, 0])
                invert.append(False)

    with no_autocast(aug.device):
        axisangle_t = torch.stack(axisangles, dim=1).float() if axisangles else None
        translation_t = torch.stack(translations, dim=1).float() if translations else None
        transforms: list[Tensor] = []
        for i, frame in enumerate(cfg.source_ids):
            if frame == "s":
                transforms.append(inputs.stereo_T.float())
            elif not cfg.needs_pose_net:  # model.pose_source = "gt"
                assert inputs.pose_gt is not None
                transforms.append(inputs.pose_gt[:, index[frame]])
            else:
                assert axisangle_t is not None and translation_t is not None
                transforms.append(pose_vec_to_mat(axisangle_t[:, i], translation_t[:, i], invert[i]))
        T_src_tgt = torch.stack(transforms, dim=1)
    return Outputs(
        disp=disp,
        T_src_tgt=T_src_tgt,
        axisangle=axisangle_t,
        translation=translation_t,
        invert=tuple(invert),
        mask=mask,
    )


def _posecnn_transforms(outputs: Outputs, inputs: Inputs, cfg: Config, depth: Tensor) -> Tensor:
    """PoseCNN transforms with each translation × the per-image mean inverse depth (REFERENCE.md §2.4.3).

    Each source uses its own prediction and inversion flag. (The reference reads prediction 0 and inverts for
    f < 0 here whatever ``pose_model_input`` is, which in ``all`` mode gives both sources the first pose; in
    ``pairs`` mode, the only PoseCNN setting of the paper, the two agree.)

    Args:
        depth: (G·B)×1×H×W working-scale depths of G scales stacked scale-major.

    Returns:
        (G·B)×N×4×4.
    """
    assert outputs.axisangle is not None and outputs.translation is not None
    groups = depth.shape[0] // outputs.axisangle.shape[0]
    mean_inv_depth = (1.0 / depth).mean(dim=(2, 3))  # (G·B)×1
    axisangle = outputs.axisangle.repeat(groups, 1, 1)
    translation = outputs.translation.repeat(groups, 1, 1) * mean_inv_depth.unsqueeze(-1)
    transforms: list[Tensor] = []
    for i, frame in enumerate(cfg.source_ids):
        if frame == "s":
            transforms.append(inputs.stereo_T.float().repeat(groups, 1, 1))
        else:
            transforms.append(pose_vec_to_mat(axisangle[:, i], translation[:, i], outputs.invert[i]))
    return torch.stack(transforms, dim=1)


def _resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (align_corners=False) upsampling to ``size``, as the reference's full-res mode; no-op if equal."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def compute_loss(outputs: Outputs, inputs: Inputs, cfg: Config) -> tuple[Tensor, dict[str, Tensor]]:
    """The Monodepth2 loss (REFERENCE.md §2.4–2.8), in float32 whatever the surrounding autocast.

    Per loss scale s: the working scale is 0 (``full_res`` and ``single``; σ_s is upsampled to H×W) or s
    (``per_scale``). Sources are warped with the working-scale depth and K; photometric errors against the raw
    target; identity errors (auto-mask) are raw source vs raw target at the working scale; min/avg (with
    ``loss.mask_out_of_view``, over the sources whose sample stays inside the image) and the
    implicit auto-mask per :func:`md2bench.losses.reprojection_loss`; with a predictive mask, + weight·BCE;
    smoothness on the native-scale σ_s with the native-scale raw target, weight λ/2^s (``loss.smoothness_scales =
    "finest"``: at scale 0 only, weight λ once averaged). The total is the mean over ``cfg.loss_scales``, weighted
    by ``loss.coarse_weight`` for every scale above 0 (1, the reference: the plain mean). Tie-break
    noise (and, for ``loss.reprojection = "random"``, each pixel's source) comes from the default generator of the
    device (seeded by the trainer).

    Args:
        outputs: from :func:`forward`.
        inputs: from :func:`prepare_inputs`.
        cfg: the run's config.

    Returns:
        ``(total, diagnostics)``: scalar total loss; detached diagnostics ``loss/total``, per scale
        ``loss/s{s}``, ``loss/photometric/s{s}``, ``loss/smoothness/s{s}`` (unweighted),
        ``loss/mask_bce/s{s}`` (predictive mask) and ``automask/s{s}`` (fraction of pixels where a warped term
        won), and ``automask`` (that fraction at scale 0) when auto-masking is on.
    """
    with no_autocast(inputs.aug.device):
        noise = _draw_tiebreak_noise(inputs, cfg)
        draws = _draw_source_picks(inputs, cfg)
        loss_fn = _compiled_loss() if cfg.train.compile_loss else _compute_loss_fp32
        return loss_fn(outputs, inputs, cfg, noise, draws)


def loss_scale_weights(cfg: Config) -> dict[int, float]:
    """Each loss scale's weight in the total's weighted mean: 1 for scale 0, ``loss.coarse_weight`` above it."""
    return {s: 1.0 if s == 0 else float(cfg.loss.coarse_weight) for s in cfg.loss_scales}


def _draw_tiebreak_noise(inputs: Inputs, cfg: Config) -> list[Tensor]:
    """The auto-masking tie-break noise of every loss scale, drawn in the order the loss uses it.

    Drawn here, outside the (optionally compiled) loss, from the device's default generator (seeded by the
    trainer): one standard-normal tensor per loss scale shaped like that scale's identity errors.
    """
    loss_cfg = cfg.loss
    if not loss_cfg.automask or loss_cfg.automask_noise <= 0:
        return []
    channels = len(cfg.source_ids) if loss_cfg.reprojection == "min" else 1
    device = inputs.raw[0].device
    return [torch.randn(shape[0], channels, *shape[2:], device=device) for shape in _loss_shapes(inputs, cfg)]


def _draw_source_picks(inputs: Inputs, cfg: Config) -> list[Tensor]:
    """``loss.reprojection = "random"``: per loss scale, B×N×H×W uniform draws (the source each pixel takes),
    drawn after the tie-break noise from the same device generator; empty for ``min`` and ``avg``."""
    if cfg.loss.reprojection != "random":
        return []
    return [torch.rand(shape, device=inputs.raw[0].device) for shape in _loss_shapes(inputs, cfg)]


def _loss_shapes(inputs: Inputs, cfg: Config) -> list[tuple[int, int, int, int]]:
    """Per loss scale, (B, N sources, H, W) at the resolution its photometric error is computed (scale 0 in
    ``full_res``/``single`` mode, the scale itself in ``per_scale``)."""
    batch = inputs.raw[0].shape[0]
    shapes = []
    for s in cfg.loss_scales:
        height, width = inputs.raw[s if cfg.loss.multiscale == "per_scale" else 0].shape[-2:]
        shapes.append((batch, len(cfg.source_ids), height, width))
    return shapes


@functools.cache
def _compiled_loss() -> Any:
    """``torch.compile`` of the fp32 loss, built once per process (dynamo caches one graph per config)."""
    return torch.compile(_compute_loss_fp32, dynamic=False)


def _compute_loss_fp32(
    outputs: Outputs, inputs: Inputs, cfg: Config, noise: list[Tensor], draws: list[Tensor]
) -> tuple[Tensor, dict[str, Tensor]]:
    loss_cfg = cfg.loss
    scales = cfg.loss_scales
    raw = {s: inputs.raw[s].float() for s in _needed_scales(cfg)}
    disp = {s: outputs.disp[s].float() for s in scales}
    masks = None
    if loss_cfg.predictive_mask:
        if outputs.mask is None:
            raise ValueError("loss.predictive_mask is on but the outputs hold no mask: build the models with this cfg")
        masks = {s: outputs.mask[s].float() for s in scales}
    batch = raw[0].shape[0]
    weights = loss_scale_weights(cfg)  # the total's weighted mean
    # One group per working resolution: all loss scales at scale 0 in full-res (and single) mode.
    groups = [(s, (s,)) for s in scales] if loss_cfg.multiscale == "per_scale" else [(0, scales)]
    terms: dict[int, Tensor] = {}
    diagnostics: dict[str, Tensor] = {}
    for work, group in groups:
        frames = raw[work]
        size = (frames.shape[-2], frames.shape[-1])
        target, sources = frames[:, :1], frames[:, 1:]  # B×1×3×H×W, B×N×3×H×W
        count = len(group)
        _, depth = disp_to_depth(
            torch.cat([_resize_to(disp[s], size) for s in group]), cfg.model.min_depth, cfg.model.max_depth
        )  # (G·B)×1×H×W, scale-major
        if cfg.model.pose_net == "posecnn" and cfg.needs_pose_net:
            T = _posecnn_transforms(outputs, inputs, cfg, depth)
        else:
            T = outputs.T_src_tgt.float().repeat(count, 1, 1, 1)
        grids = source_grids(
            depth, T, inputs.K[work].float().repeat(count, 1, 1), inputs.inv_K[work].float().repeat(count, 1, 1)
        )  # (G·B)×N×H×W×2
        warped = sample_sources(sources.repeat(count, 1, 1, 1, 1) if count > 1 else sources, grids)
        valid = in_view(grids).reshape(count, batch, *grids.shape[1:4]) if loss_cfg.mask_out_of_view else None
        errors = photometric_error(
            warped.reshape(count, batch, *warped.shape[1:]), target.unsqueeze(0), loss_cfg.ssim, loss_cfg.ssim_weight
        )  # G×B×N×H×W
        identity = None
        if loss_cfg.automask:  # unwarped sources vs the target at the working scale; shared by the group
            identity = photometric_error(sources, target, loss_cfg.ssim, loss_cfg.ssim_weight)
        for g, s in enumerate(group):
            mask = _resize_to(masks[s], size) if masks is not None else None
            # the tie-break noise was drawn by compute_loss, from the device generator the trainer seeds
            photometric, diag = reprojection_loss(
                errors[g], identity, loss_cfg.reprojection, loss_cfg.automask_noise, None, mask,  # type: ignore
                noise=noise[scales.index(s)] if noise else None, valid=valid[g] if valid is not None else None,
                draws=draws[scales.index(s)] if draws else None,
            )
            term = photometric
            if mask is not None:
                bce = mask_regularisation(mask)
                term = term + loss_cfg.predictive_mask_weight * bce
                diagnostics[f"loss/mask_bce/s{s}"] = bce.detach()
            smooth = smoothness_loss(disp[s], raw[s][:, 0])
            if loss_cfg.smoothness_scales == "all":
                term = term + loss_cfg.smoothness * smooth / 2**s
            elif s == 0:  # "finest": weight λ once the terms are averaged over the scales, as a single-scale loss has it
                term = term + loss_cfg.smoothness * smooth * sum(weights.values())
            terms[s] = term
            diagnostics[f"loss/photometric/s{s}"] = photometric.detach()
            diagnostics[f"loss/smoothness/s{s}"] = smooth.detach()
            diagnostics[f"loss/s{s}"] = term.detach()
            if "automask" in diag:
                diagnostics[f"automask/s{s}"] = diag["automask"].mean()
    if all(w == 1.0 for w in weights.values()):  # the reference: the plain mean over scales
        total = torch.stack([terms[s] for s in scales]).sum() / len(scales)
    else:
        total = torch.stack([weights[s] * terms[s] for s in scales]).sum() / sum(weights.values())
    diagnostics["loss/total"] = total.detach()
    if "automask/s0" in diagnostics:
        diagnostics["automask"] = diagnostics["automask/s0"]
    return total, diagnostics


def training_loss(
    models: nn.ModuleDict, batch: Mapping[str, Any], cfg: Config, device: torch.device | str
) -> tuple[Tensor, dict[str, Tensor], Outputs]:
    """One training step's loss: :func:`prepare_inputs`, :func:`forward`, :func:`compute_loss`.

    Args:
        models: from ``build_models(cfg)``, already on ``device``.
        batch: a loader batch (``md2bench.data.schema``).
        cfg: the run's config.
        device: training device.

    Returns:
        ``(total, diagnostics, outputs)``.
    """
    inputs = prepare_inputs(batch, cfg, device)
    outputs = forward(models, inputs, cfg)
    total, diagnostics = compute_loss(outputs, inputs, cfg)
    return total, diagnostics, outputs


def predict_disparity(models: nn.ModuleDict, images: Tensor, cfg: Config) -> Tensor:
    """Scaled disparity of single images at scale 0 (what evaluation inverts to depth).

    Gradient mode and train/eval mode are the caller's (evaluation wraps this in ``torch.no_grad`` and
    ``models.eval()``).

    Args:
        models: with ``encoder`` and ``depth``.
        images: B×3×H×W float in [0, 1] (not jittered).
        cfg: the run's config (depth range).

    Returns:
        B×1×H×W float32 scaled disparity ``1/max_depth + (1/min_depth − 1/max_depth)·σ``.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be B×3×H×W floats in [0, 1], got {tuple(images.shape)}")
    sigmoid = models["depth"](models["encoder"](images))[0]
    scaled, _ = disp_to_depth(sigmoid.float(), cfg.model.min_depth, cfg.model.max_depth)
    return scaled
