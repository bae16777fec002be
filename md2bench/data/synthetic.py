"""The embedded dataset: a seeded procedural driving world, rendered to disk in the KITTI raw layout.

The world is a street (road at the KITTI camera height of 1.65 m with lane markings, curbs and sidewalks,
building facades at varying setbacks with alleys and side streets, parked cars, poles, sign posts and trees, sky
at infinity), an ego camera that drives forward at varying speed on gentle S-curves (every third drive stops for
several frames), and independently moving cars: oncoming, overtaking, and on even drives one car that keeps the
ego's own speed and heading (it stands still in the image: the case auto-masking targets). Layout and motion
are in ``synth_scene``, textures in ``synth_textures``, the ray caster in ``synth_render``.

Unlike any real dataset the ground truth is exact: dense depth (camera z of each pixel's centre ray), poses,
intrinsics, the masks of moving objects and three region masks for judging the paper's innovations on the pixels
they exist for (``synth_regions``; names in ``md2bench.regions.REGION_NAMES``). Files (``<date>`` = ``DATE``)::

    DIR/world.json                                  options, intrinsics, baseline, drives, summary (written last)
    DIR/<date>/calib_cam_to_cam.txt                 KITTI format; P_rect_02/03 match the rendering, S_rect_0x = W H
    DIR/<date>/<date>_drive_<NNNN>_sync/
        image_02/data/<frame:010d>.png              left RGB          image_03/...: right RGB (0.54 m to the right)
        proj_depth/groundtruth/image_02/<frame>.png 16-bit, metres × 256, 0 = no depth (sky); image_03 likewise
        motion_mask/image_02/<frame>.png            8-bit, 255 = independently moving object; image_03 likewise
        region_mask/<region>/image_02/<frame>.png   8-bit, 255 = in the region; image_03 likewise; <region> =
                                                    occluded | comoving | low_texture (format 2 and later)
        poses.txt                                   left camera-to-world 3×4 per frame (KITTI odometry format),
                                                    world = the drive's first left camera
    DIR/splits/synth/{train,val,test}_files.txt     ``<date>/<drive> <frame> <l|r>``; test = held-out drives, side l

Anti-aliasing: pixels on silhouettes and on thin or tiny objects are 2×2 supersampled (box average); elsewhere one
ray per pixel centre shades a mip-filtered texture (``synth_render``). Intrinsics are KITTI's normalised K scaled to
the image (fx = 0.58·W, fy = 1.92·H, cx = 0.5·W, cy = 0.5·H) with
pixel (row i, column j) centred at (u, v) = (j, i), the convention of the reference's back-projection.
Same seed and options give byte-identical files (world.json holds no timings).

Region masks (exact, from the scene geometry; see ``synth_regions`` for the definitions and constants), over the
pixels with GT depth: ``occluded`` = the pixel's surface point is hidden behind another surface or outside the
image in at least one temporal neighbour frame (±1, same camera), moved with its object (ray-cast, relative
depth tolerance 1e-3); ``comoving`` = pixels of moving cars whose image motion to every neighbour is < 1 pixel
because the car moves with the camera (relative speed < 1 m/s); ``low_texture`` = std of the grey level (BT.601 luma / 255) in the 7×7 window
around the pixel < 0.01. ``world.json`` describes them under ``regions`` and counts their pixels on the test
split (valid GT, 0 < depth < 80 m as the evaluation scores) under ``summary.test_regions``.

Formats: ``md2bench-synth/1`` had no region masks; ``md2bench-synth/2`` adds them (colour, depth, motion masks
and poses are byte-identical to format 1 for the same seed). ``ensure_world`` re-renders an older world that
sits in the cache; a world at an explicit ``data.path`` is never touched (evaluation warns that it has no
region masks and names the command that re-renders it).

Entry points: ``render_world`` (the ``md2bench data synth`` command), ``ensure_world(cfg)`` (render into the
cache on first use), ``render_frame`` (one frame in memory), ``render_benchmark`` (frames/s).
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import struct
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
from PIL import Image

from md2bench.data import synth_regions as sg
from md2bench.data import synth_render as sr
from md2bench.data import synth_textures as tx
from md2bench.data.synth_scene import FPS, GROUND_Y, Drive, build_drive, pose_matrix
from md2bench.regions import REGION_NAMES

if TYPE_CHECKING:
    from md2bench.config import Config

DATE = "2000_01_01"  # the one date folder of a synthetic world
SPLIT = "synth"
BASELINE = 0.54  # metres, KITTI's stereo baseline; the right camera sits at +x of the left one
K_NORMALISED = (0.58, 1.92, 0.5, 0.5)  # fx/W, fy/H, cx/W, cy/H (REFERENCE §3.1)
DEPTH_SCALE = 256.0  # KITTI depth-benchmark PNG: value = metres × 256
MAX_DEPTH = 200.0  # farther surfaces are not intersected (shown as sky, depth 0); < 65535/256 m
SAMPLES = 2  # supersampling per axis on silhouettes and thin objects (2×2 sub-pixel rays, box-averaged)
PNG_COMPRESS_LEVEL = 1  # zlib level: deterministic at any level; 1 keeps encoding cheap
FORMAT = "md2bench-synth/2"  # 2: region masks added (region_mask/<region>/image_0X/<frame>.png)
REGION_DIR = "region_mask"
EVAL_MAX_DEPTH = 80.0  # the synth test protocol's GT cap (md2bench.metrics.protocol_for_split("synth")): the
# test-split region counts in world.json count the pixels the evaluation scores


@dataclass(frozen=True)
class WorldOptions:
    """What to render. ``preset`` only names where the defaults came from.

    Attributes:
        preset: ``tiny``, ``small`` or ``default``.
        sequences: number of drives (>= 2: at least one is held out for the test split).
        frames: frames per drive (>= 3: split lines need frames -1 and +1).
        height: image height in pixels.
        width: image width in pixels.
        seed: world seed (>= 0).
    """

    preset: str = "small"
    sequences: int = 6
    frames: int = 60
    height: int = 96
    width: int = 320
    seed: int = 0

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown synthetic preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        if self.sequences < 2:
            raise ValueError(f"sequences must be >= 2 (one drive is held out for the test split), got {self.sequences}")
        if self.frames < 3:
            raise ValueError(f"frames must be >= 3 (split lines need the frames before and after), got {self.frames}")
        if self.height < 8 or self.width < 8:
            raise ValueError(f"height and width must be >= 8 pixels, got {self.height}×{self.width}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @property
    def camera(self) -> sr.Camera:
        """Left-camera intrinsics in pixels (KITTI's normalised K scaled to width × height)."""
        fx, fy, cx, cy = K_NORMALISED
        return sr.Camera(fx * self.width, fy * self.height, cx * self.width, cy * self.height, self.width, self.height)

    @property
    def K(self) -> np.ndarray:
        """3×3 float64 intrinsics in pixels."""
        cam = self.camera
        return np.array([[cam.fx, 0.0, cam.cx], [0.0, cam.fy, cam.cy], [0.0, 0.0, 1.0]])


# ``default`` renders in about a minute on a 2-core machine (see README / render_benchmark for figures).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"sequences": 3, "frames": 12, "height": 64, "width": 160},
    "small": {"sequences": 6, "frames": 60, "height": 96, "width": 320},
    "default": {"sequences": 16, "frames": 100, "height": 96, "width": 320},
}


