"""Auto-mask probe: which pixels does auto-masking leave out of the loss, under the minimum's criterion and under
averaging's — at the true depth and at trained models' depth?

With auto-masking on, the reference concatenates the unwarped sources' errors ("identity") with the warped ones
and takes the per-pixel minimum; a pixel where an identity channel wins contributes a network-independent error,
so it is left out of training. With ``loss.reprojection = "min"`` the identity channels are the two sources'
own errors, so a pixel is left out where *either* unwarped source matches better than both warped ones
(min id < min rep); with ``"avg"`` both are averaged first, so it is left out only where the *mean* of the
unwarped errors beats the mean of the warped ones (avg id < avg rep). The two rows of the ablation therefore
differ in which pixels they train on, not only in how they reduce the sources.

No network is trained. For validation frames of the world, the two temporal sources (−1, +1) are warped into the
target with the exact poses through md2bench's own ``geometry.warp`` and ``losses.photometric_error`` (SSIM +
L1, as training), at the exact depth and at each ``--checkpoint``'s depth (network resolution, scale 0), and
the probe reports per region the share of pixels each criterion *keeps* (µ = 1), and the mean of the two warped
errors' minimum, their average and their disagreement \|e₋₁ − e₊₁\| (a depth at which the minimum's error is
below its value at the true depth, with the sources disagreeing, is one where a single source happens to match:
the wrong minimum the minimum's choice can settle in). With checkpoints it also
reports each model's pixel-pooled abs rel (per-image median scaling, GT 0–80 m) on the pixels that each
criterion keeps and leaves out at the true depth, so the error of the left-out pixels can be compared across
rows. One JSON line per (depth, region); regions as the occlusion probe, plus ``comoving``.

    python experiments/automask_probe.py --batches 16 --checkpoint min=md2bench_runs/<key>/checkpoint.pt \
        --checkpoint avg=md2bench_runs/<key>/checkpoint.pt
"""

from __future__ import annotations

import json

import numpy as np
import torch

from md2bench import method
from md2bench.geometry import warp
from md2bench.losses import photometric_error
from md2bench.regions import REGION_NAMES
from occlusion_probe import abs_rel_per_pixel, outside_each_source
from probe_setup import each_view, load_probe, probe_parser, temporal_sources

REGIONS = ("all", "not occluded, textured", "not occluded, low texture", "occluded, out of view", "occluded, hidden",
           "comoving")


def kept(reprojection: torch.Tensor, identity: torch.Tensor) -> dict[str, torch.Tensor]:
    """B×H×W bool: the pixels auto-masking keeps (a warped term wins), under each reduction's criterion.

    Args:
        reprojection: B×N×H×W photometric errors of the warped sources.
        identity: B×N×H×W errors of the unwarped sources (no tie-break noise: a tie goes to the identity, as
            in ``losses.reprojection_loss``, whose minimum lists the identity channels first).
    """
    return {"min": reprojection.min(dim=1).values < identity.min(dim=1).values,
            "avg": reprojection.mean(dim=1) < identity.mean(dim=1)}


WARPED_TERMS = ("error_min", "error_avg", "source_gap")


def warped_terms(reprojection: torch.Tensor) -> dict[str, torch.Tensor]:
    """B×H×W per pixel from the two warped sources' errors (B×2×H×W): their minimum and mean (what each
    reduction minimises) and their disagreement \|e₋₁ − e₊₁\| (large where one source matches and the other
    does not)."""
    return {"error_min": reprojection.min(dim=1).values, "error_avg": reprojection.mean(dim=1),
            "source_gap": (reprojection[:, 0] - reprojection[:, 1]).abs()}


