"""The Monodepth2 step: inputs, forward passes, the loss, its reference formulation and every ablation flag.

Tiny inputs throughout (64×64, batch 2, ResNet-18 from scratch) so the file runs in seconds on a CPU.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from md2bench.config import Config
from md2bench.geometry import disp_to_depth, in_view, pose_vec_to_mat, source_grids, stereo_transform, warp
from md2bench.losses import photometric_error, smoothness_loss
from md2bench.method import (
    Outputs,
    compute_loss,
    forward,
    predict_disparity,
    prepare_inputs,
    training_loss,
)
from md2bench.models import build_models
from md2bench.reference import reference_loss

HEIGHT, WIDTH, BATCH = 64, 64, 2
ALL_FRAMES = (0, -1, 1, "s")  # the MS frame order; M and S batches are slices of it


def _cfg(**overrides: Any) -> Config:
    base = {"model.pretrained": "scratch", "data.height": HEIGHT, "data.width": WIDTH, "train.batch_size": BATCH}
    return Config().override({**base, **overrides})


def _batch(cfg: Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch per the schema: smooth random frames (so warps and SSIM see structure), KITTI-like K."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(BATCH, len(ALL_FRAMES), 3, HEIGHT // 8, WIDTH // 8, generator=g)
    frames = F.interpolate(low.flatten(0, 1), size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)
    frames = frames.reshape(BATCH, len(ALL_FRAMES), 3, HEIGHT, WIDTH)
    frames = frames[:, [ALL_FRAMES.index(f) for f in cfg.frames]]
    K = torch.tensor(
        [[0.58 * WIDTH, 0, 0.5 * WIDTH, 0], [0, 1.92 * HEIGHT, 0.5 * HEIGHT, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    )
    return {
        "images": (frames * 255).round().to(torch.uint8),
        "K": K.expand(BATCH, 4, 4).clone(),
        "stereo_T": torch.stack([stereo_transform(True, False), stereo_transform(False, True)]),
        # sample 0 un-jittered, sample 1 jittered
        "color_aug": torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.1, 0.9, 1.15, 0.05]]),
        "color_order": torch.tensor([[0, 1, 2, 3], [2, 0, 3, 1]]),
        "flip": torch.tensor([False, True]),
        "index": torch.arange(BATCH),
    }


def _models(cfg: Config, seed: int = 0) -> torch.nn.ModuleDict:
    torch.manual_seed(seed)
    return build_models(cfg).train()


def _loss(models: torch.nn.ModuleDict, cfg: Config, seed: int = 0) -> float:
    torch.manual_seed(seed)  # the tie-break noise
    with torch.no_grad():
        total, _, _ = training_loss(models, _batch(cfg), cfg, "cpu")
    return total.item()


@functools.lru_cache(maxsize=None)
def _fresh_loss(overrides: tuple[tuple[str, Any], ...]) -> float:
    """Loss of freshly built (seed 0) networks on the standard batch; cached, the CPU is shared."""
    cfg = _cfg(**dict(overrides))
    return _loss(_models(cfg), cfg)


@pytest.fixture(scope="module")
def default_step() -> tuple[Config, torch.nn.ModuleDict, Outputs]:
    """The default config's networks and their (no-grad) outputs on the standard batch, computed once."""
    cfg = _cfg()
    models = _models(cfg)
    with torch.no_grad():
        outputs = forward(models, prepare_inputs(_batch(cfg), cfg, "cpu"), cfg)
    return cfg, models, outputs


# ----- inputs and forward -----------------------------------------------------------------------------------


