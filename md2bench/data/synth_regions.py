"""Exact region masks of the synthetic world from its geometry: occluded, co-moving and low-texture pixels.

Per frame and camera (names as in ``md2bench.regions.REGION_NAMES``), over pixels whose centre ray hits a
surface (the pixels with GT depth):

- ``occluded``: the surface point seen by the pixel is hidden in at least one temporal neighbour frame (±1,
  same camera; at a drive end only the existing one). The point (camera-z depth × the pixel's centre ray) moves
  with its object — static world, or the moving car's own motion between the frames — and is projected into the
  neighbour camera. It is hidden when it falls outside the neighbour image (u or v outside
  [-0.5, W - 0.5) × [-0.5, H - 0.5), or behind the camera) or when the neighbour's ray through that exact image
  point hits a surface nearer than ``(1 - OCCLUSION_TOLERANCE)`` × the point's depth there (another object, or
  the object's own front when the point's face turns away). Rays are cast with the renderer's own
  intersection code against the neighbour frame's scene, so the mask is exact up to float32 ray arithmetic
  (relative errors ~1e-6, far below the tolerance).
- ``comoving``: pixels of independently moving cars whose image motion to every existing neighbour is below
  ``COMOVING_MAX_FLOW`` pixels (the point moved with its car and projected as above, occlusion ignored) *because
  they move with the camera*: the point's position relative to the camera also changes by less than
  ``COMOVING_MAX_SPEED`` / FPS metres per frame (cars that keep the camera's own speed and heading, like the
  "follower" of even drives; a distant oncoming car with sub-pixel motion is not co-moving).
- ``low_texture``: pixels whose grey level (``GREY_WEIGHTS``·RGB / 255 of the rendered image) has a standard
  deviation below ``TEXTURE_THRESHOLD`` in the ``TEXTURE_WINDOW``×``TEXTURE_WINDOW`` window around them
  (window clipped at the image border), at the rendered resolution.

``ViewCache`` keeps the pixel-centre pass (``synth_render.cast``) of the frames around the one being rendered,
so that the colour rendering and the masks share it and every frame is cast once per chunk of frames.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from md2bench.data import synth_render as sr
from md2bench.data.synth_scene import FPS, Drive, Primitives, pose_matrix
from md2bench.regions import REGION_NAMES

OCCLUSION_TOLERANCE = 1e-3  # relative depth margin of the visibility test (8 cm at 80 m)
COMOVING_MAX_FLOW = 1.0  # pixels (at the rendered resolution)
COMOVING_MAX_SPEED = 1.0  # m/s of the point relative to the camera (0.1 m per frame at 10 fps)
TEXTURE_WINDOW = 7  # pixels, odd
TEXTURE_THRESHOLD = 0.01  # std of the grey level in [0, 1] (2.55 of 255 grey levels)
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma


@dataclass(frozen=True)
class View:
    """One camera at one frame with its pixel-centre pass.

    Attributes:
        prims: the frame's primitives (``Drive.primitives(frame)``).
        yaw: camera yaw in the street frame.
        origin: (3,) float64 camera centre in the street frame.
        hits: the pixel-centre hits (flattened row-major; ``t`` is camera-z depth, ``hit`` the id).
        candidates: the pass's (ray, primitive) pairs.
        index: the pairs grouped by pixel (``synth_render.index_candidates``).
    """

    prims: Primitives
    yaw: float
    origin: np.ndarray
    hits: sr.Hits
    candidates: sr.Candidates
    index: sr.CandidateIndex

    def camera_to_street(self) -> np.ndarray:
        """4×4 float64 camera-to-street transform."""
        return pose_matrix(float(self.origin[0]), float(self.origin[1]), float(self.origin[2]), self.yaw)


def camera_poses(drive: Drive, frame: int, baseline: float) -> tuple[tuple[np.ndarray, float], ...]:
    """((left origin, yaw), (right origin, yaw)) of a frame; the right camera is ``baseline`` metres along the
    left camera's +x axis (street frame, camera height y = 0)."""
    x, z, yaw = drive.ego[frame]
    left = np.array([x, 0.0, z])
    return (left, float(yaw)), (left + np.array([np.cos(yaw), 0.0, -np.sin(yaw)]) * baseline, float(yaw))


def make_view(prims: Primitives, yaw: float, origin: np.ndarray, grid: sr.RayGrid, t_max: float) -> View:
    """Cast the pixel-centre rays of one camera (one ray per pixel)."""
    hits, candidates = sr.cast(prims, yaw, origin, grid, t_max)
    return View(prims, yaw, origin, hits, candidates, sr.index_candidates(candidates, grid.width * grid.height))


