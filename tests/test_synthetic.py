"""The synthetic world: layout on disk, exact geometry (warps, stereo, depth), determinism, cache, CLI.

One small world (the ``tiny`` preset cut to 3 drives × 6 frames at 160×64) is rendered once per module into a
temporary folder; a few tests render even smaller ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from md2bench.data import synth_textures as tx
from md2bench.data import synthetic as synth
from md2bench.data.synth_scene import build_drive, pose_matrix

W, H, FRAMES, DRIVES = 160, 64, 6, 3
FX, FY, CX, CY = 0.58 * W, 1.92 * H, 0.5 * W, 0.5 * H  # 92.8, 122.88, 80, 32


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "world"
    synth.render_world(root, preset="tiny", sequences=DRIVES, frames=FRAMES, seed=3, progress=False, preview=True)
    return root


def _drive_dir(root: Path, index: int) -> Path:
    return root / synth.DATE / synth.drive_name(index)


def _read_rgb(root: Path, drive: int, frame: int, camera: int = 2) -> np.ndarray:
    path = _drive_dir(root, drive) / f"image_0{camera}" / "data" / f"{frame:010d}.png"
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float64) / 255.0


def _read_depth(root: Path, drive: int, frame: int, camera: int = 2) -> np.ndarray:
    """The KITTI depth-benchmark reading: integer PNG value / 256."""
    path = _drive_dir(root, drive) / "proj_depth" / "groundtruth" / f"image_0{camera}" / f"{frame:010d}.png"
    return np.asarray(Image.open(path), dtype=np.int64).astype(np.float64) / 256.0


def _read_mask(root: Path, drive: int, frame: int) -> np.ndarray:
    path = _drive_dir(root, drive) / "motion_mask" / "image_02" / f"{frame:010d}.png"
    return np.asarray(Image.open(path)) == 255


def _kitti_calib(path: Path) -> dict[str, np.ndarray]:
    """The reference's calibration reader: ``key: floats`` per line, lines that are not numbers skipped."""
    data: dict[str, np.ndarray] = {}
    for line in path.read_text().splitlines():
        key, value = line.split(":", 1)
        try:
            data[key] = np.array([float(x) for x in value.split()])
        except ValueError:
            pass
    return data