def make_options(preset: str = "small", sequences: int | None = None, frames: int | None = None,
                 height: int | None = None, width: int | None = None, seed: int = 0) -> WorldOptions:
    """Options of a preset with optional overrides.

    Raises:
        ValueError: unknown preset or invalid values (the message names the valid ones).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    for key, value in (("sequences", sequences), ("frames", frames), ("height", height), ("width", width)):
        if value is not None:
            values[key] = value
    return WorldOptions(preset=preset, seed=seed, **values)


def drive_name(index: int) -> str:
    """Folder name of drive ``index`` (0-based): ``<date>_drive_<NNNN>_sync`` with NNNN = index + 1."""
    return f"{DATE}_drive_{index + 1:04d}_sync"


# ------------------------------------------------------------------------------------------ one frame
@dataclass(frozen=True)
class RenderedFrame:
    """One stereo frame in memory.

    Attributes:
        left: (H, W, 3) uint8 left image (image_02).
        right: (H, W, 3) uint8 right image (image_03).
        depth_left: (H, W) float32 camera-z depth in metres of each pixel's centre ray, 0 = sky.
        depth_right: (H, W) float32 the same for the right camera.
        motion_left: (H, W) bool: the centre ray hits an independently moving car.
        motion_right: (H, W) bool: likewise for the right camera.
        regions_left: region name (``REGION_NAMES``) -> (H, W) bool mask of the left camera.
        regions_right: likewise for the right camera.
    """

    left: np.ndarray
    right: np.ndarray
    depth_left: np.ndarray
    depth_right: np.ndarray
    motion_left: np.ndarray
    motion_right: np.ndarray
    regions_left: Mapping[str, np.ndarray]
    regions_right: Mapping[str, np.ndarray]


def ray_grids(options: WorldOptions) -> tuple[sr.RayGrid, sr.RayGrid]:
    """The pixel-centre (depth, motion, colour) and sub-pixel (silhouettes) ray grids of a world's cameras."""
    return sr.ray_grid(options.camera, 1), sr.ray_grid(options.camera, SAMPLES)


def view_cache(drive: Drive, grids: tuple[sr.RayGrid, sr.RayGrid]) -> sg.ViewCache:
    """The pixel-centre passes of a drive's frames, shared by the colour rendering and the region masks."""
    return sg.ViewCache(drive, grids[0], BASELINE, MAX_DEPTH)


