"""Vectorised CPU ray caster for the synthetic street: nearest hit over analytic primitives, Lambertian shading.

Rays are ``d = ((u - cx)/fx, (v - cy)/fy, 1)`` in camera coordinates, so the ray parameter ``t`` of a hit *is*
its camera-z depth. Pixel (row i, column j) is centred at (u, v) = (j, i) (the integer pixel grid of the
reference's back-projection, with ``cx = 0.5·W``); its s×s sub-samples sit at offsets ``(k + 0.5)/s - 0.5``.
Cameras and boxes rotate about the vertical axis only, so a ray's direction in any primitive's frame is the
camera-frame direction rotated by the yaw difference, and the road hit depends on the image row only.

A camera renders in two passes:
1. one ray per pixel centre (``cast``): this is the exact depth and motion mask, and the colour of every pixel
   whose 3×3 neighbourhood sees one surface only (textures are filtered by their mip chain at the pixel's
   footprint, so a single sample is already anti-aliased there);
2. ``refine``: 2×2 sub-pixel rays for the pixels on silhouettes (a neighbour hits another primitive) and inside
   the screen rectangle of thin or tiny primitives (poles, far objects a centre ray could miss), box-averaged.
This adaptive supersampling gives the 2×2-supersampled image at a fraction of the rays.

Speed comes from screen-space culling: every primitive's bounding box is clipped to the near plane and
projected to a pixel rectangle; only the (ray, primitive) pairs inside those rectangles are tested, all pairs of
a kind in one vectorised pass, and the per-ray nearest hit is a scatter-min (``np.minimum.at``). There is no
Python loop over pixels or primitives.

Shading is ``albedo · (ambient + diffuse · max(0, n·l))`` with a fixed sun direction: no specular term and no
distance fog, so a static surface point has the same colour in every frame and from both cameras.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from md2bench.data import synth_textures as tx
from md2bench.data.synth_scene import BOX, CYLINDER, GROUND_Y, SPHERE, Primitives

NEAR = 0.05  # metres; nothing is ever this close to a camera
AMBIENT, DIFFUSE = 0.5, 0.6
SUN = np.array([-0.35, -0.85, 0.40]) / np.linalg.norm([-0.35, -0.85, 0.40])  # towards the sun (y is down)

SKY = -1  # hit id of rays that hit nothing (depth 0)
GROUND = 0  # hit id of the road plane; primitive k has id k + 1


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics in pixels for a ``width``×``height`` image."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int


@dataclass(frozen=True)
class RayGrid:
    """The camera-frame rays of an s×s-supersampled image, separable in x and y (z = 1).

    Attributes:
        cam: intrinsics.
        samples: s.
        xs: (W·s,) float32 ``(u - cx)/fx`` per grid column.
        ys: (H·s,) float32 ``(v - cy)/fy`` per grid row.
    """

    cam: Camera
    samples: int
    xs: np.ndarray
    ys: np.ndarray

    @property
    def width(self) -> int:
        return int(self.xs.size)

    @property
    def height(self) -> int:
        return int(self.ys.size)

    def directions(self) -> tuple[np.ndarray, np.ndarray]:
        """x and y components of every ray, each (H·s·W·s,) float32, row-major."""
        return np.tile(self.xs, self.ys.size), np.repeat(self.ys, self.xs.size)


def ray_grid(cam: Camera, samples: int) -> RayGrid:
    """The ray grid of ``cam`` with ``samples``×``samples`` rays per pixel."""
    xs = (((np.arange(cam.width * samples) + 0.5) / samples - 0.5 - cam.cx) / cam.fx).astype(np.float32)
    ys = (((np.arange(cam.height * samples) + 0.5) / samples - 0.5 - cam.cy) / cam.fy).astype(np.float32)
    return RayGrid(cam, samples, xs, ys)


def sky_colour(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, 3) float32 sky colour of rays (x, y, 1) by elevation only: the sky is at infinity, so camera
    translation does not move it (and the camera has no pitch or roll, so yaw does not change elevation)."""
    up = np.clip(-y / np.sqrt(x * x + y * y + 1), 0, 1)[:, None]
    horizon, zenith = np.array([0.80, 0.85, 0.90], np.float32), np.array([0.32, 0.52, 0.85], np.float32)
    return (horizon + (zenith - horizon) * np.sqrt(np.clip(up * 2.5, 0, 1))).astype(np.float32)


