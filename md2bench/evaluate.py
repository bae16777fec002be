"""Standard evaluation of a trained model: depth (KITTI Eigen, improved GT, the synthetic world) and pose (ATE).

Depth (REFERENCE §3.4): predict the scaled disparity of each test image at the trained size (optionally
blended with the flipped image's prediction), resize it bilinearly to the GT size, invert to depth, and score
with ``md2bench.metrics.evaluate_image``: per-image median scaling for monocular models (``data.mode = "M"``),
a fixed ×5.4 for stereo-trained ones (``"S"``, ``"MS"``). KITTI GT comes from the npz written by
``md2bench data prepare-kitti``; the synthetic world's dense GT and masks come from the dataset, and its
results add ``moving/<metric>`` and ``static/<metric>`` (metrics restricted to moving-object / other pixels) and,
on worlds of format 2 or later, ``occluded/<metric>``, ``comoving/<metric>`` and ``low_texture/<metric>`` (the
region masks, ``md2bench.regions``): the same scaled prediction scored on valid ∩ region.

Aggregation: the plain mean over images of each per-image metric (the reference's); for the subsets
(``moving/*``, ``static/*``, the regions) images without such pixels are skipped (NaN per image, ``nanmean`` over
images).

A fixed predictor (``predict``) goes through exactly the same path; ``md2bench.floors`` evaluates the no-learning
floors that way (with ``scaling="median"``).

Pose (REFERENCE §3.5): the pose net on consecutive pairs (t, t+1) gives T_{t+1,t}; ATE over 5-frame snippets
with first-point alignment and a least-squares scale, mean and std over snippets, on KITTI odometry 09/10 and on
every drive of the synthetic world's test split (exact poses in ``<drive>/poses.txt``).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from md2bench.metrics import (
    METRIC_NAMES,
    MIN_DEPTH,
    MAX_DEPTH,
    STEREO_SCALE_FACTOR,
    STEREO_TRAIN_BASELINE,
    EvalProtocol,
    evaluate_image,
    post_process_disparity,
    protocol_for_split,
    relative_gt_poses,
    snippet_ates,
)
from md2bench.regions import REGION_NAMES

if TYPE_CHECKING:
    from md2bench.config import Config

PredictFn = Callable[[Any, torch.Tensor, "Config"], torch.Tensor]
ODOMETRY_SEQUENCES: tuple[str, ...] = ("09", "10")


@dataclass
class EvalResult:
    """Depth evaluation of one model on one split.

    Attributes:
        mean: metric → mean over images (``abs_rel`` … ``a3``; on the synthetic world also ``moving/…``,
            ``static/…``).
        per_image: one row per image: index, folder, frame, side, the metrics, ``ratio`` (applied median
            scaling), ``median_ratio``, ``valid_px``.
        ratio_mean: mean over images of median(GT)/median(pred) (the median-scaling ratios for monocular
            models; for stereo models the ratio median scaling *would* apply after ×5.4, ideally ≈ 1).
        ratio_std: their standard deviation.
        settings: provenance (split, crop, gt range, scaling, scale_factor, post_process, images).
    """

    mean: dict[str, float]
    per_image: pd.DataFrame
    ratio_mean: float
    ratio_std: float
    settings: dict[str, Any] = field(default_factory=dict)

    def save_csv(self, path: str | Path) -> Path:
        """Write the per-image table as CSV; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.per_image.to_csv(path, index=False)
        return path

    def describe(self) -> str:
        """One-line summary in the paper's column order."""
        head = " ".join(f"{name}={self.mean[name]:.3f}" for name in METRIC_NAMES)
        return (f"{self.settings.get('split')}: {head} | ratio mean {self.ratio_mean:.3f} std {self.ratio_std:.3f} "
                f"({self.settings.get('scaling')}, crop {self.settings.get('crop')})")


