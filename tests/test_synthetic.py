"""The synthetic world: layout on disk, exact geometry (warps, stereo, depth), determinism, cache, CLI.

One small world (the ``tiny`` preset cut to 3 drives × 6 frames at 160×64) is rendered once per module into a
temporary folder; a few tests render even smaller ones.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from md2bench.data import synth_regions as sg
from md2bench.data import synth_render as sr
from md2bench.data import synth_textures as tx
from md2bench.data import synthetic as synth
from md2bench.data.synth_scene import BOX, Drive, Primitives, build_drive, pose_matrix
from md2bench.regions import REGION_NAMES

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


def _read_region(root: Path, drive: int, frame: int, region: str, camera: int = 2) -> np.ndarray:
    path = _drive_dir(root, drive) / "region_mask" / region / f"image_0{camera}" / f"{frame:010d}.png"
    with Image.open(path) as img:
        values = np.asarray(img)
    assert set(np.unique(values)) <= {0, 255}
    return values == 255


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
                        "proj_depth/groundtruth/image_03", "motion_mask/image_02", "motion_mask/image_03",
                        *(f"region_mask/{r}/image_0{c}" for r in REGION_NAMES for c in (2, 3))):
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
    assert meta["format"] == "md2bench-synth/2" and meta["regions"]["names"] == list(REGION_NAMES)
    assert meta["regions"]["texture_threshold"] == sg.TEXTURE_THRESHOLD
    # the test split's region counts, recounted here from the files: 1 test drive × 4 usable frames, side l
    stats = meta["summary"]["test_regions"]
    valid_total, counts = 0, {r: 0 for r in REGION_NAMES}
    for frame in range(1, FRAMES - 1):
        valid = (_read_depth(world, DRIVES - 1, frame) > 0) & (_read_depth(world, DRIVES - 1, frame) < 80)
        valid_total += int(valid.sum())
        for region in REGION_NAMES:
            counts[region] += int((_read_region(world, DRIVES - 1, frame, region) & valid).sum())
    assert stats["images"] == FRAMES - 2 and stats["valid_pixels"] == valid_total
    for region in REGION_NAMES:
        assert stats[region]["pixels"] == counts[region] > 0, region  # every region occurs on the test split
        assert stats[region]["fraction"] == pytest.approx(counts[region] / valid_total, abs=1e-6)
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
    # frames × (6 + 2 cameras × 3 region masks), poses, calib, splits, world.json, fingerprint.json
    assert files_a == files_b and len(files_a) == 2 * 3 * 12 + 2 + 1 + 3 + 1 + 1
    for rel in files_a:
        if rel.name != synth.FINGERPRINT_NAME:  # it also says when it was computed
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    fingerprints = [synth.world_fingerprint(tmp_path / w) for w in "abc"]
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]
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


def test_a_world_carries_the_fingerprint_of_its_bytes(world: Path, tmp_path: Path) -> None:
    """The render writes fingerprint.json: the SHA-256 of the content files (recomputed here: sorted relative
    paths, a NUL, the bytes) and what rendered them; world.json, the fingerprint file and the preview are not
    content; a world without the file gets it on first use and keeps it; one flipped bit in one image changes the
    content fingerprint."""
    record = json.loads((world / synth.FINGERPRINT_NAME).read_text())
    digest = hashlib.sha256()
    content = sorted(p for p in world.rglob("*")
                     if p.is_file() and p.relative_to(world).as_posix() not in ("world.json", "fingerprint.json",
                                                                                 "preview.png"))
    for path in content:
        digest.update(path.relative_to(world).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    assert record["sha256"] == digest.hexdigest() and record["files"] == len(content) > 100
    assert record["rendered_with"]["numpy"] == np.__version__ and record["rendered_with"]["machine"]
    assert synth.world_fingerprint(world) == record["sha256"]
    copy = tmp_path / "copy"
    shutil.copytree(world, copy)
    (copy / synth.FINGERPRINT_NAME).unlink()  # as a world rendered before fingerprints
    (copy / "world.json").write_text((copy / "world.json").read_text() + " ")
    (copy / "preview.png").write_bytes(b"not content")
    assert synth.world_fingerprint(copy) == record["sha256"]
    assert json.loads((copy / synth.FINGERPRINT_NAME).read_text())["sha256"] == record["sha256"]  # kept
    image = sorted(copy.rglob("image_02/data/*.png"))[0]
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 1
    image.write_bytes(bytes(data))
    assert synth.content_fingerprint(copy)["sha256"] != record["sha256"]
    assert synth.world_fingerprint(copy) == record["sha256"]  # read from the kept file, not recomputed


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


# ---------------------------------------------------------------------------------------------- region masks
# Hand-made scenes from the scene primitives, seen by a 64×32 camera with KITTI's normalised K:
# fx = 0.58·64 = 37.12, fy = 1.92·32 = 61.44, cx = 32, cy = 16.
RW, RH = 64, 32
RCAM = sr.Camera(0.58 * RW, 1.92 * RH, 0.5 * RW, 0.5 * RH, RW, RH)


def _prims(rows: list[tuple[tuple[float, float, float], tuple[float, float, float]]], moving: bool = False) -> Primitives:
    """Axis-aligned boxes (centre, half extents), material 0."""
    n = len(rows)
    return Primitives(np.full(n, BOX, np.int8), np.array([r[0] for r in rows], float), np.zeros(n),
                      np.array([r[1] for r in rows], float), np.zeros(n, np.int64), np.full(n, moving),
                      np.zeros((n, 2)))


def _drive(static: Primitives, ego: np.ndarray, cars: np.ndarray | None = None) -> Drive:
    cars = np.zeros((0, len(ego), 3)) if cars is None else cars
    return Drive(static, ego, cars, np.full(cars.shape[0], tx.CAR_PAINTS[0], np.int64), False, False)


def _regions(drive: Drive, frame: int) -> dict[str, np.ndarray]:
    cache = sg.ViewCache(drive, sr.ray_grid(RCAM, 1), synth.BASELINE, synth.MAX_DEPTH)
    flat = np.zeros((RH, RW, 3), np.uint8)
    return sg.region_masks(drive, frame, cache, (flat, flat))[0]


def test_occluded_strip_of_a_box_in_front_of_a_wall_is_exact() -> None:
    # A wall (front face z = 20 m, covering the view) and a box x ∈ [-1, 1], z ∈ [5, 5.2], tall enough to fill
    # every row above the horizon; the camera slides sideways: x = -0.5, 0, +0.5 m in frames 0, 1, 2 (yaw 0).
    static = _prims([((0.0, 0.0, 20.5), (50.0, 50.0, 0.5)), ((0.0, -4.175, 5.1), (1.0, 5.825, 0.1))])
    drive = _drive(static, np.array([[-0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0]]))
    occluded = _regions(drive, 1)["occluded"]
    # Frame 1 (camera at x = 0), rows above the horizon (v < cy = 16: no road). Column u sees the wall at
    # X = (u - 32)·20/37.12 where |X| > 4 (else the box: X/4 ∈ [-1, 1] at z = 5 hides it; at z = 5.2, 3.85).
    # From x = +0.5 (frame 2) the ray to (X, 20) crosses z = 5 at 0.5 + (X - 0.5)/4: inside [-1, 1] for
    # X ∈ [-5.5, 2.5] (z = 5.2: [-5.27, 2.42]), so the visible wall with X ∈ [-5.5, -4) is hidden: u = 21.79 ..
    # 24.58 -> columns 22, 23, 24. Mirrored for frame 0 (x = -0.5): X ∈ (4, 5.5] -> columns 40, 41, 42.
    # Out of view: in frame 2 every point moves 0.5·37.12/20 = 0.928 px left, so column 0 (u' = -0.928 <
    # -0.5) leaves the image; in frame 0 column 63 (u' = 63.928 >= 63.5). The box's front face never hides.
    expected = np.zeros(RW, bool)
    expected[[0, 22, 23, 24, 40, 41, 42, 63]] = True
    for row in range(16):
        np.testing.assert_array_equal(occluded[row], expected, err_msg=f"row {row}")
    # at a drive end only the existing neighbour counts: frame 0 has frame 1 only (camera 0.5 m to the right)
    # -> the strip left of the box (X from the camera at -0.5: columns 22-24 shifted by 0.928 px) and column 0
    first = _regions(drive, 0)["occluded"][:16]
    assert not first[:, 40:64].any() and first[:, 0].all()


def test_comoving_is_every_pixel_of_a_car_that_moves_with_the_camera() -> None:
    # The ego drives 1 m per frame along z. Car 0 keeps 12 m ahead of it (the follower); car 1 drives towards
    # it in the other lane; a parked car (static boxes) stands at the side.
    frames = 3
    ego = np.stack([np.zeros(frames), np.arange(frames, dtype=float), np.zeros(frames)], axis=1)
    follower = np.stack([np.zeros(frames), ego[:, 1] + 12.0, np.zeros(frames)], axis=1)
    oncoming = np.stack([np.full(frames, -3.5), 20.0 - 1.5 * np.arange(frames), np.full(frames, np.pi)], axis=1)
    parked = _prims([((4.0, 1.1, 15.0), (0.9, 0.4, 2.1))])  # a car-sized static box on the right
    drive = _drive(parked, ego, np.stack([follower, oncoming]))
    cache = sg.ViewCache(drive, sr.ray_grid(RCAM, 1), synth.BASELINE, synth.MAX_DEPTH)
    view = cache.get(1)[0]
    hit = view.hits.hit.reshape(RH, RW)
    owner = np.full(hit.shape, -1)
    seen = hit > 0
    owner[seen] = drive.owner_car()[hit[seen] - 1]
    comoving = _regions(drive, 1)["comoving"]
    assert (owner == 0).sum() > 50 and (owner == 1).sum() > 10 and (hit == 1).sum() > 10  # all three in view
    np.testing.assert_array_equal(comoving, owner == 0)  # exactly the follower's pixels, not the others


def test_low_texture_is_the_flat_wall_not_the_textured_one() -> None:
    # Left half a flat grey wall, right half a wall with a ±20-grey-level checkerboard; the top 4 rows are sky.
    image = np.full((RH, RW, 3), 128, np.uint8)
    checker = ((np.arange(RH)[:, None] + np.arange(RW)[None, :]) % 2) * 40 + 108
    image[:, RW // 2:] = checker[:, RW // 2:, None]
    valid = np.ones((RH, RW), bool)
    valid[:4] = False
    mask = sg.low_texture(image, valid)
    # the 7×7 window sees only the flat wall up to column 32 - 3 - 1 = 28; from column 29 it reaches the checker
    # (std of the window > 0.01: 40 grey levels on several of its pixels); the sky has no GT depth.
    expected = valid.copy()
    expected[:, 29:] = False
    np.testing.assert_array_equal(mask, expected)
    # the threshold is on the std of the grey level: a ±1 grey-level dither (std 1/255 = 0.0039) stays "low"
    dither = (image[..., :1] + (checker[..., None] > 128)).astype(np.uint8).repeat(3, axis=2)
    dither[:, RW // 2:] = 128
    assert sg.low_texture(dither, valid)[4:].all()


def test_rendered_regions_are_consistent_with_depth_and_motion(world: Path) -> None:
    for frame in range(FRAMES):
        depth = _read_depth(world, 0, frame)
        moving = _read_mask(world, 0, frame)
        regions = {r: _read_region(world, 0, frame, r) for r in REGION_NAMES}
        for region, mask in regions.items():
            assert not (mask & (depth == 0)).any(), region  # regions only where there is GT depth
        assert not (regions["comoving"] & ~moving).any()  # co-moving pixels belong to moving objects
    # drive 0 has a follower: co-moving pixels in every frame; its first frame has only frame 1 as neighbour
    assert all(_read_region(world, 0, f, "comoving").any() for f in range(FRAMES))
    # moving forward, the bottom row (road 6.5 m ahead) leaves the image in the next frame: occluded
    assert _read_region(world, 0, 2, "occluded")[-1].mean() > 0.9


def test_ensure_world_rerenders_a_cached_world_without_region_masks(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from md2bench.config import load_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config("tiny", {"data.synth_seed": 4})
    root = synth.ensure_world(cfg)
    image = root / synth.DATE / synth.drive_name(0) / "image_02" / "data" / "0000000001.png"
    before = image.read_bytes()
    # make it look like a format-1 world: no region masks, old format string
    for drive in (root / synth.DATE).iterdir():
        if drive.is_dir():
            import shutil

            shutil.rmtree(drive / "region_mask")
    meta = json.loads((root / "world.json").read_text())
    meta["format"] = "md2bench-synth/1"
    (root / "world.json").write_text(json.dumps(meta))
    assert not synth.has_region_masks(root)
    with pytest.warns(UserWarning, match="older format"):
        assert synth.ensure_world(cfg) == root
    assert synth.has_region_masks(root) and (root / synth.DATE / synth.drive_name(0) / "region_mask").is_dir()
    assert image.read_bytes() == before  # colour images are byte-identical across the formats
    assert sorted(p.name for p in root.parent.iterdir()) == ["tiny-4"]  # no temporary folders left
    # a world at an explicit data.path is never rewritten
    meta["format"] = "md2bench-synth/1"
    (root / "world.json").write_text(json.dumps(meta))
    assert synth.ensure_world(cfg.override({"data.path": str(root)})) == root
    assert not synth.has_region_masks(root)
