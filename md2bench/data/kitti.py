"""KITTI raw (and the synthetic world, which uses the same layout): split lists, dataset, calibration, GT.

Layout read (KITTI raw, REFERENCE §3.1)::

    <root>/<date>/calib_cam_to_cam.txt, calib_velo_to_cam.txt
    <root>/<date>/<date>_drive_<NNNN>_sync/image_02|image_03/data/<frame:010d>.jpg|png
    <root>/<date>/<date>_drive_<NNNN>_sync/velodyne_points/data/<frame:010d>.bin
    <root>/<date>/<date>_drive_<NNNN>_sync/proj_depth/groundtruth/image_02|03/<frame:010d>.png   (optional)
    <root>/<date>/<date>_drive_<NNNN>_sync/motion_mask/image_02|03/<frame:010d>.png              (synthetic)
    <root>/<date>/<date>_drive_<NNNN>_sync/region_mask/<region>/image_02|03/<frame:010d>.png     (synthetic)

KITTI odometry (split ``odom``; the folder field of a split line is the sequence number)::

    <root>/sequences/<seq:02d>/image_2|image_3/<frame:06d>.jpg|png,  <root>/poses/<seq:02d>.txt

Split lines: ``<folder> <frame index> <side l|r>``. A line whose temporal neighbour does not exist (e.g. frame 0
of a drive with frame −1 requested; ``eigen_full`` has 62 of them) is dropped at construction with one warning
that gives the count and an example (REFERENCE §7 item 17); a missing target or stereo partner is an error
naming the file and the split line.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from md2bench.data.transforms import IDENTITY_JITTER, sample_augmentation
from md2bench.regions import REGION_NAMES

if TYPE_CHECKING:
    from md2bench.config import Config

# Normalised intrinsics used for every KITTI image (REFERENCE §3.1): fx = 0.58 W, fy = 1.92 H, principal point
# exactly at the centre (so flipping needs no change to K). The focal length is KITTI's average.
KITTI_K_NORMALISED: tuple[tuple[float, ...], ...] = (
    (0.58, 0.0, 0.5, 0.0),
    (0.0, 1.92, 0.5, 0.0),
    (0.0, 0.0, 1.0, 0.0),
    (0.0, 0.0, 0.0, 1.0),
)
# Reference `full_res_shape` (1242, 375) as (H, W): KITTI GT loaded during training/validation is resized to
# this with nearest neighbour, so that items from drives of different sizes collate.
KITTI_FULL_RES: tuple[int, int] = (375, 1242)
KITTI_BASELINE = 0.54  # metres between KITTI's colour cameras (the source of the evaluation factor 5.4)
SIDE_TO_CAMERA: dict[str, int] = {"l": 2, "r": 3}
OTHER_SIDE: dict[str, str] = {"l": "r", "r": "l"}
IMAGE_EXTS: tuple[str, ...] = ("jpg", "png")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset root (or a split list) is missing; the message says how to get it."""


class DatasetFileError(OSError):
    """A file named by a split line is missing or unreadable; the message names the file and the line."""


@dataclass(frozen=True)
class SplitLine:
    """One line of a split list.

    Attributes:
        folder: ``<date>/<drive>_sync`` (raw) or a sequence number (odometry).
        frame: frame index.
        side: ``"l"`` (image_02) or ``"r"`` (image_03).
        source: the split file it came from.
        line_no: 1-based line number in that file.
    """

    folder: str
    frame: int
    side: str
    source: str = "<memory>"
    line_no: int = 0

    def describe(self) -> str:
        """``'<file>:<line>: "<folder> <frame> <side>"'`` for error messages."""
        return f'{self.source}:{self.line_no}: "{self.folder} {self.frame} {self.side}"'