def scaling_for(cfg: "Config", root: Path | None = None) -> tuple[bool, float, str]:
    """(median_scaling, scale_factor, label) for a model trained with ``cfg``.

    Stereo-trained models (mode S or MS) get no median scaling and a fixed factor: 5.4 on KITTI (0.54 m / 0.1);
    on the synthetic world the world's own stereo baseline (``world.json`` key ``baseline``, metres) / 0.1 when
    recorded there, else 5.4.
    """
    if not cfg.use_stereo:
        return True, 1.0, "median"
    factor = STEREO_SCALE_FACTOR
    if cfg.data.dataset == "synthetic" and root is not None and (root / "world.json").is_file():
        try:
            baseline = json.loads((root / "world.json").read_text()).get("baseline")
        except (OSError, ValueError):
            baseline = None
        if isinstance(baseline, (int, float)) and baseline > 0:
            factor = float(baseline) / STEREO_TRAIN_BASELINE
    return False, factor, f"stereo x{factor:g}"


def _warn_without_regions(cfg: "Config", root: Path) -> None:
    """Say once per evaluation that a synthetic world predates the region masks, and how to get them."""
    preset, seed = cfg.data.synth_preset, cfg.data.synth_seed
    warnings.warn(
        f"the synthetic world {root} has no region masks (rendered by an older md2bench: world format 1), so the "
        f"occluded/comoving/low_texture metrics are missing; re-render it with `md2bench data synth --out <new "
        f"folder> --preset {preset} --seed {seed}` and point data.path there (a world in .md2bench_cache is "
        "re-rendered automatically)", stacklevel=3)


def _default_predict() -> PredictFn:
    from md2bench.method import predict_disparity

    return predict_disparity


def _resolve_split(cfg: "Config", split: str | None) -> tuple["Config", str, str]:
    """(config whose test_split is set, dataset split "test"/"val", protocol name)."""
    if split in (None, "test"):
        return cfg, "test", cfg.data.test_split
    if split == "val":
        return cfg, "val", "val"
    return cfg.override({"data.test_split": split}), "test", split


