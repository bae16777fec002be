"""Multi-scale probe: do the coarse depth maps of a model trained per scale (Monodepth v1) have the "holes" in
low-texture regions that the paper's full-resolution multi-scale exists to remove — and does the final map inherit
them?

Godard et al. (2019, Sec. 3.3) say that computing the photometric loss at each decoder scale's own resolution
"has the tendency to create holes in large low-texture regions in the intermediate lower resolution depth maps,
as well as texture-copy artifacts", and that upsampling every scale's disparity to the input resolution before
the loss removes them. The evaluation scores only the scale-0 map, so the claim is about the intermediate maps
first. No training here: for each ``--checkpoint LABEL=PATH``, every decoder scale's disparity of the validation
frames is upsampled to the input size (bilinear, as ``loss.multiscale = "full_res"`` does) and scored with the
evaluation's own ``metrics.evaluate_image`` (per-image median scaling, GT 0-80 m) on the world's ``low_texture``
region and on the rest (``textured``): abs rel, δ<1.25 and the mean signed log error (> 0: the map is too far
there, a hole); one JSON line per checkpoint, scale and region (mean over images, as ``md2bench evaluate``).

    python experiments/multiscale_probe.py --batches 16 --checkpoint full=md2bench_runs/<key>/checkpoint.pt \
        --checkpoint per_scale=md2bench_runs/<key>/checkpoint.pt

With ``--split`` the low-texture pixels are also scored in parts, to see where a bias sits: on the road plane
(``low_texture_road``: the pixel's centre ray meets the scene within ``ROAD_TOLERANCE`` of the world's road height,
found from the exact depth at the world's own resolution) or elsewhere (``low_texture_off_road``: walls, car
bodies, sidewalks), and at the rim of a low-texture region (``low_texture_rim``: within ``--rim`` pixels, at network
resolution, of a pixel outside the region) or inside it (``low_texture_interior``). Every line also counts the
scored pixels of its region (``pixels``, over all images) and gives its RMSE in metres (``rmse``, after the same
median scaling; mean over images) beside abs rel.

With ``--depth-bands`` every scored pixel is also scored by its ground-truth depth (``depth_0_10``,
``depth_10_20``, ``depth_20_40``, ``depth_40_80``: GT in (lo, hi] metres), to see at which depths two models
differ: abs rel weighs each pixel's error by its own depth, RMSE by the metres, so the far pixels dominate it.

With ``--edges`` every scored pixel is also scored by where it lies: at a depth edge (``depth_edge``: within
``--edge-width`` pixels, at network resolution, of a pixel whose 3×3 neighbourhood spans a GT depth ratio over
``EDGE_RATIO``; pixels without GT count as far) or not (``off_edge``), and in the strip along the image border
where the coarsest map's bilinear upsampling clamps (``border_strip``: within 2^(S−1) pixels of the edge, S the
checkpoint's own coarsest scale, so 4 at scale 3) or inside it (``border_inside``). With ``--depth-bands`` as well, each band is
crossed with the four (``depth_0_10&depth_edge`` ...), to see where a band's error sits.

With ``--motion`` every scored pixel is also scored by its true image motion (``motion_0_4``, ``motion_4_8``,
``motion_8_16``, ``motion_16_up``: the largest distance, in pixels at network resolution, that the pixel's point
moves into either temporal source under the exact depth and the exact poses), to see whether an error follows how
far a pixel moves rather than how far it is: near pixels at the image's sides and bottom move most, near pixels
close to the focus of expansion hardly move. With ``--depth-bands`` as well, each band is crossed with them
(``depth_0_10&motion_8_16`` ...).
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from md2bench import method
from md2bench.geometry import disp_to_depth, source_grids
from md2bench.data.synth_scene import GROUND_Y
from md2bench.data.synthetic import K_NORMALISED
from md2bench.metrics import MAX_DEPTH, MIN_DEPTH, evaluate_image, protocol_for_split, valid_mask
from md2bench.regions import REGION_NAMES
from probe_setup import exact_views, load_probe, probe_parser

DEPTH_BANDS: tuple[tuple[float, float], ...] = ((0.0, 10.0), (10.0, 20.0), (20.0, 40.0), (40.0, MAX_DEPTH))
"""Metres, (lo, hi]: ``--depth-bands``; together they cover every scored pixel (GT in (MIN_DEPTH, MAX_DEPTH))."""


EDGE_RATIO = 1.25
"""``--edges``: a pixel whose 3×3 neighbourhood's GT depths span more than this ratio is on a depth edge."""