@dataclass(frozen=True)
class Hits:
    """Result of one camera pass (flattened ray grid, N rays).

    Attributes:
        t: (N,) float32 camera-z depth of the nearest hit (inf for sky).
        hit: (N,) int32 SKY, GROUND or primitive index + 1.
    """

    t: np.ndarray
    hit: np.ndarray


@dataclass(frozen=True)
class _Local:
    """Per-primitive ray frame for one camera: rotation by Δ = yaw_cam - yaw_prim and the local camera centre."""

    cos: np.ndarray  # (P,) float32
    sin: np.ndarray
    ox: np.ndarray
    oy: np.ndarray
    oz: np.ndarray


def _local_frames(prims: Primitives, cam_yaw: float, origin: np.ndarray) -> _Local:
    rel = origin[None, :] - prims.centre
    c, s = np.cos(prims.yaw), np.sin(prims.yaw)
    delta = cam_yaw - prims.yaw
    return _Local(np.cos(delta).astype(np.float32), np.sin(delta).astype(np.float32),
                  (c * rel[:, 0] - s * rel[:, 2]).astype(np.float32), rel[:, 1].astype(np.float32),
                  (s * rel[:, 0] + c * rel[:, 2]).astype(np.float32))


# ------------------------------------------------------------------------------------------------ culling
_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
_EDGES = np.array([(i, j) for i in range(8) for j in range(i + 1, 8) if bin(i ^ j).count("1") == 1])


