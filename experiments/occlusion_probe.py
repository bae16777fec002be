"""Occlusion probe: does *averaging* the two sources' photometric errors pull occluded pixels away from their true
depth in the synthetic world, as the paper's Fig. 3 says it does on KITTI — and does the per-pixel *minimum* not?

No network is trained. For validation frames of the world, the exact depth of the target frame is multiplied by a
scale ``s`` (the same for the whole image, ``--scales`` values log-spaced in [1/``--range``, ``--range``], 1
included) and the two temporal sources (−1, +1) are warped into the target with the exact poses, through
md2bench's own ``geometry.warp`` and ``losses.photometric_error`` (SSIM + L1, as training). For every pixel
with ground truth this gives one error curve per source; the probe takes, per pixel, the scale that minimises

- ``avg``: the mean of the two sources' errors (``loss.reprojection = "avg"``), and
- ``min``: their per-pixel minimum (``loss.reprojection = "min"``, the paper's),

and reports, for the world's ``occluded`` region mask (hidden or out of view in at least one source) — split
into *out of view* (the exact projection leaves a source image) and *hidden* (behind another surface) — and for
the other pixels (split by the ``low_texture`` mask): the fraction of pixels whose minimiser is within
±``--tol`` of the truth (``at_truth``) and the median \|log s*\| (``median_log_err``); and, for pixels out of
view in one source, how often the minimum at the true depth picks that source (whose sample is the clamped image
border) over the one that sees the point — at the true depth, and for each ``--checkpoint`` at the model's own
depth (network units, as its loss saw it). Where averaging pulls occluded pixels to a wrong depth, ``avg`` has
fewer of them at the truth than ``min``. One JSON line per region and reduction, and a summary line.

With ``--checkpoint LABEL=PATH`` (repeatable) the probe also scores trained models on the same pixels: each
checkpoint's depth of the target frame (network resolution, per-image median scaling as the evaluation, GT
0–80 m) gives one line per region with the pixel-pooled abs rel — the trained counterpart of ``at_truth``.

This is how the README explains why "removing min reprojection worsens the occluded-pixel error" does not show
on the synthetic world (``reports/cpu-ablation*``).

    python experiments/occlusion_probe.py --batches 16
    python experiments/occlusion_probe.py --batches 16 --checkpoint min=md2bench_runs/<key>/checkpoint.pt \
        --checkpoint avg=md2bench_runs/<key>/checkpoint.pt
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from md2bench import method
from md2bench.geometry import backproject, in_view, source_grids, warp
from md2bench.losses import photometric_error
from md2bench.metrics import (MAX_DEPTH, MIN_DEPTH, median_scale, protocol_for_split,
                              valid_mask)
from md2bench.regions import REGION_NAMES
from probe_setup import each_view, load_probe, probe_parser, temporal_sources



LABELS = ("not occluded", "occluded", "occluded, out of view", "occluded, hidden", "not occluded, textured",
          "not occluded, low texture")


def scale_grid(count: int, spread: float) -> torch.Tensor:
    """``count`` (odd) scales log-spaced in [1/spread, spread]; the middle one is exactly 1."""
    if count < 3 or count % 2 == 0:
        raise SystemExit("--scales must be an odd number >= 3 (the middle scale is the truth)")
    return torch.exp(torch.linspace(-math.log(spread), math.log(spread), count)).double()


def outside_each_source(depth: torch.Tensor, T: torch.Tensor, K: torch.Tensor, inv_K: torch.Tensor) -> torch.Tensor:
    """B×N×H×W bool: the exact projection of the pixel's point leaves (or is behind) source camera n."""
    batch, _, height, width = depth.shape
    points = backproject(depth, inv_K)
    cam_z = (T @ points.unsqueeze(1))[:, :, 2].reshape(batch, -1, height, width)  # B×N×H×W
    return ~in_view(source_grids(depth, T, K, inv_K)) | (cam_z <= 0)


