"""KITTI raw layout: split reading, the dataset, velodyne GT projection, and prepare-kitti.

A tiny KITTI-layout folder is written per test (12×8 images, a hand-made velodyne scan, calibration files);
the projected GT is checked against values computed by hand below.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin
from typer.testing import CliRunner

from md2bench.config import Config
from md2bench.data import kitti, prepare
from md2bench.data.kitti import DatasetFileError, DatasetNotFoundError, MonoDataset, SplitLine, read_split
from md2bench.data.schema import validate_batch

DATE = "2011_09_26"
DRIVE = f"{DATE}/{DATE}_drive_0001_sync"
W, H = 12, 8  # native image size of the fixture (S_rect_02 = 12 × 8)
SHARED_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti_raw_sample"

# Calibration: f = 10, principal point (6, 4); velodyne (x fwd, y left, z up) → camera (x right, y down, z fwd),
# camera = R·velo + T with T = (0, 0, 1), so camera z = velodyne x + 1.
CAM_TO_CAM = f"""calib_time: 09-Jan-2012 13:57:47
S_rect_02: {W:e} {H:e}
R_rect_00: 1 0 0 0 1 0 0 0 1
P_rect_02: 10 0 6 0 0 10 4 0 0 0 1 0
P_rect_03: 10 0 6 -5 0 10 4 0 0 0 1 0
"""
VELO_TO_CAM = """calib_time: 15-Mar-2012 11:37:16
R: 0 -1 0 0 0 -1 1 0 0
T: 0 0 1
"""
# Points (x, y, z, reflectance) in scan order, with their projection (u, v) = 10·(cx, cy)/cz + (6, 4),
# rounded, minus 1:
POINTS = np.array(
    [
        [4.0, 0.0, 0.0, 0.3],  # cam (0, 0, 5): u=6, v=4 → pixel (row 3, col 5), z 5, velo x 4
        [9.0, -1.0, 0.0, 0.3],  # cam (1, 0, 10): u=7, v=4 → (3, 6), z 10, x 9
        [19.0, -2.0, 0.0, 0.3],  # cam (2, 0, 20): u=7, v=4 → (3, 6) again, z 20: the minimum (10) is kept
        [-4.0, 0.0, 0.0, 0.3],  # behind (x < 0): dropped (else its negative depth would zero pixel (3, 5))
        [4.0, -10.0, 0.0, 0.3],  # cam (10, 0, 5): u = 26 → outside the 12-wide image
        [9.0, -6.0, 2.0, 0.3],  # cam (6, −2, 10): u=12, v=2 → (1, 11), z 10, x 9
        [4.0, 2.5, 0.5, 0.3],  # cam (−2.5, −0.5, 5): u=1, v=3 → (2, 0), z 5, x 4
    ],
    dtype=np.float32,
)
# (1, 11) and (2, 0) share the reference's quirky index row·(W−1) + col − 1 = 21: their minimum (5) is written
# at the pixel of the group's first point, (1, 11); (2, 0) keeps its own value 5.
EXPECTED_CAM_Z = {(3, 5): 5.0, (3, 6): 10.0, (1, 11): 5.0, (2, 0): 5.0}
EXPECTED_VELO_X = {(3, 5): 4.0, (3, 6): 9.0, (1, 11): 4.0, (2, 0): 4.0}


def _image(frame: int, side: str, width: int = W, height: int = H) -> np.ndarray:
    """Distinct content per frame/side: a horizontal ramp (to see flips) offset by frame and side."""
    cols = np.arange(width, dtype=np.int64) * 3
    value = (cols + 20 * frame + (100 if side == "r" else 0)) % 256
    return np.broadcast_to(value[None, :, None], (height, width, 3)).astype(np.uint8)


def make_kitti(root: Path, frames: range = range(4), ext: str = "png", width: int = W, height: int = H) -> Path:
    (root / DATE).mkdir(parents=True, exist_ok=True)
    (root / DATE / "calib_cam_to_cam.txt").write_text(CAM_TO_CAM)
    (root / DATE / "calib_velo_to_cam.txt").write_text(VELO_TO_CAM)
    for side, cam in (("l", 2), ("r", 3)):
        folder = root / DRIVE / f"image_0{cam}" / "data"
        folder.mkdir(parents=True, exist_ok=True)
        for f in frames:
            Image.fromarray(_image(f, side, width, height)).save(folder / f"{f:010d}.{ext}")
    velo = root / DRIVE / "velodyne_points" / "data"
    velo.mkdir(parents=True, exist_ok=True)
    for f in frames:
        POINTS.tofile(velo / f"{f:010d}.bin")
    return root


def _lines(*specs: tuple[int, str]) -> list[SplitLine]:
    return [SplitLine(DRIVE, f, s, "test_split.txt", i + 1) for i, (f, s) in enumerate(specs)]


# ------------------------------------------------------------------------------------------------ split files
def test_read_split_formats(tmp_path: Path) -> None:
    path = tmp_path / "split.txt"
    path.write_text(f"{DRIVE} 0000000069 l\n\n{DRIVE} 5 3\n9 12 r\n")
    lines = read_split(path)
    assert [(ln.folder, ln.frame, ln.side, ln.line_no) for ln in lines] == [
        (DRIVE, 69, "l", 1), (DRIVE, 5, "r", 3), ("9", 12, "r", 4)]
    path.write_text(f"{DRIVE} 1 x\n")
    with pytest.raises(ValueError, match="split.txt:1"):
        read_split(path)


def test_packaged_splits_have_reference_sizes() -> None:
    # REFERENCE §3.2: eigen test 697 lines, eigen_benchmark 652, eigen_zhou train 39,810
    assert len(read_split(kitti.packaged_split_file("eigen", "test_files.txt"))) == 697
    assert len(read_split(kitti.packaged_split_file("eigen_benchmark", "test_files.txt"))) == 652
    assert len(read_split(kitti.packaged_split_file("eigen_zhou", "train_files.txt"))) == 39810


# ------------------------------------------------------------------------------------------------ velodyne GT
def test_generate_depth_map_hand_checked(tmp_path: Path) -> None:
    root = make_kitti(tmp_path, frames=range(1))
    velo = kitti.velodyne_path(root, DRIVE, 0)
    for vel_depth, expected in ((False, EXPECTED_CAM_Z), (True, EXPECTED_VELO_X)):
        depth = kitti.generate_depth_map(root / DATE, velo, cam=2, vel_depth=vel_depth)
        assert depth.shape == (H, W) and depth.dtype == np.float32
        want = np.zeros((H, W), dtype=np.float32)
        for (r, c), v in expected.items():
            want[r, c] = v
        np.testing.assert_allclose(depth, want, atol=1e-5)


def test_read_calib_file_skips_dates(tmp_path: Path) -> None:
    root = make_kitti(tmp_path, frames=range(1))
    calib = kitti.read_calib_file(root / DATE / "calib_cam_to_cam.txt")
    assert "calib_time" not in calib
    np.testing.assert_allclose(calib["S_rect_02"], [12.0, 8.0])
    with pytest.raises(DatasetFileError, match="calib_zzz"):
        kitti.read_calib_file(root / DATE / "calib_zzz.txt")


# ------------------------------------------------------------------------------------------------ dataset
def test_item_contract_frames_and_k(tmp_path: Path) -> None:
    root = make_kitti(tmp_path)
    ds = MonoDataset(root, _lines((1, "l"), (2, "r")), (0, -1, 1, "s"), height=H, width=W, is_train=False)
    item = ds[0]
    validate_batch(item, num_frames=4, height=H, width=W, batched=False)
    # frames in (0, −1, 1, "s") order: frames 1, 0, 2 of the left camera, then frame 1 of the right
    for i, (frame, side) in enumerate(((1, "l"), (0, "l"), (2, "l"), (1, "r"))):
        assert torch.equal(item["images"][i], torch.from_numpy(_image(frame, side)).permute(2, 0, 1))
    # K = normalised K with row 0 × W and row 1 × H: fx = 0.58·12, cx = 6, fy = 1.92·8, cy = 4
    expected_k = torch.tensor([[6.96, 0, 6, 0], [0, 15.36, 4, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    torch.testing.assert_close(item["K"], expected_k)
    # left target, not flipped: the right camera is at +0.1 → T_src_tgt x-translation −0.1
    assert item["stereo_T"][0, 3].item() == pytest.approx(-0.1)
    assert ds[1]["stereo_T"][0, 3].item() == pytest.approx(0.1)  # right target
    assert item["color_aug"].tolist() == [1.0, 1.0, 1.0, 0.0] and not item["flip"]


def test_resize_with_lanczos_when_size_differs(tmp_path: Path) -> None:
    root = make_kitti(tmp_path, width=24, height=16)
    ds = MonoDataset(root, _lines((1, "l")), (0,), height=H, width=W, is_train=False)
    img = ds[0]["images"][0]
    expected = Image.fromarray(_image(1, "l", 24, 16)).resize((W, H), Image.Resampling.LANCZOS)
    assert torch.equal(img, torch.from_numpy(np.array(expected)).permute(2, 0, 1))


def test_flip_mirrors_images_depth_and_stereo_sign(tmp_path: Path) -> None:
    root = make_kitti(tmp_path)
    gt_dir = root / DRIVE / "proj_depth" / "groundtruth" / "image_02"
    gt_dir.mkdir(parents=True)
    gt = np.zeros((H, W), dtype=np.uint16)
    gt[:, 0] = 5 * 256  # 5 m in the first column
    for f in range(4):
        Image.fromarray(gt).save(gt_dir / f"{f:010d}.png")
    lines = _lines(*[(1, "l")] * 16)
    plain = MonoDataset(root, lines, (0, "s"), H, W, is_train=False, gt_shape=None)
    train = MonoDataset(root, lines, (0, "s"), H, W, is_train=True, seed=3, gt_shape=None)
    flips = [bool(train[i]["flip"]) for i in range(16)]
    assert any(flips) and not all(flips)
    i = flips.index(True)
    flipped, reference = train[i], plain[i]
    assert torch.equal(flipped["images"], torch.flip(reference["images"], dims=(-1,)))
    assert flipped["depth_gt"][0, :, -1].tolist() == [5.0] * H  # GT flipped with the image
    assert reference["depth_gt"][0, :, 0].tolist() == [5.0] * H
    assert flipped["stereo_T"][0, 3].item() == pytest.approx(0.1)  # flipping swaps the side sign


def test_augmentation_depends_on_seed_epoch_index_only(tmp_path: Path) -> None:
    root = make_kitti(tmp_path)
    lines = _lines(*[(1, "l")] * 8)
    a = MonoDataset(root, lines, (0,), H, W, is_train=True, seed=5)
    b = MonoDataset(root, lines, (0,), H, W, is_train=True, seed=5)
    draws_a = [a[i]["color_aug"] for i in range(8)]
    assert all(torch.equal(draws_a[i], b[i]["color_aug"]) for i in range(8))
    # reading in another order (as another worker would) gives the same draws
    assert torch.equal(b[5]["color_aug"], draws_a[5])
    a.set_epoch(1)
    assert any(not torch.equal(a[i]["color_aug"], draws_a[i]) for i in range(8))


def test_missing_neighbour_dropped_with_one_warning(tmp_path: Path) -> None:
    root = make_kitti(tmp_path)
    with pytest.warns(UserWarning, match=r"dropped 2 of 4 split lines") as record:
        ds = MonoDataset(root, _lines((0, "l"), (1, "l"), (2, "r"), (3, "l")), (0, -1, 1), H, W, is_train=True)
    assert len(record) == 1
    assert "0000000000" not in str(record[0].message)  # the example is the missing neighbour, frame −1
    assert "test_split.txt:1" in str(record[0].message)
    assert [ln.frame for ln in ds.lines] == [1, 2]


def test_missing_target_fails_naming_file_and_line(tmp_path: Path) -> None:
    root = make_kitti(tmp_path)
    with pytest.raises(DatasetFileError, match=r"0000000007\.jpg.*test_split\.txt:2"):
        MonoDataset(root, _lines((1, "l"), (7, "l")), (0,), H, W, is_train=False)


def test_broken_file_fails_naming_file_and_line(tmp_path: Path) -> None:
    root = make_kitti(tmp_path)
    (root / DRIVE / "image_02" / "data" / "0000000002.png").write_bytes(b"not a png")
    ds = MonoDataset(root, _lines((1, "l"), (2, "l")), (0,), H, W, is_train=False)
    with pytest.raises(DatasetFileError, match=r"0000000002\.png.*test_split\.txt:2"):
        ds[1]


def test_auto_ext_prefers_jpg(tmp_path: Path) -> None:
    root = make_kitti(tmp_path, frames=range(2))
    jpg = root / DRIVE / "image_02" / "data" / "0000000001.jpg"
    Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(jpg)
    auto = MonoDataset(root, _lines((1, "l")), (0,), H, W, is_train=False)
    png = MonoDataset(root, _lines((1, "l")), (0,), H, W, is_train=False, image_ext="png")
    assert auto[0]["images"].max() == 0  # the black JPEG
    assert png[0]["images"].max() > 0


def test_collated_batch_validates(tmp_path: Path) -> None:
    root = make_kitti(tmp_path)
    ds = MonoDataset(root, _lines((1, "l"), (2, "l"), (1, "r")), (0, -1, 1, "s"), H, W, is_train=True)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    validate_batch(batch, num_frames=4, height=H, width=W)


def test_region_masks_only_where_evaluation_asks(tmp_path: Path) -> None:
    from md2bench.data.synthetic import render_world
    from md2bench.regions import REGION_NAMES

    root = render_world(tmp_path / "w", preset="tiny", sequences=2, frames=4, height=32, width=64,
                        progress=False).root
    cfg = Config().override({"data.dataset": "synthetic", "data.path": str(root), "data.split": "synth",
                             "data.test_split": "synth", "data.height": 32, "data.width": 64})
    train = kitti.build_dataset(cfg, "train", load_depth=False)  # as the trainer reads it
    assert not train.has_regions and "region_masks" not in train[0]
    assert "region_masks" not in kitti.build_dataset(cfg, "val")[0]  # validation does not decode them either
    test = kitti.build_dataset(cfg, "test", load_regions=True)
    item = test[0]
    assert item["region_masks"].shape == (len(REGION_NAMES), 32, 64) and item["region_masks"].dtype == torch.uint8
    line = test.lines[0]
    for k, region in enumerate(REGION_NAMES):  # channel k = REGION_NAMES[k], 1 where the PNG says 255
        png = np.asarray(Image.open(kitti.region_mask_path(root, line.folder, line.frame, line.side, region)))
        np.testing.assert_array_equal(item["region_masks"][k].numpy(), (png == 255).astype(np.uint8))
    batch = next(iter(torch.utils.data.DataLoader(test, batch_size=2)))
    validate_batch(batch, num_frames=1, height=32, width=64)
    bad = dict(batch, region_masks=batch["region_masks"][:, :1])
    with pytest.raises(Exception, match="region_masks"):
        validate_batch(bad, num_frames=1, height=32, width=64)


def test_build_dataset_without_kitti_path_says_how(tmp_path: Path) -> None:
    cfg = Config().override({"data.dataset": "kitti", "data.split": "eigen_zhou", "data.test_split": "eigen"})
    with pytest.raises(DatasetNotFoundError, match="prepare-kitti"):
        kitti.build_dataset(cfg, "train")
    cfg = cfg.override({"data.path": str(tmp_path / "nowhere")})
    with pytest.raises(DatasetNotFoundError, match="kitti_archives_to_download.txt"):
        kitti.build_dataset(cfg, "test")


# ------------------------------------------------------------------------------------------------ prepare
def test_export_gt_npz_loads_without_pickle_and_resumes(tmp_path: Path) -> None:
    root = make_kitti(tmp_path / "raw", frames=range(2))
    lines = _lines((0, "l"), (1, "l"))
    partial = root / "gt_depths.npz.partial"
    partial.mkdir()
    sentinel = np.full((2, 3), 7.0, dtype=np.float32)
    np.save(partial / "0001.npy", sentinel)  # a result left by an interrupted run: reused, not recomputed
    out = prepare.export_gt(root, "eigen", lines=lines, progress=False)
    assert out == root / "gt_depths.npz" and not partial.exists()
    with np.load(out, allow_pickle=False) as npz:
        assert npz["lines"].tolist() == [f"{DRIVE} 0 l", f"{DRIVE} 1 l"]
    gts = prepare.load_gt(out, lines)
    expected = np.zeros((H, W), dtype=np.float32)
    for (r, c), v in EXPECTED_VELO_X.items():  # the Eigen export uses vel_depth=True
        expected[r, c] = v
    np.testing.assert_allclose(gts[0], expected, atol=1e-5)
    np.testing.assert_array_equal(gts[1], sentinel)
    stamp = out.stat().st_mtime_ns
    prepare.export_gt(root, "eigen", lines=lines, progress=False)  # done: skipped
    assert out.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other split lines"):
        prepare.load_gt(out, lines[:1])


def test_load_gt_missing_says_prepare(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="prepare-kitti"):
        prepare.load_gt(tmp_path / "gt_depths.npz")


def test_convert_to_jpeg_in_place_and_resumable(tmp_path: Path) -> None:
    root = make_kitti(tmp_path, frames=range(2))
    done = root / DRIVE / "image_03" / "data" / "0000000001.jpg"
    Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(done)  # converted by an interrupted run
    converted, skipped = prepare.convert_to_jpeg(root, progress=False)
    assert (converted, skipped) == (3, 1)
    assert not list(root.rglob("image_0*/data/*.png"))
    with Image.open(root / DRIVE / "image_02" / "data" / "0000000000.jpg") as img:
        assert JpegImagePlugin.get_sampling(img) == 2  # 4:2:0 (ImageMagick 2x2,1x1,1x1)
    prepare.convert_to_jpeg(root, chroma="4:4:4", progress=False)  # nothing left to convert
    ds = MonoDataset(root, _lines((1, "l")), (0, -1), H, W, is_train=False)
    assert ds[0]["images"].shape == (2, 3, H, W)


def test_check_split_lines_reports_missing(tmp_path: Path) -> None:
    root = make_kitti(tmp_path, frames=range(3))
    (root / DRIVE / "image_03" / "data" / "0000000001.png").unlink()
    other = SplitLine(f"{DATE}/{DATE}_drive_0002_sync", 1, "l", "x.txt", 3)
    check = prepare.check_split_lines(root, "train", _lines((1, "l"), (2, "l")) + [other], is_test=False)
    assert [str(p.name) for p, _ in check.missing_images] == ["0000000001.jpg", "0000000001.jpg"]
    assert [ln.frame for _, ln in check.missing_neighbours] == [2]  # frame 3 does not exist
    test = prepare.check_split_lines(root, "test", _lines((1, "l")), is_test=True, velodyne=True)
    assert test.ok
    (root / DRIVE / "velodyne_points" / "data" / "0000000001.bin").unlink()
    test = prepare.check_split_lines(root, "test", _lines((1, "l")), is_test=True, velodyne=True)
    assert not test.ok and test.missing_other[0][0].name == "0000000001.bin"


def test_cli_prepare_kitti_reports_missing_drives(tmp_path: Path) -> None:
    from md2bench.cli import app

    root = make_kitti(tmp_path, frames=range(2))
    result = CliRunner().invoke(app, ["data", "prepare-kitti", "--raw", str(root), "--split", "eigen",
                                      "--no-export"])
    assert result.exit_code == 1, result.output
    assert "eigen/test_files: 697 lines, INCOMPLETE" in result.output
    assert "2011_09_26_drive_0002_sync.zip" in result.output  # the archive holding a missing drive


# ------------------------------------------------------------------------------------------------ shared sample
@pytest.mark.shared
@pytest.mark.skipif(not SHARED_SAMPLE.is_dir(), reason="../shared/data/kitti_raw_sample not present")
def test_shared_kitti_sample_loads_and_projects() -> None:
    drives = sorted(p for p in SHARED_SAMPLE.glob("*/*_sync") if (p / "image_02" / "data").is_dir())
    if not drives:
        pytest.skip("no drive folders in the shared KITTI sample")
    drive = drives[0]
    folder = f"{drive.parent.name}/{drive.name}"
    frames = sorted(int(p.stem) for p in (drive / "image_02" / "data").iterdir() if p.suffix in (".png", ".jpg"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = MonoDataset(SHARED_SAMPLE, [SplitLine(folder, f, "l") for f in frames], (0, -1, 1), 192, 640,
                         is_train=True)
    item = ds[0]
    validate_batch(item, num_frames=3, height=192, width=640, batched=False)
    velo = kitti.velodyne_path(SHARED_SAMPLE, folder, frames[0])
    if velo.is_file():
        depth = kitti.generate_depth_map(kitti.calib_dir(SHARED_SAMPLE, folder), velo, cam=2, vel_depth=True)
        valid = depth[depth > 0]
        assert 0.005 < valid.size / depth.size < 0.2  # sparse LiDAR: a few percent of the pixels
        assert valid.min() > 0 and valid.max() < 130


def test_gt_pose_transforms_hand_values() -> None:
    """T_src_tgt = G_src⁻¹·G_tgt; the right camera is the left one shifted by the baseline; a flip mirrors x."""
    b = 0.5
    quarter = np.eye(4)
    quarter[:3, :3] = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]  # yaw 90°: local +z -> world +x
    forward = np.eye(4)
    forward[2, 3] = 1.0  # one metre ahead
    poses = np.stack([np.eye(4), forward, quarter])
    # target frame 1, sources -1 (the camera one metre behind) and +1 (turned 90° at the origin)
    left = kitti.gt_pose_transforms(poses, 1, (0, -1, 1, "s"), "l", False, b)
    np.testing.assert_allclose(left[0], np.eye(4))
    np.testing.assert_allclose(left[1][:3, 3], [0.0, 0.0, 1.0])  # target points are 1 m farther from frame 0
    # frame 2 at the origin turned 90°: a target point (x, y, z) sits at world (x, y, z + 1); frame 2 sees
    # world (X, Y, Z) at (-Z, Y, X), so (-(z + 1), y, x)
    np.testing.assert_allclose(left[2] @ [2.0, 3.0, 4.0, 1.0], [-5.0, 3.0, 2.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(left[3][:3, 3], [-b, 0.0, 0.0])  # the right camera sees left points b further left
    # right camera: B⁻¹·T·B with B = translation (b, 0, 0); a pure translation is unchanged, the turn is not:
    # a right-camera point p is left-camera p + (b,0,0) -> frame-2 left (-(z+1), y, x + b) -> minus b in x
    right = kitti.gt_pose_transforms(poses, 1, (0, -1, 1, "s"), "r", False, b)
    np.testing.assert_allclose(right[1], left[1])
    np.testing.assert_allclose(right[2] @ [2.0, 3.0, 4.0, 1.0], [-5.0 - b, 3.0, 2.0 + b, 1.0], atol=1e-12)
    np.testing.assert_allclose(right[3][:3, 3], [b, 0.0, 0.0])
    # flipped: the mirrored world (x -> -x) moves the mirrored way: S·T·S with S = diag(-1, 1, 1, 1)
    flipped = kitti.gt_pose_transforms(poses, 1, (0, -1, 1), "l", True, b)
    np.testing.assert_allclose(flipped[2] @ [-2.0, 3.0, 4.0, 1.0], [5.0, 3.0, 2.0, 1.0], atol=1e-12)


def test_synthetic_items_carry_exact_poses_that_warp_with_gt_depth(tmp_path: Path) -> None:
    """Warping the neighbours with the GT depth and the item's pose_gt reproduces the target far better than
    leaving them unwarped (the pose direction, the flip and the units all have to be right for that)."""
    from md2bench.data.synthetic import render_world
    from md2bench.geometry import warp
    from md2bench.losses import photometric_error
    from md2bench.metrics import STEREO_SCALE_FACTOR

    root = tmp_path / "world"
    render_world(root, preset="tiny", seed=0, progress=False)
    cfg = Config().override({"data.path": str(root), "data.synth_preset": "tiny", "data.height": 64,
                             "data.width": 160, "data.mode": "MS", "model.pretrained": "scratch"})
    ds = kitti.build_dataset(cfg, "train", load_depth=True)
    assert ds.has_pose
    for flip in (False, True):
        ds.flip = flip
        items = [ds[i] for i in range(len(ds))]
        items = [it for it in items if bool(it["flip"]) == flip][:4]
        batch = torch.utils.data.default_collate(items)
        validate_batch(batch, 4, 64, 160)
        images = batch["images"].float() / 255
        depth = batch["depth_gt"]
        depth = torch.where(depth > 0, depth, torch.full_like(depth, 150.0))
        K = batch["K"]
        T = batch["pose_gt"][:, 1:].clone()
        T[..., :3, 3] /= STEREO_SCALE_FACTOR
        warped = warp(images[:, 1:], depth / STEREO_SCALE_FACTOR, T, K, torch.linalg.inv(K))
        err = photometric_error(warped, images[:, :1], True, 0.85).mean().item()
        unwarped = photometric_error(images[:, 1:], images[:, :1], True, 0.85).mean().item()
        assert err < 0.5 * unwarped, (flip, err, unwarped)
        # the stereo entry is the item's stereo_T in metres
        torch.testing.assert_close(batch["pose_gt"][:, 3, :3, 3] / STEREO_SCALE_FACTOR, batch["stereo_T"][:, :3, 3])
        torch.testing.assert_close(batch["pose_gt"][:, 3, :3, :3], batch["stereo_T"][:, :3, :3])
