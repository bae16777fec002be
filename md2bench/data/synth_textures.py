"""Procedural, periodic texture tiles for the synthetic world, with a mip chain and trilinear sampling.

Every material is one 256×256 RGB albedo tile (periodic: it wraps seamlessly) with a known texel size in
metres. Surfaces look their colour up by a 2-D coordinate in metres on the surface (world-anchored for static
objects, object-local for cars), so a surface point keeps its colour from frame to frame. To keep distant and
grazing surfaces free of aliasing (which would make static points flicker and break brightness constancy),
each tile has a box-filtered mip chain (256, 128, ..., 1) and lookups blend the two levels around the
footprint of the sample (trilinear filtering).

All tiles are packed into one flat ``atlas`` array so that a single vectorised lookup serves pixels of every
material at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TILE = 256  # texels per side of every tile (power of two: wrap-around is a bit mask)
LEVELS = 9  # mip levels 256, 128, ..., 1

# Material ids (indices into the atlas). Facade and car paint come in variants.
ASPHALT = 0
SIDEWALK = 1
FACADES = (2, 3, 4, 5)
CAR_PAINTS = (6, 7, 8, 9, 10, 11)
GLASS = 12
METAL = 13
BARK = 14
LEAVES = 15
NUM_MATERIALS = 16


@dataclass(frozen=True)
class TextureAtlas:
    """All material tiles with their mip chains, flattened, in a layout made for bilinear lookups.

    Attributes:
        quads: (T, 12) float32: for every texel (x, y) of every level of every material, the RGB of texels
            (x, y), (x+1, y), (x, y+1), (x+1, y+1) (wrapping), so that one gather serves a bilinear lookup.
        offsets: (NUM_MATERIALS, LEVELS) int64 index of texel (0, 0) of level l of material m in ``quads``.
        texel_size: (NUM_MATERIALS,) float32 size of one level-0 texel in metres.
    """

    quads: np.ndarray
    offsets: np.ndarray
    texel_size: np.ndarray

    @property
    def packed(self) -> np.ndarray:
        """(T,) view of ``quads`` with one 48-byte item per texel: a 1-D ``np.take`` gathers a whole quad."""
        return self.quads.view(np.dtype((np.void, 48))).reshape(-1)

    def level(self, material: int, level: int) -> np.ndarray:
        """The (size, size, 3) RGB tile of one material and mip level (row 0 is v = 0)."""
        size = TILE >> level
        start = int(self.offsets[material, level])
        return self.quads[start:start + size * size, :3].reshape(size, size, 3)


# ------------------------------------------------------------------------------------------- generation
def _periodic_noise(rng: np.random.Generator, cells: int, cells_y: int | None = None) -> np.ndarray:
    """Smooth periodic value noise on a ``cells``×``cells_y`` lattice, upsampled to TILE×TILE, in [-1, 1]."""
    cy = cells if cells_y is None else cells_y
    lattice = rng.uniform(-1.0, 1.0, size=(cy, cells))

    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = (np.arange(TILE) + 0.5) * n / TILE
        i0 = np.floor(x).astype(np.int64)
        f = x - i0
        f = f * f * (3.0 - 2.0 * f)  # smoothstep: C1 at lattice points
        return i0 % n, (i0 + 1) % n, f

    x0, x1, fx = axis(cells)
    y0, y1, fy = axis(cy)
    rows = lattice[:, x0] * (1 - fx) + lattice[:, x1] * fx  # (cy, TILE)
    return rows[y0] * (1 - fy)[:, None] + rows[y1] * fy[:, None]


def _fbm(rng: np.random.Generator, cells: tuple[int, ...], gain: float = 0.6, stretch_y: int = 1) -> np.ndarray:
    """Sum of noise octaves (finest last) with amplitude ``gain`` per octave, normalised to about [-1, 1]."""
    total = np.zeros((TILE, TILE))
    amp, norm = 1.0, 0.0
    for c in cells:
        total += amp * _periodic_noise(rng, c, max(1, c // stretch_y))
        norm += amp
        amp *= gain
    return total / norm


def _tint(gray: np.ndarray, colour: tuple[float, float, float]) -> np.ndarray:
    return gray[..., None] * np.asarray(colour)[None, None, :]


def _blocks(rng: np.random.Generator, h: int, w: int, offset_odd_rows: bool) -> np.ndarray:
    """Per-block random values for a TILE×TILE grid of h×w-texel blocks (rows offset by w/2 if asked)."""
    rows, cols = TILE // h, TILE // w
    values = rng.uniform(-1.0, 1.0, size=(rows, cols))
    yy, xx = np.mgrid[0:TILE, 0:TILE]
    r = yy // h
    shift = (r % 2) * (w // 2) if offset_odd_rows else 0
    c = ((xx + shift) // w) % cols
    return values[r, c]


def _joints(h: int, w: int, offset_odd_rows: bool, width: int = 1) -> np.ndarray:
    """1 on the mortar/joint texels of an h×w block grid, else 0."""
    yy, xx = np.mgrid[0:TILE, 0:TILE]
    shift = ((yy // h) % 2) * (w // 2) if offset_odd_rows else 0
    return (((yy % h) < width) | (((xx + shift) % w) < width)).astype(np.float64)


def _windows(rng: np.random.Generator, base: np.ndarray, spacing_x: int, floor_h: int, win_w: int, win_h: int,
             sill: int) -> np.ndarray:
    """Paint a grid of framed windows (dark glass with a per-window tint) onto an RGB facade tile.

    Rows of the tile run upward (row 0 = ground level), so ``sill`` counts texels above each floor's bottom.
    """
    out = base.copy()
    yy, xx = np.mgrid[0:TILE, 0:TILE]
    lx = xx % spacing_x - (spacing_x - win_w) // 2
    ly = yy % floor_h - sill
    inside = (lx >= 0) & (lx < win_w) & (ly >= 0) & (ly < win_h)
    frame = inside & ((lx < 2) | (lx >= win_w - 2) | (ly < 2) | (ly >= win_h - 2) | (np.abs(lx - win_w // 2) < 1))
    n_cols, n_rows = TILE // spacing_x, TILE // floor_h
    tint = rng.uniform(0.6, 1.4, size=(n_rows, n_cols))[yy // floor_h, xx // spacing_x]
    glass = np.stack([0.10 * tint, 0.13 * tint, 0.18 * tint], axis=-1)
    # a soft vertical gradient inside each pane (sky-lit top), fixed in the texture: no view dependence
    glass = glass * (0.8 + 0.4 * np.clip(ly / max(win_h, 1), 0, 1))[..., None]
    glass = glass * (1.0 + 0.25 * _fbm(rng, (32, 64)))[..., None]
    out[inside] = glass[inside]
    out[frame] = np.array([0.72, 0.70, 0.66])
    return out


def _facade(rng: np.random.Generator, style: int) -> np.ndarray:
    noise = _fbm(rng, (8, 16, 32, 64, 128))
    if style == 0:  # red brick, bricks 0.4 × 0.2 m (8 × 4 texels at 5 cm)
        tone = _blocks(rng, 4, 8, True)
        gray = 1.0 + 0.12 * tone + 0.10 * noise
        rgb = _tint(gray, (0.55, 0.27, 0.20))
        rgb = np.where(_joints(4, 8, True)[..., None] > 0, np.array([0.70, 0.68, 0.62]), rgb)
        return _windows(rng, rgb, 64, 64, 24, 32, 18)
    if style == 1:  # beige plaster, narrow windows
        gray = 1.0 + 0.10 * noise + 0.05 * _fbm(rng, (64, 128))
        rgb = _tint(gray, (0.80, 0.72, 0.58))
        return _windows(rng, rgb, 32, 64, 16, 34, 16)
    if style == 2:  # concrete panels, wide windows
        tone = _blocks(rng, 32, 64, False)
        gray = 1.0 + 0.08 * tone + 0.12 * noise
        rgb = _tint(gray, (0.58, 0.58, 0.56))
        rgb = np.where(_joints(32, 64, False)[..., None] > 0, np.array([0.40, 0.40, 0.40]), rgb)
        return _windows(rng, rgb, 64, 64, 44, 26, 20)
    # pale yellow brick with grey stone courses
    tone = _blocks(rng, 4, 8, True)
    gray = 1.0 + 0.10 * tone + 0.10 * noise
    rgb = _tint(gray, (0.78, 0.68, 0.42))
    courses = ((np.arange(TILE) % 64) < 6)[:, None] & np.ones((1, TILE), dtype=bool)
    rgb = np.where(courses[..., None], _tint(1.0 + 0.1 * noise, (0.55, 0.55, 0.55)), rgb)
    return _windows(rng, rgb, 64, 64, 28, 30, 20)


_CAR_COLOURS = (
    (0.70, 0.10, 0.10),
    (0.12, 0.25, 0.62),
    (0.85, 0.85, 0.82),
    (0.18, 0.18, 0.20),
    (0.85, 0.70, 0.12),
    (0.20, 0.50, 0.30),
)


def _car_paint(rng: np.random.Generator, colour: tuple[float, float, float]) -> np.ndarray:
    # Paint with a high-contrast livery (two tones from thresholded noise), dirt and decal stripes, so that a
    # car's pixels are distinctive: a wrong (static-world) warp of a moving car must show up as a large error.
    livery = np.clip(_fbm(rng, (8, 16, 32)) * 4.0, -1.0, 1.0)
    gray = 1.0 + 0.35 * livery + 0.15 * _fbm(rng, (32, 64, 128))
    rgb = _tint(gray, colour) + 0.12 * (livery > 0.5)[..., None]
    yy = np.arange(TILE)[:, None] * np.ones((1, TILE))
    for _ in range(3):
        y0, width = rng.integers(0, TILE), rng.integers(2, 7)
        band = ((yy - y0) % TILE) < width
        rgb = np.where(band[..., None], rgb * rng.uniform(0.3, 0.5), rgb)
    return rgb


def _build_tile(rng: np.random.Generator, material: int) -> tuple[np.ndarray, float]:
    """One TILE×TILE×3 albedo tile and its texel size in metres."""
    if material == ASPHALT:
        gray = 1.0 + 0.16 * _fbm(rng, (4, 8, 16, 32)) + 0.08 * _periodic_noise(rng, 256)
        patches = np.clip(_periodic_noise(rng, 6), 0.3, 1.0) - 0.3  # darker repaired patches
        return _tint(gray * (1 - 0.35 * patches), (0.33, 0.33, 0.35)), 0.04
    if material == SIDEWALK:  # 0.6 m slabs: 16 texels at 3.75 cm
        tone = _blocks(rng, 16, 16, False)
        gray = 1.0 + 0.07 * tone + 0.10 * _fbm(rng, (16, 32, 64, 128))
        rgb = _tint(gray, (0.66, 0.64, 0.60))
        return np.where(_joints(16, 16, False)[..., None] > 0, rgb * 0.6, rgb), 0.0375
    if material in FACADES:
        return _facade(rng, FACADES.index(material)), 0.05
    if material in CAR_PAINTS:
        return _car_paint(rng, _CAR_COLOURS[CAR_PAINTS.index(material)]), 0.02
    if material == GLASS:
        return _tint(1.0 + 0.35 * _fbm(rng, (8, 16, 32, 64)), (0.10, 0.12, 0.15)), 0.02
    if material == METAL:
        return _tint(1.0 + 0.15 * _fbm(rng, (8, 32, 128)), (0.48, 0.49, 0.52)), 0.02
    if material == BARK:
        return _tint(1.0 + 0.35 * _fbm(rng, (16, 32, 64, 128), stretch_y=4), (0.36, 0.26, 0.18)), 0.02
    if material == LEAVES:
        gray = 1.0 + 0.45 * _fbm(rng, (16, 32, 64, 128), gain=0.8)
        return _tint(gray, (0.22, 0.40, 0.15)), 0.05
    raise ValueError(f"unknown material id {material}; valid ids are 0..{NUM_MATERIALS - 1}")


def build_atlas(seed: int) -> TextureAtlas:
    """Generate every material tile from ``seed`` and pack them with their mip chains.

    Args:
        seed: world seed; the same seed gives the same atlas (bit for bit).

    Returns:
        The packed atlas.
    """
    per_material = sum((TILE >> lv) ** 2 for lv in range(LEVELS))
    quads = np.empty((NUM_MATERIALS * per_material, 12), np.float32)
    offsets = np.zeros((NUM_MATERIALS, LEVELS), dtype=np.int64)
    sizes = np.zeros(NUM_MATERIALS, dtype=np.float32)
    position = 0
    for material in range(NUM_MATERIALS):
        rng = np.random.default_rng([seed, 7919, material])
        tile, texel = _build_tile(rng, material)
        level = np.clip(tile, 0.0, 1.0).astype(np.float32)
        sizes[material] = texel
        for lv in range(LEVELS):
            offsets[material, lv] = position
            n = level.shape[0] * level.shape[1]
            block = quads[position:position + n].reshape(level.shape[0], level.shape[1], 4, 3)
            right = np.roll(level, -1, axis=1)
            block[:, :, 0], block[:, :, 1] = level, right
            block[:, :, 2], block[:, :, 3] = np.roll(level, -1, axis=0), np.roll(right, -1, axis=0)
            position += n
            if lv + 1 < LEVELS:  # 2×2 box filter; exact for a periodic tile
                level = 0.25 * (level[0::2, 0::2] + level[1::2, 0::2] + level[0::2, 1::2] + level[1::2, 1::2])
    return TextureAtlas(quads, offsets, sizes)


# --------------------------------------------------------------------------------------------- sampling
def sample(atlas: TextureAtlas, material: np.ndarray, u: np.ndarray, v: np.ndarray,
           footprint: np.ndarray) -> np.ndarray:
    """Trilinear (mip-mapped, wrapping) albedo lookup.

    Args:
        atlas: the packed tiles.
        material: (N,) int material ids.
        u: (N,) float32 horizontal surface coordinate in metres.
        v: (N,) float32 vertical surface coordinate in metres (row 0 of a tile is v = 0, rows go up with v).
        footprint: (N,) float32 size of the sample's footprint on the surface in metres (selects the mip level).

    Returns:
        (N, 3) float32 albedo.
    """
    f32 = np.float32
    texel = atlas.texel_size[material]
    lam = np.minimum(np.log2(np.maximum(footprint / texel, f32(1))), f32(LEVELS - 1)).astype(f32)
    l0 = np.floor(lam).astype(np.int64)
    l1 = np.minimum(l0 + 1, LEVELS - 1)
    w1 = lam - l0
    index0, fx0, fy0 = _texel_index(atlas, material, u, v, texel, l0)
    index1, fx1, fy1 = _texel_index(atlas, material, u, v, texel, l1)
    # one gather of both levels' 2×2 quads: (N, 8 texels, 3)
    quads = np.take(atlas.packed, np.stack([index0, index1], axis=1)).view(f32).reshape(-1, 8, 3)
    weights = np.empty((material.size, 8), f32)
    _bilinear_weights(weights[:, :4], fx0, fy0, f32(1) - w1)
    _bilinear_weights(weights[:, 4:], fx1, fy1, w1)
    return np.matmul(weights[:, None, :], quads)[:, 0]


def _texel_index(atlas: TextureAtlas, material: np.ndarray, u: np.ndarray, v: np.ndarray, texel: np.ndarray,
                 level: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quad index (top-left texel) and bilinear fractions of (u, v) at a mip level."""
    size = TILE >> level
    inv_scale = np.float32(1.0) / (texel * (1 << level).astype(np.float32))
    x = u * inv_scale - np.float32(0.5)  # texel centres at integer + 0.5
    y = v * inv_scale - np.float32(0.5)
    xf, yf = np.floor(x), np.floor(y)
    mask = size - 1
    index = atlas.offsets[material, level] + (yf.astype(np.int64) & mask) * size + (xf.astype(np.int64) & mask)
    return index, x - xf, y - yf


def _bilinear_weights(out: np.ndarray, fx: np.ndarray, fy: np.ndarray, scale: np.ndarray) -> None:
    """Write into ``out`` (N, 4) the weights of quad texels (x, y), (x+1, y), (x, y+1), (x+1, y+1), × ``scale``."""
    left = np.float32(1) - fx
    top = (np.float32(1) - fy) * scale
    bottom = fy * scale
    np.multiply(top, left, out=out[:, 0])
    np.multiply(top, fx, out=out[:, 1])
    np.multiply(bottom, left, out=out[:, 2])
    np.multiply(bottom, fx, out=out[:, 3])