def evaluate_depth(
    models: Any,
    cfg: "Config",
    split: str | None = None,
    post_process: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    progress: bool = True,
    gt_path: str | Path | None = None,
    max_images: int = 0,
    num_workers: int = 0,
    predict: PredictFn | None = None,
    scaling: str | None = None,
    crop: str | None = None,
) -> EvalResult:
    """Evaluate depth predictions of ``models`` with the standard protocol.

    Args:
        models: the networks (``md2bench.models.build_models``), already on ``device``; put in eval mode for the
            call and restored afterwards.
        cfg: the config the model was trained with (dataset, sizes, mode → scaling).
        split: None or "test" (``cfg.data.test_split``), a test split name (``eigen``, ``eigen_benchmark``,
            ``synth``), or "val" (the training split's val list; GT where the dataset has it; no crop,
            1e-3 < GT < 80).
        post_process: blend with the prediction on the flipped image (REFERENCE §3.4 step 2).
        device: where the networks run.
        batch_size: images per forward pass.
        progress: progress bar.
        gt_path: the exported KITTI GT npz (default ``<data.path>/gt_depths.npz`` for eigen,
            ``<data.path>/gt_depths_eigen_benchmark.npz`` for eigen_benchmark).
        max_images: evaluate only the first N images (0: all), e.g. for quick validation.
        num_workers: data-loader workers.
        predict: ``(models, images B×3×H×W in [0,1], cfg) -> scaled disparity B×1×h×w`` (any h×w: it is resized
            bilinearly to the GT size like a network's output); default ``md2bench.method.predict_disparity``.
        scaling: None: the model's (median scaling for monocular models, a fixed factor for stereo-trained ones,
            ``scaling_for``); ``"median"``: per-image median scaling whatever the mode (the no-learning floors).
        crop: None: the split's crop (``metrics.protocol_for_split``: Garg for ``eigen``, none otherwise);
            ``"garg"`` or ``"none"`` to override it (e.g. the Eigen crop on the synthetic world, to compare with
            KITTI's scored region). The crop used is in ``settings["crop"]``.

    Returns:
        :class:`EvalResult`.

    Raises:
        FileNotFoundError: KITTI GT npz missing (says to run ``md2bench data prepare-kitti``).
        ValueError: the split has no GT.
    """
    from md2bench.data.kitti import build_dataset, dataset_root
    from md2bench.data.prepare import gt_file, load_gt

    cfg, ds_split, protocol_name = _resolve_split(cfg, split)
    protocol = EvalProtocol("none", MIN_DEPTH, MAX_DEPTH) if protocol_name == "val" else protocol_for_split(protocol_name)
    if crop is not None:
        if crop not in ("garg", "none"):
            raise ValueError(f"crop must be 'garg' or 'none', got {crop!r}")
        protocol = replace(protocol, crop=crop)
    kitti_test = cfg.data.dataset == "kitti" and ds_split == "test"
    if kitti_test:
        gt_path = Path(gt_path) if gt_path is not None else gt_file(dataset_root(cfg), protocol_name)
        if not gt_path.is_file():
            raise FileNotFoundError(
                f"KITTI ground truth {gt_path} does not exist; export it with "
                f"`md2bench data prepare-kitti --raw {cfg.data.path}`")
    if scaling not in (None, "median"):
        raise ValueError(f"scaling must be None (the model's) or 'median', got {scaling!r}")
    dataset = build_dataset(cfg, ds_split, load_depth=not kitti_test, load_regions=True)
    root = dataset.root
    if cfg.data.dataset == "synthetic" and dataset.has_depth and not dataset.has_regions:
        from md2bench.data.synthetic import world_format

        version = world_format(root)
        if version is not None and version < 2:  # a rendered world from before the region masks
            _warn_without_regions(cfg, root)
    gts: list[np.ndarray] | None = None
    if kitti_test:
        assert gt_path is not None
        gts = load_gt(gt_path, dataset.lines)
    elif not dataset.has_depth:
        raise ValueError(f"the {ds_split} split under {root} has no GT depth "
                         f"(expected {ds_split} PNGs in <drive>/proj_depth/groundtruth/)")
    median_scaling, scale_factor, scaling_label = scaling_for(cfg, root) if scaling is None else (True, 1.0, "median")
    predict = predict or _default_predict()
    count = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    subset = torch.utils.data.Subset(dataset, range(count))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)

    was_training = bool(getattr(models, "training", False))
    if hasattr(models, "eval"):
        models.eval()
    rows: list[dict[str, Any]] = []
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc=f"eval {protocol_name}", disable=not progress):
                images = batch["images"][:, 0].to(device).float() / 255.0
                disp = predict(models, images, cfg).float()
                if post_process:
                    flipped = predict(models, torch.flip(images, dims=(-1,)), cfg).float()
                    disp = post_process_disparity(disp, torch.flip(flipped, dims=(-1,)))
                for i in range(images.shape[0]):
                    index = int(batch["index"][i])
                    gt = gts[index] if gts is not None else batch["depth_gt"][i, 0].numpy()
                    extra: dict[str, np.ndarray] = {}
                    if "motion_mask" in batch:
                        moving = batch["motion_mask"][i, 0].numpy() > 0
                        extra = {"moving": moving, "static": ~moving}
                    if "region_masks" in batch:
                        regions = batch["region_masks"][i].numpy() > 0
                        extra.update({name: regions[k] for k, name in enumerate(REGION_NAMES)})
                    resized = F.interpolate(disp[i : i + 1], size=gt.shape, mode="bilinear", align_corners=False)
                    pred_depth = 1.0 / resized[0, 0].cpu().double().numpy()
                    line = dataset.lines[index]
                    row: dict[str, Any] = {"index": index, "folder": line.folder, "frame": line.frame, "side": line.side}
                    row.update(evaluate_image(gt, pred_depth, protocol, median_scaling, scale_factor, extra))
                    rows.append(row)
    finally:
        if was_training and hasattr(models, "train"):
            models.train()
    per_image = pd.DataFrame(rows)
    metric_cols = [c for c in per_image.columns if c.split("/")[-1] in METRIC_NAMES]
    mean = {c: float(np.nanmean(per_image[c].to_numpy(dtype=float))) if per_image[c].notna().any() else math.nan
            for c in metric_cols}
    ratios = per_image["median_ratio"].to_numpy(dtype=float)
    settings = {
        "split": protocol_name,
        "dataset": cfg.data.dataset,
        "crop": protocol.crop,
        "gt_range": f"({protocol.gt_min:g}, {protocol.gt_max:g})",
        "scaling": scaling_label,
        "scale_factor": scale_factor,
        "post_process": post_process,
        "images": len(rows),
        "regions": ", ".join(REGION_NAMES) if dataset.has_regions else "none",
    }
    return EvalResult(mean, per_image, float(np.mean(ratios)), float(np.std(ratios)), settings)


