"""Prepare a KITTI raw download: check it against the splits, convert PNG to JPEG, export test ground truth.

``md2bench data prepare-kitti --raw DIR`` runs, in order:

1. ``check_layout``: every image, calibration and velodyne file that the split lists name, with a report of
   what is missing (and which archives of ``kitti_archives_to_download.txt`` hold the missing drives).
2. ``convert_to_jpeg`` (``--to-jpeg``): PNG → JPEG quality 92 in place of the originals. The reference's
   authors used ImageMagick ``-quality 92 -sampling-factor 2x2,1x1,1x1``: luma sampled 2×2 relative to
   chroma, i.e. chroma subsampling 4:2:0 (their README warns that the 2x2,2x2,2x2 default of Ubuntu 18.04,
   i.e. no subsampling, "gives different results"). The default here is therefore ``"4:2:0"``; ``"4:4:4"``
   is available. Each JPEG is written atomically before its PNG is removed, so an interrupted run resumes.
3. ``export_gt`` for ``eigen`` (velodyne, ``generate_depth_map(..., cam=2, vel_depth=True)``, REFERENCE §3.3)
   and, where the KITTI depth annotations are present, ``eigen_benchmark`` (improved GT PNG / 256). One
   ``.npz`` per split: key ``"lines"`` (the split lines as a unicode array) and ``"0000"``, ``"0001"`` ...
   (float32 H×W per image at native size) - plain arrays, so ``np.load`` needs no pickle on NumPy 2.
   Per-image results are kept in a ``.partial`` folder until the npz is written, so an interrupted export
   resumes; a finished npz whose lines match is skipped.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from md2bench.data.kitti import (
    OTHER_SIDE,
    SplitLine,
    cached_listing,
    calib_dir,
    depth_gt_path,
    generate_depth_map,
    image_path,
    is_odometry_folder,
    kitti_archives_file,
    packaged_split_file,
    read_depth_png,
    read_split,
    velodyne_path,
)

JPEG_QUALITY: int = 92  # the reference README's ImageMagick setting
CHROMA_SUBSAMPLING: dict[str, int] = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}  # Pillow's `subsampling` codes
GT_FILES: dict[str, str] = {"eigen": "gt_depths.npz", "eigen_benchmark": "gt_depths_eigen_benchmark.npz"}
DEFAULT_CHECK_SPLITS: tuple[str, ...] = ("eigen_zhou", "eigen")
CALIB_FILES: tuple[str, ...] = ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt")


def gt_file(out_dir: str | Path, test_split: str) -> Path:
    """Where the exported GT of a test split lives (``gt_depths.npz`` for eigen)."""
    if test_split not in GT_FILES:
        raise ValueError(f"no GT export for split {test_split!r}; choose one of {', '.join(GT_FILES)}")
    return Path(out_dir) / GT_FILES[test_split]


def load_gt(path: str | Path, lines: Sequence[SplitLine] | None = None) -> list[np.ndarray]:
    """Read an exported GT npz into a list of float32 H×W arrays, in split order.

    Args:
        path: the npz.
        lines: when given, the npz must have been exported for exactly these lines.

    Raises:
        FileNotFoundError: the npz is missing (the message says to run ``md2bench data prepare-kitti``).
        ValueError: its lines differ from ``lines``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ground truth {path} does not exist; export it with `md2bench data prepare-kitti --raw <kitti raw>` "
            "(it projects the velodyne scans of the Eigen test frames)")
    with np.load(path, allow_pickle=False) as npz:
        stored = [str(s) for s in npz["lines"]]
        if lines is not None:
            wanted = [_line_key(line) for line in lines]
            if stored != wanted:
                raise ValueError(f"{path} was exported for other split lines ({len(stored)} vs {len(wanted)}); "
                                 "re-run `md2bench data prepare-kitti`")
        return [npz[f"{i:04d}"].astype(np.float32) for i in range(len(stored))]


def _line_key(line: SplitLine) -> str:
    return f"{line.folder} {line.frame} {line.side}"


# ------------------------------------------------------------------------------------------------- check
@dataclass
class SplitCheck:
    """What one split list is missing under a raw folder."""

    split: str
    lines: int = 0
    missing_images: list[tuple[Path, SplitLine]] = field(default_factory=list)
    missing_neighbours: list[tuple[Path, SplitLine]] = field(default_factory=list)
    missing_other: list[tuple[Path, SplitLine]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing_images or self.missing_other)