def render_frame(drive: Drive, frame: int, options: WorldOptions, atlas: tx.TextureAtlas,
                 grids: tuple[sr.RayGrid, sr.RayGrid] | None = None,
                 cache: sg.ViewCache | None = None) -> RenderedFrame:
    """Render frame ``frame`` of ``drive``: both cameras' colour (2×2 supersampled on silhouettes and thin
    objects, mip-filtered textures elsewhere), pixel-centre depth and motion, and the region masks.

    Args:
        drive: the drive (``synth_scene.build_drive``).
        frame: frame index in [0, drive.frames).
        options: image size (and intrinsics).
        atlas: textures of the world (``synth_textures.build_atlas(options.seed)``).
        grids: ``ray_grids(options)``, to reuse across frames.
        cache: ``view_cache(drive, grids)``, to reuse the pixel-centre passes of neighbouring frames (the region
            masks need the frames before and after); a fresh one when None.
    """
    grids = grids or ray_grids(options)
    cache = cache or view_cache(drive, grids)
    outputs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for view in cache.get(frame):  # left, then the right camera BASELINE metres along the camera's +x
        moving_of_id = np.concatenate([[False, False], view.prims.moving])  # ids -1 (sky), 0 (ground), k + 1
        colour, centre = sr.render_camera(view.prims, view.yaw, view.origin, grids, atlas, MAX_DEPTH,
                                          centre=(view.hits, view.candidates))
        shape = colour.shape[:2]
        depth = np.where(centre.hit != sr.SKY, centre.t, 0.0).astype(np.float32).reshape(shape)
        image = np.floor(colour * 255.0 + 0.5).astype(np.uint8)
        outputs.append((image, depth, moving_of_id[centre.hit + 1].reshape(shape)))
    (left_img, depth_l, motion_l), (right_img, depth_r, motion_r) = outputs
    regions_l, regions_r = sg.region_masks(drive, frame, cache, (left_img, right_img))
    return RenderedFrame(left_img, right_img, depth_l, depth_r, motion_l, motion_r, regions_l, regions_r)


def encode_depth(depth: np.ndarray) -> np.ndarray:
    """Metres -> KITTI 16-bit depth (round(metres × 256); 0 stays 0 = no depth; positive depths stay > 0)."""
    scaled = np.clip(np.floor(depth.astype(np.float64) * DEPTH_SCALE + 0.5), 0, 65535).astype(np.uint16)
    return np.where((depth > 0) & (scaled == 0), np.uint16(1), scaled)


def encode_png(array: np.ndarray) -> bytes:
    """PNG file bytes of an (H, W) uint8 / uint16 or (H, W, 3) uint8 image (no filtering, zlib level 1).

    A minimal encoder: PIL's adaptive row filtering costs more than the whole compression on this data, and
    the bytes depend only on the pixels (no timestamps), so files are reproducible.
    """
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
        depth_bits, colour_type, raw = 8, 2, array
    elif array.dtype == np.uint8 and array.ndim == 2:
        depth_bits, colour_type, raw = 8, 0, array
    elif array.dtype == np.uint16 and array.ndim == 2:
        depth_bits, colour_type, raw = 16, 0, array.astype(">u2")
    else:
        raise ValueError(f"encode_png takes H×W uint8/uint16 or H×W×3 uint8, got {array.dtype} {array.shape}")
    height, width = array.shape[:2]
    rows = np.ascontiguousarray(raw).view(np.uint8).reshape(height, -1)
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, depth_bits, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(scanlines.tobytes(), PNG_COMPRESS_LEVEL)) + chunk(b"IEND", b""))


def region_mask_file(region: str, camera: int) -> str:
    """Relative path pattern (inside the drive folder, ``{}`` = 10-digit frame) of a region mask PNG."""
    return f"{REGION_DIR}/{region}/image_0{camera}/{{}}.png"


def _frame_files(rendered: RenderedFrame) -> dict[str, bytes]:
    """Relative path (inside the drive folder, ``{}`` = 10-digit frame) -> encoded file."""
    files = {
        "image_02/data/{}.png": encode_png(rendered.left),
        "image_03/data/{}.png": encode_png(rendered.right),
        "proj_depth/groundtruth/image_02/{}.png": encode_png(encode_depth(rendered.depth_left)),
        "proj_depth/groundtruth/image_03/{}.png": encode_png(encode_depth(rendered.depth_right)),
        "motion_mask/image_02/{}.png": encode_png(rendered.motion_left.astype(np.uint8) * 255),
        "motion_mask/image_03/{}.png": encode_png(rendered.motion_right.astype(np.uint8) * 255),
    }
    for camera, regions in ((2, rendered.regions_left), (3, rendered.regions_right)):
        for name in REGION_NAMES:
            files[region_mask_file(name, camera)] = encode_png(regions[name].astype(np.uint8) * 255)
    return files


def relative_poses(drive: Drive) -> np.ndarray:
    """(F, 4, 4) float64 left camera-to-world poses, world = the drive's first left camera (frame 0: identity).

    Composed in closed form (yaw differences, rotated offsets) rather than as ``inv(T_0) @ T_k``, so frame 0 is
    exactly the identity and a standing camera repeats its pose bit for bit.
    """
    x0, z0, yaw0 = drive.ego[0]
    c, s = np.cos(yaw0), np.sin(yaw0)
    poses = []
    for x, z, yaw in drive.ego:
        dx, dz = x - x0, z - z0
        poses.append(pose_matrix(c * dx - s * dz, 0.0, s * dx + c * dz, yaw - yaw0))  # R(-yaw0) (p - p0)
    return np.stack(poses)


