"""Layout and motion of one drive of the synthetic street: analytic primitives, the ego path, moving cars.

Axes are KITTI's camera axes: x right, y down, z forward. The "street frame" has its z axis along the street,
the road plane at ``y = GROUND_Y`` (1.65 m below the camera, KITTI's camera height) and the centre line at
``x = 0``. Traffic keeps right: the ego drives forward (+z) in the outer lane at ``x = +5.25``, overtaking cars
use the inner lane at ``x = +1.75``, oncoming cars the lanes at ``x = -1.75`` and ``-5.25``; cars park at
``|x| = 8``, the curb is at ``|x| = 9`` (sidewalk 0.15 m high), facades start at ``|x| >= 12.2``.

Primitives (nearest hit wins in the ray caster):
- boxes, rotated about the vertical axis (buildings, sidewalk slabs, car bodies and cabins, sign plates),
- vertical cylinders (poles, sign posts, tree trunks), spheres (tree crowns).
The road itself is the infinite plane ``y = GROUND_Y``, handled analytically by the renderer.

Everything is drawn from ``numpy.random.default_rng([seed, stream, drive])``, so a drive depends only on the
world seed and its index (drives render identically in any order or process).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from md2bench.data import synth_textures as tx

GROUND_Y = 1.65  # road plane, metres below the camera (KITTI camera height)
CURB_Y = 1.50  # sidewalk top (0.15 m curb)
CURB_X = 9.0  # |x| of the curb
EGO_LANE_X = 5.25
FPS = 10.0  # KITTI raw frame rate

BOX, CYLINDER, SPHERE = 0, 1, 2

# Car geometry relative to its ground point (centre of the footprint, on the road): body and cabin boxes.
_CAR_PARTS = (
    # (centre offset x, y, z), (half extents x, y, z), is_cabin
    ((0.0, -0.55, 0.0), (0.9, 0.40, 2.1), False),  # body 0.15..0.95 m above the road, 4.2 m long
    ((0.0, -1.22, -0.3), (0.8, 0.27, 1.15), True),  # cabin 0.95..1.49 m
)


@dataclass(frozen=True)
class Primitives:
    """A set of primitives in the street frame (P of them).

    Attributes:
        kind: (P,) int8: BOX, CYLINDER or SPHERE.
        centre: (P, 3) float64 centre in metres.
        yaw: (P,) float64 rotation about +y (heading of the local +z axis is (sin yaw, 0, cos yaw)).
        half: (P, 3) float64: box half extents; cylinder (radius, half height, 0); sphere (radius, 0, 0).
        material: (P,) int64 material id (``synth_textures``).
        moving: (P,) bool: part of an independently moving car.
        uv_offset: (P, 2) float64 texture coordinate offset in metres.
    """

    kind: np.ndarray
    centre: np.ndarray
    yaw: np.ndarray
    half: np.ndarray
    material: np.ndarray
    moving: np.ndarray
    uv_offset: np.ndarray

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    @staticmethod
    def concat(parts: list["Primitives"]) -> "Primitives":
        return Primitives(*(np.concatenate([getattr(p, f) for p in parts]) for f in Primitives.__dataclass_fields__))


class _Builder:
    """Accumulates primitives as Python lists (layout time only; rendering uses the arrays)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, tuple[float, float, float], float, tuple[float, float, float], int, bool,
                              tuple[float, float]]] = []

    def add(self, kind: int, centre: tuple[float, float, float], half: tuple[float, float, float], material: int,
            yaw: float = 0.0, moving: bool = False, uv: tuple[float, float] = (0.0, 0.0)) -> None:
        self.rows.append((kind, centre, yaw, half, material, moving, uv))

    def build(self) -> Primitives:
        if not self.rows:
            return Primitives(np.zeros(0, np.int8), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3)),
                              np.zeros(0, np.int64), np.zeros(0, bool), np.zeros((0, 2)))
        kind, centre, yaw, half, material, moving, uv = zip(*self.rows)
        return Primitives(np.array(kind, np.int8), np.array(centre, np.float64), np.array(yaw, np.float64),
                          np.array(half, np.float64), np.array(material, np.int64), np.array(moving, bool),
                          np.array(uv, np.float64))