def test_prepare_inputs_builds_pyramids_jitter_and_intrinsics() -> None:
    cfg = _cfg()
    batch = _batch(cfg)
    inputs = prepare_inputs(batch, cfg, "cpu")
    for s in (0, 1, 2, 3):
        assert inputs.raw[s].shape == (BATCH, 3, 3, HEIGHT // 2**s, WIDTH // 2**s)
        # fx at scale s = 0.58·W/2^s
        assert inputs.K[s][0, 0, 0].item() == pytest.approx(0.58 * WIDTH / 2**s)
        torch.testing.assert_close(inputs.K[s] @ inputs.inv_K[s], torch.eye(4).expand(BATCH, 4, 4))
    torch.testing.assert_close(inputs.raw[0], batch["images"].float() / 255)
    # sample 0 has identity jitter (networks see the raw frames), sample 1 is jittered
    torch.testing.assert_close(inputs.aug[0], inputs.raw[0][0])
    assert not torch.allclose(inputs.aug[1], inputs.raw[0][1])
    with pytest.raises(ValueError, match=r"B×4×3×H×W"):
        prepare_inputs(batch, _cfg(**{"data.mode": "MS"}), "cpu")


def test_forward_reads_pose_pairs_in_temporal_order_and_inverts_earlier_frames() -> None:
    cfg = _cfg(**{"data.mode": "MS"})
    models = _models(cfg)
    inputs = prepare_inputs(_batch(cfg), cfg, "cpu")
    with torch.no_grad():
        outputs = forward(models, inputs, cfg)
        assert outputs.invert == (True, False)  # sources (-1, 1)
        aug = inputs.aug  # frames (0, -1, 1, "s")
        # frame -1: the pair (I_-1, I_0) in temporal order; the prediction maps -1 into 0, so T_src_tgt for
        # source -1 is its inverse
        a, t = models["pose"]([models["pose_encoder"](torch.cat([aug[:, 1], aug[:, 0]], 1))])
        torch.testing.assert_close(outputs.T_src_tgt[:, 0], pose_vec_to_mat(a[:, 0, 0], t[:, 0, 0], invert=True))
        # frame +1: the pair (I_0, I_1); the prediction is used as is
        a, t = models["pose"]([models["pose_encoder"](torch.cat([aug[:, 0], aug[:, 2]], 1))])
        torch.testing.assert_close(outputs.T_src_tgt[:, 1], pose_vec_to_mat(a[:, 0, 0], t[:, 0, 0]))
    # the stereo source uses batch["stereo_T"]
    torch.testing.assert_close(outputs.T_src_tgt[:, 2], inputs.stereo_T)
    assert set(outputs.disp) == {0, 1, 2, 3}
    assert outputs.disp[2].shape == (BATCH, 1, HEIGHT // 4, WIDTH // 4)


def test_predict_disparity_is_scaled_disparity_at_scale_zero(
    default_step: tuple[Config, torch.nn.ModuleDict, Outputs],
) -> None:
    cfg, models, _ = default_step
    images = torch.rand(BATCH, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        disp = predict_disparity(models, images, cfg)
        sigmoid = models["depth"](models["encoder"](images))[0]
    assert disp.shape == (BATCH, 1, HEIGHT, WIDTH)
    # scaled = 0.01 + 9.99σ, so within [1/max_depth, 1/min_depth] = [0.01, 10]
    torch.testing.assert_close(disp, 0.01 + 9.99 * sigmoid)


# ----- the loss -----------------------------------------------------------------------------------------------


def _identity_outputs(cfg: Config, seed: int = 0) -> Outputs:
    """Random native-scale disparities and identity poses: every warp returns its source unchanged."""
    g = torch.Generator().manual_seed(seed)
    disp = {s: torch.rand(BATCH, 1, HEIGHT // 2**s, WIDTH // 2**s, generator=g) for s in cfg.model.scales}
    return Outputs(disp=disp, T_src_tgt=torch.eye(4).expand(BATCH, cfg.num_sources, 4, 4).clone())


@pytest.mark.parametrize("multiscale", ["full_res", "per_scale", "single"])
def test_multiscale_modes_compare_at_the_resolutions_they_claim(multiscale: str) -> None:
    cfg = _cfg(**{"loss.multiscale": multiscale, "loss.automask": False})
    inputs = prepare_inputs(_batch(cfg), cfg, "cpu")
    outputs = _identity_outputs(cfg)
    _, diag = compute_loss(outputs, inputs, cfg)

    def min_error_at(w: int) -> float:
        # identity pose: warped = source, so the term is the per-pixel min over sources of pe(raw_f, raw_0) at
        # the working scale w, averaged over its pixels
        raw = inputs.raw[w]
        return photometric_error(raw[:, 1:], raw[:, :1], ssim=True).min(dim=1).values.mean().item()

    expected_scales = (0,) if multiscale == "single" else (0, 1, 2, 3)
    photometric_keys = sorted(k for k in diag if k.startswith("loss/photometric/"))
    assert photometric_keys == [f"loss/photometric/s{s}" for s in expected_scales]
    for s in expected_scales:
        work = s if multiscale == "per_scale" else 0
        # (tolerance: an identity warp is exact to ~1e-6, see test_geometry)
        assert diag[f"loss/photometric/s{s}"].item() == pytest.approx(min_error_at(work), abs=1e-5)
        # smoothness always at the native scale, on the native sigmoid and the native raw target
        native = smoothness_loss(outputs.disp[s], inputs.raw[s][:, 0]).item()
        assert diag[f"loss/smoothness/s{s}"].item() == pytest.approx(native, rel=1e-6)
    if multiscale == "per_scale":
        # the coarse scales really see coarser images: the terms differ from scale 0
        assert abs(min_error_at(3) - min_error_at(0)) > 1e-3
    # total = mean over loss scales of photometric + 1e-3·smooth/2^s
    terms = [diag[f"loss/photometric/s{s}"] + 1e-3 * diag[f"loss/smoothness/s{s}"] / 2**s for s in expected_scales]
    assert diag["loss/total"].item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-6)


@pytest.mark.parametrize("multiscale", ["full_res", "per_scale", "single"])
def test_smoothness_at_the_finest_scale_only_keeps_every_photometric_term(multiscale: str) -> None:
    """``loss.smoothness_scales = "finest"``: the same photometric terms at every loss scale, and the smoothness
    of scale 0 alone with weight λ after the mean over scales (a single-scale loss's weight); with
    ``multiscale = "single"`` it changes nothing."""
    base = {"loss.multiscale": multiscale, "loss.automask": False}
    every, finest = _cfg(**base), _cfg(**base, **{"loss.smoothness_scales": "finest"})
    inputs = prepare_inputs(_batch(every), every, "cpu")
    outputs = _identity_outputs(every)
    total_every, diag_every = compute_loss(outputs, inputs, every)
    total_finest, diag_finest = compute_loss(outputs, inputs, finest)
    scales = every.loss_scales
    for s in scales:
        assert diag_finest[f"loss/photometric/s{s}"].item() == diag_every[f"loss/photometric/s{s}"].item()
    photometric = torch.stack([diag_finest[f"loss/photometric/s{s}"] for s in scales]).mean()
    expected = photometric + 1e-3 * diag_finest["loss/smoothness/s0"]
    assert total_finest.item() == pytest.approx(expected.item(), rel=1e-6)
    if multiscale == "single":
        assert total_finest.item() == pytest.approx(total_every.item(), rel=1e-7)
    else:  # random maps: Σ_s smooth_s/2^s/4 is about half of smooth_0, so the totals differ
        gap = total_finest.item() - total_every.item()
        smooth = [diag_every[f"loss/smoothness/s{s}"].item() for s in scales]
        averaged = sum(v / 2**s for s, v in zip(scales, smooth)) / len(scales)
        assert gap == pytest.approx(1e-3 * (smooth[0] - averaged), rel=1e-3)
        assert gap > 1e-5


@pytest.mark.parametrize("multiscale", ["full_res", "per_scale"])
def test_coarse_weight_weighs_the_scales_above_zero(multiscale: str) -> None:
    """``loss.coarse_weight = w``: total = (term_0 + w·Σ_{s>0} term_s) / (1 + 3w), every term as before; w = 1 is
    the reference's plain mean to the bit, w = 0 the scale-0 term alone (the single-scale loss's total)."""
    base = {"loss.multiscale": multiscale, "loss.automask": False}
    reference = _cfg(**base)
    inputs = prepare_inputs(_batch(reference), reference, "cpu")
    outputs = _identity_outputs(reference)
    total_ref, diag_ref = compute_loss(outputs, inputs, reference)
    assert compute_loss(outputs, inputs, _cfg(**base, **{"loss.coarse_weight": 1.0}))[0].item() == total_ref.item()
    terms = [diag_ref[f"loss/s{s}"].item() for s in (0, 1, 2, 3)]
    assert len(set(terms)) == 4  # the hand sums below can only tell the weights apart if the terms differ
    for weight in (0.25, 0.0, 2.0):
        total, diag = compute_loss(outputs, inputs, _cfg(**base, **{"loss.coarse_weight": weight}))
        assert [diag[f"loss/s{s}"].item() for s in (0, 1, 2, 3)] == terms  # each term unchanged
        expected = (terms[0] + weight * sum(terms[1:])) / (1 + 3 * weight)
        assert total.item() == pytest.approx(expected, rel=1e-6)
    single = _cfg(**{"loss.multiscale": "single", "loss.automask": False})
    total_single, _ = compute_loss(outputs, prepare_inputs(_batch(single), single, "cpu"), single)
    total_zero, _ = compute_loss(outputs, inputs, _cfg(**base, **{"loss.coarse_weight": 0.0}))
    if multiscale == "full_res":  # per_scale's scale 0 is the same term too; checked once
        assert total_zero.item() == pytest.approx(total_single.item(), rel=1e-7)


def test_coarse_weight_keeps_finest_smoothness_at_the_single_scale_weight() -> None:
    """With ``loss.smoothness_scales = "finest"`` the scale-0 smoothness keeps weight λ after the weighted mean."""
    cfg = _cfg(**{"loss.automask": False, "loss.smoothness_scales": "finest", "loss.coarse_weight": 0.5})
    inputs = prepare_inputs(_batch(cfg), cfg, "cpu")
    total, diag = compute_loss(_identity_outputs(cfg), inputs, cfg)
    photometric = [diag[f"loss/photometric/s{s}"].item() for s in (0, 1, 2, 3)]
    expected = (photometric[0] + 0.5 * sum(photometric[1:])) / 2.5 + 1e-3 * diag["loss/smoothness/s0"].item()
    assert total.item() == pytest.approx(expected, rel=1e-6)


def _sideways_outputs(cfg: Config, columns: float) -> Outputs:
    """Constant disparity; source 0 at the identity, source 1 shifted sideways so that every point moves
    ``columns`` px to the right (f·t_x/Z): its last ceil(columns) columns leave the image."""
    disp = {s: torch.full((BATCH, 1, HEIGHT // 2**s, WIDTH // 2**s), 0.3) for s in cfg.model.scales}
    _, depth = disp_to_depth(torch.tensor(0.3), cfg.model.min_depth, cfg.model.max_depth)
    T = torch.eye(4).repeat(BATCH, cfg.num_sources, 1, 1)
    T[:, 1, 0, 3] = columns * depth / (0.58 * WIDTH)
    return Outputs(disp=disp, T_src_tgt=T)


@pytest.mark.parametrize("reduce", ["min", "avg"])
def test_mask_out_of_view_leaves_the_source_a_pixel_has_left_out_of_the_min_and_avg(reduce: str) -> None:
    """Source 1's warp pushes the last 6 columns out of its image: with ``loss.mask_out_of_view`` those
    columns take source 0's error alone; every other pixel is reduced over both sources, as without it."""
    overrides = {"loss.multiscale": "single", "loss.automask": False, "loss.reprojection": reduce, "data.mode": "M"}
    cfg = _cfg(**overrides, **{"loss.mask_out_of_view": True})
    inputs = prepare_inputs(_batch(cfg), cfg, "cpu")
    outputs = _sideways_outputs(cfg, 5.5)
    _, diag = compute_loss(outputs, inputs, cfg)
    _, plain = compute_loss(outputs, inputs, _cfg(**overrides))
    raw = inputs.raw[0]
    _, depth = disp_to_depth(outputs.disp[0], cfg.model.min_depth, cfg.model.max_depth)
    errors = photometric_error(warp(raw[:, 1:], depth, outputs.T_src_tgt, inputs.K[0], inputs.inv_K[0]), raw[:, :1],
                               ssim=True)  # B×2×H×W
    both = errors.min(dim=1).values if reduce == "min" else errors.mean(dim=1)
    seen = in_view(source_grids(depth, outputs.T_src_tgt, inputs.K[0], inputs.inv_K[0]))  # B×2×H×W
    assert not seen[:, 1, :, WIDTH - 6:].any() and seen[:, 1, 1:-1, : WIDTH - 6].all()
    assert seen[:, 0, 1:-1, 1:-1].all()  # (the border rows and columns sit on |u'| = 1 up to float error)
    only_0 = seen[:, 0] & ~seen[:, 1]
    only_1 = seen[:, 1] & ~seen[:, 0]
    expected = torch.where(only_0, errors[:, 0], torch.where(only_1, errors[:, 1], both)).mean()
    assert diag["loss/photometric/s0"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert plain["loss/photometric/s0"].item() == pytest.approx(both.mean().item(), rel=1e-5)
    assert diag["loss/photometric/s0"].item() != pytest.approx(plain["loss/photometric/s0"].item(), rel=1e-4)


def test_mask_out_of_view_changes_nothing_when_every_sample_is_in_view() -> None:
    for reduce in ("min", "avg"):
        cfg = _cfg(**{"loss.reprojection": reduce, "loss.automask_noise": 0.0})
        inputs = prepare_inputs(_batch(cfg), cfg, "cpu")
        masked_cfg = _cfg(**{"loss.reprojection": reduce, "loss.automask_noise": 0.0, "loss.mask_out_of_view": True})
        plain, _ = compute_loss(_identity_outputs(cfg), inputs, cfg)
        masked, _ = compute_loss(_identity_outputs(cfg), inputs, masked_cfg)
        assert masked.item() == plain.item()


def test_random_reduction_takes_one_seeded_source_per_pixel_and_brackets_min_and_avg() -> None:
    """``loss.reprojection = "random"``: per pixel the error of the source with the larger uniform draw (drawn
    after the tie-break noise from the seeded device generator), so the same seed gives the same loss, and the
    per-pixel value lies between the minimum and the maximum of the two sources' errors."""
    overrides = {"loss.multiscale": "single", "loss.automask": False, "data.mode": "M"}
    cfg = _cfg(**overrides, **{"loss.reprojection": "random"})
    inputs = prepare_inputs(_batch(cfg), cfg, "cpu")
    outputs = _sideways_outputs(cfg, 2.0)
    raw = inputs.raw[0]
    _, depth = disp_to_depth(outputs.disp[0], cfg.model.min_depth, cfg.model.max_depth)
    errors = photometric_error(warp(raw[:, 1:], depth, outputs.T_src_tgt, inputs.K[0], inputs.inv_K[0]), raw[:, :1],
                               ssim=True)  # B×2×H×W
    torch.manual_seed(5)
    loss, _ = compute_loss(outputs, inputs, cfg)
    torch.manual_seed(5)
    draws = torch.rand(BATCH, 2, HEIGHT, WIDTH)  # what compute_loss draws (no tie-break noise without auto-mask)
    expected = errors.gather(1, draws.argmax(dim=1, keepdim=True)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.manual_seed(5)
    assert compute_loss(outputs, inputs, cfg)[0].item() == loss.item()
    torch.manual_seed(6)
    assert compute_loss(outputs, inputs, cfg)[0].item() != loss.item()
    low, high = errors.min(dim=1).values.mean().item(), errors.max(dim=1).values.mean().item()
    assert low < loss.item() < high


def test_automask_diagnostic_is_the_fraction_where_a_warped_term_won() -> None:
    cfg = _cfg()
    inputs = prepare_inputs(_batch(cfg), cfg, "cpu")
    torch.manual_seed(0)
    _, diag = compute_loss(_identity_outputs(cfg), inputs, cfg)
    # identity pose: warped error = identity error per source (up to ~1e-6 float error), and the identity
    # channels get +N(0, 1e-10) noise, so each pixel's winner is a coin flip: the fraction is near 1/2
    assert 0.3 < diag["automask"].item() < 0.7
    assert diag["automask"].item() == diag["automask/s0"].item()


def test_automask_diagnostic_counts_the_pixels_where_warping_won() -> None:
    """Sources that are the target shifted by one pixel, and the pose that undoes the shift: warping wins at
    (almost) every pixel, so the diagnostic is near 1; an inverted mask (the identity's wins) would read near 0."""
    cfg = _cfg(**{"data.mode": "M", "loss.multiscale": "full_res"})
    batch = _batch(cfg)
    target = batch["images"][:, 0]
    shifted = torch.roll(target, shifts=1, dims=-1)  # S(u) = T(u - 1)
    batch["images"] = torch.stack([target, shifted, shifted], 1)
    batch["color_aug"] = torch.tensor([[1.0, 1.0, 1.0, 0.0]] * BATCH)
    inputs = prepare_inputs(batch, cfg, "cpu")
    disp = {s: torch.full((BATCH, 1, HEIGHT // 2**s, WIDTH // 2**s), 0.5) for s in cfg.model.scales}
    _, depth = disp_to_depth(disp[0], cfg.model.min_depth, cfg.model.max_depth)
    T = torch.eye(4).repeat(BATCH, cfg.num_sources, 1, 1)
    T[..., 0, 3] = depth[0, 0, 0, 0] / batch["K"][0, 0, 0]  # u_src = u_tgt + fx·tx/Z = u_tgt + 1: warped = target
    torch.manual_seed(0)
    _, diag = compute_loss(Outputs(disp=disp, T_src_tgt=T), inputs, cfg)
    assert diag["automask"].item() > 0.9  # measured 0.96; with the pose reversed (warping loses) 0.02


def _as_leaves(outputs: Outputs) -> Outputs:
    """Detached copies that require grad, to compare gradients of two loss formulations w.r.t. the outputs."""

    def leaf(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().clone().requires_grad_()

    return Outputs(
        disp={s: leaf(d) for s, d in outputs.disp.items()},  # type: ignore[misc]
        T_src_tgt=leaf(outputs.T_src_tgt),  # type: ignore[arg-type]
        axisangle=leaf(outputs.axisangle),
        translation=leaf(outputs.translation),
        invert=outputs.invert,
        mask=None if outputs.mask is None else {s: leaf(m) for s, m in outputs.mask.items()},  # type: ignore[misc]
    )


def _random_outputs(cfg: Config, seed: int = 0) -> Outputs:
    """Network-free outputs: random sigmoids, small random poses (pairs-mode inversion), random masks."""
    g = torch.Generator().manual_seed(seed)
    disp = {s: 0.05 + 0.9 * torch.rand(BATCH, 1, HEIGHT // 2**s, WIDTH // 2**s, generator=g) for s in cfg.model.scales}
    temporal = [int(f) for f in cfg.source_ids if f != "s"]
    axisangle = 0.02 * torch.randn(BATCH, len(temporal), 3, generator=g)
    translation = 0.05 * torch.randn(BATCH, len(temporal), 3, generator=g)
    invert = tuple(f < 0 for f in temporal)
    transforms = [pose_vec_to_mat(axisangle[:, i], translation[:, i], invert[i]) for i in range(len(temporal))]
    if cfg.use_stereo:
        transforms.append(stereo_transform(True, False).expand(BATCH, 4, 4))
    mask = None
    if cfg.loss.predictive_mask:
        mask = {
            s: 0.1 + 0.8 * torch.rand(BATCH, cfg.num_sources, HEIGHT // 2**s, WIDTH // 2**s, generator=g)
            for s in cfg.model.scales
        }
    return Outputs(disp, torch.stack(transforms, dim=1), axisangle, translation, invert, mask)


# The three the speed work must keep equal run through the real networks; the rest use random outputs.
REFERENCE_CONFIGS = {
    "full": ({}, "networks"),
    "baseline": ({"loss.reprojection": "avg", "loss.multiscale": "per_scale", "loss.automask": False}, "networks"),
    "MS": ({"data.mode": "MS"}, "networks"),
    "S": ({"data.mode": "S"}, "random"),
    "avg_automask": ({"loss.reprojection": "avg"}, "random"),
    "min_per_scale": ({"loss.multiscale": "per_scale"}, "random"),
    "zhou_mask": ({"loss.automask": False, "loss.predictive_mask": True}, "random"),
    "posecnn": ({"model.pose_net": "posecnn", "data.mode": "MS"}, "random"),
    "single_no_ssim": ({"loss.multiscale": "single", "loss.ssim": False}, "random"),
}


@pytest.mark.parametrize("name", list(REFERENCE_CONFIGS))
def test_optimised_loss_equals_the_reference_formulation(
    name: str, default_step: tuple[Config, torch.nn.ModuleDict, Outputs]
) -> None:
    overrides, source = REFERENCE_CONFIGS[name]
    cfg = _cfg(**overrides)
    inputs = prepare_inputs(_batch(cfg), cfg, "cpu")
    if source == "networks" and cfg.data.mode == "M":
        outputs = _as_leaves(default_step[2])  # the loss switches do not change the networks or batch
    elif source == "networks":
        with torch.no_grad():
            outputs = _as_leaves(forward(_models(cfg), inputs, cfg))
    else:
        outputs = _as_leaves(_random_outputs(cfg))
    # gradients w.r.t. the disparities, the temporal transforms, the pose vectors and the masks (the stereo
    # transform is a constant that the reference reads from the batch, the optimised path from T_src_tgt)
    temporal = len(cfg.temporal_ids) - 1
    leaves = [outputs.disp[s] for s in cfg.loss_scales] + [outputs.T_src_tgt]
    if outputs.axisangle is not None:
        leaves += [outputs.axisangle, outputs.translation]
    if outputs.mask is not None:
        leaves += [outputs.mask[s] for s in cfg.loss_scales]
    # the same RNG state -> the same tie-break noise in both
    torch.manual_seed(7)
    total, diag = compute_loss(outputs, inputs, cfg)
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    torch.manual_seed(7)
    ref_total, ref_diag = reference_loss(outputs, inputs, cfg)
    ref_grads = torch.autograd.grad(ref_total, leaves, allow_unused=True)
    torch.testing.assert_close(total, ref_total, rtol=1e-5, atol=1e-7)
    for s in cfg.loss_scales:
        torch.testing.assert_close(diag[f"loss/s{s}"], ref_diag[f"loss/s{s}"], rtol=1e-5, atol=1e-7)
    for leaf, grad, ref_grad in zip(leaves, grads, ref_grads):
        if leaf is outputs.T_src_tgt:
            if temporal == 0:
                continue
            grad = None if grad is None else grad[:, :temporal]
            ref_grad = None if ref_grad is None else ref_grad[:, :temporal]
        assert (grad is None) == (ref_grad is None)
        if grad is not None:
            # Float32 sums in another order move sampling coordinates by ~1e-7 px; where one sits on a pixel
            # boundary (a kink of bilinear sampling) or a min is a near-tie, single elements of the gradient
            # can jump. The optimised SSIM pools with a separable box filter (summation order differs from
            # avg_pool2d by ~1e-7), which flips a few near-tied per-pixel minima. Measured: relative norm
            # differences 1e-7 .. 1.4e-2 (the full model's coarsest-scale disparity); a wrong gradient is O(1).
            assert (grad - ref_grad).norm().item() <= 3e-2 * ref_grad.norm().item()


def test_compute_loss_is_float32_under_bf16_autocast(
    default_step: tuple[Config, torch.nn.ModuleDict, Outputs],
) -> None:
    cfg, _, outputs = default_step
    inputs = prepare_inputs(_batch(cfg), cfg, "cpu")
    with torch.no_grad():
        torch.manual_seed(1)
        plain, _ = compute_loss(outputs, inputs, cfg)
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast, _ = compute_loss(outputs, inputs, cfg)
    # autocast is switched off inside: the same float32 computation, bit for bit
    assert autocast.dtype == torch.float32
    assert autocast.item() == plain.item()


def test_tie_break_noise_is_reproducible_under_the_same_seed(
    default_step: tuple[Config, torch.nn.ModuleDict, Outputs],
) -> None:
    cfg, _, outputs = default_step
    inputs = prepare_inputs(_batch(cfg), cfg, "cpu")
    losses = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        losses.append(compute_loss(outputs, inputs, cfg)[0].item())
    assert losses[0] == losses[1]
    # another seed draws other noise (std 1e-5): a different value, but only in the far decimals
    assert losses[0] != losses[2] and losses[0] == pytest.approx(losses[2], abs=1e-5)


# ----- every ablation flag changes the loss ------------------------------------------------------------------

# (first, second, order): "<" where theory orders the two losses on the same outputs (a per-pixel minimum over
# more candidates, or over the candidates rather than their mean, is never larger); every side is also checked
# against the loop-style reference formulation with the same switch, so a switch read the wrong way round fails.
LOSS_FLAGS = {
    "reprojection": ({"loss.reprojection": "min"}, {"loss.reprojection": "avg"}, "<"),
    "automask": ({"loss.automask": True}, {"loss.automask": False}, "<"),
    "multiscale_per_scale": ({"loss.multiscale": "full_res"}, {"loss.multiscale": "per_scale"}, None),
    "multiscale_single": ({"loss.multiscale": "full_res"}, {"loss.multiscale": "single"}, None),
    "ssim": ({"loss.ssim": True}, {"loss.ssim": False}, None),
}


@pytest.mark.parametrize("flag", list(LOSS_FLAGS))
def test_loss_flag_changes_the_loss(flag: str, default_step: tuple[Config, torch.nn.ModuleDict, Outputs]) -> None:
    # same network outputs and batch (loss switches do not change the forward pass); only the switch differs
    _, _, outputs = default_step
    first, second, order = LOSS_FLAGS[flag]
    losses = []
    for overrides in (first, second):
        cfg = _cfg(**overrides)
        inputs = prepare_inputs(_batch(cfg), cfg, "cpu")
        torch.manual_seed(0)
        loss = compute_loss(outputs, inputs, cfg)[0].item()
        torch.manual_seed(0)
        assert loss == pytest.approx(reference_loss(outputs, inputs, cfg)[0].item(), rel=1e-5), overrides
        losses.append(loss)
    assert abs(losses[0] - losses[1]) > 1e-6
    if order == "<":
        assert losses[0] < losses[1]


MODEL_FLAGS = {
    "predictive_mask": (
        {"loss.automask": False, "loss.predictive_mask": False},
        {"loss.automask": False, "loss.predictive_mask": True},
    ),
    "mode_M_S": ({"data.mode": "M"}, {"data.mode": "S"}),
    "mode_M_MS": ({"data.mode": "M"}, {"data.mode": "MS"}),
    "mode_S_MS": ({"data.mode": "S"}, {"data.mode": "MS"}),
    "pose_net_shared": ({"model.pose_net": "separate"}, {"model.pose_net": "shared"}),
    "pose_net_posecnn": ({"model.pose_net": "separate"}, {"model.pose_net": "posecnn"}),
    "pose_input": ({"model.pose_input": "pairs"}, {"model.pose_input": "all"}),
}


@pytest.mark.parametrize("flag", list(MODEL_FLAGS))
def test_model_and_data_flag_changes_the_loss(flag: str) -> None:
    # the networks are built per config from the same seed (the depth net comes out identical); the batch
    # holds the same images, sliced to each mode's frames
    a, b = (tuple(sorted(overrides.items())) for overrides in MODEL_FLAGS[flag])
    assert abs(_fresh_loss(a) - _fresh_loss(b)) > 1e-6


def test_predictive_mask_adds_its_weighted_bce() -> None:
    cfg = _cfg(**{"loss.automask": False, "loss.predictive_mask": True})
    inputs = prepare_inputs(_batch(cfg), cfg, "cpu")
    outputs = _identity_outputs(cfg)
    masks = {s: torch.full((BATCH, cfg.num_sources, HEIGHT // 2**s, WIDTH // 2**s), 0.5) for s in cfg.model.scales}
    with_mask = Outputs(disp=outputs.disp, T_src_tgt=outputs.T_src_tgt, mask=masks)
    _, plain = compute_loss(outputs, inputs, _cfg(**{"loss.automask": False}))
    _, masked = compute_loss(with_mask, inputs, cfg)
    for s in cfg.model.scales:
        # mask 0.5 halves every reprojection error, so the min halves; BCE(0.5, 1) = ln 2
        photometric = masked[f"loss/photometric/s{s}"].item()
        assert photometric == pytest.approx(plain[f"loss/photometric/s{s}"].item() / 2, rel=1e-6)
        assert masked[f"loss/mask_bce/s{s}"].item() == pytest.approx(0.6931472, rel=1e-6)
        # scale term = photometric + 0.2·BCE + 1e-3·smooth/2^s
        smooth = masked[f"loss/smoothness/s{s}"].item()
        expected = photometric + 0.2 * 0.6931472 + 1e-3 * smooth / 2**s
        assert masked[f"loss/s{s}"].item() == pytest.approx(expected, rel=1e-6)


# ----- gradients reach every parameter ------------------------------------------------------------------------

# Three runs cover every network: separate pose ResNet; shared encoder with all frames and stereo; PoseCNN
# with the predictive mask net (per-scale, so the mask's coarse scales are used unsampled).
GRADIENT_CONFIGS = {
    "full": {},
    "shared_all_MS": {"model.pose_net": "shared", "model.pose_input": "all", "data.mode": "MS"},
    "posecnn_zhou_mask_per_scale": {
        "model.pose_net": "posecnn",
        "loss.automask": False,
        "loss.predictive_mask": True,
        "loss.multiscale": "per_scale",
    },
}


@pytest.mark.parametrize("name", list(GRADIENT_CONFIGS))
def test_every_parameter_gets_a_gradient(name: str) -> None:
    cfg = _cfg(**GRADIENT_CONFIGS[name])
    models = _models(cfg)
    torch.manual_seed(0)
    total, diag, _ = training_loss(models, _batch(cfg), cfg, "cpu")
    assert torch.isfinite(total)
    assert all(torch.isfinite(v).all() for v in diag.values())
    total.backward()
    missing = [n for n, p in models.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in models.parameters() if p.grad is not None)


# ----- the compiled loss -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_loss_equals_the_eager_loss(default_step: tuple[Config, torch.nn.ModuleDict, Outputs]) -> None:
    """``train.compile_loss``: the same loss, diagnostics and gradients, and the same tie-break noise."""
    cfg, _, outputs = default_step
    compiled_cfg = cfg.override({"train.compile_loss": True})
    inputs = prepare_inputs(_batch(cfg), cfg, "cpu")
    leaves = _as_leaves(outputs)
    results = []
    for run_cfg in (cfg, compiled_cfg):
        torch.manual_seed(11)
        total, diag = compute_loss(leaves, inputs, run_cfg)
        grads = torch.autograd.grad(total, [leaves.disp[s] for s in cfg.loss_scales] + [leaves.T_src_tgt])
        results.append((total, diag, grads))
    (total, diag, grads), (c_total, c_diag, c_grads) = results
    from md2bench import method

    assert method._compiled_loss.cache_info().currsize == 1  # the compiled path was the one taken
    torch.testing.assert_close(c_total, total, rtol=1e-5, atol=1e-7)
    assert c_diag["automask"].item() == pytest.approx(diag["automask"].item(), abs=1e-3)
    for grad, c_grad in zip(grads, c_grads):
        # fused kernels sum in another order: near-tied per-pixel minima may flip (see the reference test)
        assert (c_grad - grad).norm().item() <= 3e-2 * grad.norm().item()


# ----- model.pose_source = "gt" -------------------------------------------------------------------------------


def test_gt_pose_source_uses_the_batch_poses_in_network_units_and_builds_no_pose_net() -> None:
    cfg = _cfg(**{"data.mode": "MS", "model.pose_source": "gt", "data.dataset": "synthetic"})
    models = _models(cfg)
    assert "pose" not in models and "pose_encoder" not in models
    batch = _batch(cfg)
    pose_gt = torch.eye(4).repeat(BATCH, 4, 1, 1)  # frames (0, -1, 1, "s")
    pose_gt[:, 1, 2, 3] = 0.81  # frame -1: target points are 0.81 m farther away
    pose_gt[:, 2, 2, 3] = -0.81
    pose_gt[:, 3, 0, 3] = -0.54
    batch["pose_gt"] = pose_gt
    with torch.no_grad():
        outputs = forward(models, prepare_inputs(batch, cfg, "cpu"), cfg)
    # metres / 5.4: the network's units, in which KITTI's 0.54 m baseline is the reference's 0.1
    assert outputs.T_src_tgt[0, 0, 2, 3].item() == pytest.approx(0.15)
    assert outputs.T_src_tgt[0, 1, 2, 3].item() == pytest.approx(-0.15)
    # the stereo source keeps batch["stereo_T"] (already in network units)
    torch.testing.assert_close(outputs.T_src_tgt[:, 2], batch["stereo_T"])
    assert batch["pose_gt"][0, 1, 2, 3].item() == pytest.approx(0.81)  # the batch itself is not modified
    del batch["pose_gt"]
    with pytest.raises(ValueError, match="pose_gt"):
        prepare_inputs(batch, cfg, "cpu")


def test_gt_pose_source_needs_the_synthetic_world() -> None:
    from md2bench.config import ConfigError

    with pytest.raises(ConfigError, match="synthetic"):
        _cfg(**{"model.pose_source": "gt", "data.dataset": "kitti", "data.split": "eigen_zhou"})
    # the new field leaves the run keys of earlier configs unchanged (finished runs are still skipped)
    assert _cfg().run_key == _cfg(**{"model.pose_source": "net"}).run_key
    assert _cfg().run_key != _cfg(**{"model.pose_source": "gt"}).run_key