# ------------------------------------------------------------------------------------------- text files
def _fmt(values: np.ndarray) -> str:
    return " ".join(f"{v:.12e}" for v in np.asarray(values, dtype=np.float64).ravel() + 0.0)  # + 0.0: no "-0"


def calib_text(options: WorldOptions) -> str:
    """``calib_cam_to_cam.txt`` in KITTI's format: cameras 00/02 at the left centre, 01/03 ``BASELINE`` right."""
    k = options.K
    size = np.array([options.width, options.height], dtype=np.float64)
    lines = ["calib_time: 01-Jan-2000 00:00:00", f"corner_dist: {_fmt(np.zeros(1))}"]
    for cam, offset in (("00", 0.0), ("01", BASELINE), ("02", 0.0), ("03", BASELINE)):
        p = np.zeros((3, 4))
        p[:, :3] = k
        p[0, 3] = -k[0, 0] * offset  # u = fx (X - b)/Z + cx for a camera b metres to the right
        lines += [
            f"S_{cam}: {_fmt(size)}",
            f"K_{cam}: {_fmt(k)}",
            f"D_{cam}: {_fmt(np.zeros(5))}",
            f"R_{cam}: {_fmt(np.eye(3))}",
            f"T_{cam}: {_fmt(np.array([-offset, 0.0, 0.0]))}",
            f"S_rect_{cam}: {_fmt(size)}",
            f"R_rect_{cam}: {_fmt(np.eye(3))}",
            f"P_rect_{cam}: {_fmt(p)}",
        ]
    return "\n".join(lines) + "\n"


def poses_text(poses: np.ndarray) -> str:
    """KITTI odometry pose file: one line of 12 numbers (row-major 3×4 camera-to-world) per frame."""
    return "".join(_fmt(p[:3, :4]) + "\n" for p in poses)


def test_drive_indices(options: WorldOptions) -> list[int]:
    """The held-out drives of the test split: the last ~20 % (at least one)."""
    n_test = max(1, round(0.2 * options.sequences))
    return list(range(options.sequences - n_test, options.sequences))


def split_lines(options: WorldOptions) -> dict[str, list[str]]:
    """Split lists of a world: ``train``/``val`` from the first drives (random sides, val = ~10 % of their
    frames), ``test`` = every usable frame of the held-out last ~20 % of drives (side l). Only frames 1..F-2
    appear (their neighbours -1 and +1 exist)."""
    n_test = len(test_drive_indices(options))
    rng = np.random.default_rng([options.seed, 4])
    usable = range(1, options.frames - 1)
    trainval = [f"{DATE}/{drive_name(d)} {f} {'lr'[int(rng.integers(0, 2))]}"
                for d in range(options.sequences - n_test) for f in usable]
    order = rng.permutation(len(trainval))
    n_val = max(1, round(0.1 * len(trainval)))
    val = sorted(order[:n_val])
    return {
        "train": [trainval[i] for i in order[n_val:]],
        "val": [trainval[i] for i in val],
        "test": [f"{DATE}/{drive_name(d)} {f} l" for d in range(options.sequences - n_test, options.sequences)
                 for f in usable],
    }


# ------------------------------------------------------------------------------------------ whole world
@dataclass(frozen=True)
class WorldSummary:
    """What ``render_world`` produced.

    Attributes:
        root: the world's folder.
        options: what was rendered.
        frames: stereo frames rendered (drives × frames per drive).
        files: files written.
        bytes: their total size.
        seconds: wall time of rendering and writing.
    """

    root: Path
    options: WorldOptions
    frames: int
    files: int
    bytes: int
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return self.frames / max(self.seconds, 1e-9)

    def describe(self) -> str:
        o = self.options
        return (f"synthetic world '{o.preset}' (seed {o.seed}): {o.sequences} drives × {o.frames} frames = "
                f"{self.frames} stereo frames at {o.width}×{o.height}; {self.files} files, "
                f"{self.bytes / 1e6:.1f} MB on disk; {self.seconds:.1f} s ({self.frames_per_second:.1f} frames/s) "
                f"-> {self.root}")


CHUNK = 10  # frames per rendering task (the unit of work handed to a worker process, and of progress)


@functools.lru_cache(maxsize=1)
def _cached_atlas(seed: int) -> tx.TextureAtlas:
    """The world's textures, built once per process (a memo of a pure function of the seed)."""
    return tx.build_atlas(seed)