def region_masks(regions: torch.Tensor, outside: torch.Tensor) -> dict[str, torch.Tensor]:
    """B×H×W bool per REGIONS name from the world's region masks (B×3×H×W bool) and the exact out-of-view test."""
    occluded = regions[:, REGION_NAMES.index("occluded")]
    low = regions[:, REGION_NAMES.index("low_texture")]
    out = outside.any(dim=1)
    return {"all": torch.ones_like(occluded), "not occluded, textured": ~occluded & ~low,
            "not occluded, low texture": ~occluded & low, "occluded, out of view": occluded & out,
            "occluded, hidden": occluded & ~out, "comoving": regions[:, REGION_NAMES.index("comoving")]}


def main() -> None:
    parser = probe_parser(__doc__.split("\n\n")[0], "also measure at a trained model's depth and score it on the "
                          "kept / left-out pixels (repeatable)")
    args = parser.parse_args()
    trained, cfg, loader = load_probe(args)
    temporal_sources(cfg)
    depths = ["truth"] + list(trained)
    shares: dict[tuple[str, str, str], list[np.ndarray]] = {}  # (depth, region, criterion) -> kept per pixel
    errors: dict[str, list[np.ndarray]] = {label: [] for label in trained}  # per-pixel abs rel
    truth_kept: dict[str, list[np.ndarray]] = {"min": [], "avg": []}
    region_of: dict[str, list[np.ndarray]] = {name: [] for name in REGIONS}
    for views in each_view(loader, cfg, args.batches):
        target, sources, T, K, inv_K = views.target, views.sources, views.T, views.K, views.inv_K
        metres, valid, exact = views.metres, views.valid, views.exact
        identity = photometric_error(sources, target.unsqueeze(1), True)
        masks = region_masks(views.regions, outside_each_source(exact, T, K, inv_K))
        for name in REGIONS:
            region_of[name].append(masks[name][valid].numpy())
        for label in depths:
            if label == "truth":
                depth = exact
            else:
                with torch.no_grad():
                    depth = 1.0 / method.predict_disparity(trained[label][1], target, trained[label][0])
            reprojection = photometric_error(warp(sources, depth, T, K, inv_K), target.unsqueeze(1), True)
            for criterion, keep in kept(reprojection, identity).items():
                shares.setdefault((label, criterion), []).append(keep[valid].numpy())
            for name, value in warped_terms(reprojection).items():
                shares.setdefault((label, name), []).append(value[valid].numpy())
        for criterion in ("min", "avg"):
            truth_kept[criterion].append(shares[("truth", criterion)][-1])
        for label, (model_cfg, models) in trained.items():
            errors[label].append(abs_rel_per_pixel(models, model_cfg, target, metres[:, 0], valid))
    region = {name: np.concatenate(parts) for name, parts in region_of.items()}
    for label in depths:
        for name in REGIONS:
            select = region[name]
            line = {"depth": label, "region": name, "pixels": int(select.sum())}
            for criterion in ("min", "avg"):
                keep = np.concatenate(shares[(label, criterion)])[select]
                line[f"kept_{criterion}"] = round(float(keep.mean()), 4) if keep.size else None
            for name in WARPED_TERMS:
                value = np.concatenate(shares[(label, name)])[select]
                line[name] = round(float(value.mean()), 5) if value.size else None
            print(json.dumps(line), flush=True)
    at_truth = {criterion: np.concatenate(parts) for criterion, parts in truth_kept.items()}
    by_min, by_avg = at_truth["min"], at_truth["avg"]
    groups = {"kept by both": by_min & by_avg, "left out by min only": ~by_min & by_avg,
              "left out by avg only": by_min & ~by_avg, "left out by both": ~by_min & ~by_avg}
    for label in trained:
        err = np.concatenate(errors[label])
        for name in ("all", "not occluded, textured", "not occluded, low texture"):
            for group, select in groups.items():
                chosen = select & region[name]
                print(json.dumps({"checkpoint": label, "region": name, "at_truth": group, "pixels": int(chosen.sum()),
                                  "abs_rel": round(float(np.nanmean(err[chosen])), 4) if chosen.any() else None}),
                      flush=True)


if __name__ == "__main__":
    main()
