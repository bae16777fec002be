"""Pose probe: does the pose network find the camera's motion when depth is *exact*?

Trains only the pose network of a config, from scratch, with the synthetic world's ground-truth depth in place
of the depth network's output (scaled to network units and by ``--depth-scale``), and prints, every
``--every`` steps, the mean over those steps of the training batches' pose diagnostics against the world's
exact poses: ``t_cos`` (cosine between predicted and true camera displacement), ``|c_x|`` (mean absolute
sideways component of the predicted displacement, network units) and ``c_z`` (mean forward component, signed
so that forward is positive for every source). The loss, the networks, the data and the optimiser are
md2bench's own (``md2bench.method``, ``md2bench.train``); only the depth is replaced. One JSON line per report.

This isolates the pose network's learning from the joint depth-pose problem. It is how README's "Monocular
training from scratch" finding was measured: with auto-masking from the first step the pose net stays sideways
even with exact depth; without it (or with ``loss.automask_warmup_steps``) it finds the forward motion.

    python experiments/pose_probe.py --steps 200                          # the reference: auto-masking on
    python experiments/pose_probe.py --steps 200 loss.automask=false      # auto-masking off

Overrides are ``md2bench train`` overrides on the ``synth`` preset; the defaults are the CPU grids' size
(192×64, batch 8, the ``default`` world, rendered into the cache on first use as training does, CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from md2bench import method
from md2bench.config import load_config
from md2bench.data.kitti import KITTI_BASELINE, build_dataset
from md2bench.metrics import relative_pose_errors
from md2bench.models import build_models
from md2bench.train.device import make_optimizer, prepare_models
from md2bench.train.loop import resolve_data
from md2bench.train.state import seed_everything

DEFAULTS = ["data.synth_preset=default", "data.height=64", "data.width=192", "train.batch_size=8",
            "train.device=cpu", "model.pretrained=scratch"]


def oracle_sigmoid(depth_m: torch.Tensor, size: tuple[int, int], cfg, depth_scale: float) -> torch.Tensor:
    """GT depth in metres (B×1×h×w, 0 = none) -> the decoder's sigmoid output that decodes to it (network units
    = metres / (10 × baseline), × ``depth_scale``); pixels without GT (sky) are put at 60 units × ``depth_scale``."""
    d = F.interpolate(depth_m.float(), size=size, mode="nearest")
    units = torch.where(d > 0, d / (10.0 * KITTI_BASELINE), torch.full_like(d, 60.0)) * depth_scale
    units = units.clamp(cfg.model.min_depth, cfg.model.max_depth)
    min_disp, max_disp = 1.0 / cfg.model.max_depth, 1.0 / cfg.model.min_depth
    return (1.0 / units - min_disp) / (max_disp - min_disp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--depth-scale", type=float, default=0.15,
                        help="GT depth x this in network units: 0.15 puts the true translation at a raw pose "
                             "output of ~2.4, within reach of lr 1e-4 (1.0 needs ~16, see README)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    cfg = load_config("synth", DEFAULTS + list(args.overrides))
    if cfg.model.pose_source != "net" or cfg.data.dataset != "synthetic":
        raise SystemExit("the probe needs the learned pose net (model.pose_source=net) on the synthetic world")
    cfg = resolve_data(cfg)  # renders the world on first use, as training does
    seed_everything(cfg.train.seed)
    device = torch.device("cpu")
    models = prepare_models(build_models(cfg), cfg, device)
    optimizer = make_optimizer(models, cfg)
    data = build_dataset(cfg, "train", load_depth=True)
    if hasattr(data, "set_epoch"):
        data.set_epoch(0)
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(cfg.train.seed))
    temporal = [(i, f) for i, f in enumerate(cfg.source_ids) if f != "s"]
    rows: list[dict[str, float]] = []
    start, step, batches = time.time(), 0, iter(loader)
    while step < args.steps:
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            continue
        step += 1
        step_cfg = cfg.at_step(step)
        models.train()
        inputs = method.prepare_inputs(batch, step_cfg, device)
        outputs = method.forward(models, inputs, step_cfg)
        exact = {s: oracle_sigmoid(batch["depth_gt"], tuple(d.shape[-2:]), cfg, args.depth_scale)
                 for s, d in outputs.disp.items()}
        outputs = dataclasses.replace(outputs, disp=exact)
        total, diagnostics = method.compute_loss(outputs, inputs, step_cfg)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

        pred = np.concatenate([outputs.T_src_tgt[:, i].detach().double().numpy() for i, _ in temporal])
        true = np.concatenate([batch["pose_gt"][:, cfg.frames.index(f)].double().numpy() for _, f in temporal])
        sign = np.concatenate([np.full(len(batch["pose_gt"]), np.sign(int(f))) for _, f in temporal])
        centre = -np.einsum("nji,nj->ni", pred[:, :3, :3], pred[:, :3, 3]) * sign[:, None]  # camera displacement
        rows.append({"t_cos": float(np.nanmean(relative_pose_errors(pred, true)["t_cos"])),
                     "abs_cx": float(np.abs(centre[:, 0]).mean()), "cz": float(centre[:, 2].mean()),
                     "loss": float(total.detach()),
                     "automask": float(diagnostics["automask"]) if "automask" in diagnostics else float("nan")})
        if step % args.every == 0:
            values = {k: [r[k] for r in rows if not np.isnan(r[k])] for k in rows[0]}
            mean = {k: round(float(np.mean(v)), 5) if v else None for k, v in values.items()}  # None: no auto-mask
            print(json.dumps({"step": step, **mean, "seconds": round(time.time() - start)}), flush=True)
            rows = []


if __name__ == "__main__":
    main()
