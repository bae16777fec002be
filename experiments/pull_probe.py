"""Pull probe: which loss term pulls the final (scale-0) depth map where, at a trained model's own weights.

The full model's scale-0 map is too far on near pixels, more than a model trained with the loss at scale 0 only
(README, "What in the coarse losses costs"). The coarse scales' terms reach the scale-0 map only through the
weights the decoder and encoder share. Two readings: (a) a tug of war: at the trained weights the scale-0 term
still pulls the near pixels nearer and the coarse terms pull them farther, the map resting where the pulls
cancel, so a lighter coarse weight moves it in proportion; (b) no tug: the scale-0 term itself is at rest on the
near pixels (what the coarse terms made the network learn is a place the scale-0 term does not leave).

No training here. For each ``--checkpoint LABEL=PATH``, over ``--batches`` batches of the training frames (drawn
with a fixed seed and augmented as training does; ``--frames val``: the first validation batches), with the exact
poses as the CPU grids train: the mean gradient of the scale-0 term alone (the checkpoint's config with
``loss.multiscale = "single"``) and of the full loss (the checkpoint's own config), in train mode; the coarse terms' share is the full loss's gradient less the scale-0 term's share in it (its weight
1 / Σ w_s, ``loss.coarse_weight``). Each gradient becomes one Adam step without momentum, at the checkpoint's
learning rate and second-moment state (``exp_avg_sq``, bias-corrected): Δθ = −lr·g / (√v̂ + ε), the pull as the
optimiser sees it. The change of the scale-0 map that step makes (a finite difference over 1 % of it in float64,
eval mode, as the evaluation predicts) is scored per pixel as the change of log depth after the evaluation's per-image median
scaling, averaged over the scored pixels of each GT depth band (``depth_0_10`` ... ``depth_40_80``, GT in
(lo, hi] metres) and over all of them: > 0, the step moves those pixels farther relative to the image. Per
checkpoint, band and term (``scale0``: the scale-0 term as weighted in that loss; ``coarse``: the coarse terms
as weighted; ``total``), one JSON line with the pull in units of 1e-4 log depth per step, the same from the
first and second half of the batches (a noise estimate), the pixels, and the map's mean log(pred/GT) there.

    python experiments/pull_probe.py --batches 16 --checkpoint full0=md2bench_runs/<key>/checkpoint.pt
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from md2bench import method
from md2bench.checkpoint import load_checkpoint
from md2bench.config import Config
from md2bench.data.kitti import build_dataset
from md2bench.geometry import disp_to_depth
from md2bench.metrics import protocol_for_split, valid_mask
from probe_setup import load_probe, probe_parser

DEPTH_BANDS = ((0.0, 10.0), (10.0, 20.0), (20.0, 40.0), (40.0, 80.0))
TERMS = ("scale0", "coarse", "total")
FRACTION = 0.01  # the finite difference's share of one step


def term_weights(cfg: Config) -> tuple[float, float]:
    """``(scale 0's share, the coarse terms' share)`` of the loss's weighted mean over ``cfg.loss_scales``."""
    total = sum(method.loss_scale_weights(cfg).values())
    return 1.0 / total, (total - 1.0) / total


def adam_step(grads: list[torch.Tensor], optimizer_state: dict[str, Any], params: list[torch.Tensor]) -> list[torch.Tensor]:
    """One Adam step without momentum: −lr·g / (√v̂ + ε) per parameter, from the optimiser's state dict (its
    ``exp_avg_sq``, bias-corrected by its step count); zero for a parameter the optimiser holds no state for."""
    (group,) = optimizer_state["param_groups"]
    if len(group["params"]) != len(params):
        raise SystemExit(f"the optimiser state holds {len(group['params'])} parameters, the models {len(params)}: "
                         f"not this checkpoint's optimiser")
    lr, (_, beta2), eps = group["lr"], group["betas"], group["eps"]
    state = optimizer_state["state"]
    steps = []
    for index, (grad, param) in enumerate(zip(grads, params, strict=True)):
        own = state.get(group["params"][index])
        if own is None:
            steps.append(torch.zeros_like(param))
            continue
        v_hat = own["exp_avg_sq"] / (1 - beta2 ** float(own["step"]))
        steps.append(-lr * grad / (v_hat.sqrt() + eps))
    return steps


def median_scaled_log_depth(depth: torch.Tensor, keep: np.ndarray) -> np.ndarray:
    """Per image, log depth less the log of its median over the scored pixels (the evaluation's median scaling
    up to the GT's median, which a pull does not change); ``depth`` B×H×W float64."""
    log = depth.log().numpy()
    out = np.empty_like(log)
    for i in range(log.shape[0]):
        out[i] = log[i] - math.log(float(np.median(depth[i].numpy()[keep[i]])))
    return out


def scale0_depth(models: torch.nn.ModuleDict, cfg: Config, images: torch.Tensor) -> torch.Tensor:
    """B×H×W scale-0 depth (network units), eval mode, in the models' dtype."""
    sigmoid = models["depth"](models["encoder"](images.to(next(models.parameters()).dtype)))[0]
    return disp_to_depth(sigmoid, cfg.model.min_depth, cfg.model.max_depth)[1][:, 0]


def gradients(models: torch.nn.ModuleDict, cfg: Config, batches: list[dict[str, Any]], seed: int) -> list[torch.Tensor]:
    """The mean gradient of ``cfg``'s loss over ``batches`` (train mode, as training computes it), per parameter."""
    params = list(models.parameters())
    total = [torch.zeros_like(p) for p in params]
    models.train()
    for b, batch in enumerate(batches):
        torch.manual_seed(seed + b)  # the auto-mask tie-break noise: the same draws for every term
        inputs = method.prepare_inputs(batch, cfg, "cpu")
        loss, _ = method.compute_loss(method.forward(models, inputs, cfg), inputs, cfg)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for acc, grad in zip(total, grads):
            if grad is not None:
                acc += grad / len(batches)
    models.eval()
    return total


