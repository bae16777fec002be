"""Depth metrics, crop, median scaling, post-processing and ATE against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from md2bench import metrics as M


def test_compute_depth_errors_hand_values() -> None:
    gt = np.array([1.0, 2.0, 4.0])
    pred = np.array([2.0, 2.0, 2.0])
    out = M.compute_depth_errors(gt, pred)
    # diff g−p = (−1, 0, 2): abs_rel = (1/1 + 0 + 2/4)/3 = 0.5; sq_rel = (1/1 + 0 + 4/4)/3 = 2/3
    assert out["abs_rel"] == pytest.approx(0.5)
    assert out["sq_rel"] == pytest.approx(2 / 3)
    # rmse = sqrt((1 + 0 + 4)/3)
    assert out["rmse"] == pytest.approx(math.sqrt(5 / 3))
    # ln g − ln p = (−ln2, 0, ln2): rmse_log = ln2·sqrt(2/3)
    assert out["rmse_log"] == pytest.approx(math.log(2) * math.sqrt(2 / 3))
    # δ = (2, 1, 2): only the middle one is < 1.25, 1.5625 and 1.953125
    assert (out["a1"], out["a2"], out["a3"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))


def test_delta_thresholds_separate() -> None:
    # δ = 1.2 (< 1.25), 1.5 (< 1.5625), 1.9 (< 1.953125), 2.5 (none)
    gt = np.array([1.2, 1.5, 1.9, 2.5])
    pred = np.ones(4)
    out = M.compute_depth_errors(gt, pred)
    assert (out["a1"], out["a2"], out["a3"]) == pytest.approx((0.25, 0.5, 0.75))


def test_empty_gives_nan() -> None:
    out = M.compute_depth_errors(np.zeros(0), np.zeros(0))
    assert all(math.isnan(v) for v in out.values())


def test_garg_crop_kitti_size() -> None:
    mask = M.garg_crop_mask(375, 1242)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    # int(0.40810811·375) = 153, int(0.99189189·375) = 371 (exclusive); int(0.03594771·1242) = 44,
    # int(0.96405229·1242) = 1197 (exclusive) - REFERENCE §3.4: rows 153..370, cols 44..1196
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (153, 370, 44, 1196)
    assert mask.sum() == 218 * 1153


def test_median_scale() -> None:
    scaled, ratio = M.median_scale(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0]))
    # median(gt) / median(pred) = 2 / 4
    assert ratio == pytest.approx(0.5)
    np.testing.assert_allclose(scaled, [1.0, 2.0, 3.0])


def test_evaluate_image_median_scaling_and_invalid_pixels() -> None:
    gt = np.array([[0.0, 2.0], [4.0, 8.0]])  # 0 = no GT
    pred = np.array([[5.0, 1.0], [2.0, 4.0]])  # half the GT where valid
    out = M.evaluate_image(gt, pred, M.protocol_for_split("synth"), median_scaling=True)
    # ratio = median(2,4,8)/median(1,2,4) = 4/2 = 2 → exact prediction
    assert out["ratio"] == pytest.approx(2.0)
    assert out["median_ratio"] == pytest.approx(2.0)
    assert out["abs_rel"] == pytest.approx(0.0)
    assert out["a1"] == 1.0
    assert out["valid_px"] == 3


def test_evaluate_image_stereo_factor_and_clamp() -> None:
    protocol = M.protocol_for_split("eigen_benchmark")  # GT > 0, no cap, no crop
    gt = np.array([[100.0, 5.4]])
    pred = np.array([[1000.0, 1.0]])
    out = M.evaluate_image(gt, pred, protocol, median_scaling=False, scale_factor=M.STEREO_SCALE_FACTOR)
    # ×5.4 → (5400, 5.4), clamped to (80, 5.4): abs_rel = ((100−80)/100 + 0)/2 = 0.1
    assert out["abs_rel"] == pytest.approx(0.1)
    assert out["ratio"] == 1.0


def test_evaluate_image_eigen_crop_ignores_outside() -> None:
    gt = np.full((375, 1242), 10.0)
    pred = np.full((375, 1242), 10.0)
    pred[:100] = 50.0  # above the crop (crop starts at row 153): ignored
    gt[200, 200] = 90.0  # above 80 m: ignored on eigen
    out = M.evaluate_image(gt, pred, M.protocol_for_split("eigen"), median_scaling=False)
    assert out["abs_rel"] == pytest.approx(0.0)
    assert out["valid_px"] == 218 * 1153 - 1


def test_evaluate_image_extra_masks() -> None:
    gt = np.full((2, 4), 10.0)
    pred = np.full((2, 4), 10.0)
    moving = np.zeros((2, 4), dtype=bool)
    moving[0, :2] = True
    pred[moving] = 20.0
    out = M.evaluate_image(gt, pred, M.protocol_for_split("synth"), median_scaling=True,
                           extra_masks={"moving": moving, "static": ~moving})
    # 6 of 8 predictions are 10 → median 10, ratio 1; moving: |10−20|/10 = 1; static exact; all: 2/8 · 1
    assert out["ratio"] == pytest.approx(1.0)
    assert out["moving/abs_rel"] == pytest.approx(1.0)
    assert out["static/abs_rel"] == pytest.approx(0.0)
    assert out["abs_rel"] == pytest.approx(0.25)
    assert out["moving/valid_px"] == 2


def test_post_process_disparity_ramps() -> None:
    width = 41  # x = linspace(0, 1, 41): step 0.025
    plain = torch.ones(1, 1, 2, width)
    flipped_back = torch.zeros(1, 1, 2, width)
    out = M.post_process_disparity(plain, flipped_back)[0, 0, 0]
    # x=0: m_l = 1, m_r = 0 → flipped pass (0); x=1 → plain pass (1); middle → mean 0.5
    assert out[0].item() == pytest.approx(0.0)
    assert out[-1].item() == pytest.approx(1.0)
    assert out[20].item() == pytest.approx(0.5)
    # x = 0.075: m_l = 1 − 20·0.025 = 0.5, m_r = 0 → 0.5·0 + 0.5·(1+0)/2 = 0.25
    assert out[3].item() == pytest.approx(0.25)
    # identical passes are a fixed point
    same = torch.rand(1, 1, 3, width)
    torch.testing.assert_close(M.post_process_disparity(same, same), same)


def test_protocol_unknown_split() -> None:
    with pytest.raises(ValueError, match="eigen"):
        M.protocol_for_split("odom")


def _translation(x: float, y: float, z: float) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = (x, y, z)
    return t


def test_relative_gt_poses_direction() -> None:
    # camera moves 1 m forward: a point at z = 5 in frame 0 is at z = 4 in frame 1 → T_1_0 = translate(0,0,−1)
    poses = np.stack([np.eye(4), _translation(0, 0, 1)])
    rel = M.relative_gt_poses(poses)
    np.testing.assert_allclose(rel[0], _translation(0, 0, -1))


def test_ate_hand_values() -> None:
    gt = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    # same direction, twice as long: the least-squares scale (1/2) makes it exact
    assert M.compute_ate(gt, 2 * gt) == pytest.approx(0.0)
    # orthogonal: scale = Σgt·pred/Σpred² = 0 → error = sqrt(1)/2 points = 0.5
    assert M.compute_ate(gt, np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])) == pytest.approx(0.5)


def test_snippet_ates_exact_prediction_and_count() -> None:
    rel = np.stack([_translation(0, 0, -1.0 - 0.1 * i) for i in range(6)])
    ates = M.snippet_ates(rel, rel)
    assert ates.shape == (6,)  # one snippet per start frame, shorter near the end
    np.testing.assert_allclose(ates, 0.0, atol=1e-12)
    # a prediction scaled by 3 everywhere is exact after the per-snippet scale fit
    scaled = rel.copy()
    scaled[:, :3, 3] *= 3
    np.testing.assert_allclose(M.snippet_ates(scaled, rel), 0.0, atol=1e-12)


def test_relative_pose_errors_hand_values() -> None:
    from md2bench.metrics import relative_pose_errors

    def T(tx: float, tz: float, yaw_deg: float = 0.0) -> np.ndarray:
        c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
        m = np.eye(4)
        m[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
        m[:3, 3] = (tx, 0.0, tz)
        return m

    gt = np.stack([T(0, -0.8), T(0, -0.8), T(0, -0.8, 3.0), T(0, 0)])
    pred = np.stack([T(0, -0.01),  # right direction, wrong scale: cos 1, ATE 0 after the scale
                     T(-0.01, 0),  # sideways: cos 0; best scale 0 -> error ‖c_gt‖ / 2 = 0.4
                     T(0, -0.8, 1.0),  # 2° too little yaw
                     T(0, -0.5)])  # standing camera: no direction
    errors = relative_pose_errors(pred, gt)
    assert errors["t_cos"][0] == pytest.approx(1.0)
    assert errors["t_cos"][1] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(errors["t_cos"][3])
    assert errors["rot_deg"][:2] == pytest.approx([0.0, 0.0], abs=1e-6)
    assert errors["rot_deg"][2] == pytest.approx(2.0)
    assert errors["ate"][0] == pytest.approx(0.0, abs=1e-12)
    assert errors["ate"][1] == pytest.approx(0.4)
    # a reversed direction is -1
    assert relative_pose_errors(T(0, 0.3)[None], T(0, -0.8)[None])["t_cos"][0] == pytest.approx(-1.0)