@dataclass(frozen=True)
class Drive:
    """One drive: the static street, the ego camera path and the moving cars, for ``frames`` frames.

    Attributes:
        static: primitives that never move.
        ego: (F, 3) float64 camera pose per frame in the street frame: x, z, yaw (camera height y = 0).
        cars: (C, F, 3) float64 ground pose of every moving car per frame: x, z, yaw.
        car_paint: (C,) int64 paint material of every moving car.
        has_stop: the ego stands still over several frames.
        has_follower: a car drives with the ego's own speed and heading (static in the image).
    """

    static: Primitives
    ego: np.ndarray
    cars: np.ndarray
    car_paint: np.ndarray
    has_stop: bool
    has_follower: bool

    @property
    def frames(self) -> int:
        return int(self.ego.shape[0])

    def primitives(self, frame: int) -> Primitives:
        """Static primitives followed by the moving cars' boxes at ``frame``."""
        b = _Builder()
        for (x, z, yaw), paint in zip(self.cars[:, frame], self.car_paint):
            _add_car(b, x, z, float(yaw), int(paint), moving=True, uv_seed=float(paint))
        return Primitives.concat([self.static, b.build()])

    def camera_to_street(self, frame: int) -> np.ndarray:
        """4×4 float64 pose of the left camera at ``frame`` in the street frame (camera-to-street)."""
        x, z, yaw = self.ego[frame]
        return pose_matrix(x, 0.0, z, yaw)

    def car_to_street(self, car: int, frame: int) -> np.ndarray:
        """4×4 float64 pose of moving car ``car`` at ``frame`` (its ground point and heading; street frame)."""
        x, z, yaw = self.cars[car, frame]
        return pose_matrix(x, 0.0, z, yaw)

    def owner_car(self) -> np.ndarray:
        """(P,) int64: for every primitive of ``primitives(frame)`` (any frame), the moving car it belongs to,
        or -1 for static primitives (the static ones come first, then ``len(_CAR_PARTS)`` boxes per car)."""
        cars = np.repeat(np.arange(self.cars.shape[0], dtype=np.int64), len(_CAR_PARTS))
        return np.concatenate([np.full(len(self.static), -1, np.int64), cars])


def rot_y(yaw: float) -> np.ndarray:
    """3×3 rotation about +y: maps the local +z axis to (sin yaw, 0, cos yaw)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def pose_matrix(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    """4×4 rigid transform with rotation ``rot_y(yaw)`` and translation (x, y, z)."""
    m = np.eye(4)
    m[:3, :3] = rot_y(yaw)
    m[:3, 3] = (x, y, z)
    return m


def _add_car(b: _Builder, x: float, z: float, yaw: float, paint: int, moving: bool, uv_seed: float) -> None:
    rot = rot_y(yaw)
    for offset, half, cabin in _CAR_PARTS:
        ox, oy, oz = rot @ np.asarray(offset)
        b.add(BOX, (x + ox, GROUND_Y + oy, z + oz), half, tx.GLASS if cabin else paint, yaw=yaw, moving=moving,
              uv=(uv_seed * 0.77, 0.4 + uv_seed * 0.31))


# ------------------------------------------------------------------------------------------ ego motion
def _ego_path(rng: np.random.Generator, frames: int, stop: bool) -> np.ndarray:
    """(F, 3) x, z, yaw of the camera: varying speed, gentle S-curves, optionally a full stop."""
    dt = 1.0 / FPS
    n = max(frames - 1, 0)  # intervals between frames
    k = np.arange(n, dtype=np.float64)
    v0 = rng.uniform(6.0, 11.0)
    speed = v0 * (1.0 + 0.2 * np.sin(2 * np.pi * k * dt / rng.uniform(4.0, 9.0) + rng.uniform(0, 2 * np.pi)))
    envelope = np.ones(n)
    if stop and n >= 4:
        length = int(np.clip(round(rng.uniform(0.2, 0.35) * n), 2, n - 2))
        start = int(np.clip(round(rng.uniform(0.25, 0.45) * n), 1, n - length - 1))
        ramp = max(1.0, round(0.12 * n))
        dist = np.maximum(np.maximum(start - k, k - (start + length - 1)), 0.0)
        envelope = np.where(dist == 0, 0.0, 0.5 * (1.0 - np.cos(np.pi * np.minimum(dist / ramp, 1.0))))
    s = np.concatenate([[0.0], np.cumsum(speed * envelope * dt)])
    amp, wavelength, phase = rng.uniform(0.3, 0.6), rng.uniform(50.0, 110.0), rng.uniform(0, 2 * np.pi)
    x = EGO_LANE_X + amp * np.sin(2 * np.pi * s / wavelength + phase)
    yaw = np.arctan(amp * 2 * np.pi / wavelength * np.cos(2 * np.pi * s / wavelength + phase))
    return np.stack([x, s, yaw], axis=1)


def _traffic(rng: np.random.Generator, ego: np.ndarray, follower: bool) -> tuple[np.ndarray, np.ndarray]:
    """Moving cars: oncoming convoys, overtaking cars, and optionally one car locked to the ego's motion."""
    frames = ego.shape[0]
    t = np.arange(frames) / FPS
    duration = max(t[-1], 0.1)
    mean_speed = (ego[-1, 1] - ego[0, 1]) / duration
    tracks: list[np.ndarray] = []
    paints: list[int] = []

    def convoy(lane_x: float, direction: float, speed: float, meet_time: float, count: int) -> None:
        meet_frame = int(np.clip(round(meet_time * FPS), 0, frames - 1))
        meet_z = ego[meet_frame, 1] if meet_time <= duration else ego[-1, 1] + mean_speed * (meet_time - duration)
        gap = 0.0
        for _ in range(count):
            z = meet_z - direction * gap + direction * speed * (t - meet_time)
            track = np.stack([np.full(frames, lane_x), z, np.full(frames, 0.0 if direction > 0 else np.pi)], 1)
            tracks.append(track)
            paints.append(int(rng.choice(tx.CAR_PAINTS)))
            gap += rng.uniform(9.0, 25.0)

    for lane in (-1.75, -5.25):  # oncoming
        if rng.random() < 0.75:
            convoy(lane, -1.0, rng.uniform(7.0, 13.0), rng.uniform(0.3, 1.3) * duration, int(rng.integers(1, 3)))
    if rng.random() < 0.7:  # overtaking in the inner lane
        convoy(1.75, 1.0, mean_speed + rng.uniform(3.0, 6.0), rng.uniform(-0.2, 0.6) * duration,
               int(rng.integers(1, 3)))
    if follower:  # same speed and heading as the ego, a fixed distance ahead in its lane
        ahead = rng.uniform(9.0, 16.0)
        c, s = np.cos(ego[:, 2]), np.sin(ego[:, 2])
        tracks.append(np.stack([ego[:, 0] + s * ahead, ego[:, 1] + c * ahead, ego[:, 2]], 1))
        paints.append(int(rng.choice(tx.CAR_PAINTS)))
    if not tracks:
        return np.zeros((0, frames, 3)), np.zeros(0, np.int64)
    return np.stack(tracks), np.array(paints, np.int64)