def _render_chunk(root: str, options: WorldOptions, index: int, first: int, last: int) -> int:
    """Render and write frames ``first..last-1`` of drive ``index``; returns the number of frames written.

    Runs in the calling process or in a worker; the drive is rebuilt (milliseconds) from (seed, index).
    """
    atlas = _cached_atlas(options.seed)
    drive = build_drive(options.seed, index, options.frames, view_distance=MAX_DEPTH)
    folder = Path(root) / DATE / drive_name(index)
    grids = ray_grids(options)
    cache = view_cache(drive, grids)
    for k in range(first, last):
        rendered = render_frame(drive, k, options, atlas, grids, cache)
        cache.drop_before(k)  # frame k + 1 needs frames k .. k + 2
        for pattern, data in _frame_files(rendered).items():
            path = folder / pattern.format(f"{k:010d}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return last - first


def _drive_record(root: Path, options: WorldOptions, index: int) -> dict[str, object]:
    """Write the drive's poses and describe it for world.json."""
    drive = build_drive(options.seed, index, options.frames, view_distance=MAX_DEPTH)
    folder = root / DATE / drive_name(index)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "poses.txt").write_text(poses_text(relative_poses(drive)))
    return {"name": drive_name(index), "frames": options.frames, "stop": drive.has_stop,
            "follower": drive.has_follower, "moving_cars": int(drive.cars.shape[0])}


def _folder_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _render_into(tmp: Path, options: WorldOptions, preview: bool, progress: bool, workers: int) -> WorldSummary:
    start = time.perf_counter()
    (tmp / DATE).mkdir(parents=True)
    (tmp / DATE / "calib_cam_to_cam.txt").write_text(calib_text(options))
    total = options.sequences * options.frames
    from tqdm.auto import tqdm

    tasks = [(str(tmp), options, d, f, min(f + CHUNK, options.frames))
             for d in range(options.sequences) for f in range(0, options.frames, CHUNK)]
    with tqdm(total=total, unit="frame", desc=f"synth {options.preset}", disable=not progress) as bar:
        if workers <= 1:
            for task in tasks:
                bar.update(_render_chunk(*task))
        else:
            # spawn, not fork: the caller (e.g. a trainer) may hold threads that a fork would copy mid-state
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for done in as_completed([pool.submit(_render_chunk, *task) for task in tasks]):
                    bar.update(done.result())  # the files do not depend on the order chunks finish in
    _cached_atlas.cache_clear()  # 70 MB: do not keep it in the caller (e.g. a trainer) after rendering
    drives = [_drive_record(tmp, options, d) for d in range(options.sequences)]
    splits_dir = tmp / "splits" / SPLIT
    splits_dir.mkdir(parents=True)
    for name, lines in split_lines(options).items():
        (splits_dir / f"{name}_files.txt").write_text("".join(line + "\n" for line in lines))
    if preview:
        write_preview(tmp, options, tmp / "preview.png")
    fingerprint = {**content_fingerprint(tmp), "computed": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "rendered_with": render_environment()}
    (tmp / FINGERPRINT_NAME).write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
    files, size = _folder_size(tmp)
    cam = options.camera
    meta = {
        "format": FORMAT,
        "options": asdict(options),
        "date": DATE,
        "split": SPLIT,
        "drives": drives,
        "test_drives": [drive_name(d) for d in test_drive_indices(options)],
        "intrinsics": {"fx": cam.fx, "fy": cam.fy, "cx": cam.cx, "cy": cam.cy, "normalised": list(K_NORMALISED),
                       "pixel_centres": "integer (pixel column j is at u = j)"},
        "baseline": BASELINE,
        "camera_height": GROUND_Y,
        "fps": FPS,
        "depth_scale": DEPTH_SCALE,
        "max_depth": MAX_DEPTH,
        "supersampling": SAMPLES,
        "regions": region_description(),
        "summary": {"frames": total, "files": files + 1, "bytes": size,
                    "test_regions": region_statistics(tmp, split_lines(options)["test"])},
    }
    (tmp / "world.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")  # written last
    files, size = _folder_size(tmp)
    return WorldSummary(tmp, options, total, files, size, time.perf_counter() - start)


def region_description() -> dict[str, object]:
    """world.json's ``regions`` entry: names, file layout and the constants that define the masks."""
    return {
        "names": list(REGION_NAMES),
        "files": f"<drive>/{REGION_DIR}/<region>/image_02|image_03/<frame:010d>.png (8-bit, 255 = in the region)",
        "occluded": "pixel with GT depth whose surface point (moved with its object) is hidden behind a nearer "
                    "surface, or outside the image, in at least one temporal neighbour (+-1, same camera)",
        "occlusion_tolerance": sg.OCCLUSION_TOLERANCE,
        "comoving": "pixel of a moving car whose image motion to every temporal neighbour is below "
                    "comoving_max_flow_px because it moves with the camera (its position relative to the camera "
                    "changes by less than comoving_max_relative_speed_m_per_s / fps per frame)",
        "comoving_max_flow_px": sg.COMOVING_MAX_FLOW,
        "comoving_max_relative_speed_m_per_s": sg.COMOVING_MAX_SPEED,
        "low_texture": "pixel with GT depth whose grey level (BT.601 luma / 255) has a std below "
                       "texture_threshold in the texture_window x texture_window window around it",
        "texture_window": sg.TEXTURE_WINDOW,
        "texture_threshold": sg.TEXTURE_THRESHOLD,
    }