def read_split(path: str | Path) -> list[SplitLine]:
    """Read a split list (``<folder> <frame> <side>`` per line; side l/r or 2/3, default l; blank lines skipped).

    Raises:
        DatasetNotFoundError: the file does not exist.
        ValueError: a malformed line, naming file and line number.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"split list {path} does not exist")
    side_names = {"l": "l", "r": "r", "2": "l", "3": "r"}
    lines: list[SplitLine] = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        parts = text.split()
        if not parts:
            continue
        if len(parts) not in (2, 3) or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: expected '<folder> <frame> <side>', got {text!r}")
        side = side_names.get(parts[2] if len(parts) == 3 else "l")
        if side is None:
            raise ValueError(f"{path}:{number}: side must be l, r, 2 or 3, got {parts[2]!r}")
        lines.append(SplitLine(parts[0], int(parts[1]), side, str(path), number))
    return lines


def packaged_split_file(split: str, name: str) -> Path:
    """Path of a split list shipped in the package (``md2bench/data/splits/<split>/<name>``)."""
    return Path(str(resources.files("md2bench.data") / "splits" / split / name))


def is_odometry_folder(folder: str) -> bool:
    """Odometry split lines name a sequence number instead of a drive folder."""
    return folder.isdigit()


def image_path(root: str | Path, folder: str, frame: int, side: str, ext: str) -> Path:
    """Path of one colour image (raw or odometry layout)."""
    cam = SIDE_TO_CAMERA[side]
    if is_odometry_folder(folder):
        return Path(root) / "sequences" / f"{int(folder):02d}" / f"image_{cam}" / f"{frame:06d}.{ext}"
    return Path(root) / folder / f"image_0{cam}" / "data" / f"{frame:010d}.{ext}"


def velodyne_path(root: str | Path, folder: str, frame: int) -> Path:
    """Path of a velodyne scan (raw layout)."""
    return Path(root) / folder / "velodyne_points" / "data" / f"{frame:010d}.bin"


def calib_dir(root: str | Path, folder: str) -> Path:
    """The date folder that holds ``calib_cam_to_cam.txt`` and ``calib_velo_to_cam.txt``."""
    return Path(root) / folder.split("/")[0]


def depth_gt_path(root: str | Path, folder: str, frame: int, side: str) -> Path:
    """Improved/dense GT PNG (uint16, metres × 256) inside the drive folder."""
    return Path(root) / folder / "proj_depth" / "groundtruth" / f"image_0{SIDE_TO_CAMERA[side]}" / f"{frame:010d}.png"


def motion_mask_path(root: str | Path, folder: str, frame: int, side: str) -> Path:
    """Moving-object mask PNG (8-bit, > 0 = moving) of the synthetic world."""
    return Path(root) / folder / "motion_mask" / f"image_0{SIDE_TO_CAMERA[side]}" / f"{frame:010d}.png"


def region_mask_path(root: str | Path, folder: str, frame: int, side: str, region: str) -> Path:
    """Region mask PNG (8-bit, > 0 = in the region) of the synthetic world (format 2; ``REGION_NAMES``)."""
    return (Path(root) / folder / "region_mask" / region / f"image_0{SIDE_TO_CAMERA[side]}"
            / f"{frame:010d}.png")


# ------------------------------------------------------------------------------------------- calibration / GT
def read_calib_file(path: str | Path) -> dict[str, np.ndarray]:
    """Parse a KITTI calibration file (``key: numbers`` per line); non-numeric values (dates) are skipped.

    Returns:
        key → float64 1-D array.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFileError(f"calibration file {path} does not exist (it comes with <date>_calib.zip)")
    data: dict[str, np.ndarray] = {}
    for text in path.read_text().splitlines():
        key, sep, value = text.partition(":")
        if not sep:
            continue
        try:
            data[key.strip()] = np.array([float(v) for v in value.split()], dtype=np.float64)
        except ValueError:
            continue
    return data