MOTION_BANDS: tuple[tuple[float, float], ...] = ((0.0, 4.0), (4.0, 8.0), (8.0, 16.0), (16.0, math.inf))
"""Pixels at network resolution, (lo, hi]: ``--motion``; at 192x64 on the validation frames the near pixels
(0-10 m) move 2 / 8 / 23 px (10th / 50th / 90th percentile), the 40-80 m ones 0.1 / 0.6 / 1.5 px."""

NO_GT_DEPTH = 1000.0
"""``--edges``: metres given to pixels without GT (the sky) when finding depth edges: far behind everything."""


class Scored(NamedTuple):
    """One depth map's scores on one region (``score``); the JSON line's keys, ``pixels`` summed over images and
    the others averaged over the images with scored pixels."""

    abs_rel: float
    a1: float
    log_ratio: float
    pixels: int
    rmse: float

ROAD_TOLERANCE = 0.05
"""Metres: a pixel is on the road when its point is within this of the road plane (the sidewalk is 0.15 m above)."""


def road_mask(depth: np.ndarray) -> np.ndarray:
    """Pixels of an H×W exact depth map (metres, 0 = none) at the world's own resolution whose centre-ray point lies
    on the road plane: height below the camera (i − c_y)·z / f_y within ``ROAD_TOLERANCE`` of ``GROUND_Y``, with
    the world's intrinsics (f_y = 1.92·H, c_y = 0.5·H, pixel row i centred at v = i) and a level camera."""
    height = depth.shape[0]
    fy, cy = K_NORMALISED[1] * height, K_NORMALISED[3] * height
    rows = np.arange(height, dtype=np.float64)[:, None]
    below = (rows - cy) * depth.astype(np.float64) / fy
    return (depth > 0) & (np.abs(below - GROUND_Y) < ROAD_TOLERANCE)


def _dilate(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of an H×W boolean mask's (2·width+1)² square neighbourhoods (the mask itself for width 0)."""
    if width == 0:
        return mask.copy()
    grown = F.max_pool2d(torch.from_numpy(mask)[None, None].float(), 2 * width + 1, stride=1, padding=width)
    return grown[0, 0].numpy() > 0


def rim_mask(region: np.ndarray, width: int) -> np.ndarray:
    """Pixels of an H×W boolean region within ``width`` pixels (the (2·width+1)² square around them) of a pixel
    outside it; the image border does not count as outside."""
    return region & _dilate(~region, width)


def split_low_texture(low: np.ndarray, road: np.ndarray, width: int) -> dict[str, np.ndarray]:
    """The ``--split`` masks of one image: the low-texture pixels on and off the road, at its rim and inside."""
    rim = rim_mask(low, width)
    return {"low_texture_road": low & road, "low_texture_off_road": low & ~road,
            "low_texture_rim": rim, "low_texture_interior": low & ~rim}


def depth_band_masks(gt: np.ndarray, bands: tuple[tuple[float, float], ...] = DEPTH_BANDS) -> dict[str, np.ndarray]:
    """The ``--depth-bands`` masks of one H×W GT depth map: ``depth_<lo>_<hi>`` = GT in (lo, hi] metres."""
    return {f"depth_{lo:g}_{hi:g}": (gt > lo) & (gt <= hi) for lo, hi in bands}


def depth_edges(gt: np.ndarray, width: int, ratio: float = EDGE_RATIO) -> np.ndarray:
    """Pixels of an H×W GT depth map (metres, 0 = none) within ``width`` pixels of a depth edge: a pixel whose 3×3
    neighbourhood (clipped at the image border) holds depths more than ``ratio`` apart; pixels without GT are at
    ``NO_GT_DEPTH``."""
    log_depth = torch.from_numpy(np.log(np.where(gt > 0, gt, NO_GT_DEPTH)).astype(np.float64))[None, None]
    padded = F.pad(log_depth, (1, 1, 1, 1), mode="replicate")
    spread = F.max_pool2d(padded, 3, stride=1) + F.max_pool2d(-padded, 3, stride=1)
    return _dilate(spread[0, 0].numpy() > math.log(ratio), width)


def image_motion(depth: torch.Tensor, T: torch.Tensor, K: torch.Tensor, inv_K: torch.Tensor) -> torch.Tensor:
    """B×H×W: how many pixels each target pixel's point moves into the sources, the largest over the N sources.

    ``depth`` B×1×H×W, ``T`` B×N×4×4 (target camera -> source n), ``K``/``inv_K`` B×4×4 of the H×W images: the
    exact projection of :func:`md2bench.geometry.source_grids`, its normalised grid turned back into pixels."""
    _, _, height, width = depth.shape
    grid = source_grids(depth, T, K, inv_K).double()  # B×N×H×W×2, align_corners=True: -1 and 1 the border centres
    u = (grid[..., 0] + 1) * (width - 1) / 2
    v = (grid[..., 1] + 1) * (height - 1) / 2
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                                indexing="ij")
    return torch.sqrt((u - cols) ** 2 + (v - rows) ** 2).amax(dim=1)


