"""Pure losses: SSIM, photometric error, min/avg reprojection with auto-masking, mask BCE, smoothness."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from md2bench.losses import (
    SSIM_C1,
    SSIM_C2,
    mask_regularisation,
    photometric_error,
    reprojection_loss,
    smoothness_loss,
    ssim_error,
)


def test_ssim_error_is_zero_for_identical_images() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 5, 6)
    # SSIM(x, x) = (2μ² + C1)(2σ² + C2)/((2μ² + C1)(2σ² + C2)) = 1 -> (1 − 1)/2 = 0
    torch.testing.assert_close(ssim_error(x, x), torch.zeros_like(x), atol=1e-6, rtol=0)


def test_ssim_error_of_two_constant_images() -> None:
    # Constant images a = 0.5 and b = 0.3 (reflection padding keeps them constant): μx = a, μy = b, all
    # variances 0, so SSIM = (2ab + C1)·C2 / ((a² + b² + C1)·C2) = (0.3 + 1e-4)/(0.34 + 1e-4) = 0.3001/0.3401
    # and the error is (1 − SSIM)/2 = 0.04/(2·0.3401) = 0.058806233...
    x = torch.full((1, 3, 4, 4), 0.5, dtype=torch.float64)
    y = torch.full((1, 3, 4, 4), 0.3, dtype=torch.float64)
    expected = 0.04 / (2 * 0.3401)
    torch.testing.assert_close(ssim_error(x, y), torch.full_like(x, expected))


def test_ssim_error_of_a_checkerboard_and_its_inverse_at_the_centre_pixel() -> None:
    # 3×3 checkerboard x (ones at the four edge-centres) and y = 1 − x. At the centre pixel the 3×3 window
    # is the whole image: μx = 4/9, μy = 5/9, σx² = E[x²] − μx² = 4/9 − 16/81 = 20/81,
    # σy² = 5/9 − 25/81 = 20/81, σxy = E[xy] − μxμy = 0 − 20/81.
    x = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64).expand(1, 1, 3, 3)
    y = 1 - x
    mu_x, mu_y, var, cov = 4 / 9, 5 / 9, 20 / 81, -20 / 81
    ssim = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_x**2 + mu_y**2 + SSIM_C1) * (var + var + SSIM_C2)
    )  # ≈ −0.97207: anticorrelated
    expected = min(max((1 - ssim) / 2, 0.0), 1.0)  # ≈ 0.98604
    assert ssim_error(x, y)[0, 0, 1, 1].item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.98604, abs=1e-5)


def test_ssim_error_broadcasts_a_target_against_several_sources() -> None:
    torch.manual_seed(1)
    pred = torch.rand(2, 3, 3, 5, 6)  # B×N×3×H×W
    target = torch.rand(2, 1, 3, 5, 6)  # B×1×3×H×W
    expected = torch.stack([ssim_error(pred[:, n], target[:, 0]) for n in range(3)], dim=1)
    torch.testing.assert_close(ssim_error(pred, target), expected)


def test_photometric_error_mixes_ssim_and_l1_and_drops_channels() -> None:
    x = torch.full((2, 4, 3, 5, 6), 0.5)
    y = torch.full((2, 1, 3, 5, 6), 0.3)
    # L1 = |0.5 − 0.3| = 0.2 (mean over channels of equal values)
    l1_only = photometric_error(x, y, ssim=False)
    assert l1_only.shape == (2, 4, 5, 6)
    torch.testing.assert_close(l1_only, torch.full((2, 4, 5, 6), 0.2))
    # with SSIM: 0.85·0.0588062 (constant-image value above) + 0.15·0.2 = 0.0799853
    expected = 0.85 * 0.04 / (2 * 0.3401) + 0.15 * 0.2
    torch.testing.assert_close(photometric_error(x, y, ssim=True), torch.full((2, 4, 5, 6), expected))
    # alpha is the SSIM weight: alpha = 1 -> SSIM error only
    torch.testing.assert_close(
        photometric_error(x, y, ssim=True, alpha=1.0), torch.full((2, 4, 5, 6), 0.04 / (2 * 0.3401))
    )


def _errors(*values_per_source: list[list[float]]) -> torch.Tensor:
    """B=1×N×H×W from per-source H×W lists."""
    return torch.tensor([values_per_source], dtype=torch.float64)


def test_min_picks_the_smaller_error_where_a_source_is_occluded_but_avg_does_not() -> None:
    # Source 0 sees everything (error 0.1); source 1 is occluded at pixel (0, 0) (error 0.9 there).
    reprojection = _errors([[0.1, 0.1], [0.1, 0.1]], [[0.9, 0.1], [0.1, 0.1]])
    loss_min, diag = reprojection_loss(reprojection, None, "min", noise_std=0.0)
    # min: 0.1 at every pixel -> mean 0.1; the occluded pixel chose source 0
    assert loss_min.item() == pytest.approx(0.1)
    assert diag["chosen"][0, 0, 0].item() == 0
    assert "automask" not in diag
    loss_avg, diag = reprojection_loss(reprojection, None, "avg", noise_std=0.0)
    # avg: (0.1 + 0.9)/2 = 0.5 at (0, 0), 0.1 elsewhere -> (0.5 + 3·0.1)/4 = 0.2
    assert loss_avg.item() == pytest.approx(0.2)
    torch.testing.assert_close(diag["per_pixel"], torch.tensor([[[0.5, 0.1], [0.1, 0.1]]], dtype=torch.float64))


def test_automask_is_zero_exactly_where_the_identity_error_is_smaller() -> None:
    # Warped errors 0.2 everywhere; identity (unwarped) errors 0.05 on the diagonal (a static pixel: the
    # unwarped source already matches) and 0.5 off it, for both sources.
    reprojection = _errors([[0.2, 0.2], [0.2, 0.2]], [[0.2, 0.2], [0.2, 0.2]])
    identity = _errors([[0.05, 0.5], [0.5, 0.05]], [[0.05, 0.5], [0.5, 0.05]])
    generator = torch.Generator().manual_seed(0)
    loss, diag = reprojection_loss(reprojection, identity, "min", noise_std=1e-5, generator=generator)
    # µ = 1 where a warped term won (off-diagonal), 0 where an identity term won (diagonal)
    torch.testing.assert_close(diag["automask"], torch.tensor([[[0.0, 1.0], [1.0, 0.0]]], dtype=torch.float64))
    # chosen indexes [identity_0, identity_1, warped_0, warped_1]: < 2 on the diagonal
    assert (diag["chosen"][0].diagonal() < 2).all() and (diag["chosen"][0, 0, 1] >= 2)
    # masked pixels keep their identity error in the mean over all 4 pixels: (0.05 + 0.2 + 0.2 + 0.05)/4 =
    # 0.125, up to the tie-break noise of std 1e-5
    assert loss.item() == pytest.approx(0.125, abs=1e-4)
    # no noise: exactly 0.125
    loss0, _ = reprojection_loss(reprojection, identity, "min", noise_std=0.0)
    assert loss0.item() == pytest.approx(0.125, abs=1e-15)


def test_avg_with_automask_compares_the_averages() -> None:
    # identity errors 0.0 and 0.3 (mean 0.15) vs warped 0.1 and 0.1 (mean 0.1), one pixel
    identity = _errors([[0.0]], [[0.3]])
    reprojection = _errors([[0.1]], [[0.1]])
    loss_avg, diag = reprojection_loss(reprojection, identity, "avg", noise_std=0.0)
    # avg: min(mean identity 0.15, mean warped 0.1) = 0.1, a warped term wins (µ = 1)
    assert loss_avg.item() == pytest.approx(0.1)
    assert diag["automask"].item() == 1.0
    # min: min over {0.0, 0.3, 0.1, 0.1} = 0.0, the identity of source 0 wins (µ = 0)
    loss_min, diag = reprojection_loss(reprojection, identity, "min", noise_std=0.0)
    assert loss_min.item() == 0.0 and diag["automask"].item() == 0.0


def test_valid_sources_only_enter_the_min_and_the_avg() -> None:
    # Source 1 has the smaller error at (0, 0) (0.05) but its sample there is invalid (out of view); at (0, 1)
    # neither source is valid, so both count, as without a mask.
    reprojection = _errors([[0.4, 0.3]], [[0.05, 0.1]])
    valid = torch.tensor([[[[True, False]], [[False, False]]]])
    loss_min, diag = reprojection_loss(reprojection, None, "min", noise_std=0.0, valid=valid)
    # min: 0.4 (source 0 only) at (0, 0), min(0.3, 0.1) = 0.1 at (0, 1)
    torch.testing.assert_close(diag["per_pixel"], torch.tensor([[[0.4, 0.1]]], dtype=torch.float64))
    assert diag["chosen"].tolist() == [[[0, 1]]]
    assert loss_min.item() == pytest.approx(0.25)
    _, diag = reprojection_loss(reprojection, None, "avg", noise_std=0.0, valid=valid)
    # avg: 0.4 at (0, 0) (the one valid source), (0.3 + 0.1)/2 = 0.2 at (0, 1)
    torch.testing.assert_close(diag["per_pixel"], torch.tensor([[[0.4, 0.2]]], dtype=torch.float64))


def test_an_all_valid_mask_changes_nothing_and_identity_errors_are_not_masked() -> None:
    reprojection = _errors([[0.4, 0.3]], [[0.05, 0.1]])
    identity = _errors([[0.2, 0.5]], [[0.5, 0.5]])
    everywhere = torch.ones(reprojection.shape, dtype=torch.bool)
    for reduce in ("min", "avg"):
        plain, plain_diag = reprojection_loss(reprojection, identity, reduce, noise_std=0.0)
        masked, masked_diag = reprojection_loss(reprojection, identity, reduce, noise_std=0.0, valid=everywhere)
        assert masked.item() == plain.item() and torch.equal(masked_diag["chosen"], plain_diag["chosen"])
    # source 1 invalid everywhere: at (0, 0) the identity error of source 0 (0.2) now beats the warped 0.4
    only_source_0 = torch.tensor([[[[True, True]], [[False, False]]]])
    _, diag = reprojection_loss(reprojection, identity, "min", noise_std=0.0, valid=only_source_0)
    torch.testing.assert_close(diag["per_pixel"], torch.tensor([[[0.2, 0.3]]], dtype=torch.float64))
    assert diag["automask"].tolist() == [[[0.0, 1.0]]]


def test_an_invalid_source_gets_no_gradient() -> None:
    reprojection = _errors([[0.4, 0.3]], [[0.05, 0.1]]).requires_grad_()
    valid = torch.tensor([[[[True, True]], [[False, True]]]])
    for reduce in ("min", "avg"):
        reprojection.grad = None
        loss, _ = reprojection_loss(reprojection, None, reduce, noise_std=0.0, valid=valid)
        loss.backward()
        assert reprojection.grad[0, 1, 0, 0].item() == 0.0  # source 1 at (0, 0): left out
        assert torch.isfinite(reprojection.grad).all()
    # avg at (0, 1): both valid, each gets 1/2 of the pixel's 1/2 share of the mean
    assert reprojection.grad[0, :, 0, 1].tolist() == [0.25, 0.25]


def test_random_takes_the_drawn_sources_errors_and_identity() -> None:
    # Pixel (0, 0) draws source 1, pixel (0, 1) source 0 (the larger draw wins).
    reprojection = _errors([[0.4, 0.3]], [[0.05, 0.1]])
    identity = _errors([[0.2, 0.5]], [[0.01, 0.05]])
    draws = torch.tensor([[[[0.1, 0.9]], [[0.7, 0.2]]]], dtype=torch.float64)
    loss, diag = reprojection_loss(reprojection, None, "random", noise_std=0.0, draws=draws)
    torch.testing.assert_close(diag["per_pixel"], torch.tensor([[[0.05, 0.3]]], dtype=torch.float64))
    assert loss.item() == pytest.approx(0.175)
    # with auto-masking the drawn source's identity competes: (0, 0) identity 0.01 < 0.05 wins (µ = 0);
    # (0, 1) identity of source 0, 0.5, loses to 0.3 (µ = 1) although source 1's identity 0.05 would win
    _, diag = reprojection_loss(reprojection, identity, "random", noise_std=0.0, draws=draws)
    torch.testing.assert_close(diag["per_pixel"], torch.tensor([[[0.01, 0.3]]], dtype=torch.float64))
    assert diag["automask"].tolist() == [[[0.0, 1.0]]]


def test_random_draws_among_valid_sources_and_averages_to_avg() -> None:
    reprojection = _errors([[0.4, 0.3]], [[0.05, 0.1]]).requires_grad_()
    # source 1 invalid at (0, 0): it is never taken there, whatever the draw; (0, 1) draws source 1
    valid = torch.tensor([[[[True, True]], [[False, True]]]])
    draws = torch.tensor([[[[0.1, 0.1]], [[0.9, 0.9]]]], dtype=torch.float64)
    loss, diag = reprojection_loss(reprojection, None, "random", noise_std=0.0, valid=valid, draws=draws)
    torch.testing.assert_close(diag["per_pixel"], torch.tensor([[[0.4, 0.1]]], dtype=torch.float64))
    loss.backward()
    # one source's gradient per pixel: the drawn one gets the pixel's whole 1/2 share, the other none
    assert reprojection.grad[0, :, 0, 0].tolist() == [0.5, 0.0]
    assert reprojection.grad[0, :, 0, 1].tolist() == [0.0, 0.5]
    # two complementary draws (u and 1 - u pick opposite sources) average exactly to the avg reduction
    u = torch.rand(1, 2, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errors = torch.rand(1, 2, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a, _ = reprojection_loss(errors, None, "random", noise_std=0.0, draws=u)
    b, _ = reprojection_loss(errors, None, "random", noise_std=0.0, draws=1 - u)
    avg, _ = reprojection_loss(errors, None, "avg", noise_std=0.0)
    assert ((a + b) / 2).item() == pytest.approx(avg.item(), abs=1e-15)
    # without given draws they come from the generator: same seed, same loss
    g1, _ = reprojection_loss(errors, None, "random", 0.0, torch.Generator().manual_seed(7))
    g2, _ = reprojection_loss(errors, None, "random", 0.0, torch.Generator().manual_seed(7))
    assert g1.item() == g2.item()
    with pytest.raises(ValueError, match="draws must have the shape"):
        reprojection_loss(errors, None, "random", draws=torch.zeros(1, 1, 3, 3))


def test_valid_must_match_the_errors() -> None:
    with pytest.raises(ValueError, match="valid"):
        reprojection_loss(_errors([[0.1]], [[0.2]]), None, "min", valid=torch.ones(1, 1, 1, 1, dtype=torch.bool))


def test_predictive_mask_multiplies_the_reprojection_errors() -> None:
    reprojection = _errors([[0.4, 0.2]], [[0.6, 0.8]])
    mask = torch.full_like(reprojection, 0.5)
    # min of the halved errors: (0.2 + 0.1)/2 = 0.15
    loss, _ = reprojection_loss(reprojection, None, "min", noise_std=0.0, mask=mask)
    assert loss.item() == pytest.approx(0.15)


def test_tie_break_noise_comes_from_the_given_generator() -> None:
    reprojection = torch.full((1, 2, 3, 3), 0.2)
    identity = torch.full((1, 2, 3, 3), 0.1)
    a, _ = reprojection_loss(reprojection, identity, "min", 1e-5, torch.Generator().manual_seed(3))
    b, _ = reprojection_loss(reprojection, identity, "min", 1e-5, torch.Generator().manual_seed(3))
    c, _ = reprojection_loss(reprojection, identity, "min", 1e-5, torch.Generator().manual_seed(4))
    assert a.item() == b.item()
    assert a.item() != c.item()
    # noise of std 1e-5 moves the mean of the minimum of two N(0.1, 1e-10) values by a few 1e-6
    assert a.item() == pytest.approx(0.1, abs=1e-4)
    # std 0 draws nothing
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    reprojection_loss(reprojection, identity, "min", 0.0, generator)
    assert torch.equal(generator.get_state(), state)


def test_reprojection_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="identity_errors must have the shape"):
        reprojection_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 3, 3), "min")
    with pytest.raises(ValueError, match="reduce must be"):
        reprojection_loss(torch.zeros(1, 2, 3, 3), None, "mean")  # type: ignore[arg-type]


def test_mask_regularisation_is_bce_to_ones() -> None:
    # −log 0.5 = ln 2; −log 1 = 0; log 0 = −inf is clamped to −100 -> 100
    assert mask_regularisation(torch.full((2, 3), 0.5)).item() == pytest.approx(math.log(2))
    assert mask_regularisation(torch.ones(4)).item() == pytest.approx(0.0)
    assert mask_regularisation(torch.zeros(4)).item() == pytest.approx(100.0)
    torch.manual_seed(2)
    mask = torch.rand(2, 2, 4, 5)
    torch.testing.assert_close(mask_regularisation(mask), F.binary_cross_entropy(mask, torch.ones_like(mask)))


def test_smoothness_is_zero_for_constant_disparity() -> None:
    torch.manual_seed(3)
    assert smoothness_loss(torch.full((2, 1, 5, 6), 0.3), torch.rand(2, 3, 5, 6)).item() == 0.0


def test_smoothness_hand_computed_step() -> None:
    # disparity [[1, 3], [1, 3]]: mean 2, normalised [[0.5, 1.5], [0.5, 1.5]]: ∂x = 1 in both rows, ∂y = 0.
    disp = torch.tensor([[[[1.0, 3.0], [1.0, 3.0]]]], dtype=torch.float64)
    flat = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    # flat image: weights exp(0) = 1 -> mean(∂x) + mean(∂y) = 1 + 0 (up to the 1e-7 in the normalisation)
    assert smoothness_loss(disp, flat).item() == pytest.approx(1.0, rel=1e-6)
    # an image edge of 0.5 between the columns (all channels): weight exp(−0.5) -> 0.60653
    edge = torch.tensor([[0.0, 0.5], [0.0, 0.5]], dtype=torch.float64).expand(1, 3, 2, 2)
    assert smoothness_loss(disp, edge).item() == pytest.approx(math.exp(-0.5), rel=1e-6)


def test_smoothness_is_lower_when_image_edges_coincide_with_disparity_edges() -> None:
    disp = torch.ones(1, 1, 6, 8)
    disp[..., 4:] = 3.0  # disparity edge between columns 3 and 4
    coinciding = torch.zeros(1, 3, 6, 8)
    coinciding[..., 4:] = 1.0  # image edge at the same place: the jump is down-weighted by exp(−1)
    elsewhere = torch.zeros(1, 3, 6, 8)
    elsewhere[..., 2:] = 1.0  # image edge two columns away: the disparity jump has full weight
    assert smoothness_loss(disp, coinciding).item() < smoothness_loss(disp, elsewhere).item()
    # ratio: only the one jump column contributes, weighted exp(−1) vs 1
    ratio = smoothness_loss(disp, coinciding).item() / smoothness_loss(disp, elsewhere).item()
    assert ratio == pytest.approx(math.exp(-1), rel=1e-6)


def test_separable_pool_equals_average_pooling() -> None:
    # The SSIM statistics use a separable 3x3 box filter on a reflection-padded image; it must equal
    # avg_pool2d(kernel 3, stride 1) on the same padded image up to float32 summation order.
    from md2bench.losses import _pool3x3

    x = torch.rand(2, 3, 3, 7, 9)
    expected = F.avg_pool2d(F.pad(x.reshape(-1, 1, 7, 9), (1, 1, 1, 1), mode="reflect"), 3, 1).reshape(x.shape)
    torch.testing.assert_close(_pool3x3(x), expected, rtol=0, atol=1e-6)
    # hand value: a 3x3 constant-5 patch with a 14 in the middle pools to (8*5 + 14)/9 = 6 at the centre
    patch = torch.full((1, 3, 3), 5.0)
    patch[0, 1, 1] = 14.0
    assert _pool3x3(patch)[0, 1, 1].item() == pytest.approx(6.0)


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 2, 3), (4, 5, 2)])
def test_pool_adjoint_is_the_transpose_of_the_pool(shape: tuple[int, ...]) -> None:
    # <pool(t), g> = <t, pool*(g)> for random t, g: the definition of the adjoint (borders and corners included)
    from md2bench.losses import _pool3x3, _pool3x3_adjoint

    g = torch.Generator().manual_seed(0)
    t = torch.rand(shape, dtype=torch.float64, generator=g)
    grad = torch.rand(shape, dtype=torch.float64, generator=g)
    lhs = (_pool3x3(t) * grad).sum()
    rhs = (t * _pool3x3_adjoint(grad)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-12)
    # and it is what autograd computes for the pool
    t.requires_grad_()
    (auto,) = torch.autograd.grad((_pool3x3(t) * grad).sum(), t)
    torch.testing.assert_close(_pool3x3_adjoint(grad), auto, rtol=1e-12, atol=1e-12)


def test_fused_ssim_gradient_passes_gradcheck() -> None:
    from md2bench.losses import _SSIMErrorFunction

    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 2, 3, 5, 6, dtype=torch.float64, generator=g).requires_grad_()
    y = torch.rand(2, 1, 3, 5, 6, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda a: _SSIMErrorFunction.apply(a, y), (x,))


def test_fused_ssim_equals_autograd_through_the_formula() -> None:
    # float32 at a training-like shape: warped sources (with grad) against a broadcast target; the clamp's
    # boundaries included (an image against itself gives an error of exactly 0 on some pixels).
    from md2bench.losses import _ssim_error_formula

    g = torch.Generator().manual_seed(2)
    target = torch.rand(3, 1, 3, 16, 20, generator=g)
    x = torch.cat([torch.rand(3, 2, 3, 16, 20, generator=g), target], dim=1).requires_grad_()
    upstream = torch.rand(3, 3, 3, 16, 20, generator=g)
    fused = ssim_error(x, target)
    (grad_fused,) = torch.autograd.grad((fused * upstream).sum(), x)
    plain = _ssim_error_formula(x, target)
    (grad_plain,) = torch.autograd.grad((plain * upstream).sum(), x)
    assert fused.grad_fn is not None and "SSIMErrorFunction" in type(fused.grad_fn).__name__
    torch.testing.assert_close(fused, plain, rtol=0, atol=0)
    torch.testing.assert_close(grad_fused, grad_plain, rtol=1e-4, atol=1e-6)


def test_ssim_error_differentiates_the_target_when_it_needs_a_gradient() -> None:
    # the fused path only covers gradients of x; a target that needs one goes through autograd
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 6, 7, generator=g).requires_grad_()
    y = torch.rand(1, 3, 6, 7, generator=g).requires_grad_()
    gx, gy = torch.autograd.grad(ssim_error(x, y).sum(), (x, y))
    gy_swapped, gx_swapped = torch.autograd.grad(ssim_error(y, x).sum(), (y, x))  # SSIM is symmetric
    torch.testing.assert_close(gy, gy_swapped)
    torch.testing.assert_close(gx, gx_swapped)
    assert gy.abs().sum() > 0


def test_given_noise_is_used_instead_of_a_draw() -> None:
    g = torch.Generator().manual_seed(4)
    errors = torch.rand(2, 2, 4, 5, generator=g)
    identity = torch.rand(2, 2, 4, 5, generator=g)
    noise = torch.randn(2, 2, 4, 5, generator=torch.Generator().manual_seed(9))
    drawn, _ = reprojection_loss(errors, identity, "min", 0.3, torch.Generator().manual_seed(9))
    given, _ = reprojection_loss(errors, identity, "min", 0.3, None, noise=noise)
    assert given.item() == drawn.item()
    with pytest.raises(ValueError, match="noise must have shape"):
        reprojection_loss(errors, identity, "avg", 0.3, noise=noise)