# ------------------------------------------------------------------------------------------ the street
def _crossings(rng: np.random.Generator, z_min: float, z_max: float) -> list[tuple[float, float, int]]:
    """Side streets as (z start, z end, side) with side -1 (left), +1 (right) or 0 (both)."""
    out: list[tuple[float, float, int]] = []
    z = z_min + rng.uniform(30.0, 90.0)
    while z < z_max:
        width = rng.uniform(10.0, 16.0)
        side = 0 if rng.random() < 0.5 else int(rng.choice([-1, 1]))
        out.append((z, z + width, side))
        z += width + rng.uniform(60.0, 140.0)
    return out


def _blocked(crossings: list[tuple[float, float, int]], side: int, z0: float, z1: float, margin: float = 0.0) -> bool:
    return any(s in (0, side) and z0 < c1 + margin and z1 > c0 - margin for c0, c1, s in crossings)


def _next_crossing(crossings: list[tuple[float, float, int]], side: int, z: float) -> tuple[float, float] | None:
    for c0, c1, s in crossings:
        if s in (0, side) and c1 > z:
            return c0, c1
    return None


def _street(rng: np.random.Generator, z_min: float, z_max: float) -> Primitives:
    b = _Builder()
    crossings = _crossings(rng, z_min, z_max)
    for side in (-1, 1):
        # sidewalk slabs between side streets (x from the curb to behind the back row of buildings)
        z = z_min
        while z < z_max:
            nxt = _next_crossing(crossings, side, z)
            end = z_max if nxt is None else min(nxt[0], z_max)
            if end > z:
                x0, x1 = CURB_X, 50.0
                b.add(BOX, (side * (x0 + x1) / 2, (CURB_Y + GROUND_Y) / 2, (z + end) / 2),
                      ((x1 - x0) / 2, (GROUND_Y - CURB_Y) / 2, (end - z) / 2), tx.SIDEWALK,
                      uv=(rng.uniform(0, 10), rng.uniform(0, 10)))
            if nxt is None:
                break
            z = nxt[1]
        # front row of buildings: varying setbacks, alleys, interrupted by side streets
        z = z_min
        while z < z_max:
            nxt = _next_crossing(crossings, side, z)
            if nxt is not None and nxt[0] <= z:
                z = nxt[1]
                continue
            length = rng.uniform(8.0, 25.0)
            if nxt is not None:
                length = min(length, nxt[0] - z)
            setback = 12.2 + rng.uniform(0.0, 3.0) + (rng.uniform(3.0, 8.0) if rng.random() < 0.25 else 0.0)
            _building(b, rng, side, setback, rng.uniform(8.0, 16.0), z, length, rng.uniform(6.0, 20.0))
            z += length + (rng.uniform(2.0, 6.0) if rng.random() < 0.3 else 0.0)
        # back row: what alleys and side streets look onto
        z = z_min
        while z < z_max:
            length = rng.uniform(20.0, 50.0)
            _building(b, rng, side, 34.0 + rng.uniform(0.0, 6.0), 10.0, z, length, rng.uniform(10.0, 30.0))
            z += length + (rng.uniform(1.0, 4.0) if rng.random() < 0.3 else 0.0)
        # parked cars
        z = z_min + rng.uniform(0.0, 5.0)
        while z < z_max:
            if not _blocked(crossings, side, z, z + 4.2, margin=3.0) and rng.random() < 0.65:
                yaw = (0.0 if rng.random() < 0.5 else np.pi) + rng.normal(0.0, 0.02)
                _add_car(b, side * 8.0 + rng.normal(0.0, 0.05), z + 2.1, yaw, int(rng.choice(tx.CAR_PAINTS)),
                         moving=False, uv_seed=rng.uniform(0, 10))
            z += 4.2 + rng.uniform(0.8, 6.0)
        # street lights
        poles: list[float] = []
        z = z_min + rng.uniform(0.0, 20.0)
        while z < z_max:
            if not _blocked(crossings, side, z, z, margin=1.0):
                height = rng.uniform(6.0, 8.0)
                b.add(CYLINDER, (side * 9.4, CURB_Y - height / 2, z), (rng.uniform(0.08, 0.12), height / 2, 0.0),
                      tx.METAL, uv=(rng.uniform(0, 5), 0.0))
                poles.append(z)
            z += rng.uniform(22.0, 35.0)
        # sign posts with a plate facing the traffic
        z = z_min + rng.uniform(0.0, 20.0)
        while z < z_max:
            if not _blocked(crossings, side, z, z, margin=1.0) and all(abs(z - p) > 1.5 for p in poles):
                b.add(CYLINDER, (side * 9.3, CURB_Y - 1.2, z), (0.04, 1.2, 0.0), tx.METAL)
                b.add(BOX, (side * 9.3, CURB_Y - 2.1, z - 0.06), (0.32, 0.32, 0.02), int(rng.choice(tx.CAR_PAINTS)),
                      uv=(rng.uniform(0, 5), rng.uniform(0, 5)))
                poles.append(z)
            z += rng.uniform(15.0, 40.0)
        # trees
        z = z_min + rng.uniform(0.0, 10.0)
        while z < z_max:
            if (not _blocked(crossings, side, z, z, margin=2.0) and all(abs(z - p) > 2.0 for p in poles)
                    and rng.random() < 0.6):
                trunk, radius = rng.uniform(2.6, 3.4), rng.uniform(1.1, 1.6)
                b.add(CYLINDER, (side * 10.4, CURB_Y - trunk / 2, z), (rng.uniform(0.15, 0.22), trunk / 2, 0.0),
                      tx.BARK, uv=(rng.uniform(0, 5), 0.0))
                b.add(SPHERE, (side * 10.4, CURB_Y - trunk - 0.5 * radius, z), (radius, 0.0, 0.0), tx.LEAVES,
                      uv=(rng.uniform(0, 10), rng.uniform(0, 10)))
            z += rng.uniform(10.0, 25.0)
    return b.build()