def motion_band_masks(motion: np.ndarray,
                      bands: tuple[tuple[float, float], ...] = MOTION_BANDS) -> dict[str, np.ndarray]:
    """The ``--motion`` masks of one H×W motion map: ``motion_<lo>_<hi>`` = motion in (lo, hi] pixels (``up``: no
    upper end); a pixel that does not move is in the first band."""
    out = {}
    for i, (lo, hi) in enumerate(bands):
        name = f"motion_{lo:g}_{'up' if math.isinf(hi) else f'{hi:g}'}"
        out[name] = ((motion > lo) | (i == 0)) & (motion <= hi)
    return out


def border_strip(shape: tuple[int, int], coarsest: int) -> np.ndarray:
    """Pixels of an H×W image where the coarsest scale's upsampling to H×W clamps (bilinear, align_corners=False):
    within 2^(coarsest−1) pixels of the image's edge (none for coarsest 0)."""
    width = 2 ** coarsest // 2
    strip = np.zeros(shape, dtype=bool)
    if width:
        strip[:width], strip[-width:], strip[:, :width], strip[:, -width:] = True, True, True, True
    return strip


def edge_parts(gt: np.ndarray, width: int) -> dict[str, np.ndarray]:
    """The ``--edges`` masks of one H×W GT depth map that do not depend on the model: on/off a depth edge."""
    edge = depth_edges(gt, width)
    return {"depth_edge": edge, "off_edge": ~edge}


def border_parts(shape: tuple[int, int], coarsest: int) -> dict[str, np.ndarray]:
    """The ``--edges`` masks that depend on the model's coarsest scale: in/inside its clamped border strip."""
    strip = border_strip(shape, coarsest)
    return {"border_strip": strip, "border_inside": ~strip}