@dataclass
class LayoutReport:
    """Result of ``check_layout``."""

    raw: Path
    splits: list[SplitCheck]
    missing_drives: list[str]
    archives: list[str]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.splits)

    def describe(self, examples: int = 3) -> str:
        """Human-readable summary with a few examples per problem."""
        out = [f"KITTI raw at {self.raw}"]
        for s in self.splits:
            status = "complete" if s.ok and not s.missing_neighbours else "INCOMPLETE" if not s.ok else "usable"
            out.append(f"  {s.split}: {s.lines} lines, {status}")
            for label, items in (("missing images", s.missing_images),
                                 ("missing neighbour frames (those lines are dropped in training)", s.missing_neighbours),
                                 ("missing calibration/velodyne files", s.missing_other)):
                if items:
                    out.append(f"    {len(items)} {label}, e.g.:")
                    out += [f"      {path}  ({line.describe()})" for path, line in items[:examples]]
        if self.missing_drives:
            out.append(f"  {len(self.missing_drives)} drive folders are absent entirely: "
                       + ", ".join(self.missing_drives[:5]) + (" ..." if len(self.missing_drives) > 5 else ""))
        if self.archives:
            out.append(f"  download these archives (from {kitti_archives_file().name}):")
            out += [f"    {url}" for url in self.archives]
        return "\n".join(out)


def _split_files(split: str) -> list[tuple[str, Path]]:
    folder = packaged_split_file(split, "x").parent
    if not folder.is_dir():
        raise ValueError(f"unknown split {split!r}; packaged splits: "
                         + ", ".join(sorted(p.name for p in folder.parent.iterdir() if p.is_dir())))
    return [(p.stem, p) for p in sorted(folder.glob("*_files*.txt"))]


def check_split_lines(raw: str | Path, name: str, lines: Sequence[SplitLine], is_test: bool, velodyne: bool = False,
                      image_ext: str = "auto", progress: bool = False, absent: set[str] | None = None,
                      cache: dict[Path, frozenset[str]] | None = None) -> SplitCheck:
    """Check the files one split list names (see ``check_layout``); drive folders absent entirely go to ``absent``."""
    raw = Path(raw)
    cache = {} if cache is None else cache
    absent = set() if absent is None else absent
    exts = ("jpg", "png") if image_ext == "auto" else (image_ext,)

    def listing(directory: Path) -> frozenset[str]:
        return cached_listing(directory, cache)

    def find(line: SplitLine, frame: int, side: str) -> Path | None:
        for ext in exts:
            path = image_path(raw, line.folder, frame, side, ext)
            if path.name in listing(path.parent):
                return None
        return image_path(raw, line.folder, frame, side, exts[0])

    check = SplitCheck(name, len(lines))
    for line in tqdm(lines, desc=f"check {name}", disable=not progress, leave=False):
        missing = find(line, line.frame, line.side)
        if missing is not None:
            check.missing_images.append((missing, line))
            if not (raw / line.folder).is_dir():
                absent.add(line.folder)
            continue
        if is_test:
            for calib_name in CALIB_FILES:
                calib = calib_dir(raw, line.folder) / calib_name
                if calib.name not in listing(calib.parent):
                    check.missing_other.append((calib, line))
            if velodyne:
                velo = velodyne_path(raw, line.folder, line.frame)
                if velo.name not in listing(velo.parent):
                    check.missing_other.append((velo, line))
            continue
        other = find(line, line.frame, OTHER_SIDE[line.side])
        if other is not None:
            check.missing_images.append((other, line))
        for offset in (-1, 1):
            neighbour = find(line, line.frame + offset, line.side)
            if neighbour is not None:
                check.missing_neighbours.append((neighbour, line))
                break
    return check


