"""The checkpoint probes in experiments/ (occlusion, multi-scale, auto-mask): their pieces on hand-made values and
geometry, and each script as a user runs it."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "occlusion_probe.py"


def _load(script: Path):
    """An experiments/ script imported as a module (its functions, without running main); its folder goes on
    the path, as when the script runs, for its sibling modules (``probe_setup``)."""
    if str(script.parent) not in sys.path:
        sys.path.insert(0, str(script.parent))
    spec = importlib.util.spec_from_file_location(script.stem, script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _probe():
    return _load(SCRIPT)


@pytest.fixture(scope="module")
def tiny_world_and_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A rendered tiny world and an untrained checkpoint of the probes' kind (exact poses, 64×160), made once."""
    from md2bench.checkpoint import save_checkpoint
    from md2bench.config import load_config
    from md2bench.data.synthetic import render_world
    from md2bench.models import build_models

    root = tmp_path_factory.mktemp("probes")
    world = render_world(root / "tiny", preset="tiny", progress=False).root
    cfg = load_config("synth", ["model.pretrained=scratch", "model.pose_source=gt", "data.height=64",
                                "data.width=160"])
    torch.manual_seed(0)
    save_checkpoint(root / "untrained.pt", {"models": build_models(cfg).state_dict(), "config": cfg.to_dict()})
    return world, root / "untrained.pt"