class ViewCache:
    """The pixel-centre passes of a drive's frames, built on demand and dropped when no longer needed.

    Args:
        drive: the drive.
        grid: the one-ray-per-pixel grid of the cameras.
        baseline: stereo baseline in metres.
        t_max: far limit of the renderer.
    """

    def __init__(self, drive: Drive, grid: sr.RayGrid, baseline: float, t_max: float) -> None:
        self.drive = drive
        self.grid = grid
        self.baseline = baseline
        self.t_max = t_max
        self._views: dict[int, tuple[View, View]] = {}

    def get(self, frame: int) -> tuple[View, View]:
        """(left, right) views of ``frame``."""
        if frame not in self._views:
            prims = self.drive.primitives(frame)
            (left, left_yaw), (right, right_yaw) = camera_poses(self.drive, frame, self.baseline)
            self._views[frame] = (make_view(prims, left_yaw, left, self.grid, self.t_max),
                                  make_view(prims, right_yaw, right, self.grid, self.t_max))
        return self._views[frame]

    def drop_before(self, frame: int) -> None:
        """Forget the views of frames before ``frame``."""
        for k in [k for k in self._views if k < frame]:
            del self._views[k]


def neighbours(frame: int, frames: int) -> list[int]:
    """The temporal neighbours ±1 of ``frame`` that exist in a drive of ``frames`` frames."""
    return [k for k in (frame - 1, frame + 1) if 0 <= k < frames]