def best_scale_index(curves: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per pixel, the index of the scale that minimises the two reductions of the sources' error curves.

    Args:
        curves: B×S×N×H×W photometric error of each of N sources at each of S depth scales.

    Returns:
        ``{"avg": B×H×W, "min": B×H×W}``: argmin over S of the mean over sources (``loss.reprojection = "avg"``)
        and of the per-pixel minimum over sources (``"min"``, the paper's).
    """
    return {"avg": curves.mean(dim=2).argmin(dim=1), "min": curves.min(dim=2).values.argmin(dim=1)}


@torch.no_grad()
def abs_rel_per_pixel(models, cfg, images: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> np.ndarray:
    """abs rel of a trained model's depth at every ``valid`` pixel (B×H×W GT in metres, the images' size): each
    image median-scaled on the pixels the synthetic test protocol scores (``metrics.valid_mask``, 0 < GT < 80 m)
    and the prediction clipped to [MIN_DEPTH, MAX_DEPTH] as in evaluation; NaN where the protocol does not score
    (GT >= 80 m); pixels in ``valid`` order."""
    depth = (1.0 / method.predict_disparity(models, images, cfg)[:, 0]).numpy()
    protocol = protocol_for_split("synth")
    out = []
    for b in range(images.shape[0]):
        g, keep = gt[b].numpy(), valid[b].numpy()
        scored = valid_mask(g, protocol) & keep
        _, ratio = median_scale(g[scored], depth[b][scored])
        err = np.abs(np.clip(depth[b] * ratio, MIN_DEPTH, MAX_DEPTH) - g) / np.maximum(g, 1e-6)
        out.append(np.where(scored, err, np.nan)[keep])
    return np.concatenate(out)


def main() -> None:
    parser = probe_parser(__doc__.split("\n\n")[0], "also score a trained model's depth on the same pixels "
                          "(repeatable)", batches=8)
    parser.add_argument("--scales", type=int, default=31)
    parser.add_argument("--range", type=float, default=2.0, help="scales from 1/range to range")
    parser.add_argument("--tol", type=float, default=0.1, help="'at the truth': |s* - 1| within this (log)")
    args = parser.parse_args()
    trained, cfg, loader = load_probe(args)
    temporal_sources(cfg)
    scales = scale_grid(args.scales, args.range)
    log_s = scales.log().numpy()
    found: dict[str, list[np.ndarray]] = {"avg": [], "min": []}
    groups: list[np.ndarray] = []  # 0 = not occluded, 1 = out of view, 2 = hidden (occluded, in view)
    flat: list[np.ndarray] = []  # the low_texture mask
    picks_outside: list[np.ndarray] = []  # per pixel out of view in one source: min picks that source at s = 1
    scored: dict[str, list[np.ndarray]] = {label: [] for label in trained}  # per-pixel abs rel of each model
    own_picks: dict[str, list[np.ndarray]] = {label: [] for label in trained}  # as picks_outside, model's depth
    for views in each_view(loader, cfg, args.batches):
        target, sources, T, K, inv_K = views.target, views.sources, views.T, views.K, views.inv_K
        metres, valid, depth = views.metres, views.valid, views.exact
        curves = torch.stack([photometric_error(warp(sources, depth * s, T, K, inv_K), target.unsqueeze(1), True)
                              for s in scales.float()], dim=1)  # B×S×N×H×W
        regions = views.regions
        occluded = regions[:, REGION_NAMES.index("occluded")]
        outside = outside_each_source(depth, T, K, inv_K)
        group = torch.where(occluded, torch.where(outside.any(dim=1), 1, 2), 0)
        # at the true depth, does the minimum pick the source the pixel has left? (out of view in exactly one)
        one_out = valid & (outside.sum(dim=1) == 1)
        picked = curves[:, len(scales) // 2].argmin(dim=1)  # B×H×W source index at s = 1
        picks_outside.append((outside.gather(1, picked.unsqueeze(1))[:, 0])[one_out].numpy())
        groups.append(group[valid].numpy())
        flat.append(regions[:, REGION_NAMES.index("low_texture")][valid].numpy())
        for name, index in best_scale_index(curves).items():
            found[name].append(log_s[index[valid].numpy()])
        for label, (model_cfg, models) in trained.items():
            scored[label].append(abs_rel_per_pixel(models, model_cfg, target, metres[:, 0], valid))
            # at the model's own depth (network units, as its loss saw it): does the minimum of the two warped
            # errors pick the source the pixel has left?
            with torch.no_grad():
                own = 1.0 / method.predict_disparity(models, target, model_cfg)
            errors = photometric_error(warp(sources, own, T, K, inv_K), target.unsqueeze(1), True)
            own_picks[label].append(outside.gather(1, errors.argmin(dim=1, keepdim=True))[:, 0][one_out].numpy())
    group, low = np.concatenate(groups), np.concatenate(flat)
    tol = math.log(1 + args.tol)
    summary: dict[str, float | None] = {}
    selections = (group == 0, group > 0, group == 1, group == 2, (group == 0) & ~low, (group == 0) & low)
    for label, select in zip(LABELS, selections):
        for name in ("avg", "min"):
            err = np.abs(np.concatenate(found[name])[select])
            line = {"region": label, "reduce": name, "pixels": int(select.sum()),
                    "share": round(float(select.mean()), 4),
                    "at_truth": round(float((err <= tol).mean()), 4) if err.size else None,
                    "median_log_err": round(float(np.median(err)), 4) if err.size else None}
            summary[f"{label}/{name}"] = line["at_truth"]
            print(json.dumps(line), flush=True)
    picks = np.concatenate(picks_outside)
    print(json.dumps({"region": "out of view in one source", "pixels": int(picks.size),
                      "min_picks_the_outside_source_at_truth": round(float(picks.mean()), 4) if picks.size else None}))
    for label in trained:
        own = np.concatenate(own_picks[label])
        print(json.dumps({"checkpoint": label, "region": "out of view in one source", "pixels": int(own.size),
                          "min_picks_the_outside_source_at_model_depth":
                              round(float(own.mean()), 4) if own.size else None}), flush=True)
        err = np.concatenate(scored[label])
        for region, select in zip(LABELS, selections):
            print(json.dumps({"checkpoint": label, "region": region, "pixels": int(select.sum()),
                              "abs_rel": round(float(np.nanmean(err[select])), 4) if select.any() else None}), flush=True)
    print(json.dumps({"summary": "at_truth, min minus avg",
                      **{label: _difference(summary[f"{label}/min"], summary[f"{label}/avg"]) for label in LABELS}}))


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 4)


if __name__ == "__main__":
    main()