def crossed(bands: dict[str, np.ndarray], parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every band crossed with every part: ``"<band>&<part>"`` -> band ∧ part."""
    return {f"{b}&{p}": band & part for b, band in bands.items() for p, part in parts.items()}


@torch.no_grad()
def depth_at_every_scale(models, cfg, images: torch.Tensor) -> dict[int, torch.Tensor]:
    """B×H×W depth (network units) of each decoder scale, its sigmoid upsampled to the images' size first
    (bilinear, align_corners=False: the full-res loss's upsampling)."""
    size = tuple(images.shape[-2:])
    sigmoids = models["depth"](models["encoder"](images))
    out = {}
    for scale, sigmoid in sigmoids.items():
        up = F.interpolate(sigmoid.float(), size=size, mode="bilinear", align_corners=False)
        out[scale] = disp_to_depth(up, cfg.model.min_depth, cfg.model.max_depth)[1][:, 0]
    return out


def score(depth: np.ndarray, gt: np.ndarray, low_texture: np.ndarray,
          parts: dict[str, np.ndarray] | None = None) -> dict[str, Scored]:
    """Abs rel, δ<1.25, mean log(pred/GT), scored pixels and RMSE of one H×W depth map on the low-texture pixels, on
    the rest and on each of ``parts`` (name -> mask), median-scaled over all scored pixels as the evaluation does;
    NaN for a region without scored pixels. The signed log error tells a hole (the map too far: > 0) from the
    opposite."""
    protocol = protocol_for_split("synth")
    masks = {"low_texture": low_texture, "textured": ~low_texture, **(parts or {})}
    result = evaluate_image(gt, depth, protocol, median_scaling=True, extra_masks=masks)
    scaled = np.clip(depth.astype(np.float64) * result["ratio"], MIN_DEPTH, MAX_DEPTH)
    out = {}
    for name in masks:
        keep = valid_mask(gt, protocol) & masks[name]
        signed = float(np.mean(np.log(scaled[keep] / gt[keep]))) if keep.any() else math.nan
        out[name] = Scored(result[f"{name}/abs_rel"], result[f"{name}/a1"], signed, int(keep.sum()),
                           result[f"{name}/rmse"])
    return out


def main() -> None:
    parser = probe_parser(__doc__.split("\n\n")[0], "a trained model to score (repeatable)",
                          checkpoint_required=True)
    parser.add_argument("--split", action="store_true",
                        help="also score the low-texture pixels on/off the road and at the rim/inside")
    parser.add_argument("--rim", type=int, default=2, help="rim width in pixels at network resolution (--split)")
    parser.add_argument("--depth-bands", action="store_true",
                        help="also score every pixel by its GT depth band (0-10, 10-20, 20-40, 40-80 m)")
    parser.add_argument("--edges", action="store_true",
                        help="also score the pixels at/off GT depth edges and in/inside the border strip where the "
                             "coarsest map's upsampling clamps (crossed with the bands under --depth-bands)")
    parser.add_argument("--edge-width", type=int, default=2,
                        help="pixels (network resolution) around a depth edge that count as on it (--edges)")
    parser.add_argument("--motion", action="store_true",
                        help="also score every pixel by its true image motion into the sources (0-4, 4-8, 8-16, "
                             ">16 px; crossed with the bands under --depth-bands)")
    args = parser.parse_args()
    trained, cfg, loader = load_probe(args)
    values: dict[tuple[str, int, str], list[Scored]] = {}
    images_scored = 0
    for b, batch in enumerate(loader):
        if b == args.batches:
            break
        inputs = method.prepare_inputs(batch, cfg, "cpu")
        target = inputs.raw[0][:, 0]
        size = tuple(target.shape[-2:])
        gt = F.interpolate(batch["depth_gt"].float(), size=size, mode="nearest")[:, 0].numpy()
        regions = F.interpolate(batch["region_masks"].float(), size=size, mode="nearest") > 0
        low = regions[:, REGION_NAMES.index("low_texture")].numpy()
        parts: list[dict[str, np.ndarray]] = [{} for _ in range(target.shape[0])]
        if args.split:
            road = np.stack([road_mask(d[0].numpy()) for d in batch["depth_gt"]])
            road = F.interpolate(torch.from_numpy(road)[:, None].float(), size=size, mode="nearest")[:, 0] > 0
            for i in range(target.shape[0]):
                parts[i].update(split_low_texture(low[i], road[i].numpy(), args.rim))
        bands = [depth_band_masks(g) if args.depth_bands else {} for g in gt]
        if args.motion:
            views = exact_views(batch, cfg)
            motion = image_motion(views.exact, views.T, views.K, views.inv_K).numpy()
        for i in range(target.shape[0]):
            edges = edge_parts(gt[i], args.edge_width) if args.edges else {}
            moving = motion_band_masks(motion[i]) if args.motion else {}
            parts[i].update({**bands[i], **edges, **crossed(bands[i], edges), **moving, **crossed(bands[i], moving)})
        images_scored += target.shape[0]
        for label, (model_cfg, models) in trained.items():
            # the border strip is the checkpoint's own: where its coarsest map's upsampling clamps
            border = border_parts(size, max(model_cfg.model.scales)) if args.edges else {}
            for scale, depth in depth_at_every_scale(models, model_cfg, target).items():
                for i in range(target.shape[0]):
                    own = {**parts[i], **border, **crossed(bands[i], border)}
                    for region, scored in score(depth[i].numpy(), gt[i], low[i], own).items():
                        values.setdefault((label, scale, region), []).append(scored)
    for (label, scale, region), scored in sorted(values.items()):
        arr = np.array(scored, dtype=float)
        seen = ~np.isnan(arr[:, 0])
        line = {"checkpoint": label, "scale": scale, "region": region, "images": int(seen.sum()),
                "pixels": int(arr[:, Scored._fields.index("pixels")].sum())}
        for i, field in enumerate(Scored._fields):
            if field != "pixels":
                line[field] = round(float(arr[seen, i].mean()), 4) if seen.any() else None
        print(json.dumps(line), flush=True)
    print(json.dumps({"images": images_scored, "checkpoints": len(trained),
                      "scales": sorted({s for _, s, _ in values})}))


if __name__ == "__main__":
    main()