def _bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample an H×W×C image at float pixel coordinates (pixel centres at integers), clamped to the border."""
    h, w = image.shape[:2]
    u = np.clip(u, 0, w - 1)
    v = np.clip(v, 0, h - 1)
    x0 = np.minimum(np.floor(u).astype(int), w - 2)
    y0 = np.minimum(np.floor(v).astype(int), h - 2)
    fx, fy = (u - x0)[..., None], (v - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _smooth_depth(depth: np.ndarray) -> np.ndarray:
    """Pixels away from occlusion edges: valid depth in the 3×3 neighbourhood, inverse depth varying < 0.015/m.

    Inverse depth is affine in (u, v) on a plane, so the bound only bites at depth discontinuities: on the road
    it changes by 1/(1.65·fy) = 1/202.8 per row (0.01 over a 3×3 window), across a car at 10 m in front of a
    facade at 30 m by 0.067.
    """
    padded = np.pad(depth, 1, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))
    lo, hi = windows.min(axis=(-1, -2)), windows.max(axis=(-1, -2))
    with np.errstate(divide="ignore"):
        return (lo > 0) & (1.0 / np.maximum(lo, 1e-6) - 1.0 / np.maximum(hi, 1e-6) < 0.015)


# ------------------------------------------------------------------------------------------------ layout
def test_layout_and_world_json(world: Path) -> None:
    for d in range(DRIVES):
        drive = _drive_dir(world, d)
        for f in range(FRAMES):
            name = f"{f:010d}.png"
            for rel in ("image_02/data", "image_03/data", "proj_depth/groundtruth/image_02",
                        "proj_depth/groundtruth/image_03", "motion_mask/image_02", "motion_mask/image_03"):
                assert (drive / rel / name).is_file(), drive / rel / name
        assert (drive / "poses.txt").is_file()
    assert (world / "preview.png").is_file()
    assert not list(world.parent.glob(".world.partial-*"))  # the temporary folder was renamed
    meta = json.loads((world / "world.json").read_text())
    assert meta["options"] == {"preset": "tiny", "sequences": DRIVES, "frames": FRAMES, "height": H, "width": W,
                               "seed": 3}
    assert meta["intrinsics"]["fx"] == pytest.approx(FX) and meta["intrinsics"]["fy"] == pytest.approx(FY)
    assert meta["intrinsics"]["cx"] == pytest.approx(CX) and meta["intrinsics"]["cy"] == pytest.approx(CY)
    assert meta["baseline"] == 0.54 and meta["split"] == "synth"
    assert meta["summary"]["frames"] == DRIVES * FRAMES
    with Image.open(_drive_dir(world, 0) / "image_02" / "data" / "0000000000.png") as img:
        assert img.size == (W, H) and img.mode == "RGB"
    with Image.open(_drive_dir(world, 0) / "proj_depth" / "groundtruth" / "image_02" / "0000000000.png") as img:
        assert img.size == (W, H) and img.mode.startswith("I")  # 16-bit grey


def test_calib_in_kitti_format(world: Path) -> None:
    calib = _kitti_calib(world / synth.DATE / "calib_cam_to_cam.txt")
    p2 = calib["P_rect_02"].reshape(3, 4)
    p3 = calib["P_rect_03"].reshape(3, 4)
    # KITTI's normalised K scaled to 160×64: fx = 0.58·160 = 92.8, fy = 1.92·64 = 122.88, cx = 80, cy = 32
    expected = np.array([[92.8, 0, 80, 0], [0, 122.88, 32, 0], [0, 0, 1, 0]])
    np.testing.assert_allclose(p2, expected, atol=1e-9)
    # right camera 0.54 m to the right: P_rect_03[0, 3] = -fx·B = -92.8·0.54 = -50.112
    np.testing.assert_allclose(p3[0, 3], -50.112, atol=1e-9)
    np.testing.assert_allclose(p3[:, :3], expected[:, :3], atol=1e-9)
    np.testing.assert_array_equal(calib["S_rect_02"], [W, H])
    np.testing.assert_array_equal(calib["R_rect_00"].reshape(3, 3), np.eye(3))


def test_poses_in_kitti_odometry_format(world: Path) -> None:
    for d in range(DRIVES):
        values = np.loadtxt(_drive_dir(world, d) / "poses.txt")
        assert values.shape == (FRAMES, 12)
        poses = values.reshape(-1, 3, 4)
        np.testing.assert_array_equal(poses[0], np.eye(4)[:3])  # world = the first camera, exactly
        for pose in poses:
            np.testing.assert_allclose(pose[:, :3] @ pose[:, :3].T, np.eye(3), atol=1e-9)
            assert np.linalg.det(pose[:, :3]) == pytest.approx(1.0)
        steps = np.linalg.norm(np.diff(poses[:, :, 3], axis=0), axis=1)
        assert steps.max() < 1.5  # at most 11 m/s × 1.2 (speed variation) / 10 fps = 1.32 m per frame
        assert np.abs(poses[:, 1, 3]).max() < 1e-9  # flat road: the camera stays at its height
        if d % 3 == 1:  # drives 1, 4, ... stop: consecutive identical poses
            assert (steps == 0).any()
        else:
            assert (steps > 0.3).all()  # at least 6 m/s × 0.8 / 10 fps = 0.48 m per frame


def test_splits(world: Path) -> None:
    split_dir = world / "splits" / "synth"
    lines = {name: (split_dir / f"{name}_files.txt").read_text().splitlines() for name in ("train", "val", "test")}
    assert lines["train"] and lines["val"] and lines["test"]
    drives: dict[str, set[str]] = {}
    for name, rows in lines.items():
        drives[name] = set()
        for row in rows:
            folder, frame, side = row.split(" ")
            assert folder.startswith(f"{synth.DATE}/{synth.DATE}_drive_") and folder.endswith("_sync")
            assert 1 <= int(frame) <= FRAMES - 2  # neighbours -1 and +1 exist
            assert side in ("l", "r")
            if name == "test":
                assert side == "l"
            for offset in (-1, 0, 1):
                camera = 2 if side == "l" else 3
                assert (world / folder / f"image_0{camera}" / "data" / f"{int(frame) + offset:010d}.png").is_file()
            drives[name].add(folder)
    assert not drives["test"] & (drives["train"] | drives["val"])  # test drives are held out
    # 3 drives: 1 held out (round(0.2·3) = 1); the other 2 give 2 × 4 usable frames = 8 lines, 1 of them val
    assert len(lines["test"]) == 4 and len(lines["train"]) + len(lines["val"]) == 8 and len(lines["val"]) == 1
    assert len(set(lines["train"]) | set(lines["val"])) == 8


# ------------------------------------------------------------------------------------------ exact geometry
def test_depth_png_round_trip(world: Path) -> None:
    options = synth.make_options("tiny", sequences=DRIVES, frames=FRAMES, seed=3)
    drive = build_drive(3, 0, FRAMES, view_distance=synth.MAX_DEPTH)
    rendered = synth.render_frame(drive, 2, options, tx.build_atlas(3))
    stored = _read_depth(world, 0, 2)
    assert ((stored > 0) == (rendered.depth_left > 0)).all()  # 0 only for the sky
    assert np.abs(stored - rendered.depth_left).max() <= 1 / 512 + 1e-6  # rounding to 1/256 m
    np.testing.assert_array_equal(_read_rgb(world, 0, 2), rendered.left / 255.0)  # PNG is lossless
    # hand-computed: the road is the plane 1.65 m below a camera without pitch, so row v sees it at
    # Z = 1.65·fy/(v - cy); bottom row: 1.65·122.88/(63 - 32) = 6.5404 m (bottom centre is road in drive 0)
    np.testing.assert_allclose(stored[63, 80], 1.65 * 122.88 / 31, atol=1 / 512)
    assert (stored[: int(CY) - 2] == 0).any()  # the sky above the horizon has no depth


def test_encode_depth_values() -> None:
    # metres × 256, rounded: 1 m -> 256, 200 m -> 51200, 0.5/256 m rounds to 1 (positive depth never becomes 0)
    np.testing.assert_array_equal(synth.encode_depth(np.array([0.0, 0.5 / 256, 1.0, 200.0], np.float32)),
                                  [0, 1, 256, 51200])


def test_temporal_warp_with_gt_is_photometrically_exact_on_static_pixels(world: Path) -> None:
    poses = np.loadtxt(_drive_dir(world, 0) / "poses.txt").reshape(-1, 3, 4)
    pose = [np.vstack([p, [0, 0, 0, 1]]) for p in poses]
    static_errors, moving_errors = [], []
    for t in range(FRAMES - 1):
        target, source = _read_rgb(world, 0, t), _read_rgb(world, 0, t + 1)
        depth, depth_src = _read_depth(world, 0, t), _read_depth(world, 0, t + 1)
        moving = _read_mask(world, 0, t)
        T_src_tgt = np.linalg.inv(pose[t + 1]) @ pose[t]  # target camera -> source camera
        v, u = np.mgrid[0:H, 0:W].astype(np.float64)
        points = np.stack([(u - CX) / FX * depth, (v - CY) / FY * depth, depth], axis=-1)
        q = points @ T_src_tgt[:3, :3].T + T_src_tgt[:3, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            us, vs = FX * q[..., 0] / q[..., 2] + CX, FY * q[..., 1] / q[..., 2] + CY
        inside = (depth > 0) & (q[..., 2] > 0.1) & (us >= 0) & (us <= W - 1) & (vs >= 0) & (vs <= H - 1)
        us, vs = np.where(inside, us, 0), np.where(inside, vs, 0)
        error = np.abs(_bilinear(source, us, vs) - target).mean(axis=-1)
        # visible in the source: its depth there equals the warped point's depth (else occluded)
        seen = depth_src[np.round(vs).astype(int), np.round(us).astype(int)]
        visible = np.abs(seen - q[..., 2]) < 0.03 * np.maximum(q[..., 2], 1e-6)
        static = inside & visible & ~moving & _smooth_depth(depth)
        static_errors.append(error[static])
        moving_errors.append(error[inside & moving])
    static_err, moving_err = np.concatenate(static_errors), np.concatenate(moving_errors)
    assert static_err.size > 0.5 * H * W * (FRAMES - 1) * 0.5  # most of the lower half at least
    assert moving_err.size > 100  # drive 0 has a car that keeps the ego's speed (always in view)
    # static: only resampling of texture detail remains (≈ 0.7 grey levels median)
    assert np.median(static_err) < 0.006 and static_err.mean() < 0.015
    # moving cars violate the static-world warp: several times the static error
    assert moving_err.mean() > 0.02 and moving_err.mean() > 3 * static_err.mean()


def test_stereo_pair_obeys_disparity_f_b_over_z(world: Path) -> None:
    left, right = _read_rgb(world, 1, 2, camera=2), _read_rgb(world, 1, 2, camera=3)
    depth_l, depth_r = _read_depth(world, 1, 2, camera=2), _read_depth(world, 1, 2, camera=3)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    with np.errstate(divide="ignore"):
        disparity = np.where(depth_l > 0, FX * 0.54 / np.maximum(depth_l, 1e-6), 0)  # d = f·B/Z
    u_r = u - disparity  # a point of the left image lies d pixels further left in the right image
    inside = (depth_l > 0) & (u_r >= 0)
    seen = depth_r[v.astype(int), np.clip(np.round(u_r), 0, W - 1).astype(int)]
    visible = inside & (np.abs(seen - depth_l) < 0.03 * np.maximum(depth_l, 1e-6)) & _smooth_depth(depth_l)
    assert visible.sum() > 0.7 * (depth_l > 0).sum()  # most pixels with depth: not occluded, not at an edge
    error = np.abs(_bilinear(right, np.where(visible, u_r, 0), v) - left).mean(axis=-1)[visible]
    assert np.median(error) < 0.006 and error.mean() < 0.015
    # the same check with the disparity off by one pixel fails: the relation is f·B/Z, not something close
    shifted = np.abs(_bilinear(right, np.where(visible, u_r - 1, 0), v) - left).mean(axis=-1)[visible]
    assert shifted.mean() > 2 * error.mean()


def test_follower_car_is_static_in_the_camera() -> None:
    drive = build_drive(5, 0, 8, view_distance=50.0)  # even drives have a follower (the last moving car)
    assert drive.has_follower
    relative = [np.linalg.inv(drive.camera_to_street(k)) @ pose_matrix(x, 0.0, z, yaw)
                for k, (x, z, yaw) in enumerate(drive.cars[-1])]
    for rel in relative[1:]:
        np.testing.assert_allclose(rel, relative[0], atol=1e-9)
    assert np.linalg.norm(relative[0][:3, 3]) > 8  # 9 to 16 m ahead


def test_stop_drive_has_static_camera_and_moving_traffic() -> None:
    drive = build_drive(5, 1, 30, view_distance=50.0)  # drive 1 stops
    assert drive.has_stop
    steps = np.linalg.norm(np.diff(drive.ego[:, :2], axis=0), axis=1)
    still = np.flatnonzero(steps == 0)
    assert still.size >= 5  # round(0.2·29) = 6 intervals at least
    # some other car keeps moving while the ego stands still
    car_steps = np.linalg.norm(np.diff(drive.cars[:, :, :2], axis=1), axis=2)[:, still]
    assert (car_steps > 0.5).any()


# -------------------------------------------------------------------------------------- determinism, cache
def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    kwargs = dict(preset="tiny", sequences=2, frames=3, height=32, width=64, progress=False)
    synth.render_world(tmp_path / "a", seed=7, **kwargs)
    synth.render_world(tmp_path / "b", seed=7, **kwargs)
    synth.render_world(tmp_path / "c", seed=8, **kwargs)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 2 * 3 * 6 + 2 + 1 + 3 + 1  # frames×6, poses, calib, splits, json
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    image = Path(synth.DATE) / synth.drive_name(0) / "image_02" / "data" / "0000000001.png"
    assert (tmp_path / "a" / image).read_bytes() != (tmp_path / "c" / image).read_bytes()  # another seed


def test_render_world_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "note.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        synth.render_world(tmp_path / "x", preset="tiny", sequences=2, frames=3, height=16, width=32, progress=False)
    assert (tmp_path / "x" / "note.txt").read_text() == "mine"


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="tiny, small, default"):
        synth.make_options("huge")
    with pytest.raises(ValueError, match="sequences must be >= 2"):
        synth.make_options("tiny", sequences=1)
    with pytest.raises(ValueError, match="frames must be >= 3"):
        synth.make_options("tiny", frames=2)


def test_ensure_world_renders_into_the_cache_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from md2bench.config import load_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config("tiny", {"data.synth_seed": 2})
    root = synth.ensure_world(cfg)
    assert root == tmp_path / ".md2bench_cache" / "synth" / "tiny-2"
    meta = synth.read_world(root)
    assert meta["options"]["seed"] == 2 and meta["options"]["sequences"] == synth.PRESETS["tiny"]["sequences"]
    stamp = (root / "world.json").stat().st_mtime_ns
    assert synth.ensure_world(cfg) == root and (root / "world.json").stat().st_mtime_ns == stamp  # not re-rendered
    assert sorted(p.name for p in root.parent.iterdir()) == ["tiny-2"]  # no partial folders left
    # an explicit data.path that is not a world is refused, not overwritten
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file").write_text("x")
    with pytest.raises(ValueError, match="no world.json"):
        synth.ensure_world(cfg.override({"data.path": str(tmp_path / "other")}))


def test_png_encoder_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for array in (rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), rng.integers(0, 256, (5, 7), dtype=np.uint8),
                  rng.integers(0, 65536, (5, 7), dtype=np.uint16)):
        path = tmp_path / "x.png"
        path.write_bytes(synth.encode_png(array))
        with Image.open(path) as img:
            np.testing.assert_array_equal(np.asarray(img).astype(np.int64), array.astype(np.int64))


def test_render_benchmark_reports_frames_per_second(capsys: pytest.CaptureFixture[str]) -> None:
    fps = synth.render_benchmark("tiny", frames=2, height=16, width=32)
    assert fps > 0
    assert "frames/s" in capsys.readouterr().out


def test_cli_data_synth(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from md2bench.cli import app

    runner = CliRunner()
    out = tmp_path / "w"
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--preset", "tiny", "--sequences", "2",
                                 "--frames", "3", "--height", "16", "--width", "32", "--preview"])
    assert result.exit_code == 0, result.output
    assert "6 stereo frames" in result.output and (out / "preview.png").is_file() and (out / "world.json").is_file()
    bad = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "v"), "--preset", "tiny", "--sequences", "1"])
    assert bad.exit_code == 2 and "sequences must be >= 2" in bad.output