def _probe_proc(script: Path, world: Path, overrides: list[str], *checkpoints: str,
                options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run a probe script as a user does, on one batch of the tiny world, with these ``LABEL=PATH`` checkpoints,
    options and config overrides (no data.height/width: the checkpoints' size)."""
    named = [arg for item in checkpoints for arg in ("--checkpoint", item)]
    return subprocess.run([sys.executable, str(script), "--batches", "1", *options, *named, f"data.path={world}",
                           "data.synth_preset=tiny", "train.batch_size=2", *overrides],
                          capture_output=True, text=True, timeout=300)


def _lines(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _run_probe(script: Path, world: Path, checkpoint: Path, *options: str) -> list[dict]:
    """A probe on the tiny world at 160x64 given explicitly, the checkpoint labelled ``untrained``; its JSON lines."""
    proc = _probe_proc(script, world, ["data.height=64", "data.width=160"], f"untrained={checkpoint}", options=options)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _lines(proc)


def _camera(height: int, width: int, f: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    K = torch.eye(4)
    K[0, 0] = K[1, 1] = f
    K[0, 2], K[1, 2] = (width - 1) / 2, (height - 1) / 2
    return K[None], torch.linalg.inv(K)[None]


def test_out_of_view_marks_the_columns_a_sideways_shift_pushes_out() -> None:
    """Depth 10, f = 100 px: a source camera whose transform adds 0.55 to x sees every point 5.5 px further
    right, so the last 6 columns (u + 5.5 > W − 1) leave the image and nothing else does."""
    probe = _probe()
    height, width = 8, 20
    K, inv_K = _camera(height, width)
    depth = torch.full((1, 1, height, width), 10.0)
    T = torch.eye(4).repeat(1, 2, 1, 1)
    T[0, 1, 0, 3] = 0.55  # source 0: identity (nothing leaves); source 1: the shift
    outside = probe.outside_each_source(depth, T, K, inv_K).any(dim=1)
    expected = torch.zeros(1, height, width, dtype=torch.bool)
    expected[..., width - 6:] = True
    assert torch.equal(outside, expected)
    each = probe.outside_each_source(depth, T, K, inv_K)
    assert each.shape == (1, 2, height, width)  # which source the point leaves
    assert not each[:, 0].any() and torch.equal(each[:, 1], expected)


def test_out_of_view_marks_points_behind_the_source_camera() -> None:
    """A source 20 units ahead of points at depth 10 has them all behind it: all out of view, even the centre
    pixel whose projection would land in the image."""
    probe = _probe()
    K, inv_K = _camera(5, 7)
    depth = torch.full((1, 1, 5, 7), 10.0)
    T = torch.eye(4).repeat(1, 2, 1, 1)
    T[0, 0, 2, 3] = -20.0
    assert bool(probe.outside_each_source(depth, T, K, inv_K).any(dim=1).all())


def test_best_scale_average_is_pulled_by_an_occluded_source_and_the_minimum_is_not() -> None:
    """Hand-made error curves over five scales (the truth is index 2): source 0 sees the point (error 0 at the
    truth), source 1 is occluded (low error away from the truth, high at it). The average's optimum moves to
    index 1; the minimum stays at the truth. Swapping the reductions, or taking a max, fails this."""
    probe = _probe()
    seen = torch.tensor([1.0, 0.5, 0.0, 0.5, 1.0])
    occluded = torch.tensor([0.1, 0.3, 1.0, 1.0, 1.0])
    curves = torch.stack([seen, occluded], dim=1).reshape(1, 5, 2, 1, 1)  # B×S×N×H×W
    best = probe.best_scale_index(curves)
    assert best["avg"].item() == 1 and best["min"].item() == 2
    both_see = torch.stack([seen, seen], dim=1).reshape(1, 5, 2, 1, 1)
    assert {k: v.item() for k, v in probe.best_scale_index(both_see).items()} == {"avg": 2, "min": 2}


def test_scale_grid_is_log_symmetric_around_the_truth() -> None:
    probe = _probe()
    scales = probe.scale_grid(5, 2.0)
    assert scales[2].item() == 1.0
    assert torch.allclose(scales.log(), torch.tensor([-1, -0.5, 0, 0.5, 1], dtype=torch.float64) * math.log(2.0))
    with pytest.raises(SystemExit, match="odd"):
        probe.scale_grid(4, 2.0)


@pytest.mark.slow
def test_occlusion_probe_runs_on_a_tiny_world(tiny_world_and_checkpoint: tuple[Path, Path]) -> None:
    """The script on a tiny rendered world: one line per region and reduction, the shares add up (occluded =
    out of view + hidden; not occluded = textured + low texture; occluded + not occluded = all), fractions in
    [0, 1], and a summary line."""
    world, checkpoint = tiny_world_and_checkpoint
    lines = _run_probe(SCRIPT, world, checkpoint, "--scales", "5")
    rows = {(line["region"], line["reduce"]): line for line in lines if "reduce" in line}
    picks = [line for line in lines if "min_picks_the_outside_source_at_truth" in line]
    assert len(picks) == 1 and picks[0]["pixels"] > 0
    assert 0.0 <= picks[0]["min_picks_the_outside_source_at_truth"] <= 1.0
    assert set(rows) == {(region, reduce) for region in
                         ("not occluded", "occluded", "occluded, out of view", "occluded, hidden",
                          "not occluded, textured", "not occluded, low texture")
                         for reduce in ("avg", "min")}
    pixels = {region: rows[(region, "min")]["pixels"] for region, _ in rows}
    assert pixels["occluded"] == pixels["occluded, out of view"] + pixels["occluded, hidden"]
    assert pixels["not occluded"] == pixels["not occluded, textured"] + pixels["not occluded, low texture"]
    assert pixels["not occluded"] > 0 and pixels["occluded"] > 0
    assert abs(rows[("occluded", "avg")]["share"] + rows[("not occluded", "avg")]["share"] - 1.0) < 1e-3
    for line in rows.values():
        if line["pixels"]:
            assert 0.0 <= line["at_truth"] <= 1.0 and line["median_log_err"] >= 0.0
    assert lines[-1]["summary"].startswith("at_truth")
    # the checkpoint's lines: at its own depth, the same out-of-view pixels; abs rel on every region
    own = [line for line in lines if "min_picks_the_outside_source_at_model_depth" in line]
    assert len(own) == 1 and own[0]["checkpoint"] == "untrained" and own[0]["pixels"] == picks[0]["pixels"]
    assert 0.0 <= own[0]["min_picks_the_outside_source_at_model_depth"] <= 1.0
    scored = {line["region"]: line for line in lines if line.get("checkpoint") == "untrained" and "abs_rel" in line}
    assert set(scored) == {region for region, _ in rows}
    assert all(line["abs_rel"] is None or line["abs_rel"] >= 0.0 for line in scored.values())


def test_abs_rel_per_pixel_is_median_scaled_and_skips_far_gt() -> None:
    """The trained-model score of the probe, on a real (untrained) network: the per-image median scaling makes it
    blind to the GT's scale, pixels with GT >= 80 m are NaN, and the numbers equal the formula at one pixel."""
    from md2bench import method
    from md2bench.config import load_config
    from md2bench.models import build_models

    probe = _probe()
    cfg = load_config("synth", ["model.pretrained=scratch", "data.height=64", "data.width=64"])
    torch.manual_seed(0)
    models = build_models(cfg).eval()
    images = torch.rand(2, 3, 64, 64)
    gt = torch.rand(2, 64, 64) * 19 + 1
    gt[0, 0, :5] = 90.0  # beyond the evaluation's 80 m
    valid = torch.ones(2, 64, 64, dtype=torch.bool)
    valid[1, 10:20] = False
    err = probe.abs_rel_per_pixel(models, cfg, images, gt, valid)
    assert err.shape == (int(valid.sum()),)
    assert int(torch.isnan(torch.from_numpy(err)).sum()) == 5
    assert torch.allclose(torch.from_numpy(probe.abs_rel_per_pixel(models, cfg, images, gt * 2, valid)),
                          torch.from_numpy(err), equal_nan=True, atol=1e-5)
    with torch.no_grad():
        depth = 1.0 / method.predict_disparity(models, images, cfg)[1, 0]
    scored = valid[1] & (gt[1] < 80)
    ratio = np.median(gt[1][scored].numpy()) / np.median(depth[scored].numpy())  # the evaluation's median
    expected = (float(depth[30, 7]) * ratio - float(gt[1, 30, 7])) / float(gt[1, 30, 7])
    index = int(valid[0].sum()) + int(valid[1].reshape(-1)[: 30 * 64 + 7].sum())
    assert abs(float(err[index]) - abs(expected)) < 1e-5


# ----- experiments/multiscale_probe.py -------------------------------------------------------------------------

MULTISCALE = Path(__file__).resolve().parents[1] / "experiments" / "multiscale_probe.py"


def _multiscale():
    return _load(MULTISCALE)


def test_every_scale_is_upsampled_to_the_input_and_scale_zero_is_the_evaluated_depth() -> None:
    from md2bench import method
    from md2bench.config import load_config
    from md2bench.models import build_models

    probe = _multiscale()
    cfg = load_config("synth", ["model.pretrained=scratch", "data.height=64", "data.width=64"])
    torch.manual_seed(0)
    models = build_models(cfg).eval()
    images = torch.rand(2, 3, 64, 64)
    depth = probe.depth_at_every_scale(models, cfg, images)
    assert sorted(depth) == [0, 1, 2, 3] and all(d.shape == (2, 64, 64) for d in depth.values())
    with torch.no_grad():
        evaluated = 1.0 / method.predict_disparity(models, images, cfg)[:, 0]
    torch.testing.assert_close(depth[0], evaluated)
    assert not torch.allclose(depth[3], depth[0])  # the coarse map is a different (blockier) map


def test_multiscale_score_is_median_scaled_per_region() -> None:
    probe = _multiscale()
    gt = np.full((8, 8), 10.0)
    gt[:, 4:] = 20.0
    low = np.zeros((8, 8), dtype=bool)
    low[:, :4] = True
    # twice the truth everywhere: median scaling removes the factor, both regions exact
    exact = probe.score(gt * 2, gt, low)
    assert exact["low_texture"] == (0.0, 1.0, 0.0, 32, 0.0) and exact["textured"] == (0.0, 1.0, 0.0, 32, 0.0)
    # the low-texture half predicted flat at the far depth (a "hole"): median of pred/GT is over all pixels
    hole = gt.copy()
    hole[:, :4] = 20.0
    scored = probe.score(hole, gt, low)
    ratio = np.median(gt) / np.median(hole)  # 15 / 20
    assert scored["low_texture"][0] == pytest.approx(abs(20.0 * ratio - 10.0) / 10.0)
    assert scored["textured"][0] == pytest.approx(abs(20.0 * ratio - 20.0) / 20.0)
    # RMSE in metres after the same scaling: every low-texture pixel is off by 20·ratio − 10 = 5 m, every textured
    # one by 20 − 20·ratio = 5 m
    assert scored["low_texture"].rmse == pytest.approx(20.0 * ratio - 10.0)
    assert scored["textured"].rmse == pytest.approx(20.0 - 20.0 * ratio)
    # signed: the hole is too far (log 1.5 > 0), the textured half too near (log 0.75 < 0)
    assert scored["low_texture"][2] == pytest.approx(math.log(20.0 * ratio / 10.0))
    assert scored["textured"][2] == pytest.approx(math.log(ratio))
    assert math.isnan(probe.score(gt, gt, np.zeros((8, 8), dtype=bool))["low_texture"][0])
    # parts are scored with the same (whole-image) median scaling: the hole's top-left quarter as a part
    quarter = np.zeros((8, 8), dtype=bool)
    quarter[:4, :4] = True
    parted = probe.score(hole, gt, low, {"quarter": quarter})
    assert parted["quarter"] == pytest.approx(tuple(scored["low_texture"]._replace(pixels=16)))


def test_depth_bands_partition_the_scored_pixels_by_gt_depth() -> None:
    """GT of 5, 10, 15, 30, 60 and 70 m (and 0 = none, 85 = beyond the cap): each scored pixel falls in exactly one
    (lo, hi] band, and a band's errors are its own pixels' (a model right on the near pixels and 10 % far on the far
    ones, median-scaled over all; 1.1 × 70 stays below the evaluation's 80 m clip)."""
    probe = _multiscale()
    gt = np.array([[5.0, 10.0, 15.0, 30.0], [60.0, 70.0, 0.0, 85.0]])
    bands = probe.depth_band_masks(gt)
    assert list(bands) == ["depth_0_10", "depth_10_20", "depth_20_40", "depth_40_80"]
    assert [int(m.sum()) for m in bands.values()] == [2, 1, 1, 2]  # 0 and 85 m are in none
    assert bands["depth_0_10"][0, 1] and bands["depth_10_20"][0, 2] and not bands["depth_0_10"][1, 2]
    pred = gt.copy()
    pred[gt > 40] *= 1.1
    # the median of GT/pred over the six scored pixels (1, 1, 1, 1, 1/1.1, 1/1.1) is 1: no rescaling
    scored = probe.score(pred, gt, np.zeros_like(gt, dtype=bool), bands)
    assert scored["depth_0_10"].abs_rel == 0.0 and scored["depth_10_20"].rmse == 0.0
    far = np.array([60.0, 70.0])
    assert scored["depth_40_80"].pixels == 2
    assert scored["depth_40_80"].abs_rel == pytest.approx(0.1)
    assert scored["depth_40_80"].rmse == pytest.approx(np.sqrt(np.mean((0.1 * far) ** 2)))


def test_image_motion_is_the_pixels_a_point_moves_into_its_farthest_source() -> None:
    """A fronto-parallel plane at depth 4 (fx = 10 px, 9×13 image, principal point at the centre pixel): a source
    1 unit to the side sees every point 10 × 1 / 4 = 2.5 px away; a source 2 units ahead (points at depth 2 there)
    sees a pixel (du, dv) from the centre at 2 × (du, dv), so it moves by its own distance from the centre, and the
    centre (the focus of expansion) does not move; the larger of the two per pixel counts."""
    probe = _multiscale()
    height, width = 9, 13
    K = torch.eye(4, dtype=torch.float64)
    K[0, 0] = K[1, 1] = 10.0
    K[0, 2], K[1, 2] = (width - 1) / 2, (height - 1) / 2
    depth = torch.full((1, 1, height, width), 4.0, dtype=torch.float64)
    side, ahead = torch.eye(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64)
    side[0, 3] = -1.0  # the source camera 1 unit to the right: points move 2.5 px left
    ahead[2, 3] = -2.0  # the source camera 2 units ahead
    K_, inv_K = K[None], torch.linalg.inv(K)[None]
    only_side = probe.image_motion(depth, side[None, None], K_, inv_K)
    assert only_side.shape == (1, height, width)
    assert torch.allclose(only_side, torch.full_like(only_side, 2.5), atol=1e-5)
    only_ahead = probe.image_motion(depth, ahead[None, None], K_, inv_K)[0]
    rows, cols = torch.meshgrid(torch.arange(height) - 4.0, torch.arange(width) - 6.0, indexing="ij")
    assert torch.allclose(only_ahead, torch.sqrt(rows ** 2 + cols ** 2).double(), atol=1e-5)  # float32 pixel grid
    assert only_ahead[4, 6] == pytest.approx(0.0, abs=1e-5)
    both = probe.image_motion(depth, torch.stack([side, ahead])[None], K_, inv_K)[0]
    assert torch.allclose(both, torch.maximum(only_side[0], only_ahead))
    bands = probe.motion_band_masks(both.numpy())
    assert list(bands) == ["motion_0_4", "motion_4_8", "motion_8_16", "motion_16_up"]
    assert sum(m.astype(int) for m in bands.values()).tolist() == np.ones((height, width), dtype=int).tolist()
    assert bands["motion_0_4"][4, 6] and bands["motion_0_4"][4, 10]  # 2.5 px; 4 px is (0, 4]
    assert bands["motion_4_8"][4, 11] and bands["motion_4_8"][0, 0]  # 5 px; sqrt(16 + 36) = 7.2 px
    assert not probe.motion_band_masks(np.array([[0.0, 16.0, 16.5]]))["motion_16_up"][0, :2].any()
    assert probe.motion_band_masks(np.array([[0.0, 16.0, 16.5]]))["motion_0_4"][0, 0]


def test_road_mask_finds_the_road_plane_from_exact_depth() -> None:
    """A 48×16 image at the world's intrinsics (f_y = 1.92·48, c_y = 24): below the horizon the road at the world's
    camera height (z = GROUND_Y·f_y / (i − c_y)), except a wall in columns 0-3 (at the depth where row 40 meets the
    road) and a sidewalk 0.15 m higher in columns 12-15; sky (0) above. The road's pixels are found, and the wall's
    on row 40 only, where its point is at the road's height."""
    probe = _multiscale()
    from md2bench.data.synth_scene import GROUND_Y

    height, fy, cy = 48, 1.92 * 48, 24.0
    depth = np.zeros((height, 16))
    for i in range(25, height):
        depth[i, :] = GROUND_Y * fy / (i - cy)
        depth[i, 12:] = (GROUND_Y - 0.15) * fy / (i - cy)
    depth[:, :4] = GROUND_Y * fy / (40 - cy)
    road = probe.road_mask(depth)
    expected = np.zeros_like(road)
    expected[25:, 4:12] = True
    expected[40, :4] = True
    assert np.array_equal(road, expected)


def test_rim_and_interior_split_a_low_texture_block() -> None:
    """A 7×7 low-texture block in a 11×11 textured image: a 1-pixel rim is the block's border ring (24 pixels), the
    interior its 5×5 core; a block touching the image border has no rim along it."""
    probe = _multiscale()
    low = np.zeros((11, 11), dtype=bool)
    low[2:9, 2:9] = True
    rim = probe.rim_mask(low, 1)
    assert rim.sum() == 24 and not rim[3:8, 3:8].any() and rim[2, 2:9].all()
    assert probe.rim_mask(low, 2).sum() == 49 - 9
    corner = np.zeros((6, 6), dtype=bool)
    corner[:4, :4] = True
    assert probe.rim_mask(corner, 1).sum() == 7  # row 3 and column 3 of the block only
    road = np.zeros((11, 11), dtype=bool)
    road[6:, :] = True
    parts = probe.split_low_texture(low, road, 1)
    assert parts["low_texture_road"].sum() == 21 and parts["low_texture_off_road"].sum() == 28
    assert parts["low_texture_interior"].sum() == 25
    assert not (parts["low_texture_rim"] & parts["low_texture_interior"]).any()


def test_depth_edges_mark_a_near_box_against_a_far_wall_and_the_sky() -> None:
    """A 4×4 box at 5 m in a 10×12 wall at 20 m whose top two rows are sky (no GT): the edge pixels are the box's
    ring and the wall's ring around it (3×3 spread 4 > 1.25), and the wall's row next to the sky; a gentle ramp
    (ratio 1.1 between neighbours) is no edge; width 1 grows the edge by one pixel each way."""
    probe = _multiscale()
    gt = np.full((10, 12), 20.0)
    gt[:2] = 0.0
    gt[4:8, 4:8] = 5.0
    edge = probe.depth_edges(gt, 0)
    expected = np.zeros_like(edge)
    expected[3:9, 3:9] = True
    expected[5:7, 5:7] = False  # the box's 2×2 core sees only 5 m
    expected[1:3, :] = True  # sky (1000 m) against the wall
    assert np.array_equal(edge, expected)
    ramp = 10.0 * 1.1 ** np.arange(12)[None, :].repeat(5, 0)
    assert not probe.depth_edges(ramp, 0).any()
    grown = probe.depth_edges(gt, 1)
    assert grown[2, 3] and grown[4, 4] and grown[5, 5] and not grown[9, 0] and grown.sum() > edge.sum()


def test_border_strip_is_where_the_coarsest_upsampling_clamps() -> None:
    """Bilinear upsampling (align_corners=False) by 2^S clamps the output pixels within 2^(S−1) of the image edge:
    a coarse ramp upsampled by 8 is flat (the edge value) exactly on the strip's rows and columns."""
    probe = _multiscale()
    import torch.nn.functional as F

    coarse = torch.arange(24.0).reshape(1, 1, 4, 6)
    fine = F.interpolate(coarse, scale_factor=8, mode="bilinear", align_corners=False)[0, 0].numpy()
    strip = probe.border_strip(fine.shape, 3)
    assert strip.sum() == 32 * 48 - 24 * 40
    rows_clamped = [i for i in range(32) if np.allclose(fine[i], fine[0]) or np.allclose(fine[i], fine[-1])]
    cols_clamped = [j for j in range(48) if np.allclose(fine[:, j], fine[:, 0]) or np.allclose(fine[:, j], fine[:, -1])]
    assert rows_clamped == [i for i in range(32) if strip[i, 10]]
    assert cols_clamped == [j for j in range(48) if strip[10, j]]
    assert not probe.border_strip((8, 8), 0).any()
    parts = probe.edge_parts(np.full((32, 48), 10.0), 2)
    assert not parts["depth_edge"].any() and parts["off_edge"].all()
    border = probe.border_parts((32, 48), 3)
    assert np.array_equal(border["border_strip"], strip) and np.array_equal(border["border_inside"], ~strip)
    assert probe.border_parts((32, 48), 2)["border_strip"].sum() == 32 * 48 - 28 * 44  # a 2-pixel strip at scale 2
    both = probe.crossed({"near": np.eye(32, 48, dtype=bool)}, {"strip": strip})
    assert list(both) == ["near&strip"] and both["near&strip"].sum() == 8  # the diagonal's first and last 4


def test_multiscale_probe_runs_on_a_tiny_world(tiny_world_and_checkpoint: tuple[Path, Path]) -> None:
    world, checkpoint = tiny_world_and_checkpoint
    lines = _run_probe(MULTISCALE, world, checkpoint)
    rows = {(line["scale"], line["region"]): line for line in lines if "region" in line}
    assert set(rows) == {(s, r) for s in range(4) for r in ("low_texture", "textured")}
    assert all(line["images"] == 0 or (line["abs_rel"] >= 0 and 0 <= line["a1"] <= 1
                                       and math.isfinite(line["log_ratio"])) for line in rows.values())
    assert lines[-1] == {"images": 2, "checkpoints": 1, "scales": [0, 1, 2, 3]}
    split = _run_probe(MULTISCALE, world, checkpoint, "--split", "--rim", "1")
    parts = {(line["scale"], line["region"]): line["pixels"] for line in split if "region" in line}
    for scale in range(4):
        low = parts[(scale, "low_texture")]
        assert parts[(scale, "low_texture_road")] + parts[(scale, "low_texture_off_road")] == low
        assert parts[(scale, "low_texture_rim")] + parts[(scale, "low_texture_interior")] == low
        assert parts[(scale, "low_texture")] + parts[(scale, "textured")] > 0
    bands = _run_probe(MULTISCALE, world, checkpoint, "--depth-bands")
    rows = {(line["scale"], line["region"]): line for line in bands if "region" in line}
    for scale in range(4):
        every = rows[(scale, "low_texture")]["pixels"] + rows[(scale, "textured")]["pixels"]
        assert sum(rows[(scale, name)]["pixels"] for name in ("depth_0_10", "depth_10_20", "depth_20_40",
                                                               "depth_40_80")) == every
        assert all(line["rmse"] is None or line["rmse"] >= 0 for key, line in rows.items() if key[0] == scale)
    edges = _run_probe(MULTISCALE, world, checkpoint, "--depth-bands", "--edges", "--edge-width", "1")
    rows = {(line["scale"], line["region"]): line["pixels"] for line in edges if "region" in line}
    for scale in range(4):
        every = rows[(scale, "low_texture")] + rows[(scale, "textured")]
        assert rows[(scale, "depth_edge")] + rows[(scale, "off_edge")] == every
        assert rows[(scale, "border_strip")] + rows[(scale, "border_inside")] == every
        for band in ("depth_0_10", "depth_10_20", "depth_20_40", "depth_40_80"):
            assert rows[(scale, f"{band}&depth_edge")] + rows[(scale, f"{band}&off_edge")] == rows[(scale, band)]
    motion = _run_probe(MULTISCALE, world, checkpoint, "--depth-bands", "--motion")
    rows = {(line["scale"], line["region"]): line["pixels"] for line in motion if "region" in line}
    moving = ("motion_0_4", "motion_4_8", "motion_8_16", "motion_16_up")
    for scale in range(4):
        assert sum(rows[(scale, name)] for name in moving) == rows[(scale, "low_texture")] + rows[(scale, "textured")]
        assert sum(rows[(scale, f"depth_0_10&{name}")] for name in moving) == rows[(scale, "depth_0_10")]


def test_probe_frames_take_the_size_the_checkpoint_was_trained_at(tiny_world_and_checkpoint: tuple[Path, Path]) -> None:
    """Without data.height/width the frames are the checkpoint's 160x64, not the CPU grids' 192x64: the same lines
    as with the size given; a size other than the checkpoint's is refused with a message naming both."""
    world, checkpoint = tiny_world_and_checkpoint
    implicit = _probe_proc(MULTISCALE, world, [], f"untrained={checkpoint}")
    assert implicit.returncode == 0, implicit.stderr[-3000:]
    explicit = _run_probe(MULTISCALE, world, checkpoint)
    assert _lines(implicit) == explicit
    pixels = sum(line["pixels"] for line in explicit if line.get("scale") == 0
                 and line["region"] in ("low_texture", "textured"))
    assert 0 < pixels <= 2 * 64 * 160
    wrong = _probe_proc(MULTISCALE, world, ["data.height=64", "data.width=192"], f"untrained={checkpoint}")
    assert wrong.returncode != 0
    assert "trained at 160x64" in wrong.stderr and "192x64" in wrong.stderr


def test_probe_refuses_checkpoints_of_different_sizes(tiny_world_and_checkpoint: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    from md2bench.checkpoint import save_checkpoint
    from md2bench.config import load_config
    from md2bench.models import build_models

    world, checkpoint = tiny_world_and_checkpoint
    cfg = load_config("synth", ["model.pretrained=scratch", "model.pose_source=gt", "data.height=64",
                                "data.width=128"])
    save_checkpoint(tmp_path / "small.pt", {"models": build_models(cfg).state_dict(), "config": cfg.to_dict()})
    proc = _probe_proc(MULTISCALE, world, [], f"wide={checkpoint}", f"small={tmp_path / 'small.pt'}")
    assert proc.returncode != 0
    assert "different sizes (wide 160x64, small 128x64)" in proc.stderr


AUTOMASK = Path(__file__).resolve().parents[1] / "experiments" / "automask_probe.py"


def test_automask_criteria_differ_where_one_unwarped_source_matches() -> None:
    """Pixel 0: the unwarped source 0 matches (0.05) better than both warps (0.1): the minimum's criterion drops
    it, averaging's keeps it (mean identity 0.275 > 0.1). Pixel 1: one warp is perfect (0.0), the other bad
    (0.6): the minimum keeps it, averaging drops it (0.3 > mean identity 0.2). Both agree with the auto-mask of
    ``losses.reprojection_loss`` (ties go to the identity there and here)."""
    from md2bench.losses import reprojection_loss

    probe = _load(AUTOMASK)
    reprojection = torch.tensor([[[[0.1, 0.0, 0.2]], [[0.1, 0.6, 0.2]]]])
    identity = torch.tensor([[[[0.05, 0.2, 0.2]], [[0.5, 0.2, 0.2]]]])
    kept = probe.kept(reprojection, identity)
    assert kept["min"].tolist() == [[[False, True, False]]]
    assert kept["avg"].tolist() == [[[True, False, False]]]  # pixel 2: a tie, the identity wins
    errors = torch.rand(2, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    unwarped = torch.rand(2, 2, 5, 7, generator=torch.Generator().manual_seed(1))
    for reduce, keep in probe.kept(errors, unwarped).items():
        _, diag = reprojection_loss(errors, unwarped, reduce, noise_std=0.0)
        assert torch.equal(diag["automask"].bool(), keep)


def test_warped_terms_are_the_minimum_mean_and_disagreement_of_the_two_sources() -> None:
    probe = _load(AUTOMASK)
    terms = probe.warped_terms(torch.tensor([[[[0.1, 0.4]], [[0.3, 0.4]]]]))
    torch.testing.assert_close(terms["error_min"], torch.tensor([[[0.1, 0.4]]]))
    torch.testing.assert_close(terms["error_avg"], torch.tensor([[[0.2, 0.4]]]))
    torch.testing.assert_close(terms["source_gap"], torch.tensor([[[0.2, 0.0]]]))
    assert set(terms) == set(probe.WARPED_TERMS)


def test_automask_probe_regions_partition_the_image() -> None:
    probe = _load(AUTOMASK)
    regions = torch.rand(2, 3, 4, 6, generator=torch.Generator().manual_seed(2)) > 0.5
    outside = torch.rand(2, 2, 4, 6, generator=torch.Generator().manual_seed(3)) > 0.7
    masks = probe.region_masks(regions, outside)
    parts = [masks[name] for name in ("not occluded, textured", "not occluded, low texture", "occluded, out of view",
                                      "occluded, hidden")]
    assert torch.equal(torch.stack(parts).sum(dim=0), torch.ones(2, 4, 6, dtype=torch.long))
    assert masks["all"].all() and torch.equal(masks["comoving"], regions[:, 1])


def test_automask_probe_runs_on_a_tiny_world(tiny_world_and_checkpoint: tuple[Path, Path]) -> None:
    world, checkpoint = tiny_world_and_checkpoint
    lines = _run_probe(AUTOMASK, world, checkpoint)
    shares = {(line["depth"], line["region"]): line for line in lines if "depth" in line}
    assert set(shares) == {(d, r) for d in ("truth", "untrained") for r in AUTOMASK_REGIONS}
    total = shares[("truth", "all")]["pixels"]
    assert total > 0 and total == sum(shares[("truth", r)]["pixels"] for r in AUTOMASK_REGIONS[1:5])
    assert all(line[key] is None or 0.0 <= line[key] <= 1.0 for line in shares.values()
               for key in ("kept_min", "kept_avg"))
    for line in shares.values():  # min <= mean of two; |e1 - e2| = 2 (mean - min), up to 5-decimal rounding
        if line["pixels"]:
            assert line["error_min"] <= line["error_avg"] + 1e-6
            assert line["source_gap"] == pytest.approx(2 * (line["error_avg"] - line["error_min"]), abs=5e-5)
    scored = [line for line in lines if line.get("checkpoint") == "untrained"]
    assert len(scored) == 12
    assert sum(line["pixels"] for line in scored if line["region"] == "all") == total
    assert all(line["abs_rel"] is None or line["abs_rel"] >= 0.0 for line in scored)


AUTOMASK_REGIONS = ("all", "not occluded, textured", "not occluded, low texture", "occluded, out of view",
                    "occluded, hidden", "comoving")


PULL = Path(__file__).resolve().parents[1] / "experiments" / "pull_probe.py"


def test_pull_term_weights_follow_the_losss_weighted_mean() -> None:
    from md2bench.config import Config

    probe = _load(PULL)
    assert probe.term_weights(Config()) == (0.25, 0.75)  # the reference: the plain mean over 4 scales
    share0, coarse = probe.term_weights(Config().override({"loss.coarse_weight": 0.25}))
    assert share0 == pytest.approx(1 / 1.75) and coarse == pytest.approx(0.75 / 1.75)
    assert probe.term_weights(Config().override({"loss.multiscale": "single"})) == (1.0, 0.0)


def test_pull_adam_step_is_lr_times_gradient_over_the_bias_corrected_second_moment() -> None:
    probe = _load(PULL)
    params = [torch.zeros(2), torch.zeros(1)]
    state = {"param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "eps": 1e-8, "params": [7, 8]}],
             "state": {7: {"step": torch.tensor(2.0), "exp_avg_sq": torch.tensor([0.0199, 0.0796])}}}
    (first, second) = probe.adam_step([torch.tensor([1.0, -3.0]), torch.tensor([5.0])], state, params)
    # v̂ = v / (1 − 0.99²) = v / 0.0199 = (1, 4): steps −0.1·g/(√v̂ + ε)
    assert first.tolist() == pytest.approx([-0.1, 0.15], rel=1e-6)
    assert second.tolist() == [0.0]  # no optimiser state: the optimiser never moved it
    with pytest.raises(SystemExit, match="not this checkpoint's optimiser"):
        probe.adam_step([torch.ones(2)], state, [torch.zeros(2)])


def test_pull_log_depth_is_median_scaled_per_image() -> None:
    probe = _load(PULL)
    depth = torch.tensor([[[1.0, 2.0, 4.0]], [[3.0, 3.0, 30.0]]], dtype=torch.float64)  # 2 images of 1×3
    keep = np.array([[[True, True, True]], [[True, True, False]]])
    out = probe.median_scaled_log_depth(depth, keep)
    assert out[0, 0].tolist() == pytest.approx([math.log(0.5), 0.0, math.log(2.0)])
    assert out[1, 0].tolist() == pytest.approx([0.0, 0.0, math.log(10.0)])  # the median over the kept pixels only
    scaled = probe.median_scaled_log_depth(depth * 7.0, keep)  # a global scale is what median scaling removes
    assert np.allclose(scaled, out)


def test_pull_probe_runs_on_a_tiny_world(tiny_world_and_checkpoint: tuple[Path, Path], tmp_path: Path) -> None:
    """As a user runs it: one batch of the tiny world's validation frames; the scale-0 and coarse pulls add up to
    the total's (a finite difference of one linear step); a single-scale model has no coarse pull; a checkpoint
    without optimiser state is refused."""
    from md2bench.checkpoint import load_checkpoint, save_checkpoint
    from md2bench.config import Config
    from md2bench.models import build_models
    from md2bench.train.device import make_optimizer

    world, untrained = tiny_world_and_checkpoint
    state = load_checkpoint(untrained)
    paths = {}
    for name, overrides in (("full", {}), ("single", {"loss.multiscale": "single"})):
        cfg = Config.from_dict(state["config"]).override(overrides)
        models = build_models(cfg)
        models.load_state_dict(state["models"])
        optimizer = make_optimizer(models, cfg)
        generator = torch.Generator().manual_seed(1)
        for param in models.parameters():  # one step on random gradients: a second-moment state to read
            param.grad = torch.randn(param.shape, generator=generator)
        optimizer.step()
        paths[name] = tmp_path / f"{name}.pt"
        save_checkpoint(paths[name], {"models": models.state_dict(), "config": cfg.to_dict(), "step": 1,
                                      "optimizer": optimizer.state_dict()})
    proc = _probe_proc(PULL, world, ["data.height=64", "data.width=160"], f"full={paths['full']}",
                       f"single={paths['single']}", options=("--frames", "val"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {(line["checkpoint"], line["band"]): line for line in _lines(proc)}
    assert {band for _, band in lines} >= {"all", "depth_0_10"}
    full, single = lines[("full", "all")], lines[("single", "all")]
    assert full["pixels"] > 0 and full["scale0"] != 0 and full["coarse"] != 0
    assert full["scale0"] + full["coarse"] == pytest.approx(full["total"], rel=0.02, abs=0.01)
    assert single["coarse"] == 0 and single["scale0"] == single["total"]
    refused = _probe_proc(PULL, world, ["data.height=64", "data.width=160"], f"untrained={untrained}")
    assert refused.returncode != 0 and "no optimiser state" in refused.stderr