def region_statistics(root: Path, lines: list[str]) -> dict[str, object]:
    """Pixels of each region on the split ``lines`` (``<folder> <frame> <side>``), counted inside the pixels the
    evaluation scores (0 < GT < ``EVAL_MAX_DEPTH``), read back from the written files.

    Returns:
        ``{"images", "valid_pixels", <region>: {"pixels", "fraction", "images"}}`` (fraction of valid pixels;
        images = images with at least one such pixel); deterministic (no timings).
    """
    valid_total, images = 0, 0
    counts = {name: [0, 0] for name in REGION_NAMES}
    for line in lines:
        folder, frame, side = line.split()
        camera = 2 if side == "l" else 3
        drive = root / folder
        name = f"{int(frame):010d}.png"
        with Image.open(drive / "proj_depth" / "groundtruth" / f"image_0{camera}" / name) as img:
            depth = np.asarray(img).astype(np.float64) / DEPTH_SCALE
        valid = (depth > 0) & (depth < EVAL_MAX_DEPTH)
        valid_total += int(valid.sum())
        images += 1
        for region in REGION_NAMES:
            with Image.open(drive / region_mask_file(region, camera).format(name[:-4])) as img:
                pixels = int(((np.asarray(img) > 0) & valid).sum())
            counts[region][0] += pixels
            counts[region][1] += int(pixels > 0)
    out: dict[str, object] = {"images": images, "valid_pixels": valid_total}
    for region, (pixels, with_region) in counts.items():
        out[region] = {"pixels": pixels, "fraction": round(pixels / max(valid_total, 1), 6), "images": with_region}
    return out


def world_format(root: str | Path) -> int | None:
    """The format version of a rendered world (``world.json`` ``format`` = ``md2bench-synth/<n>``), or None
    where there is no readable world.json (e.g. a hand-made world in the same layout)."""
    try:
        fmt = json.loads((Path(root) / "world.json").read_text()).get("format", "")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(fmt, str) or not fmt.startswith("md2bench-synth/"):
        return None
    try:
        return int(fmt.rsplit("/", 1)[1])
    except ValueError:
        return None


def has_region_masks(root: str | Path) -> bool:
    """Whether a rendered world has region masks (world format 2 or later)."""
    version = world_format(root)
    return version is not None and version >= 2


def is_rendered(root: Path) -> bool:
    """Whether ``root`` holds a complete rendered world (its ``world.json`` is written last, by the rename)."""
    return (root / "world.json").is_file()