def check_layout(raw: str | Path, splits: Iterable[str] = DEFAULT_CHECK_SPLITS, image_ext: str = "auto",
                 progress: bool = True) -> LayoutReport:
    """Check that the files named by split lists exist under a KITTI raw folder.

    For train/val lists: the target, its ±1 neighbours and the other camera's frame. For test lists: the
    target, the date's calibration files and (for ``eigen``) the velodyne scan.

    Args:
        raw: KITTI raw root (holding ``2011_09_26/`` ...).
        splits: packaged split names to check.
        image_ext: ``"auto"`` (jpg or png), ``"jpg"`` or ``"png"``.
        progress: show a progress bar.
    """
    raw = Path(raw)
    cache: dict[Path, frozenset[str]] = {}
    checks: list[SplitCheck] = []
    absent: set[str] = set()
    for split in splits:
        for stem, path in _split_files(split):
            lines = [ln for ln in read_split(path) if not is_odometry_folder(ln.folder) and "/" in ln.folder]
            checks.append(check_split_lines(raw, f"{split}/{stem}", lines, is_test=stem.startswith("test"),
                                            velodyne=split == "eigen", image_ext=image_ext, progress=progress,
                                            absent=absent, cache=cache))
    drives = sorted(absent)
    return LayoutReport(raw, checks, drives, _archives_for(drives))


def _archives_for(folders: Sequence[str]) -> list[str]:
    path = kitti_archives_file()
    if not folders or not path.is_file():
        return []
    urls = path.read_text().split()
    names = {folder.split("/")[-1].removesuffix("_sync") for folder in folders}
    dates = {folder.split("/")[0] for folder in folders}
    return [u for u in urls if any(f"/{n}/" in u or u.endswith(f"/{n}_sync.zip") for n in names)
            or any(u.endswith(f"/{d}_calib.zip") for d in dates)]


# ------------------------------------------------------------------------------------------------- JPEG
def convert_to_jpeg(raw: str | Path, quality: int = JPEG_QUALITY, chroma: str = "4:2:0",
                    progress: bool = True) -> tuple[int, int]:
    """Convert every ``image_0[0-3]/data/*.png`` under a raw folder to JPEG in place (PNG removed).

    Resumable: a PNG whose JPEG already exists (written atomically) is only removed.

    Returns:
        (converted, skipped) counts.
    """
    if chroma not in CHROMA_SUBSAMPLING:
        raise ValueError(f"chroma must be one of {', '.join(CHROMA_SUBSAMPLING)}, got {chroma!r}")
    raw = Path(raw)
    pngs = sorted(p for p in raw.glob("*/*/image_0[0-3]/data/*.png"))
    converted = skipped = 0
    for png in tqdm(pngs, desc="PNG -> JPEG", disable=not progress):
        jpg = png.with_suffix(".jpg")
        if jpg.is_file():
            skipped += 1
        else:
            tmp = jpg.with_name(jpg.name + ".tmp")
            with Image.open(png) as img:
                img.convert("RGB").save(tmp, format="JPEG", quality=quality,
                                        subsampling=CHROMA_SUBSAMPLING[chroma])
            os.replace(tmp, jpg)
            converted += 1
        png.unlink()
    return converted, skipped


# ------------------------------------------------------------------------------------------------- GT export
def _velodyne_gt(raw: Path) -> Callable[[SplitLine], np.ndarray]:
    def compute(line: SplitLine) -> np.ndarray:
        return generate_depth_map(calib_dir(raw, line.folder), velodyne_path(raw, line.folder, line.frame),
                                  cam=2, vel_depth=True)
    return compute


def improved_gt_path(raw: Path, annotated: Path | None, line: SplitLine) -> Path | None:
    """The improved-GT PNG of a line: inside the raw drive folder, or in the KITTI depth annotations
    (``<annotated>/{train,val}/<drive>/proj_depth/groundtruth/image_02/<frame:010d>.png``)."""
    candidates = [depth_gt_path(raw, line.folder, line.frame, "l")]
    if annotated is not None:
        drive = line.folder.split("/")[-1]
        candidates += [depth_gt_path(annotated / part, drive, line.frame, "l") for part in ("train", "val", "")]
    return next((c for c in candidates if c.is_file()), None)


def _improved_gt(raw: Path, annotated: Path | None) -> Callable[[SplitLine], np.ndarray]:
    def compute(line: SplitLine) -> np.ndarray:
        path = improved_gt_path(raw, annotated, line)
        if path is None:
            raise FileNotFoundError(f"no improved GT PNG for {line.describe()}")
        return read_depth_png(path)
    return compute