def load_velodyne_points(path: str | Path) -> np.ndarray:
    """N×4 float32 points (x forward, y left, z up, reflectance) from a KITTI ``.bin`` scan."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFileError(f"velodyne scan {path} does not exist")
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % 4:
        raise DatasetFileError(f"velodyne scan {path} is truncated ({raw.size} floats, not a multiple of 4)")
    return raw.reshape(-1, 4)


def _quirky_linear_index(rows: np.ndarray, cols: np.ndarray, num_cols: int) -> np.ndarray:
    # The reference's `sub2ind`: row·(cols − 1) + col − 1. Not a true linear index: the last column of row r and
    # the first column of row r + 1 share a value. Kept because it decides which duplicates are merged.
    return rows * (num_cols - 1) + cols - 1


def generate_depth_map(calib: str | Path, velo_path: str | Path, cam: int = 2, vel_depth: bool = False) -> np.ndarray:
    """Project a velodyne scan into a camera image, exactly as the reference's GT export (REFERENCE §3.3).

    Steps: velodyne→image = P_rect_0<cam> · R_rect_00 · [R|T]_velo→cam; points with x < 0 dropped; pixel
    coordinates rounded then shifted by −1 (KITTI's MATLAB convention); points outside the image dropped;
    depth = camera z, or the velodyne x (forward) coordinate when ``vel_depth`` (the Eigen export); scattered
    with the last write winning, then at pixels hit several times (grouped by the reference's quirky linear
    index) the minimum depth is written at the first such point's pixel; negative depths → 0.

    Args:
        calib: the date folder holding ``calib_cam_to_cam.txt`` and ``calib_velo_to_cam.txt``.
        velo_path: the ``.bin`` scan.
        cam: 2 (left colour) or 3 (right colour).
        vel_depth: store the velodyne x coordinate instead of camera z.

    Returns:
        float32 H×W depth in metres (0 = no point), H×W from ``S_rect_02``.
    """
    cam2cam = read_calib_file(Path(calib) / "calib_cam_to_cam.txt")
    velo2cam_raw = read_calib_file(Path(calib) / "calib_velo_to_cam.txt")
    for key, data, name in (("R", velo2cam_raw, "calib_velo_to_cam.txt"), ("T", velo2cam_raw, "calib_velo_to_cam.txt"),
                            ("S_rect_02", cam2cam, "calib_cam_to_cam.txt"), ("R_rect_00", cam2cam, "calib_cam_to_cam.txt"),
                            (f"P_rect_0{cam}", cam2cam, "calib_cam_to_cam.txt")):
        if key not in data:
            raise DatasetFileError(f"{Path(calib) / name} has no {key!r} entry")
    velo2cam = np.eye(4)
    velo2cam[:3, :3] = velo2cam_raw["R"].reshape(3, 3)
    velo2cam[:3, 3] = velo2cam_raw["T"].reshape(3)
    # image size from S_rect_02 (width, height), even for cam 3, as the reference does
    width, height = (int(v) for v in cam2cam["S_rect_02"][:2])
    rect = np.eye(4)
    rect[:3, :3] = cam2cam["R_rect_00"].reshape(3, 3)
    p_rect = cam2cam[f"P_rect_0{cam}"].reshape(3, 4)
    velo_to_image = p_rect @ rect @ velo2cam  # 3×4

    points = load_velodyne_points(velo_path).astype(np.float64)
    points = points[points[:, 0] >= 0]
    points[:, 3] = 1.0
    projected = points @ velo_to_image.T  # N×3
    uv = projected[:, :2] / projected[:, 2:3]
    depth_values = points[:, 0] if vel_depth else projected[:, 2]
    uv = np.round(uv) - 1.0
    inside = (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (uv[:, 0] < width) & (uv[:, 1] < height)
    cols = uv[inside, 0].astype(np.int64)
    rows = uv[inside, 1].astype(np.int64)
    depth_values = depth_values[inside]

    depth = np.zeros((height, width), dtype=np.float64)
    if depth_values.size:
        # scatter, the last point (in scan order) written to a pixel wins (made explicit: NumPy does not
        # promise an order for repeated fancy-index assignment)
        linear = rows * width + cols
        by_pixel = np.argsort(linear, kind="stable")
        run_end = np.r_[linear[by_pixel][1:] != linear[by_pixel][:-1], True]
        last = by_pixel[run_end]
        depth[rows[last], cols[last]] = depth_values[last]
        # duplicates grouped by the quirky index: the group's minimum goes to the pixel of its first point
        quirky = _quirky_linear_index(rows, cols, width)
        by_group = np.argsort(quirky, kind="stable")
        sorted_q = quirky[by_group]
        starts = np.flatnonzero(np.r_[True, sorted_q[1:] != sorted_q[:-1]])
        counts = np.diff(np.r_[starts, sorted_q.size])
        minima = np.minimum.reduceat(depth_values[by_group], starts)
        first = by_group[starts]
        dup = counts > 1
        depth[rows[first[dup]], cols[first[dup]]] = minima[dup]
    depth[depth < 0] = 0.0
    return depth.astype(np.float32)


def read_depth_png(path: str | Path) -> np.ndarray:
    """KITTI-style 16-bit depth PNG → float32 H×W metres (value / 256; 0 = none)."""
    with Image.open(path) as img:
        array = np.asarray(img)
    if array.dtype not in (np.uint16, np.int32, np.uint8):
        raise DatasetFileError(f"{path}: expected a 16-bit depth PNG, got {array.dtype}")
    return array.astype(np.float32) / 256.0


def read_poses(path: str | Path) -> np.ndarray:
    """Camera-to-world poses in KITTI odometry format (12 numbers, a row-major 3×4, per line) → N×4×4."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFileError(f"pose file {path} does not exist")
    values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if values.shape[1] != 12:
        raise DatasetFileError(f"{path}: expected 12 numbers per line (a 3×4 pose), got {values.shape[1]}")
    poses = np.tile(np.eye(4), (values.shape[0], 1, 1))
    poses[:, :3, :] = values.reshape(-1, 3, 4)
    return poses


# ----------------------------------------------------------------------------------------------- dataset
def gt_pose_transforms(cam_to_world: np.ndarray, frame: int, frames: Sequence[int | str], side: str, flipped: bool,
                       baseline: float) -> np.ndarray:
    """Exact ``T_src_tgt`` of every frame of a sample, from a drive's left-camera poses.

    ``T_src_tgt = G_src⁻¹ · G_tgt`` maps points of the target camera (frame ``frame``) into the camera of each
    frame of ``frames`` (identity for 0). The right camera is the left one shifted by ``baseline`` along its
    own +x (``G_right = G_left · B``), so for side ``r`` the temporal transforms are ``B⁻¹ · T · B``; the stereo
    frame ``"s"`` gets the pure baseline translation (−baseline for a left target, as
    ``geometry.stereo_transform``). A horizontal flip mirrors x: ``T' = S · T · S`` with S = diag(−1, 1, 1, 1).

    Args:
        cam_to_world: N×4×4 left camera-to-world poses of the drive (``read_poses``), metres.
        frame: target frame index.
        frames: frame ids of the sample (0 first; integers are offsets, ``"s"`` the stereo partner).
        side: ``"l"`` or ``"r"``.
        flipped: the sample is flipped horizontally.
        baseline: stereo baseline in metres.

    Returns:
        F×4×4 float64, metres.
    """
    shift = np.eye(4)
    shift[0, 3] = baseline
    to_side = shift if side == "r" else np.eye(4)
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    out = []
    for fid in frames:
        if fid == "s":
            T = np.eye(4)
            T[0, 3] = -baseline if side == "l" else baseline
        else:
            src = cam_to_world[frame + int(fid)] @ to_side
            tgt = cam_to_world[frame] @ to_side
            T = np.linalg.solve(src, tgt)
        out.append(mirror @ T @ mirror if flipped else T)
    return np.stack(out)


def _world_baseline(root: Path) -> float:
    """The stereo baseline in metres: ``world.json``'s for a synthetic world, KITTI's 0.54 otherwise."""
    import json

    world = root / "world.json"
    if world.is_file():
        try:
            return float(json.loads(world.read_text()).get("baseline", KITTI_BASELINE))
        except (OSError, ValueError) as exc:
            raise DatasetFileError(f"cannot read {world}: {exc}") from exc
    return KITTI_BASELINE


def cached_listing(directory: Path, cache: dict[Path, frozenset[str]]) -> frozenset[str]:
    if directory not in cache:
        try:
            cache[directory] = frozenset(os.listdir(directory))
        except OSError:
            cache[directory] = frozenset()
    return cache[directory]


def _resolve_image(root: Path, folder: str, frame: int, side: str, image_ext: str,
                   cache: dict[Path, frozenset[str]]) -> Path | None:
    """The existing image file for (folder, frame, side) with the preferred extension, or None."""
    exts = IMAGE_EXTS if image_ext == "auto" else (image_ext,)
    for ext in exts:
        path = image_path(root, folder, frame, side, ext)
        if path.name in cached_listing(path.parent, cache):
            return path
    return None


class MonoDataset(torch.utils.data.Dataset):
    """Frames of a split as items of the batch contract (``md2bench.data.schema``).

    Per item: the target frame, its temporal neighbours and/or stereo partner (``frames`` order), resized to
    height×width with PIL Lanczos when the file size differs; in training a per-sample colour-jitter draw and
    horizontal flip (p = 0.5 each) from an RNG seeded with (seed, epoch, index), so results do not depend on
    the number of workers; K in pixels; the stereo transform; GT depth / motion mask where present.

    Args:
        root: dataset root.
        lines: split lines.
        frames: frame ids, e.g. (0, -1, 1, "s"); must start with 0.
        height: output height.
        width: output width.
        is_train: draw augmentation (otherwise none).
        seed: run seed.
        image_ext: ``"auto"`` (jpg where present, else png), ``"jpg"`` or ``"png"``.
        load_depth: return ``depth_gt`` when the first line has a GT PNG (then every item has one; a missing
            file gives zeros = no depth).
        load_motion_mask: likewise for ``motion_mask``.
        load_regions: return ``region_masks`` (the synthetic world's region masks, ``REGION_NAMES`` order) when
            the first line has them; only evaluation asks for them (training never decodes them).
        color_aug: colour augmentation enabled (training only).
        flip: flip augmentation enabled (training only).
        k_normalised: 4×4 normalised intrinsics (default KITTI's).
        gt_shape: (H, W) to resize GT to with nearest neighbour (KITTI: 375×1242 so drives collate); None keeps
            the native size.
        check_files: verify at construction that the files exist (drops lines with missing neighbours).
        load_pose: return ``pose_gt`` (exact ``T_src_tgt`` of every frame, metres) where the drive folder has a
            ``poses.txt`` (the synthetic world); the stereo baseline comes from ``world.json`` (KITTI's 0.54 m
            otherwise).
    """

    def __init__(
        self,
        root: str | Path,
        lines: Sequence[SplitLine],
        frames: Sequence[int | str],
        height: int,
        width: int,
        is_train: bool,
        seed: int = 0,
        image_ext: str = "auto",
        load_depth: bool = True,
        load_motion_mask: bool = True,
        color_aug: bool = True,
        flip: bool = True,
        k_normalised: np.ndarray | Sequence[Sequence[float]] | None = None,
        gt_shape: tuple[int, int] | None = None,
        check_files: bool = True,
        load_pose: bool = False,
        load_regions: bool = False,
    ) -> None:
        if not frames or frames[0] != 0:
            raise ValueError(f"frames must start with 0, got {tuple(frames)}")
        if image_ext not in ("auto", "jpg", "png"):
            raise ValueError(f"image_ext must be 'auto', 'jpg' or 'png', got {image_ext!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"dataset root {self.root} does not exist")
        self.frames = tuple(frames)
        self.height = height
        self.width = width
        self.is_train = is_train
        self.seed = seed
        self.epoch = 0
        self.image_ext = image_ext
        self.color_aug = color_aug
        self.flip = flip
        self.gt_shape = gt_shape
        k = np.asarray(KITTI_K_NORMALISED if k_normalised is None else k_normalised, dtype=np.float32).copy()
        k[0, :] *= width
        k[1, :] *= height
        self.K = torch.from_numpy(k)
        self.dropped: list[tuple[SplitLine, Path]] = []
        self.lines = self._check(list(lines)) if check_files else list(lines)
        if not self.lines:
            raise DatasetFileError(f"no usable split lines under {self.root}")
        first = self.lines[0]
        self.has_depth = load_depth and depth_gt_path(self.root, first.folder, first.frame, first.side).is_file()
        self.has_motion_mask = load_motion_mask and motion_mask_path(
            self.root, first.folder, first.frame, first.side).is_file()
        self.has_pose = load_pose and (self.root / first.folder / "poses.txt").is_file()
        self.baseline = _world_baseline(self.root)
        self._poses: dict[str, np.ndarray] = {}
        self.has_regions = load_regions and region_mask_path(
            self.root, first.folder, first.frame, first.side, REGION_NAMES[0]).is_file()
        self._native_gt_shape: tuple[int, int] | None = None
        if (self.has_depth or self.has_motion_mask or self.has_regions) and gt_shape is None:
            if self.has_depth:
                probe = depth_gt_path(self.root, first.folder, first.frame, first.side)
            elif self.has_motion_mask:
                probe = motion_mask_path(self.root, first.folder, first.frame, first.side)
            else:
                probe = region_mask_path(self.root, first.folder, first.frame, first.side, REGION_NAMES[0])
            with Image.open(probe) as img:
                self._native_gt_shape = (img.height, img.width)

    # -- construction-time checks ----------------------------------------------------------------------
    def _check(self, lines: list[SplitLine]) -> list[SplitLine]:
        cache: dict[Path, frozenset[str]] = {}
        kept: list[SplitLine] = []
        missing: list[tuple[SplitLine, Path]] = []
        for line in lines:
            required: list[tuple[int, str]] = [(line.frame, line.side)]
            if "s" in self.frames:
                required.append((line.frame, OTHER_SIDE[line.side]))
            bad = [(f, s) for f, s in required
                   if _resolve_image(self.root, line.folder, f, s, self.image_ext, cache) is None]
            if bad:
                missing.append((line, image_path(self.root, line.folder, bad[0][0], bad[0][1], self._ext_hint())))
                continue
            neighbour_missing = None
            for fid in self.frames:
                if isinstance(fid, int) and fid != 0:
                    if _resolve_image(self.root, line.folder, line.frame + fid, line.side, self.image_ext, cache) is None:
                        neighbour_missing = image_path(self.root, line.folder, line.frame + fid, line.side,
                                                       self._ext_hint())
                        break
            if neighbour_missing is not None:
                self.dropped.append((line, neighbour_missing))
                continue
            kept.append(line)
        if missing:
            examples = "\n".join(f"  {path}  (named by {line.describe()})" for line, path in missing[:3])
            raise DatasetFileError(
                f"{len(missing)} of {len(lines)} split lines name images that do not exist under {self.root}, "
                f"e.g.:\n{examples}\nCheck the download with `md2bench data prepare-kitti --raw {self.root}` "
                f"(data.image_ext = {self.image_ext!r})."
            )
        if self.dropped:
            line, path = self.dropped[0]
            warnings.warn(
                f"dropped {len(self.dropped)} of {len(lines)} split lines whose neighbouring frame does not exist "
                f"(e.g. {path}, needed by {line.describe()}); frames {self.frames}",
                stacklevel=3,
            )
        return kept

    def _ext_hint(self) -> str:
        return "jpg" if self.image_ext == "auto" else self.image_ext

    # -- item ------------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws ``__getitem__`` returns (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lines)

    def _image_file(self, line: SplitLine, frame: int, side: str) -> Path:
        exts = IMAGE_EXTS if self.image_ext == "auto" else (self.image_ext,)
        for ext in exts:
            path = image_path(self.root, line.folder, frame, side, ext)
            if path.is_file():
                return path
        raise DatasetFileError(
            f"image {image_path(self.root, line.folder, frame, side, exts[0])} does not exist "
            f"(named by {line.describe()})"
        )

    def _load_image(self, line: SplitLine, frame: int, side: str, flip: bool) -> torch.Tensor:
        path = self._image_file(line, frame, side)
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
                if rgb.size != (self.width, self.height):
                    rgb = rgb.resize((self.width, self.height), Image.Resampling.LANCZOS)
                array = np.array(rgb)
        except (OSError, ValueError, SyntaxError) as exc:
            raise DatasetFileError(f"cannot read image {path} (named by {line.describe()}): {exc}") from exc
        if flip:
            array = array[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)

    def _gt_size(self) -> tuple[int, int]:
        size = self.gt_shape or self._native_gt_shape
        assert size is not None
        return size

    def _load_map(self, path: Path, line: SplitLine, flip: bool, depth: bool) -> torch.Tensor:
        size = self._gt_size()
        if not path.is_file():
            dtype = np.float32 if depth else np.uint8
            return torch.from_numpy(np.zeros((1, *size), dtype=dtype))
        try:
            if depth:
                array = read_depth_png(path)
            else:
                with Image.open(path) as img:
                    array = (np.asarray(img.convert("L")) > 0).astype(np.uint8)
        except (OSError, ValueError, SyntaxError) as exc:
            raise DatasetFileError(f"cannot read {path} (named by {line.describe()}): {exc}") from exc
        if flip:
            array = array[:, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(array))[None]
        if tuple(tensor.shape[-2:]) != size:
            tensor = F.interpolate(tensor[None].float(), size=size, mode="nearest")[0].to(tensor.dtype)
        return tensor

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        line = self.lines[index]
        if self.is_train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            color_aug, color_order, flip = sample_augmentation(rng, self.color_aug, self.flip)
        else:
            color_aug = np.array(IDENTITY_JITTER, dtype=np.float32)
            color_order = np.arange(4, dtype=np.int64)
            flip = False
        images = []
        for fid in self.frames:
            if fid == "s":
                images.append(self._load_image(line, line.frame, OTHER_SIDE[line.side], flip))
            elif isinstance(fid, int):
                images.append(self._load_image(line, line.frame + fid, line.side, flip))
            else:
                raise ValueError(f"unknown frame id {fid!r}; use integers and 's'")
        if "s" in self.frames:
            from md2bench.geometry import stereo_transform

            stereo_t = stereo_transform(target_is_left=line.side == "l", flipped=flip).to(torch.float32)
        else:
            stereo_t = torch.eye(4, dtype=torch.float32)
        item: dict[str, Any] = {
            "images": torch.stack(images),
            "K": self.K.clone(),
            "stereo_T": stereo_t,
            "color_aug": torch.from_numpy(color_aug),
            "color_order": torch.from_numpy(color_order),
            "flip": torch.tensor(flip, dtype=torch.bool),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if self.has_depth:
            item["depth_gt"] = self._load_map(
                depth_gt_path(self.root, line.folder, line.frame, line.side), line, flip, depth=True)
        if self.has_motion_mask:
            item["motion_mask"] = self._load_map(
                motion_mask_path(self.root, line.folder, line.frame, line.side), line, flip, depth=False)
        if self.has_pose:
            item["pose_gt"] = torch.from_numpy(gt_pose_transforms(
                self._drive_poses(line), line.frame, self.frames, line.side, flip, self.baseline).astype(np.float32))
        if self.has_regions:
            item["region_masks"] = torch.cat([
                self._load_map(region_mask_path(self.root, line.folder, line.frame, line.side, region), line, flip,
                               depth=False) for region in REGION_NAMES])
        return item

    def _drive_poses(self, line: SplitLine) -> np.ndarray:
        poses = self._poses.get(line.folder)
        if poses is None:
            poses = self._poses[line.folder] = read_poses(self.root / line.folder / "poses.txt")
        needed = [line.frame + f for f in self.frames if isinstance(f, int)]
        if min(needed) < 0 or max(needed) >= len(poses):
            raise DatasetFileError(f"{self.root / line.folder / 'poses.txt'} has {len(poses)} poses; "
                                   f"{line.describe()} needs frames {min(needed)}..{max(needed)}")
        return poses

    def load_depth_gt(self, index: int) -> torch.Tensor:
        """The GT depth of item ``index`` alone (1×Hg×Wg float32 metres, 0 = none; no images decoded, no flip).

        Raises:
            ValueError: the dataset has no GT depth.
        """
        if not self.has_depth:
            raise ValueError(f"the split under {self.root} has no GT depth PNGs (proj_depth/groundtruth/)")
        line = self.lines[index]
        return self._load_map(depth_gt_path(self.root, line.folder, line.frame, line.side), line, False, depth=True)


# ------------------------------------------------------------------------------------------- from the config
KITTI_HOWTO = (
    "Get KITTI raw: download the archives listed in {archives} (about 175 GB; unzip them all into one folder), "
    "then run `md2bench data prepare-kitti --raw <folder>` to check the layout, optionally convert to JPEG "
    "(--to-jpeg) and export the test ground truth; finally set data.path=<folder>."
)


def kitti_archives_file() -> Path:
    """The packaged list of KITTI raw archive URLs."""
    return Path(str(resources.files("md2bench.data") / "splits" / "kitti_archives_to_download.txt"))


def dataset_root(cfg: "Config") -> Path:
    """The dataset root for a config (renders the synthetic world when ``data.path`` is empty).

    Raises:
        DatasetNotFoundError: KITTI without ``data.path`` or with a missing folder (the message says how to get it).
    """
    if cfg.data.dataset == "kitti":
        if not cfg.data.path:
            raise DatasetNotFoundError("data.path is empty. " + KITTI_HOWTO.format(archives=kitti_archives_file()))
        root = Path(cfg.data.path)
        if not root.is_dir():
            raise DatasetNotFoundError(
                f"KITTI root {root} does not exist. " + KITTI_HOWTO.format(archives=kitti_archives_file()))
        return root
    if cfg.data.path:
        root = Path(cfg.data.path)
        if not root.is_dir():
            raise DatasetNotFoundError(
                f"synthetic world {root} does not exist; render it with `md2bench data synth --out {root}` "
                "or leave data.path empty to render into the cache")
        return root
    from md2bench.data.synthetic import ensure_world

    return Path(ensure_world(cfg))


def split_file(cfg: "Config", split: str, root: Path | None = None) -> Path:
    """The split list for ``split`` in {"train", "val", "test"} (packaged for KITTI, beside the data otherwise)."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    name = cfg.data.test_split if split == "test" else cfg.data.split
    if cfg.data.dataset == "kitti":
        path = packaged_split_file(name, f"{split}_files.txt")
        if not path.is_file():
            raise DatasetNotFoundError(f"there is no packaged KITTI split list {path}; check data.split / data.test_split")
        return path
    root = dataset_root(cfg) if root is None else root
    path = root / "splits" / name / f"{split}_files.txt"
    if not path.is_file():
        raise DatasetNotFoundError(f"split list {path} does not exist; is {root} a complete synthetic world?")
    return path


def build_dataset(
    cfg: "Config",
    split: str,
    seed: int | None = None,
    load_depth: bool | None = None,
    check_files: bool = True,
    load_regions: bool = False,
) -> MonoDataset:
    """The dataset of ``split`` ("train" | "val" | "test") for a config.

    Train/val items carry ``cfg.frames``; test items only the target frame (0). Training augments
    (``data.color_aug``, ``data.flip``); val/test do not. GT depth: KITTI's improved-GT PNGs where present
    (resized to 375×1242) for train/val and never for KITTI test (the evaluation reads the exported npz);
    the synthetic world's exact depth and motion masks at native resolution for every split.

    Args:
        cfg: the run's config.
        split: "train", "val" or "test".
        seed: augmentation seed (default ``cfg.train.seed``).
        load_depth: override whether GT depth/motion masks are loaded (default: as above).
        check_files: verify files at construction.
        load_regions: also load the synthetic world's region masks where the world has them (evaluation only).
    """
    root = dataset_root(cfg)
    lines = read_split(split_file(cfg, split, root))
    kitti = cfg.data.dataset == "kitti"
    if load_depth is None:
        load_depth = not (kitti and split == "test")
    return MonoDataset(
        root,
        lines,
        frames=cfg.frames if split != "test" else (0,),
        height=cfg.data.height,
        width=cfg.data.width,
        is_train=split == "train",
        seed=cfg.train.seed if seed is None else seed,
        image_ext=cfg.data.image_ext,
        load_depth=load_depth,
        load_motion_mask=load_depth and not kitti,
        color_aug=cfg.data.color_aug,
        flip=cfg.data.flip,
        gt_shape=KITTI_FULL_RES if kitti else None,
        check_files=check_files,
        load_pose=split != "test" and not kitti,
        load_regions=load_regions and not kitti,
    )
