"""Pure geometry: depth from sigmoid, intrinsics per scale, backprojection, projection, poses, warping."""

from __future__ import annotations

import math

import pytest
import torch

from md2bench.geometry import (
    backproject,
    disp_to_depth,
    in_view,
    pose_vec_to_mat,
    project_to_grid,
    sample_sources,
    scale_intrinsics,
    source_grids,
    stereo_transform,
    warp,
)


def _K(batch: int, height: int, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """KITTI-style K in pixels: fx = 0.58·W, fy = 1.92·H, principal point at the centre (REFERENCE.md §3.1)."""
    K = torch.tensor(
        [[0.58 * width, 0, 0.5 * width, 0], [0, 1.92 * height, 0.5 * height, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
        dtype=dtype,
    )
    return K.expand(batch, 4, 4).clone()


def _translation(tx: float, ty: float = 0.0, tz: float = 0.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    T = torch.eye(4, dtype=dtype)
    T[:3, 3] = torch.tensor([tx, ty, tz], dtype=dtype)
    return T


def test_disp_to_depth_maps_sigmoid_range_to_depth_range() -> None:
    sigmoid = torch.tensor([0.0, 1.0, 0.5])
    scaled, depth = disp_to_depth(sigmoid, 0.1, 100.0)
    # scaled = 1/100 + (1/0.1 - 1/100)·σ = 0.01 + 9.99σ: σ=0 -> 0.01, σ=1 -> 10, σ=0.5 -> 5.005
    torch.testing.assert_close(scaled, torch.tensor([0.01, 10.0, 5.005]))
    # depth = 1/scaled: 100 (max_depth), 0.1 (min_depth), 1/5.005
    torch.testing.assert_close(depth, torch.tensor([100.0, 0.1, 1 / 5.005]))


def test_scale_intrinsics_halves_focal_and_centre_per_scale() -> None:
    K = _K(2, 192, 640)
    K2 = scale_intrinsics(K, 2)
    # fx = 0.58·640 = 371.2 -> /4 = 92.8; cx = 320 -> 80; fy = 1.92·192 = 368.64 -> 92.16; cy = 96 -> 24
    assert K2[0, 0, 0].item() == pytest.approx(92.8)
    assert K2[0, 0, 2].item() == pytest.approx(80.0)
    assert K2[1, 1, 1].item() == pytest.approx(92.16)
    assert K2[1, 1, 2].item() == pytest.approx(24.0)
    # rows 2 and 3 are unchanged; the input is not modified
    torch.testing.assert_close(K2[:, 2:], K[:, 2:])
    assert K[0, 0, 0].item() == pytest.approx(371.2)
    # this equals the reference's normalised K times (W//2^s, H//2^s) = (160, 48)
    assert K2[0, 0, 0].item() == pytest.approx(0.58 * 160)
    assert K2[0, 1, 1].item() == pytest.approx(1.92 * 48)


def test_backproject_then_project_round_trip_gives_the_pixel_grid() -> None:
    height, width = 4, 6
    torch.manual_seed(0)
    depth = 1.0 + 9.0 * torch.rand(2, 1, height, width, dtype=torch.float64)
    K = _K(2, height, width, torch.float64)
    points = backproject(depth, torch.linalg.inv(K))
    assert points.shape == (2, 4, height * width)
    # the z coordinate of every point is its depth (K⁻¹ [x, y, 1] has z = 1); w = 1
    torch.testing.assert_close(points[:, 2], depth.reshape(2, -1))
    torch.testing.assert_close(points[:, 3], torch.ones(2, height * width, dtype=torch.float64))
    grid = project_to_grid(points, K, torch.eye(4, dtype=torch.float64).expand(2, 4, 4), height, width)
    # pixel (x, y) normalises to (2x/(W−1) − 1, 2y/(H−1) − 1): corners at ±1 (align_corners=True)
    xs = torch.arange(width, dtype=torch.float64) * 2 / (width - 1) - 1
    ys = torch.arange(height, dtype=torch.float64) * 2 / (height - 1) - 1
    torch.testing.assert_close(grid[..., 0], xs.expand(2, height, width), atol=1e-6, rtol=0)
    torch.testing.assert_close(grid[..., 1], ys[:, None].expand(2, height, width), atol=1e-6, rtol=0)


def test_convention_T_src_tgt_maps_target_points_into_the_source_camera() -> None:
    # The target point seen at pixel (x, y) = (3, 2) of a 5×7 image at depth Z = 2.
    height, width = 5, 7
    K = _K(1, height, width, torch.float64)
    depth = torch.full((1, 1, height, width), 2.0, dtype=torch.float64)
    points = backproject(depth, torch.linalg.inv(K))
    X_tgt = points[0, :, 2 * width + 3]  # row-major index y·W + x
    # T_src_tgt = translation by t: the same point in the source camera is X_tgt + t ...
    T = _translation(0.5, 0.0, 0.0, torch.float64)
    X_src = T @ X_tgt
    torch.testing.assert_close(X_src[:3], X_tgt[:3] + torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64))
    # ... and project_to_grid samples the source where that source-camera point projects:
    # X_tgt = (x − cx)·Z/fx, so u_src = fx·(X_tgt + t)/Z + cx = x + fx·t/Z = 3 + (0.58·7)·0.5/2 = 4.015 px
    grid = project_to_grid(points, K, T.expand(1, 4, 4), height, width)
    u_src = (grid[0, 2, 3, 0] + 1) * (width - 1) / 2
    # (the 1e-7 added to p_z scales u by Z/(Z + 1e-7), a relative 5e-8 here: 2e-7 px)
    assert u_src.item() == pytest.approx(3 + 0.58 * 7 * 0.5 / 2, abs=1e-6)
    # warping the source with T_src_tgt therefore reads the source to the right of each target pixel.


def test_convention_stereo_transform_sign() -> None:
    # Left target, right source: the right camera sits at +baseline in the left camera's frame, so a point's
    # right-camera x = left-camera x − 0.1: T_src_tgt has x-translation −0.1.
    T = stereo_transform(target_is_left=True, flipped=False)
    assert T.dtype == torch.float32 and T.shape == (4, 4)
    torch.testing.assert_close(T, _translation(-0.1))
    # right target: +0.1; a flip swaps the sign; the product rule (−1)(−1) = +1 for a flipped left target
    assert stereo_transform(False, False)[0, 3].item() == pytest.approx(0.1)
    assert stereo_transform(True, True)[0, 3].item() == pytest.approx(0.1)
    assert stereo_transform(False, True)[0, 3].item() == pytest.approx(-0.1)
    assert stereo_transform(True, False, baseline=0.54)[0, 3].item() == pytest.approx(-0.54)
    torch.testing.assert_close(stereo_transform(True, False)[:3, :3], torch.eye(3))


def test_identity_pose_warps_an_image_onto_itself() -> None:
    torch.manual_seed(1)
    batch, num, height, width = 2, 3, 6, 8
    sources = torch.rand(batch, num, 3, height, width)
    depth = 1.0 + 50 * torch.rand(batch, 1, height, width)  # any depth: identity pose ignores it
    K = _K(batch, height, width)
    T = torch.eye(4).expand(batch, num, 4, 4)
    warped = warp(sources, depth, T, K, torch.linalg.inv(K))
    assert warped.shape == sources.shape
    # grid coordinates are exact up to float error (~1e-7 of the image size), so the bilinear sample is too
    torch.testing.assert_close(warped, sources, atol=1e-5, rtol=0)
    # float64: exact up to the projection's 1e-7 on p_z, which scales u by Z/(Z + 1e-7): with Z >= 1 and
    # u <= W − 1 = 7 that is <= 7e-7 px, times an image slope <= 1 per px -> <= 7e-7
    warped64 = warp(sources.double(), depth.double(), T.double(), K.double(), torch.linalg.inv(K.double()))
    torch.testing.assert_close(warped64, sources.double(), atol=1e-6, rtol=0)
    assert warped64.dtype == torch.float64


def test_known_x_translation_shifts_pixels_by_f_t_over_z() -> None:
    height, width = 4, 10
    K = _K(1, height, width, torch.float64)
    fx = 0.58 * width  # 5.8 px
    depth_value = 2.0
    depth = torch.full((1, 1, height, width), depth_value, dtype=torch.float64)
    source = torch.arange(width, dtype=torch.float64).expand(1, 1, 1, height, width).repeat(1, 1, 3, 1, 1)
    # the source's value at a pixel is its column index x. With t_x chosen so that fx·t/Z = 1 px,
    # target pixel x samples source column x + 1 (value x + 1), clamped to W−1 by border padding.
    t = depth_value / fx  # fx·t/Z = 5.8·(2/5.8)/2 = 1
    T = _translation(t, dtype=torch.float64).expand(1, 1, 4, 4)
    warped = warp(source, depth, T, K, torch.linalg.inv(K))
    expected = torch.clamp(torch.arange(width, dtype=torch.float64) + 1, max=width - 1)
    # (tolerance: u is scaled by Z/(Z + 1e-7), at most 10·5e-8 = 5e-7 px here, and the slope is 1 per px)
    torch.testing.assert_close(warped[0, 0, 0], expected.expand(height, width), atol=1e-6, rtol=0)
    # half a pixel (fx·t/Z = 0.5): bilinear gives x + 0.5 (the last column clamps to W−1 = 9)
    T_half = _translation(0.5 * t, dtype=torch.float64).expand(1, 1, 4, 4)
    warped = warp(source, depth, T_half, K, torch.linalg.inv(K))
    expected = torch.clamp(torch.arange(width, dtype=torch.float64) + 0.5, max=width - 1)
    torch.testing.assert_close(warped[0, 0, 1], expected.expand(height, width), atol=1e-6, rtol=0)


def test_warp_of_several_sources_equals_warping_each_alone() -> None:
    torch.manual_seed(2)
    batch, num, height, width = 2, 3, 5, 7
    sources = torch.rand(batch, num, 3, height, width)
    depth = 1 + torch.rand(batch, 1, height, width)
    T = pose_vec_to_mat(0.05 * torch.randn(batch, num, 3), 0.1 * torch.randn(batch, num, 3))
    K = _K(batch, height, width)
    all_at_once = warp(sources, depth, T, K, torch.linalg.inv(K))
    for n in range(num):
        alone = warp(sources[:, n : n + 1], depth, T[:, n : n + 1], K, torch.linalg.inv(K))
        torch.testing.assert_close(all_at_once[:, n : n + 1], alone)


def test_in_view_marks_the_columns_a_sideways_shift_pushes_out() -> None:
    """Depth 10, fx = 0.58·W = 11.6 px: a source whose transform adds t_x to x sees every point f·t_x/Z px further
    right; t_x chosen for a 5.5 px shift pushes exactly the last 6 columns (u + 5.5 > W − 1) out of the image,
    and the border itself (|u'| = 1) is in view."""
    height, width = 6, 20
    K = _K(1, height, width)
    depth = torch.full((1, 1, height, width), 10.0)
    T = torch.stack([torch.eye(4), _translation(5.5 * 10.0 / (0.58 * width))])[None]
    grids = source_grids(depth, T, K, torch.linalg.inv(K))
    assert grids.shape == (1, 2, height, width, 2)
    seen = in_view(grids)
    expected = torch.ones(1, 2, height, width, dtype=torch.bool)
    expected[0, 1, :, width - 6:] = False
    assert torch.equal(seen, expected)
    assert in_view(torch.tensor([[1.0, -1.0], [1.0 + 1e-6, 0.0], [0.0, -1.0 - 1e-6]])).tolist() == [True, False, False]
    # sampling at the grids is the warp
    sources = torch.rand(1, 2, 3, height, width)
    assert torch.equal(sample_sources(sources, grids), warp(sources, depth, T, K, torch.linalg.inv(K)))


def test_pose_vec_to_mat_inverted_is_the_inverse() -> None:
    torch.manual_seed(3)
    axisangle = 0.3 * torch.randn(5, 3, dtype=torch.float64)
    translation = torch.randn(5, 3, dtype=torch.float64)
    M = pose_vec_to_mat(axisangle, translation)
    M_inv = pose_vec_to_mat(axisangle, translation, invert=True)
    eye = torch.eye(4, dtype=torch.float64).expand(5, 4, 4)
    # Rᵀ is R⁻¹ only up to the 1e-7 in the axis normalisation (the axis has length θ/(θ + 1e-7)), so the
    # product is the identity to ~1e-7/θ (θ ≈ 0.3·√3 here): 1e-6 covers it
    torch.testing.assert_close(M @ M_inv, eye, atol=1e-6, rtol=0)
    torch.testing.assert_close(M_inv, torch.linalg.inv(M), atol=1e-6, rtol=0)
    # not inverted: [[R, t], [0, 1]] (rotate, then translate), R orthonormal with det 1
    torch.testing.assert_close(M[:, :3, 3], translation)
    R = M[:, :3, :3]
    eye3 = torch.eye(3, dtype=torch.float64).expand(5, 3, 3)
    torch.testing.assert_close(R @ R.transpose(1, 2), eye3, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(5, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(M[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(5, 4))


def test_pose_vec_to_mat_known_rotation_and_zero() -> None:
    # a = (0, 0, π/2): rotation by 90° about z maps x̂ to ŷ (right-handed), Rodrigues exactly up to the 1e-7
    # in the axis normalisation (relative error 1e-7/(π/2) ≈ 6e-8).
    quarter_turn = torch.tensor([[0.0, 0.0, math.pi / 2]], dtype=torch.float64)
    M = pose_vec_to_mat(quarter_turn, torch.zeros(1, 3, dtype=torch.float64))
    torch.testing.assert_close(M[0, :3, :3] @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                               torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-6, rtol=0)
    # a = 0: θ = 0, axis = 0/(0 + 1e-7) = 0, so R = cos 0·I = I exactly; gradients are finite (here 0: the
    # reference's formula has zero slope at exactly 0, which never occurs for a network output)
    zero = torch.zeros(2, 3, requires_grad=True)
    M0 = pose_vec_to_mat(zero, torch.zeros(2, 3))
    torch.testing.assert_close(M0, torch.eye(4).expand(2, 4, 4))
    M0.sum().backward()
    assert zero.grad is not None and torch.isfinite(zero.grad).all()


def test_gradcheck_pose_vec_to_mat() -> None:
    torch.manual_seed(4)
    axisangle = (0.2 * torch.randn(2, 3, dtype=torch.float64)).requires_grad_()
    translation = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, t: pose_vec_to_mat(a, t), (axisangle, translation))
    assert torch.autograd.gradcheck(lambda a, t: pose_vec_to_mat(a, t, invert=True), (axisangle, translation))


@pytest.mark.parametrize("rotation", ["identity", "general"])
def test_gradcheck_warp(rotation: str) -> None:
    # Identity rotation with a translation in all three axes: the sampling positions are generic (not on
    # integer pixels, where bilinear sampling has a kink), so finite differences match the analytic gradient.
    torch.manual_seed(5)
    batch, num, height, width = 1, 2, 3, 4
    sources = torch.rand(batch, num, 2, height, width, dtype=torch.float64, requires_grad=True)
    depth = (2 + torch.rand(batch, 1, height, width, dtype=torch.float64)).requires_grad_()
    translation = torch.tensor([[[0.13, -0.07, 0.05], [-0.11, 0.09, -0.04]]], dtype=torch.float64)
    axisangle = torch.zeros(batch, num, 3, dtype=torch.float64)
    if rotation == "general":
        axisangle = torch.tensor([[[0.02, -0.03, 0.01], [-0.01, 0.02, 0.03]]], dtype=torch.float64)
    T = pose_vec_to_mat(axisangle, translation).requires_grad_()
    K = _K(batch, height, width, torch.float64)
    inv_K = torch.linalg.inv(K)
    assert torch.autograd.gradcheck(lambda s, d, t: warp(s, d, t, K, inv_K), (sources, depth, T))


def test_gradcheck_warp_through_pose_vector() -> None:
    torch.manual_seed(6)
    sources = torch.rand(1, 1, 1, 3, 4, dtype=torch.float64)
    depth = 2 + torch.rand(1, 1, 3, 4, dtype=torch.float64)
    K = _K(1, 3, 4, torch.float64)
    inv_K = torch.linalg.inv(K)
    axisangle = torch.tensor([[[0.01, 0.02, -0.015]]], dtype=torch.float64, requires_grad=True)
    translation = torch.tensor([[[0.12, -0.06, 0.03]]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, t: warp(sources, depth, pose_vec_to_mat(a, t, invert=True), K, inv_K), (axisangle, translation)
    )


def test_shapes_are_checked_with_clear_errors() -> None:
    K = _K(2, 4, 6)
    with pytest.raises(ValueError, match=r"depth must have shape B×1×H×W"):
        backproject(torch.ones(2, 4, 6), torch.linalg.inv(K))
    with pytest.raises(ValueError, match=r"inv_K must have shape 2×4×4"):
        backproject(torch.ones(2, 1, 4, 6), torch.eye(3).expand(2, 3, 3))
    with pytest.raises(ValueError, match=r"T_src_tgt must have shape 2×3×4×4"):
        warp(torch.ones(2, 3, 3, 4, 6), torch.ones(2, 1, 4, 6), torch.eye(4).expand(2, 2, 4, 4), K, K)
    with pytest.raises(ValueError, match=r"points must have shape B×4×24"):
        project_to_grid(torch.ones(2, 4, 20), K, K, 4, 6)
    with pytest.raises(ValueError, match="translation must have the shape of axisangle"):
        pose_vec_to_mat(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="min_depth < max_depth"):
        disp_to_depth(torch.zeros(1), 10.0, 1.0)