# ------------------------------------------------------------------------------------------------- pose
@dataclass
class PoseResult:
    """ATE per sequence/drive.

    Attributes:
        ate: name → (mean, std) over its 5-frame snippets.
        settings: provenance.
    """

    ate: dict[str, tuple[float, float]]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> dict[str, float]:
        """Flat metrics: ``ate/<name>`` and ``ate_std/<name>``."""
        out: dict[str, float] = {}
        for name, (mean, std) in self.ate.items():
            out[f"ate/{name}"] = mean
            out[f"ate_std/{name}"] = std
        return out


PosePredictFn = Callable[[Any, dict[str, torch.Tensor], "Config", torch.device], torch.Tensor]


def _pose_cfg(cfg: "Config") -> "Config":
    """The config the pose net is run with: pairs → frames (0, 1), monocular; 'all' keeps the model's frames."""
    if cfg.model.pose_input == "pairs":
        return cfg.override({"data.frame_ids": [0, 1], "data.mode": "M"})
    if 1 not in cfg.data.frame_ids:
        raise ValueError("pose evaluation needs frame +1 among data.frame_ids for pose_input = 'all'")
    return cfg.override({"data.mode": "M"})


def predict_next_pose(models: Any, batch: dict[str, torch.Tensor], cfg: "Config", device: torch.device) -> torch.Tensor:
    """T_{t+1,t} (B×4×4, float64 on CPU) for a batch whose frames are ``cfg.frames`` (must contain +1).

    Uses ``md2bench.method.forward``; for ``posecnn`` the translation is multiplied by the mean scaled disparity
    of the target at scale 0, as the loss does.
    """
    from md2bench.geometry import disp_to_depth, pose_vec_to_mat
    from md2bench.method import forward, prepare_inputs

    inputs = prepare_inputs(batch, cfg, device)
    outputs = forward(models, inputs, cfg)
    source = list(cfg.source_ids).index(1)
    if cfg.model.pose_net == "posecnn":
        assert outputs.axisangle is not None and outputs.translation is not None
        _, depth = disp_to_depth(outputs.disp[0].float(), cfg.model.min_depth, cfg.model.max_depth)
        scale = (1.0 / depth).mean(dim=(1, 2, 3))[:, None]
        transform = pose_vec_to_mat(outputs.axisangle[:, source], outputs.translation[:, source] * scale,
                                    outputs.invert[source])
    else:
        transform = outputs.T_src_tgt[:, source]
    return transform.double().cpu()


