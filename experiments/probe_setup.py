"""What the checkpoint probes (``occlusion_probe.py``, ``multiscale_probe.py``) share: the data settings of the
CPU grids whose checkpoints they read, their command line (``--batches``, ``--checkpoint LABEL=PATH``, config
overrides) and the validation frames with depth and region masks.

Imported by the probes as a sibling module (``python experiments/<probe>.py`` puts ``experiments/`` on the path).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from md2bench.checkpoint import CheckpointError, load_labelled
from md2bench.config import Config, load_config
from md2bench.data.kitti import build_dataset
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


def load_probe(args: argparse.Namespace) -> tuple[dict[str, tuple[Config, Any]], Config, torch.utils.data.DataLoader]:
    """The parsed command line -> (checkpoints by label, the data config, a loader of the validation frames with
    depth and region masks, in order). A bad ``--checkpoint`` exits with its one-line message."""
    try:
        trained = load_labelled(args.checkpoint)
    except CheckpointError as err:
        raise SystemExit(str(err)) from None
    cfg = resolve_data(load_config("synth", DEFAULTS + list(args.overrides)))
    data = build_dataset(cfg, "val", load_depth=True, load_regions=True)
    return trained, cfg, torch.utils.data.DataLoader(data, batch_size=cfg.train.batch_size, shuffle=False)
