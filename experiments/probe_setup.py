"""What the checkpoint probes (``occlusion_probe.py``, ``multiscale_probe.py``) share: the data settings of the
CPU grids whose checkpoints they read, their command line (``--batches``, ``--checkpoint LABEL=PATH``, config
overrides) and the validation frames with depth and region masks.

Imported by the probes as a sibling module (``python experiments/<probe>.py`` puts ``experiments/`` on the path).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from md2bench import method
from md2bench.checkpoint import CheckpointError, load_labelled
from md2bench.config import Config, load_config
from md2bench.data.kitti import build_dataset
from md2bench.metrics import STEREO_SCALE_FACTOR
from md2bench.train.loop import resolve_data

# The cpu-ablation grids' world, resolution, batch and exact poses (experiments/cpu-ablation*.toml).
DEFAULTS = ["data.synth_preset=default", "data.height=64", "data.width=192", "train.batch_size=8",
            "train.device=cpu", "model.pose_source=gt"]


def probe_parser(description: str, checkpoint_help: str, checkpoint_required: bool = False,
                 batches: int = 16) -> argparse.ArgumentParser:
    """A parser with ``--batches``, ``--checkpoint LABEL=PATH`` (repeatable) and trailing config overrides; the
    caller adds its own options before parsing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batches", type=int, default=batches, help="validation batches (of train.batch_size frames)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="LABEL=PATH",
                        required=checkpoint_required, help=checkpoint_help)
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (after the options)")
    return parser


def trained_size(trained: dict[str, tuple[Config, Any]]) -> list[str]:
    """The ``data.height``/``data.width`` overrides of the size every checkpoint was trained at (none without
    checkpoints); exits when they were trained at different sizes (one call probes one size)."""
    sizes = {(cfg.data.height, cfg.data.width) for cfg, _ in trained.values()}
    if len(sizes) > 1:
        listed = ", ".join(f"{label} {cfg.data.width}x{cfg.data.height}" for label, (cfg, _) in trained.items())
        raise SystemExit(f"the checkpoints were trained at different sizes ({listed}): probe each size in its own call")
    return [f"data.height={h}" for h, _ in sizes] + [f"data.width={w}" for _, w in sizes]


def load_probe(args: argparse.Namespace) -> tuple[dict[str, tuple[Config, Any]], Config, torch.utils.data.DataLoader]:
    """The parsed command line -> (checkpoints by label, the data config, a loader of the validation frames with
    depth and region masks, in order). The frames are at the size the checkpoints were trained at (``DEFAULTS``'
    192x64 without checkpoints). A bad ``--checkpoint``, checkpoints of different sizes, or a data.height/width
    override that is not their size exits with a one-line message."""
    try:
        trained = load_labelled(args.checkpoint)
    except CheckpointError as err:
        raise SystemExit(str(err)) from None
    cfg = load_config("synth", DEFAULTS + trained_size(trained) + list(args.overrides))
    for label, (trained_cfg, _) in trained.items():
        size = (trained_cfg.data.height, trained_cfg.data.width)
        if size != (cfg.data.height, cfg.data.width):
            raise SystemExit(f"checkpoint {label!r} was trained at {size[1]}x{size[0]} but the probe's frames would be "
                             f"{cfg.data.width}x{cfg.data.height} (data.width/data.height given on the command line): "
                             f"leave them out (the checkpoints' own size is the default) or probe it at its own size")
    cfg = resolve_data(cfg)  # renders the world on first use: after the checks, so a mistake fails at once
    data = build_dataset(cfg, "val", load_depth=True, load_regions=True)
    return trained, cfg, torch.utils.data.DataLoader(data, batch_size=cfg.train.batch_size, shuffle=False)


@dataclass(frozen=True)
class ExactViews:
    """One validation batch at network resolution, with the world's exact depth and camera motion.

    Attributes:
        target: B×3×H×W target frames; sources: B×2×3×H×W the temporal sources (−1, +1) in ``cfg`` order.
        T: B×2×4×4 exact target-to-source transforms (network units); K, inv_K: 4×4 intrinsics at scale 0.
        metres: B×1×H×W GT depth in metres (0: none); valid: B×H×W where there is GT.
        exact: B×1×H×W exact depth in network units (sky, which has no GT, at 60).
        regions: B×3×H×W bool region masks in ``REGION_NAMES`` order.
    """

    target: torch.Tensor
    sources: torch.Tensor
    T: torch.Tensor
    K: torch.Tensor
    inv_K: torch.Tensor
    metres: torch.Tensor
    valid: torch.Tensor
    exact: torch.Tensor
    regions: torch.Tensor


def temporal_sources(cfg: Config) -> list[int]:
    """Indices of the temporal sources in ``cfg.source_ids``; exits unless there are two (frames 0, −1, +1)."""
    temporal = [i for i, f in enumerate(cfg.source_ids) if f != "s"]
    if len(temporal) != 2:
        raise SystemExit(f"the probe needs two temporal sources (frames 0, -1, 1), got {cfg.source_ids}")
    return temporal


def exact_views(batch: dict[str, Any], cfg: Config) -> ExactViews:
    """A loader batch -> :class:`ExactViews` (GT and region masks resized to the network size, nearest)."""
    temporal = temporal_sources(cfg)
    inputs = method.prepare_inputs(batch, cfg, "cpu")
    size = tuple(inputs.raw[0].shape[-2:])
    metres = F.interpolate(batch["depth_gt"].float(), size=size, mode="nearest")
    # network units, as prepare_inputs converts the exact poses; sky (no GT) far away, as pose_probe does
    exact = torch.where(metres > 0, metres / STEREO_SCALE_FACTOR, torch.full_like(metres, 60.0))
    return ExactViews(
        target=inputs.raw[0][:, 0], sources=inputs.raw[0][:, [1 + i for i in temporal]],
        T=inputs.pose_gt[:, [cfg.frames.index(cfg.source_ids[i]) for i in temporal]],
        K=inputs.K[0], inv_K=inputs.inv_K[0], metres=metres, valid=metres[:, 0] > 0, exact=exact,
        regions=F.interpolate(batch["region_masks"].float(), size=size, mode="nearest") > 0)


def each_view(loader: torch.utils.data.DataLoader, cfg: Config, batches: int) -> Iterator[ExactViews]:
    """The first ``batches`` batches of ``loader`` as :class:`ExactViews`."""
    for b, batch in enumerate(loader):
        if b == batches:
            return
        yield exact_views(batch, cfg)