def render_world(out_dir: str | Path, options: WorldOptions | None = None, *, preset: str = "small",
                 sequences: int | None = None, frames: int | None = None, height: int | None = None,
                 width: int | None = None, seed: int = 0, preview: bool = False, progress: bool = True,
                 workers: int | None = None, exist_ok: bool = False) -> WorldSummary:
    """Render a whole world into ``out_dir`` (atomically: a temporary sibling folder renamed when complete).

    Args:
        out_dir: destination; must not exist or be empty.
        options: what to render; when None, built from ``preset`` and the overrides after it.
        preset: ``tiny``, ``small`` or ``default``.
        sequences, frames, height, width: override the preset.
        seed: world seed.
        preview: also write ``preview.png`` (RGB, coloured depth, motion mask for a few frames).
        progress: show a tqdm progress bar.
        workers: render drives in this many processes (the files do not depend on it); None: one per CPU core
            for worlds of 200 frames or more, else 1 (starting processes costs more than small worlds take).
        exist_ok: if ``out_dir`` already holds a complete world, return at once (no rendering; ``seconds`` = 0).

    Returns:
        The summary (``describe()`` for the CLI).

    Raises:
        ValueError: invalid options, or ``out_dir`` exists and is not empty.
    """
    options = options or make_options(preset, sequences, frames, height, width, seed)
    if workers is None:
        big = options.sequences * options.frames >= 200
        workers = min(os.cpu_count() or 1, options.sequences) if big else 1
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if exist_ok and is_rendered(out):
            return _existing_summary(out, options)
        raise ValueError(f"{out} exists and is not empty; choose a new folder or delete it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        summary = _render_into(tmp, options, preview, progress, workers)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        try:
            os.replace(tmp, out)
        except OSError:
            if exist_ok and is_rendered(out):  # another process finished the same world first
                shutil.rmtree(tmp, ignore_errors=True)
                return _existing_summary(out, options)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace(summary, root=out)


def _existing_summary(root: Path, options: WorldOptions) -> WorldSummary:
    meta = json.loads((root / "world.json").read_text())
    s = meta.get("summary", {})
    return WorldSummary(root, options, int(s.get("frames", 0)), int(s.get("files", 0)), int(s.get("bytes", 0)), 0.0)


FINGERPRINT_NAME = "fingerprint.json"
"""Beside ``world.json``: the world's content fingerprint (``world_fingerprint``), written once."""

_NOT_CONTENT = {"world.json", FINGERPRINT_NAME, "preview.png"}


def content_fingerprint(root: str | Path) -> dict[str, object]:
    """SHA-256 over a rendered world's content: every file but ``world.json``, ``fingerprint.json`` and
    ``preview.png``, each as its path relative to ``root`` (POSIX), a NUL byte and its bytes, in sorted path order.

    Two worlds with the same options can still differ where the renderer's floating point does (numpy's SIMD
    code differs between CPUs); this tells them apart. Returns ``{"sha256": hex, "files": n, "bytes": total}``."""
    root = Path(root)
    digest, files, size = hashlib.sha256(), 0, 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in _NOT_CONTENT:
            continue
        data = path.read_bytes()
        digest.update(rel.encode() + b"\0")
        digest.update(data)
        files, size = files + 1, size + len(data)
    return {"sha256": digest.hexdigest(), "files": files, "bytes": size}


def render_environment() -> dict[str, object]:
    """What the rendered bytes can depend on besides the options: numpy's version and the SIMD targets its
    dispatch uses on this CPU, the CPU's model and architecture, Python's version."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

        simd = [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]
    except ImportError:  # a numpy without these private names
        simd = []
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"numpy": np.__version__, "numpy_simd": simd, "cpu": cpu, "machine": platform.machine(),
            "python": platform.python_version()}


def world_fingerprint(root: str | Path) -> str:
    """The hex SHA-256 of a rendered world's content (``content_fingerprint``), read from its
    ``fingerprint.json``; computed and written there (atomically) the first time for worlds rendered before it
    existed. Runs log its first 16 digits as the tag ``md2bench.data.fingerprint``."""
    root = Path(root)
    path = root / FINGERPRINT_NAME
    try:
        return str(json.loads(path.read_text())["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    record = content_fingerprint(root)
    record["computed"] = time.strftime("%Y-%m-%d %H:%M:%S")
    tmp = root / f".{FINGERPRINT_NAME}.{os.getpid()}"
    try:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError:  # a read-only world: the fingerprint is still right, only not kept
        tmp.unlink(missing_ok=True)
    return str(record["sha256"])


def read_world(root: str | Path) -> dict[str, object]:
    """The ``world.json`` of a rendered world (options, intrinsics, baseline, drives, summary)."""
    path = Path(root) / "world.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {root} is not a complete synthetic world "
                                "(render one with `md2bench data synth --out <folder>`)")
    return json.loads(path.read_text())


def world_cache_path(preset: str, seed: int, base: str | Path | None = None) -> Path:
    """Where ``ensure_world`` keeps the world of a preset and seed: ``<cwd>/.md2bench_cache/synth/<preset>-<seed>``."""
    return (Path.cwd() if base is None else Path(base)) / ".md2bench_cache" / "synth" / f"{preset}-{seed}"


def ensure_world(cfg: "Config", progress: bool = False) -> Path:
    """The root of the config's synthetic world, rendered first if absent.

    ``data.path`` set: that folder (rendered there with ``data.synth_preset``/``data.synth_seed`` if it does not
    exist or is empty). Empty: the cache folder ``.md2bench_cache/synth/<preset>-<seed>`` in the working
    directory. Rendering goes to a temporary folder renamed when complete, so an interrupted render never leaves
    a half world that looks complete; concurrent callers may both render, the first rename wins.

    Args:
        cfg: the config (``data.synth_preset``, ``data.synth_seed``, ``data.path``).
        progress: show a progress bar while rendering.

    Raises:
        ValueError: ``data.path`` names a non-empty folder that is not a synthetic world.
    """
    root = Path(cfg.data.path) if cfg.data.path else world_cache_path(cfg.data.synth_preset, cfg.data.synth_seed)
    if is_rendered(root):
        if not cfg.data.path and not has_region_masks(root):
            _rerender_outdated(root, make_options(cfg.data.synth_preset, seed=cfg.data.synth_seed), progress)
        return root
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty but has no world.json (not a complete synthetic world); delete it "
                         "or point data.path elsewhere")
    render_world(root, make_options(cfg.data.synth_preset, seed=cfg.data.synth_seed), progress=progress,
                 exist_ok=True)
    return root


def _rerender_outdated(root: Path, options: WorldOptions, progress: bool) -> None:
    """Replace a cached world of an older format (no region masks) by a fresh render of the same options.

    The new world is rendered beside the old one and swapped in with two renames; a concurrent caller that
    swapped first wins (its world is identical: same seed and options).
    """
    import warnings

    warnings.warn(f"{root} is a synthetic world of an older format (no region masks); re-rendering it "
                  f"(images, depth and motion masks stay byte-identical)", stacklevel=3)
    fresh = root.parent / f".{root.name}.v2-{os.getpid()}"
    old = root.parent / f".{root.name}.old-{os.getpid()}"
    for leftover in (fresh, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    render_world(fresh, options, progress=progress)
    try:
        os.replace(root, old)
    except OSError:
        pass  # another process moved it first
    try:
        os.replace(fresh, root)
    except OSError:
        if not has_region_masks(root):
            raise
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------- preview
_DEPTH_STOPS = np.array([[0.0, 0.0, 0.02], [0.32, 0.07, 0.44], [0.73, 0.21, 0.33], [0.98, 0.55, 0.04],
                         [0.99, 0.99, 0.75]])


def colour_depth(depth: np.ndarray, near: float = 4.0, far: float = 80.0) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) uint8, bright = near (on inverse depth), black where depth is 0."""
    with np.errstate(divide="ignore"):
        inv = np.where(depth > 0, 1.0 / np.maximum(depth, 1e-6), 0.0)
    x = np.clip((inv - 1.0 / far) / (1.0 / near - 1.0 / far), 0.0, 1.0) * (len(_DEPTH_STOPS) - 1)
    i = np.minimum(np.floor(x).astype(int), len(_DEPTH_STOPS) - 2)
    f = (x - i)[..., None]
    rgb = _DEPTH_STOPS[i] * (1 - f) + _DEPTH_STOPS[i + 1] * f
    rgb[depth <= 0] = 0.0
    return np.floor(rgb * 255 + 0.5).astype(np.uint8)


REGION_COLOURS = {"occluded": (255, 60, 40), "comoving": (40, 220, 60), "low_texture": (60, 120, 255)}


def write_preview(root: str | Path, options: WorldOptions, path: str | Path, rows: int = 4) -> Path:
    """Contact sheet: one row per drive (its middle frame): RGB | coloured depth | RGB with moving cars in red |
    the region masks (occluded red, comoving green, low-texture blue, blended where they overlap)."""
    root = Path(root)
    tiles = []
    gap = np.full((options.height, 2, 3), 255, np.uint8)
    for d in range(min(rows, options.sequences)):
        folder = root / DATE / drive_name(d)
        name = f"{options.frames // 2:010d}.png"
        rgb = np.asarray(Image.open(folder / "image_02" / "data" / name).convert("RGB"))
        depth = np.asarray(Image.open(folder / "proj_depth" / "groundtruth" / "image_02" / name)).astype(np.float32)
        mask = np.asarray(Image.open(folder / "motion_mask" / "image_02" / name)) > 0
        overlay = (rgb * 0.6).astype(np.uint8)
        overlay[mask] = (np.array([255, 40, 40]) * 0.7 + rgb[mask] * 0.3).astype(np.uint8)
        colour = np.zeros(rgb.shape, np.float64)
        weight = np.zeros(rgb.shape[:2], np.float64)
        for region, rgb_region in REGION_COLOURS.items():
            with Image.open(folder / region_mask_file(region, 2).format(name[:-4])) as img:
                inside = np.asarray(img) > 0
            colour[inside] += rgb_region
            weight += inside
        regions = (rgb * 0.35).astype(np.uint8)
        marked = weight > 0
        regions[marked] = (colour[marked] / weight[marked, None] * 0.75 + rgb[marked] * 0.25).astype(np.uint8)
        tiles.append(np.concatenate([rgb, gap, colour_depth(depth / DEPTH_SCALE), gap, overlay, gap, regions], axis=1))
        tiles.append(np.full((2, tiles[-1].shape[1], 3), 255, np.uint8))
    sheet = np.concatenate(tiles[:-1], axis=0)
    Path(path).write_bytes(encode_png(sheet))
    return Path(path)


# ------------------------------------------------------------------------------------------ benchmark
def render_benchmark(preset: str = "default", frames: int = 10, seed: int = 0, height: int | None = None,
                     width: int | None = None, verbose: bool = True) -> float:
    """Frames per second of rendering and PNG-encoding one drive (both cameras, depth, motion and region masks;
    no disk).

    Args:
        preset: image size of this preset unless ``height``/``width`` are given.
        frames: frames to render (after one warm-up frame).
        seed: world seed.
        height, width: override the preset's size.
        verbose: print the figure.

    Returns:
        Stereo frames per second on this machine (one process).
    """
    options = make_options(preset, frames=max(frames + 1, 3), height=height, width=width, seed=seed)
    atlas = tx.build_atlas(seed)
    drive = build_drive(seed, 0, options.frames, view_distance=MAX_DEPTH)
    grids = ray_grids(options)
    cache = view_cache(drive, grids)
    _frame_files(render_frame(drive, 0, options, atlas, grids, cache))  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for k in range(1, frames + 1):
        _frame_files(render_frame(drive, k, options, atlas, grids, cache))
        cache.drop_before(k)
    fps = frames / max(time.perf_counter() - start, 1e-9)
    cpu_fps = frames / max(time.process_time() - cpu, 1e-9)
    if verbose:
        print(f"synthetic render ({options.width}×{options.height}, stereo colour with 2×2 supersampled edges, "
              f"depth and masks, PNG-encoded; one process): {fps:.1f} frames/s wall, {cpu_fps:.1f} frames per "
              "CPU-second (what an idle core gives)")
    return fps