def _pose_ates(models: Any, cfg: "Config", root: Path, folder: str, gt_cam_to_world: np.ndarray,
               device: torch.device, batch_size: int, progress: bool, predict: PosePredictFn) -> np.ndarray:
    from md2bench.data.kitti import MonoDataset, SplitLine

    pose_cfg = _pose_cfg(cfg)
    lines = [SplitLine(folder, t, "l", f"{folder} (pose evaluation)", t + 1) for t in range(len(gt_cam_to_world) - 1)]
    dataset = MonoDataset(root, lines, pose_cfg.frames, cfg.data.height, cfg.data.width, is_train=False,
                          image_ext=cfg.data.image_ext, load_depth=False, load_motion_mask=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    preds: list[torch.Tensor] = []
    for batch in tqdm(loader, desc=f"pose {folder}", disable=not progress):
        preds.append(predict(models, batch, pose_cfg, device))
    pred = torch.cat(preds).numpy()
    starts = np.array([line.frame for line in dataset.lines])
    gt_rel = relative_gt_poses(gt_cam_to_world)[starts]
    # frames without all neighbours were dropped (pose_input 'all'): keep the longest consecutive run
    breaks = np.flatnonzero(np.diff(starts) != 1)
    if breaks.size:
        raise ValueError(f"pose evaluation of {folder}: frames {starts[breaks[0]]}..{starts[breaks[0] + 1]} "
                         "are not consecutive (missing images?)")
    return snippet_ates(pred, gt_rel)


def evaluate_pose(
    models: Any,
    cfg: "Config",
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    progress: bool = True,
    sequences: Sequence[str] = ODOMETRY_SEQUENCES,
    odom_path: str | Path | None = None,
    predict: PosePredictFn | None = None,
) -> PoseResult:
    """ATE over 5-frame snippets (REFERENCE §3.5).

    KITTI: odometry sequences ``sequences`` under ``odom_path`` (default ``data.path`` when ``data.split`` is
    ``odom``): images ``sequences/<seq>/image_2/<frame:06d>.jpg|png``, GT ``poses/<seq>.txt``. Synthetic: every
    drive of the test split, GT ``<drive>/poses.txt`` (camera-to-world, KITTI format, one line per frame).

    Args:
        models: the networks, on ``device``.
        cfg: the config the model was trained with; needs a pose net.
        device: where the networks run.
        batch_size: pairs per forward pass.
        progress: progress bars.
        sequences: KITTI odometry sequences.
        odom_path: KITTI odometry root.
        predict: ``(models, batch, cfg, device) -> T_{t+1,t} B×4×4``; default :func:`predict_next_pose`.
    """
    from md2bench.data.kitti import dataset_root, read_poses, read_split, split_file

    if not cfg.needs_pose_net:
        raise ValueError(f"data.mode = {cfg.data.mode!r} trains no pose network; pose evaluation needs M or MS")
    device = torch.device(device)
    predict = predict or predict_next_pose
    targets: list[tuple[str, Path, str, Path]] = []  # (name, root, folder, poses file)
    if cfg.data.dataset == "kitti":
        if odom_path is None and cfg.data.split != "odom":
            raise ValueError("KITTI pose evaluation needs the odometry dataset: pass odom_path (the folder holding "
                             "sequences/ and poses/)")
        root = Path(odom_path) if odom_path is not None else dataset_root(cfg)
        for seq in sequences:
            targets.append((f"odom_{int(seq):02d}", root, str(int(seq)), root / "poses" / f"{int(seq):02d}.txt"))
    else:
        root = dataset_root(cfg)
        folders = sorted({line.folder for line in read_split(split_file(cfg, "test", root))})
        targets += [(folder.split("/")[-1], root, folder, root / folder / "poses.txt") for folder in folders]

    was_training = bool(getattr(models, "training", False))
    if hasattr(models, "eval"):
        models.eval()
    ate: dict[str, tuple[float, float]] = {}
    all_ates: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for name, seq_root, folder, poses_file in targets:
                values = _pose_ates(models, cfg, seq_root, folder, read_poses(poses_file), device, batch_size,
                                    progress, predict)
                ate[name] = (float(np.mean(values)), float(np.std(values)))
                all_ates.append(values)
    finally:
        if was_training and hasattr(models, "train"):
            models.train()
    if cfg.data.dataset != "kitti" and all_ates:
        joined = np.concatenate(all_ates)
        ate["all"] = (float(np.mean(joined)), float(np.std(joined)))
    return PoseResult(ate, {"dataset": cfg.data.dataset, "track_length": 5, "pairs": cfg.model.pose_input})