def export_gt(raw: str | Path, test_split: str = "eigen", out_dir: str | Path | None = None,
              annotated: str | Path | None = None, progress: bool = True, force: bool = False,
              lines: Sequence[SplitLine] | None = None) -> Path:
    """Export the test GT of ``eigen`` (velodyne) or ``eigen_benchmark`` (improved GT) into one npz.

    Args:
        raw: KITTI raw root.
        test_split: ``"eigen"`` or ``"eigen_benchmark"``.
        out_dir: folder for the npz (default: ``raw``).
        annotated: root of the KITTI depth annotations (``data_depth_annotated``) for eigen_benchmark.
        progress: progress bar.
        force: recompute even if a matching npz exists.
        lines: the split lines (default: the packaged ``<test_split>/test_files.txt``).

    Returns:
        The npz path.
    """
    raw = Path(raw)
    out = gt_file(raw if out_dir is None else out_dir, test_split)
    if lines is None:
        lines = read_split(packaged_split_file(test_split, "test_files.txt"))
    keys = [_line_key(line) for line in lines]
    if out.is_file() and not force:
        try:
            with np.load(out, allow_pickle=False) as npz:
                if [str(s) for s in npz["lines"]] == keys:
                    return out
        except (OSError, ValueError, KeyError):
            pass
    annotated_path = Path(annotated) if annotated is not None else None
    compute = _velodyne_gt(raw) if test_split == "eigen" else _improved_gt(raw, annotated_path)
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    for i, line in enumerate(tqdm(lines, desc=f"GT {test_split}", disable=not progress)):
        target = partial / f"{i:04d}.npy"
        if target.is_file():
            continue
        depth = compute(line).astype(np.float32)
        tmp = partial / f"{i:04d}.tmp.npy"
        np.save(tmp, depth)
        os.replace(tmp, target)
    arrays = {f"{i:04d}": np.load(partial / f"{i:04d}.npy") for i in range(len(lines))}
    tmp_out = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp_out, lines=np.array(keys, dtype=str), **arrays)
    os.replace(tmp_out, out)
    shutil.rmtree(partial)
    return out


def improved_gt_available(raw: str | Path, annotated: str | Path | None = None) -> bool:
    """True when every ``eigen_benchmark`` test frame has an improved-GT PNG."""
    lines = read_split(packaged_split_file("eigen_benchmark", "test_files.txt"))
    annotated_path = Path(annotated) if annotated is not None else None
    return all(improved_gt_path(Path(raw), annotated_path, line) is not None for line in lines)


@dataclass
class PrepareResult:
    """What ``prepare_kitti`` did."""

    report: LayoutReport
    converted: int = 0
    skipped: int = 0
    gt_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def prepare_kitti(raw: str | Path, to_jpeg: bool = False, out_dir: str | Path | None = None,
                  annotated: str | Path | None = None, splits: Sequence[str] = DEFAULT_CHECK_SPLITS,
                  chroma: str = "4:2:0", export: bool = True, progress: bool = True) -> PrepareResult:
    """Check, optionally convert, and export GT (the ``prepare-kitti`` command).

    The Eigen GT is exported only when the Eigen test frames' velodyne scans and calibration are complete;
    the improved GT only when every eigen_benchmark frame has its PNG.
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise FileNotFoundError(f"{raw} does not exist; download the archives listed in {kitti_archives_file()}")
    result = PrepareResult(check_layout(raw, splits, progress=progress))
    if to_jpeg:
        result.converted, result.skipped = convert_to_jpeg(raw, chroma=chroma, progress=progress)
    if not export:
        return result
    eigen = next((c for c in result.report.splits if c.split == "eigen/test_files"), None)
    if eigen is None:
        eigen = check_layout(raw, ("eigen",), progress=progress).splits[0]
    if eigen.ok:
        result.gt_files.append(export_gt(raw, "eigen", out_dir, progress=progress))
    else:
        result.notes.append("Eigen GT not exported: the eigen test frames are incomplete (see above)")
    if improved_gt_available(raw, annotated):
        result.gt_files.append(export_gt(raw, "eigen_benchmark", out_dir, annotated, progress=progress))
    else:
        result.notes.append("improved GT (eigen_benchmark) not exported: KITTI depth annotations not found "
                            "(pass --annotated <data_depth_annotated folder>)")
    return result