# ----------------------------------------------------------------------------------------------- geometry
def surface_points(view: View, grid: sr.RayGrid) -> tuple[np.ndarray, np.ndarray]:
    """Street-frame points of the pixels whose centre ray hits a surface.

    Returns:
        ``(pixels, points)``: (N,) flat pixel indices (row-major) and (N, 3) float64 points.
    """
    pixels = np.flatnonzero(view.hits.hit != sr.SKY)
    w = grid.width
    t = view.hits.t[pixels].astype(np.float64)
    camera = np.stack([grid.xs[pixels % w].astype(np.float64) * t, grid.ys[pixels // w].astype(np.float64) * t, t],
                      axis=1)
    pose = view.camera_to_street()
    return pixels, camera @ pose[:3, :3].T + pose[:3, 3]


def pixel_owner(drive: Drive, view: View, pixels: np.ndarray) -> np.ndarray:
    """(N,) int64: the moving car each pixel's centre ray hits, -1 for the road and static primitives.

    Args:
        drive: the drive.
        view: a view of the drive.
        pixels: (N,) flat indices of pixels that hit a surface (no sky).
    """
    hit = view.hits.hit[pixels]
    owner = drive.owner_car()[np.maximum(hit - 1, 0)]  # hit id k + 1 = primitive k
    return np.where(hit == sr.GROUND, -1, owner)


def move_points(drive: Drive, owner: np.ndarray, points: np.ndarray, frame: int, to_frame: int) -> np.ndarray:
    """Street-frame points at ``to_frame``: static points stay, points on moving car c follow the car
    (``car_to_street(c, to_frame) · car_to_street(c, frame)⁻¹``).

    Args:
        drive: the drive.
        owner: (N,) moving car of each point, -1 = static (``pixel_owner``).
        points: (N, 3) street-frame points at ``frame``.
        frame, to_frame: frame indices.
    """
    cars = np.unique(owner[owner >= 0])
    if not cars.size:
        return points
    moved = points.copy()
    for car in cars:
        rows = np.flatnonzero(owner == car)
        motion = drive.car_to_street(int(car), to_frame) @ np.linalg.inv(drive.car_to_street(int(car), frame))
        moved[rows] = points[rows] @ motion[:3, :3].T + motion[:3, 3]
    return moved


def to_camera(view: View, points: np.ndarray) -> np.ndarray:
    """(N, 3) camera-frame coordinates of street-frame points (N, 3)."""
    pose = view.camera_to_street()
    return (points - pose[:3, 3]) @ pose[:3, :3]  # Rᵀ (p - o), row-wise


def project(view: View, points: np.ndarray, cam: sr.Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, z) of street-frame points (N, 3) in a view's camera: pixel coordinates and camera-z depth."""
    return image_coords(to_camera(view, points), cam)


def image_coords(local: np.ndarray, cam: sr.Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, z) of camera-frame points (N, 3): pixel coordinates (NaN/inf behind the camera) and camera z."""
    z = local[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = cam.fx * local[:, 0] / z + cam.cx
        v = cam.fy * local[:, 1] / z + cam.cy
    return u, v, z


def hidden_in(view: View, u: np.ndarray, v: np.ndarray, z: np.ndarray, cam: sr.Camera, t_max: float) -> np.ndarray:
    """(N,) bool: points not visible in ``view``: outside its image, behind it, or behind a nearer surface along
    the ray through their exact image position.

    Args:
        view: the camera to test visibility in.
        u, v, z: (N,) the points' pixel coordinates and camera-z depth in that camera (``project``).
        cam: intrinsics.
        t_max: far limit of the renderer.
    """
    inside = (z > sr.NEAR) & (u >= -0.5) & (u < cam.width - 0.5) & (v >= -0.5) & (v < cam.height - 0.5)
    hidden = ~inside
    rows = np.flatnonzero(inside)
    if rows.size:
        limit = z[rows] * (1.0 - OCCLUSION_TOLERANCE)
        hits = sr.cast_rays(view.prims, view.yaw, view.origin, cam, view.index, u[rows], v[rows], t_max, limit)
        hidden[rows] = hits.t.astype(np.float64) < limit
    return hidden


def low_texture(image: np.ndarray, valid: np.ndarray, window: int = TEXTURE_WINDOW,
                threshold: float = TEXTURE_THRESHOLD) -> np.ndarray:
    """Pixels with GT depth whose grey level varies less than ``threshold`` (std) in the window around them.

    Args:
        image: (H, W, 3) uint8 rendered image.
        valid: (H, W) bool, pixels with GT depth.
        window: odd window size; the window is clipped at the image border (only pixels inside count).
        threshold: std of the grey level in [0, 1].

    Returns:
        (H, W) bool.
    """
    grey = image.astype(np.float64) @ np.asarray(GREY_WEIGHTS) / 255.0
    half = window // 2
    h, w = grey.shape
    r0, r1 = np.clip(np.arange(h) - half, 0, h), np.clip(np.arange(h) + half + 1, 0, h)
    c0, c1 = np.clip(np.arange(w) - half, 0, w), np.clip(np.arange(w) + half + 1, 0, w)

    def box_sum(values: np.ndarray) -> np.ndarray:
        """Sum over each pixel's clipped window: cumulative sums along rows, then along columns."""
        rows = np.pad(values, ((1, 0), (0, 0))).cumsum(0)
        rows = rows[r1] - rows[r0]
        cols = np.pad(rows, ((0, 0), (1, 0))).cumsum(1)
        return cols[:, c1] - cols[:, c0]

    count = ((r1 - r0)[:, None] * (c1 - c0)[None, :]).astype(np.float64)
    mean = box_sum(grey) / count
    variance = np.maximum(box_sum(grey * grey) / count - mean * mean, 0.0)
    return valid & (np.sqrt(variance) < threshold)


# ----------------------------------------------------------------------------------------------- the masks
def region_masks(drive: Drive, frame: int, cache: ViewCache, images: tuple[np.ndarray, np.ndarray],
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The region masks of both cameras of one frame.

    Args:
        drive: the drive.
        frame: frame index.
        cache: the drive's views (the neighbours' views are built if absent).
        images: the rendered (H, W, 3) uint8 left and right images of ``frame``.

    Returns:
        (left, right): region name (``REGION_NAMES``) -> (H, W) bool.
    """
    grid = cache.grid
    cam = grid.cam
    shape = (grid.height, grid.width)
    others = neighbours(frame, drive.frames)
    out = []
    for side, (view, image) in enumerate(zip(cache.get(frame), images)):
        pixels, points = surface_points(view, grid)
        owner = pixel_owner(drive, view, pixels)
        occluded = np.zeros(pixels.size, bool)
        comoving = owner >= 0
        here = to_camera(view, points)
        for other in others:
            target = cache.get(other)[side]
            local = to_camera(target, move_points(drive, owner, points, frame, other))
            u, v, z = image_coords(local, cam)
            occluded |= hidden_in(target, u, v, z, cam, cache.t_max)
            flow = np.hypot(u - pixels % grid.width, v - pixels // grid.width)
            shift = np.linalg.norm(local - here, axis=1) / abs(other - frame)  # metres per frame
            comoving &= (z > sr.NEAR) & (flow < COMOVING_MAX_FLOW) & (shift < COMOVING_MAX_SPEED / FPS)
        masks = {name: np.zeros(grid.width * grid.height, bool) for name in ("occluded", "comoving", "valid")}
        masks["occluded"][pixels] = occluded
        masks["comoving"][pixels] = comoving
        masks["valid"][pixels] = True
        result = {name: mask.reshape(shape) for name, mask in masks.items()}
        result["low_texture"] = low_texture(image, result["valid"])
        out.append({name: result[name] for name in REGION_NAMES})
    return out[0], out[1]