def pulls(models: torch.nn.ModuleDict, cfg: Config, state: dict[str, Any], batches: list[dict[str, Any]],
          seed: int = 0) -> dict[str, list[torch.Tensor]]:
    """Per term, the parameter step (one Adam step without momentum) its gradient over ``batches`` gives."""
    params = list(models.parameters())
    single = cfg.override({"loss.multiscale": "single"})
    g_scale0 = gradients(models, single, batches, seed)
    g_full = gradients(models, cfg, batches, seed)
    share0, _ = term_weights(cfg)
    parts = {"scale0": [share0 * g for g in g_scale0],
             "total": g_full}
    parts["coarse"] = [f - s for f, s in zip(g_full, parts["scale0"])]
    return {term: adam_step(grads, state["optimizer"], params) for term, grads in parts.items()}


def score_pulls(models: torch.nn.ModuleDict, cfg: Config, steps: dict[str, list[torch.Tensor]],
                batches: list[dict[str, Any]], fraction: float = FRACTION) -> dict[str, dict[str, Any]]:
    """Per depth band (and ``all``), per term: the mean change of median-scaled log depth over the scored pixels of
    ``batches`` that the term's step makes to the scale-0 map, per step (a finite difference over ``fraction`` of
    the step, in float64, so that it stays linear), with its pixel count and the map's mean log(pred/GT) there."""
    base = copy.deepcopy(models).double().train()  # batch statistics, as the gradient saw them
    moved = {term: copy.deepcopy(base) for term in steps}
    with torch.no_grad():
        for term, model in moved.items():
            for param, step in zip(model.parameters(), steps[term], strict=True):
                param += fraction * step.double()
    protocol = protocol_for_split("synth")
    sums: dict[tuple[str, str], list[float]] = {}
    for batch in batches:
        inputs = method.prepare_inputs(batch, cfg, "cpu")
        images = inputs.raw[0][:, 0]
        size = tuple(images.shape[-2:])
        gt = F.interpolate(batch["depth_gt"].float(), size=size, mode="nearest")[:, 0].numpy().astype(np.float64)
        keep = np.stack([valid_mask(g, protocol) for g in gt])
        with torch.no_grad():
            before = median_scaled_log_depth(scale0_depth(base, cfg, images), keep)
            after = {term: median_scaled_log_depth(scale0_depth(model, cfg, images), keep)
                     for term, model in moved.items()}
        bands = {f"depth_{lo:g}_{hi:g}": keep & (gt > lo) & (gt <= hi) for lo, hi in DEPTH_BANDS}
        bands["all"] = keep
        gt_log = np.log(np.where(keep, gt, 1.0))
        for name, mask in bands.items():
            # mean log(pred/GT) after median scaling: before + log median(GT) − log GT per image
            bias = [(before[i] + math.log(float(np.median(gt[i][keep[i]]))) - gt_log[i])[mask[i]]
                    for i in range(gt.shape[0]) if mask[i].any()]
            acc = sums.setdefault((name, "_bias"), [0.0, 0.0])
            acc[0] += float(sum(b.sum() for b in bias))
            acc[1] += float(mask.sum())
            for term in steps:
                acc = sums.setdefault((name, term), [0.0, 0.0])
                acc[0] += float((after[term] - before)[mask].sum()) / fraction
                acc[1] += float(mask.sum())
    out: dict[str, dict[str, Any]] = {}
    for (name, term), (total, count) in sums.items():
        entry = out.setdefault(name, {"pixels": int(count)})
        value = total / count if count else math.nan
        if term == "_bias":
            entry["log_ratio"] = value
        else:
            entry[term] = value
    return out


def main() -> None:
    parser = probe_parser(__doc__.split("\n\n")[0], "a trained model (its checkpoint.pt, with the optimiser state)",
                          checkpoint_required=True)
    parser.add_argument("--frames", choices=("train", "val"), default="train",
                        help="the frames the pulls are computed and scored on (train: where training rests)")
    args = parser.parse_args()
    trained, cfg, loader = load_probe(args)
    if args.frames == "train":
        data = build_dataset(cfg, "train", load_depth=True)
        loader = torch.utils.data.DataLoader(data, batch_size=cfg.train.batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(0))
    batches = [batch for b, batch in zip(range(args.batches), loader)]
    half = len(batches) // 2
    for item in args.checkpoint:
        label, _, path = item.partition("=")
        model_cfg, models = trained[label]
        state = load_checkpoint(path)
        if "optimizer" not in state:
            raise SystemExit(f"{path} holds no optimiser state: give the training checkpoint (checkpoint.pt)")
        whole = score_pulls(models, model_cfg, pulls(models, model_cfg, state, batches), batches)
        parts = [score_pulls(models, model_cfg, pulls(models, model_cfg, state, part), part)
                 for part in (batches[:half], batches[half:])] if half else []  # one batch: no halves
        for band, entry in whole.items():
            line = {"checkpoint": label, "band": band, "pixels": entry["pixels"],
                    "log_ratio": round(entry["log_ratio"], 4), "step": state.get("step")}
            for term in TERMS:
                line[term] = round(entry[term] * 1e4, 3)
                line[f"{term}_halves"] = [round(p[band][term] * 1e4, 3) if band in p else None for p in parts]
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