def _building(b: _Builder, rng: np.random.Generator, side: int, setback: float, depth: float, z0: float,
              length: float, height: float) -> None:
    cy = CURB_Y - height / 2
    # v offset makes the texture's v coordinate the height above the sidewalk (windows line up with floors)
    b.add(BOX, (side * (setback + depth / 2), cy, z0 + length / 2), (depth / 2, height / 2, length / 2),
          int(rng.choice(tx.FACADES)), uv=(rng.uniform(0.0, 12.8), CURB_Y - cy))


def build_drive(seed: int, index: int, frames: int, view_distance: float) -> Drive:
    """Lay out drive ``index`` of the world ``seed``.

    Every third drive (index 1, 4, 7, ...) has a stop; every even drive has a car that follows the ego with its
    own speed and heading (the auto-masking case), so even a two- or three-drive world has both.

    Args:
        seed: world seed.
        index: drive index (0-based).
        frames: frames in the drive (>= 1).
        view_distance: how far beyond the last camera position the street must extend (metres).
    """
    stop = index % 3 == 1
    follower = index % 2 == 0
    ego = _ego_path(np.random.default_rng([seed, 1, index]), frames, stop)
    cars, paints = _traffic(np.random.default_rng([seed, 2, index]), ego, follower)
    static = _street(np.random.default_rng([seed, 3, index]), -40.0, float(ego[-1, 1]) + view_distance + 20.0)
    return Drive(static, ego, cars, paints, stop, follower)