def _screen_rects(prims: Primitives, cam_yaw: float, origin: np.ndarray, cam: Camera,
                  t_max: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-space bounding rectangles of the primitives' bounding boxes, clipped to the near plane.

    Returns:
        keep: (P,) bool, the primitive may be visible.
        rect: (P, 4) float64 (u_min, u_max, v_min, v_max) in pixels (meaningful where ``keep``).
        near_z: (P,) float64 smallest camera z of the clipped bounding box (no hit on the primitive is nearer).
    """
    half = prims.half
    ext = np.where(prims.kind[:, None] == BOX, half,
                   np.where(prims.kind[:, None] == CYLINDER, half[:, [0, 1, 0]], half[:, [0, 0, 0]]))
    local = _SIGNS[None] * ext[:, None, :]  # P×8×3 corners in the primitive frame
    # camera frame = R(yaw_cam)^T (R(yaw_prim) p + centre - origin); R(a)^T R(b) = R(b - a)
    rel = (prims.centre - origin) @ np.array([[np.cos(cam_yaw), 0, np.sin(cam_yaw)], [0, 1, 0],
                                              [-np.sin(cam_yaw), 0, np.cos(cam_yaw)]])
    delta = prims.yaw - cam_yaw
    c, s = np.cos(delta)[:, None], np.sin(delta)[:, None]
    pts = np.stack([c * local[..., 0] + s * local[..., 2], local[..., 1], -s * local[..., 0] + c * local[..., 2]],
                   axis=-1) + rel[:, None, :]
    a, b = pts[:, _EDGES[:, 0]], pts[:, _EDGES[:, 1]]  # P×12×3 edge end points
    za, zb = a[..., 2], b[..., 2]
    crosses = (za - NEAR) * (zb - NEAR) < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(crosses, (NEAR - za) / (zb - za), 0.0)
    clipped = a + f[..., None] * (b - a)
    cand = np.concatenate([pts, clipped], axis=1)  # P×20×3
    valid = np.concatenate([pts[..., 2] >= NEAR, crosses], axis=1)
    z = np.where(valid, cand[..., 2], 1.0)
    u = cam.fx * cand[..., 0] / z + cam.cx
    v = cam.fy * cand[..., 1] / z + cam.cy
    rect = np.stack([np.where(valid, u, np.inf).min(1), np.where(valid, u, -np.inf).max(1),
                     np.where(valid, v, np.inf).min(1), np.where(valid, v, -np.inf).max(1)], axis=1)
    near_z = np.where(valid, cand[..., 2], np.inf).min(1)
    keep = (valid.any(1) & (near_z < t_max) & (rect[:, 1] >= -1) & (rect[:, 0] <= cam.width)
            & (rect[:, 3] >= -1) & (rect[:, 2] <= cam.height))
    return keep, rect, near_z


@dataclass(frozen=True)
class Candidates:
    """(ray, primitive) pairs of a pass whose rectangles overlap, for reuse by ``refine``.

    Attributes:
        prim: (M,) int64 primitive index.
        ray: (M,) int64 flat ray (pixel) index.
        bounds: (4,) int64: pairs ``bounds[k]:bounds[k+1]`` are of kind k (BOX, CYLINDER, SPHERE).
        near_z: (P,) float64 per primitive: no hit on it is nearer than this camera z (bounding-box bound).
    """

    prim: np.ndarray
    ray: np.ndarray
    bounds: np.ndarray
    near_z: np.ndarray


def _pairs(index: np.ndarray, rect: np.ndarray, grid: RayGrid) -> tuple[np.ndarray, np.ndarray]:
    """(primitive, ray) pairs for every grid cell inside each primitive's rectangle (generated as row runs)."""
    s, w, h = grid.samples, grid.width, grid.height
    # pixel u -> grid column j: u = (j + 0.5)/s - 0.5  =>  j = s(u + 0.5) - 0.5; one cell of margin
    c0 = np.clip(np.floor(s * (rect[index, 0] + 0.5) - 0.5) - 1, 0, w - 1).astype(np.int64)
    c1 = np.clip(np.ceil(s * (rect[index, 1] + 0.5) - 0.5) + 1, 0, w - 1).astype(np.int64)
    r0 = np.clip(np.floor(s * (rect[index, 2] + 0.5) - 0.5) - 1, 0, h - 1).astype(np.int64)
    r1 = np.clip(np.ceil(s * (rect[index, 3] + 0.5) - 0.5) + 1, 0, h - 1).astype(np.int64)
    heights = r1 - r0 + 1
    run_owner = np.repeat(np.arange(index.size), heights)
    run_row = r0[run_owner] + np.arange(run_owner.size) - np.repeat(np.cumsum(heights) - heights, heights)
    run_len = (c1 - c0 + 1)[run_owner]
    start = np.cumsum(run_len) - run_len  # first pair of each run
    run_first_ray = run_row * w + c0[run_owner]
    ray = np.repeat(run_first_ray - start, run_len) + np.arange(int(run_len.sum()))
    return np.repeat(index[run_owner], run_len), ray


# ------------------------------------------------------------------------------------------- intersection
def _slab(o: np.ndarray, d: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inv = np.float32(1.0) / d
    t1 = (-h - o) * inv
    t2 = (h - o) * inv
    return np.minimum(t1, t2), np.maximum(t1, t2)


def _intersect(kind: int, prim: np.ndarray, x: np.ndarray, y: np.ndarray, loc: _Local,
               half: np.ndarray) -> np.ndarray:
    """Entry distance t of camera rays (x, y, 1) into primitives of one kind (inf where missed).

    Args:
        kind: BOX, CYLINDER or SPHERE.
        prim: (M,) primitive of each pair.
        x, y: (M,) float32 camera-frame ray direction components of each pair.
        loc: per-primitive local ray frames.
        half: (P, 3) float32 primitive half extents.
    """
    cos, sin = loc.cos[prim], loc.sin[prim]
    dx, dz = cos * x + sin, cos - sin * x  # ray direction in the primitive frame (dy = y)
    ox, oy, oz = loc.ox[prim], loc.oy[prim], loc.oz[prim]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == BOX:  # slab test; camera never inside a box
            near_x, far_x = _slab(ox, dx, half[prim, 0])
            near_y, far_y = _slab(oy, y, half[prim, 1])
            near_z, far_z = _slab(oz, dz, half[prim, 2])
            t = np.maximum(np.maximum(near_x, near_y), near_z)
            ok = (t <= np.minimum(np.minimum(far_x, far_y), far_z)) & (t > NEAR)
        elif kind == CYLINDER:  # vertical side, |y| <= half height; caps are never seen from street level
            r = half[prim, 0]
            a = dx * dx + dz * dz
            b = ox * dx + oz * dz
            disc = b * b - a * (ox * ox + oz * oz - r * r)
            t = (-b - np.sqrt(np.maximum(disc, 0))) / a
            ok = (disc >= 0) & (t > NEAR) & (np.abs(oy + t * y) <= half[prim, 1])
        else:  # sphere
            r = half[prim, 0]
            a = dx * dx + y * y + dz * dz
            b = ox * dx + oy * y + oz * dz
            disc = b * b - a * (ox * ox + oy * oy + oz * oz - r * r)
            t = (-b - np.sqrt(np.maximum(disc, 0))) / a
            ok = (disc >= 0) & (t > NEAR)
    return np.where(ok, t, np.float32(np.inf))


def _nearest(prims: Primitives, loc: _Local, prim: np.ndarray, ray: np.ndarray, x: np.ndarray, y: np.ndarray,
             bounds: np.ndarray, best: np.ndarray, hit: np.ndarray, t_max: float) -> None:
    """Scatter the nearest primitive hit of every pair into ``best`` (t) and ``hit`` (id), in place.

    Pairs ``bounds[k]:bounds[k+1]`` are of kind k.
    """
    half = prims.half.astype(np.float32)
    results = []
    for kind in (BOX, CYLINDER, SPHERE):
        seg = slice(int(bounds[kind]), int(bounds[kind + 1]))
        if seg.start == seg.stop:
            continue
        t = _intersect(kind, prim[seg], x[seg], y[seg], loc, half)
        found = np.flatnonzero(t <= t_max)
        r, t = ray[seg][found], t[found]
        np.minimum.at(best, r, t)
        results.append((prim[seg][found], r, t))
    for p, r, t in results:
        won = t == best[r]
        hit[r[won]] = p[won].astype(np.int32) + 1


def _ground(ys: np.ndarray, origin: np.ndarray, t_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Road hits of rays with camera-frame y components ``ys``: t (float32, inf = sky) and id (GROUND or SKY)."""
    with np.errstate(divide="ignore"):
        t = np.where(ys > 0, (GROUND_Y - origin[1]) / ys, np.inf)
    t = np.where(t <= t_max, t, np.inf).astype(np.float32)
    return t, np.where(np.isfinite(t), GROUND, SKY).astype(np.int32)


def cast(prims: Primitives, cam_yaw: float, origin: np.ndarray, grid: RayGrid,
         t_max: float) -> tuple[Hits, Candidates]:
    """Nearest hit of every ray of a grid.

    Args:
        prims: the scene's primitives (street frame).
        cam_yaw: camera yaw in the street frame (the camera has no pitch or roll).
        origin: (3,) camera centre in the street frame.
        grid: the camera's ray grid.
        t_max: hits farther than this camera-z depth count as sky.

    Returns:
        The hits (flattened row-major) and the tested pairs (for ``refine``).
    """
    w = grid.width
    t_row, id_row = _ground(grid.ys, origin, t_max)
    best, hit = np.repeat(t_row, w), np.repeat(id_row, w)
    loc = _local_frames(prims, cam_yaw, origin)
    keep, rect, near_z = _screen_rects(prims, cam_yaw, origin, grid.cam, t_max)
    parts = [_pairs(np.flatnonzero(keep & (prims.kind == kind)), rect, grid) for kind in (BOX, CYLINDER, SPHERE)]
    bounds = np.cumsum([0] + [p.size for p, _ in parts])
    prim = np.concatenate([p for p, _ in parts])
    ray = np.concatenate([r for _, r in parts])
    _nearest(prims, loc, prim, ray, grid.xs[ray % w], grid.ys[ray // w], bounds, best, hit, t_max)
    return Hits(best, hit), Candidates(prim, ray, bounds, near_z)


def refine_pixels(hits: Hits, candidates: Candidates, prims: Primitives, cam: Camera,
                  thin_pixels: float = 3.0) -> np.ndarray:
    """Pixels (flat indices, sorted) that need sub-pixel rays after a one-ray-per-pixel pass.

    A pixel is refined when any of its 8 neighbours hits another primitive (a silhouette crosses it) or when it
    lies in the rectangle of a cylinder (poles, trunks: thinner than a pixel at a distance) or of a primitive
    less than ``thin_pixels`` wide or high on screen (a centre ray could miss it entirely).
    """
    ids = hits.hit.reshape(cam.height, cam.width)
    padded = np.pad(ids, 1, mode="edge")
    edge = np.zeros(ids.shape, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy != 1 or dx != 1:
                edge |= padded[dy:dy + cam.height, dx:dx + cam.width] != ids
    flat = edge.reshape(-1)
    if candidates.prim.size:
        area = np.bincount(candidates.prim, minlength=len(prims))  # rectangle incl. its 1-pixel margin
        thin = (prims.kind == CYLINDER) | (area < (thin_pixels + 3) ** 2)
        flat[candidates.ray[thin[candidates.prim]]] = True
    return np.flatnonzero(flat)


def refine(prims: Primitives, cam_yaw: float, origin: np.ndarray, fine: RayGrid, candidates: Candidates,
           pixels: np.ndarray, t_max: float) -> tuple[Hits, np.ndarray, np.ndarray]:
    """Nearest hits of the s×s sub-pixel rays of ``pixels``, testing only their pixels' candidate pairs.

    Args:
        prims: the scene's primitives.
        cam_yaw: camera yaw in the street frame.
        origin: (3,) camera centre.
        fine: the supersampled ray grid (s = ``fine.samples``).
        candidates: pairs of the one-ray-per-pixel pass (their rectangles have a one-pixel margin, so they cover
            every sub-pixel ray of the pixel).
        pixels: (K,) sorted flat pixel indices.
        t_max: far limit.

    Returns:
        Hits of the K·s² rays (pixel-major, then sub-row, then sub-column) and their x, y direction components.
    """
    s, w = fine.samples, fine.cam.width
    sub_r, sub_c = np.divmod(np.arange(s * s), s)
    rows = (pixels // w)[:, None] * s + sub_r[None, :]  # (K, s²) fine-grid rows and columns
    cols = (pixels % w)[:, None] * s + sub_c[None, :]
    x, y = fine.xs[cols.reshape(-1)], fine.ys[rows.reshape(-1)]
    best, hit = _ground(y, origin, t_max)
    position = np.full(fine.cam.width * fine.cam.height, -1, np.int64)
    position[pixels] = np.arange(pixels.size)
    slot = position[candidates.ray]
    keep = np.flatnonzero(slot >= 0)
    bounds = np.searchsorted(keep, candidates.bounds) * (s * s)  # kind segments survive the filter in order
    prim = np.repeat(candidates.prim[keep], s * s)
    ray = (slot[keep][:, None] * (s * s) + np.arange(s * s)[None, :]).reshape(-1)
    _nearest(prims, _local_frames(prims, cam_yaw, origin), prim, ray, x[ray], y[ray], bounds, best, hit, t_max)
    return Hits(best, hit), x, y


@dataclass(frozen=True)
class CandidateIndex:
    """The candidate pairs of a one-ray-per-pixel pass grouped by pixel, per primitive kind (CSR layout).

    Attributes:
        prim: per kind k, (M_k,) int64 primitives sorted by pixel.
        start: per kind k, (H·W + 1,) int64: the pairs of pixel q are ``prim[k][start[k][q]:start[k][q + 1]]``.
        near_z: (P,) float64 per primitive: no hit on it is nearer than this camera z.
    """

    prim: tuple[np.ndarray, ...]
    start: tuple[np.ndarray, ...]
    near_z: np.ndarray


def index_candidates(candidates: Candidates, pixels: int) -> CandidateIndex:
    """Group the pairs of ``cast`` by pixel (``pixels`` = H·W), once per camera pass, for ``cast_rays``."""
    prims, starts = [], []
    for kind in (BOX, CYLINDER, SPHERE):
        seg = slice(int(candidates.bounds[kind]), int(candidates.bounds[kind + 1]))
        ray = candidates.ray[seg]
        order = np.argsort(ray, kind="stable")
        prims.append(candidates.prim[seg][order])
        starts.append(np.concatenate([[0], np.cumsum(np.bincount(ray, minlength=pixels))]).astype(np.int64))
    return CandidateIndex(tuple(prims), tuple(starts), candidates.near_z)


def cast_rays(prims: Primitives, cam_yaw: float, origin: np.ndarray, cam: Camera, index: CandidateIndex,
              u: np.ndarray, v: np.ndarray, t_max: float, before: np.ndarray | None = None) -> Hits:
    """Nearest hits of rays through arbitrary image points (u, v) of a camera (e.g. reprojected scene points).

    Each ray is tested against the candidate pairs of its nearest pixel: their screen rectangles carry a
    one-pixel margin, so they hold every primitive the ray can hit anywhere inside that pixel.

    Args:
        prims: the scene the candidates were computed for.
        cam_yaw: camera yaw in the street frame; origin: (3,) camera centre.
        cam: intrinsics.
        index: ``index_candidates`` of this camera's pixel-centre pass.
        u, v: (N,) float64 pixel coordinates inside the image, ``-0.5 <= u < W - 0.5``, ``-0.5 <= v < H - 0.5``.
        t_max: far limit.
        before: (N,) camera z per ray: only primitives that may be hit nearer than this are tested (a visibility
            test needs nothing farther); the returned hit is exact wherever it is nearer than ``before``.

    Returns:
        (N,) hits: camera-z depth (inf = sky) and id.
    """
    x = ((u - cam.cx) / cam.fx).astype(np.float32)
    y = ((v - cam.cy) / cam.fy).astype(np.float32)
    pixel = (np.clip(np.rint(v), 0, cam.height - 1).astype(np.int64) * cam.width
             + np.clip(np.rint(u), 0, cam.width - 1).astype(np.int64))
    best, hit = _ground(y, origin, t_max)
    prim_parts, ray_parts, bounds = [], [], [0]
    rays = np.arange(pixel.size)
    for sorted_prim, start in zip(index.prim, index.start):
        first = start[pixel]
        count = start[pixel + 1] - first
        owner = np.repeat(rays, count)
        # pair j of ray i sits at first[i] + j: arange over all pairs, shifted by (first - offset of ray i's run)
        prim = sorted_prim[np.arange(owner.size) + np.repeat(first - (np.cumsum(count) - count), count)]
        if before is not None:
            near = index.near_z[prim] < before[owner]
            prim, owner = prim[near], owner[near]
        prim_parts.append(prim)
        ray_parts.append(owner)
        bounds.append(bounds[-1] + owner.size)
    prim, ray = np.concatenate(prim_parts), np.concatenate(ray_parts)
    _nearest(prims, _local_frames(prims, cam_yaw, origin), prim, ray, x[ray], y[ray], np.array(bounds), best, hit,
             t_max)
    return Hits(best, hit)


# ---------------------------------------------------------------------------------------------- shading
def _box_filter_1d(x: np.ndarray, lo: float, hi: float, width: np.ndarray) -> np.ndarray:
    """Fraction of the interval [x - width/2, x + width/2] covered by [lo, hi]."""
    return np.clip(np.minimum(x + width / 2, hi) - np.maximum(x - width / 2, lo), 0, None) / width


def _markings(x: np.ndarray, z: np.ndarray, across: np.ndarray, along: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased lane markings on the road: coverage of white paint and of yellow paint, each (N,)."""
    across = np.maximum(across, 1e-3)
    along = np.maximum(along, 1e-3)
    yellow = _box_filter_1d(x, -0.22, -0.08, across) + _box_filter_1d(x, 0.08, 0.22, across)  # double centre line
    ax = np.abs(x)
    edge = _box_filter_1d(ax, 6.9, 7.05, across)  # solid edge lines at |x| = 7 (parking lanes beyond)
    lane = _box_filter_1d(ax, 3.425, 3.575, across)  # dashed lane lines at |x| = 3.5: 3 m dash, 9 m period
    period, dash = 9.0, 3.0
    zm = np.mod(z, period)
    dashes = sum(_box_filter_1d(zm, k * period, k * period + dash, along) for k in (-1, 0, 1))
    dashes = np.where(along > period, dash / period, dashes)
    return np.clip(edge + lane * dashes, 0, 1), np.clip(yellow, 0, 1)


def shade(hits: Hits, x_all: np.ndarray, y_all: np.ndarray, samples: int, prims: Primitives, cam: Camera,
          cam_yaw: float, origin: np.ndarray, atlas: tx.TextureAtlas) -> np.ndarray:
    """Colour of rays.

    Args:
        hits: (N,) hits of the rays.
        x_all, y_all: (N,) float32 camera-frame direction components (z = 1).
        samples: rays per pixel and axis (sets the footprint, hence the mip level).
        prims: the primitives the ids refer to.
        cam: intrinsics.
        cam_yaw: camera yaw; origin: (3,) camera centre.
        atlas: textures.

    Returns:
        (N, 3) float32 in [0, 1].
    """
    colour = np.empty((hits.t.size, 3), np.float32)
    sky = np.flatnonzero(hits.hit == SKY)
    colour[sky] = sky_colour(x_all[sky], y_all[sky])
    g = np.flatnonzero(hits.hit == GROUND)
    o = np.flatnonzero(hits.hit > 0)
    f32 = np.float32
    cc, sc = f32(np.cos(cam_yaw)), f32(np.sin(cam_yaw))
    scale = f32(1.0 / (cam.fx * samples))

    # --- the road plane (street frame); its normal is (0, -1, 0)
    t = hits.t[g]
    x, y = x_all[g], y_all[g]
    length = np.sqrt(x * x + y * y + 1)
    g_across = t * length * scale
    g_along = g_across / np.maximum(y / length, f32(0.08))
    gx = f32(origin[0]) + t * (cc * x + sc)
    gz = f32(origin[2]) + t * (cc - sc * x)
    g_light = np.full(g.size, AMBIENT + DIFFUSE * max(-SUN[1], 0.0), f32)

    # --- primitives: hit point in the primitive's frame
    t = hits.t[o]
    x, y = x_all[o], y_all[o]
    length = np.sqrt(x * x + y * y + 1)
    k = hits.hit[o] - 1
    loc = _local_frames(prims, cam_yaw, origin)
    cos, sin = loc.cos[k], loc.sin[k]
    px = loc.ox[k] + t * (cos * x + sin)
    py = loc.oy[k] + t * y
    pz = loc.oz[k] + t * (cos - sin * x)
    half = prims.half.astype(f32)
    # box faces: the axis where the point is farthest out relative to the half extent
    with np.errstate(divide="ignore", invalid="ignore"):  # cylinders and spheres have zero extents
        qx, qy, qz = np.abs(px) / half[k, 0], np.abs(py) / half[k, 1], np.abs(pz) / half[k, 2]
    on_x = (qx >= qy) & (qx >= qz)
    on_y = ~on_x & (qy >= qz)
    on_z = ~on_x & ~on_y
    nx = np.where(on_x, np.sign(px), f32(0))
    ny = np.where(on_y, np.sign(py), f32(0))
    nz = np.where(on_z, np.sign(pz), f32(0))
    u = np.where(on_x, pz, px)  # texture coordinates in metres: the in-face axes, v up
    v = np.where(on_y, pz, -py)
    kind = prims.kind[k]
    rnd = np.flatnonzero(kind != BOX)  # cylinders and spheres (few pixels)
    if rnd.size:
        r = half[k[rnd], 0]
        sph = kind[rnd] == SPHERE
        nx[rnd], nz[rnd] = px[rnd] / r, pz[rnd] / r
        ny[rnd] = np.where(sph, py[rnd] / r, f32(0))
        u[rnd] = np.arctan2(pz[rnd], px[rnd]) * r
        v[rnd] = -py[rnd]
    u += prims.uv_offset[k, 0].astype(f32)
    v += prims.uv_offset[k, 1].astype(f32)
    cy, sy = np.cos(prims.yaw).astype(f32)[k], np.sin(prims.yaw).astype(f32)[k]
    wx, wz = cy * nx + sy * nz, cy * nz - sy * nx  # normal in the street frame
    cos_in = np.abs(wx * (cc * x + sc) + ny * y + wz * (cc - sc * x)) / length
    o_across = t * length * scale
    o_along = o_across / np.maximum(cos_in, f32(0.08))
    o_light = AMBIENT + DIFFUSE * np.maximum(wx * f32(SUN[0]) + ny * f32(SUN[1]) + wz * f32(SUN[2]), f32(0))

    # --- albedo (one lookup for everything), road markings, light
    material = np.concatenate([np.full(g.size, tx.ASPHALT, np.int64), prims.material[k]])
    albedo = tx.sample(atlas, material, np.concatenate([gx, u]), np.concatenate([gz, v]),
                       np.concatenate([g_along, o_along]))
    if g.size:
        white, yellow = _markings(gx, gz, g_across, g_along)
        paint = albedo[: g.size]
        paint += white[:, None] * (np.array([0.88, 0.88, 0.86], f32) - paint)
        paint += yellow[:, None] * (np.array([0.85, 0.68, 0.18], f32) - paint)
    albedo *= np.concatenate([g_light, o_light.astype(f32)])[:, None]
    colour[np.concatenate([g, o])] = np.clip(albedo, f32(0), f32(1))
    return colour


def render_camera(prims: Primitives, cam_yaw: float, origin: np.ndarray, grids: tuple[RayGrid, RayGrid],
                  atlas: tx.TextureAtlas, t_max: float,
                  centre: tuple[Hits, Candidates] | None = None) -> tuple[np.ndarray, Hits]:
    """Render one camera: (H, W, 3) float32 colour and the pixel-centre hits (depth, ids).

    Args:
        prims: the scene.
        cam_yaw: camera yaw in the street frame; origin: (3,) camera centre.
        grids: (one ray per pixel, s×s per pixel) ray grids of the camera.
        atlas: textures.
        t_max: far limit (farther = sky).
        centre: ``cast(prims, cam_yaw, origin, grids[0], t_max)`` when the caller already has it (the result
            does not depend on where it was computed).
    """
    centre_grid, fine = grids
    cam, s = centre_grid.cam, fine.samples
    hits, candidates = centre if centre is not None else cast(prims, cam_yaw, origin, centre_grid, t_max)
    pixels = refine_pixels(hits, candidates, prims, cam)
    plain = np.ones(hits.t.size, bool)
    plain[pixels] = False
    plain = np.flatnonzero(plain)
    x, y = centre_grid.directions()
    colour = np.empty((hits.t.size, 3), np.float32)
    colour[plain] = shade(Hits(hits.t[plain], hits.hit[plain]), x[plain], y[plain], 1, prims, cam, cam_yaw, origin,
                          atlas)
    if pixels.size:
        sub, sx, sy = refine(prims, cam_yaw, origin, fine, candidates, pixels, t_max)
        sub_colour = shade(sub, sx, sy, s, prims, cam, cam_yaw, origin, atlas).reshape(pixels.size, s * s, 3)
        total = sub_colour[:, 0].copy()
        for k in range(1, s * s):
            total += sub_colour[:, k]
        colour[pixels] = total * np.float32(1.0 / (s * s))
    return colour.reshape(cam.height, cam.width, 3), hits
