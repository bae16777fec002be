"""Pure, batched camera geometry for view synthesis (Monodepth2's warping, REFERENCE.md §2.2–2.4, §2.9).

Every function takes its batch size, device and dtype from its inputs and keeps no state. Shapes are checked
at entry and bad shapes raise ``ValueError`` naming the argument and the expected layout.

Naming: a 4×4 rigid transform ``T_src_tgt`` maps homogeneous points expressed in the *target* camera into the
*source* camera: ``X_src = T_src_tgt @ X_tgt``. Warping a source image into the target view needs exactly this
transform: every target pixel is lifted to 3D with the predicted depth, moved into the source camera and
projected there, and the source image is sampled at that location.

Pixel coordinates are integers at pixel centres (x = 0..W−1, y = 0..H−1, no half-pixel offset) and are
normalised for ``grid_sample`` as ``u' = 2u/(W−1) − 1``, which is the ``align_corners=True`` convention; every
sampling here therefore passes ``align_corners=True`` explicitly (the reference passed nothing and silently
changed meaning with PyTorch 1.3, REFERENCE.md §7.1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "disp_to_depth",
    "scale_intrinsics",
    "backproject",
    "project_to_grid",
    "pose_vec_to_mat",
    "stereo_transform",
    "source_grids",
    "in_view",
    "sample_sources",
    "warp",
]

# Added to the projected depth before dividing (reference Project3D.eps).
PROJECTION_EPS = 1e-7
# Added to the rotation angle before normalising the axis (reference rot_from_axisangle).
ANGLE_EPS = 1e-7


def _check_shape(name: str, tensor: torch.Tensor, expected: Sequence[int | str]) -> None:
    """Raise ``ValueError`` unless ``tensor`` matches ``expected`` (ints are fixed sizes, strings are free)."""
    layout = "×".join(str(e) for e in expected)
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {layout}, got {type(tensor).__name__}")
    if tensor.dim() != len(expected) or any(
        isinstance(e, int) and size != e for size, e in zip(tensor.shape, expected)
    ):
        raise ValueError(f"{name} must have shape {layout}, got {tuple(tensor.shape)}")


def disp_to_depth(sigmoid: torch.Tensor, min_depth: float, max_depth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Map the decoder's sigmoid output to a scaled disparity and a depth in ``[min_depth, max_depth]``.

    ``scaled = 1/max_depth + (1/min_depth − 1/max_depth)·σ`` and ``depth = 1/scaled``: σ = 0 gives
    ``max_depth``, σ = 1 gives ``min_depth``.

    Args:
        sigmoid: any shape, values in [0, 1] (usually B×1×H×W).
        min_depth: depth for σ = 1 (> 0).
        max_depth: depth for σ = 0 (> min_depth).

    Returns:
        ``(scaled_disp, depth)``, both the shape of ``sigmoid``.
    """
    if not 0 < min_depth < max_depth:
        raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
    min_disp = 1.0 / max_depth
    max_disp = 1.0 / min_depth
    scaled_disp = min_disp + (max_disp - min_disp) * sigmoid
    return scaled_disp, 1.0 / scaled_disp


def scale_intrinsics(K: torch.Tensor, scale: int) -> torch.Tensor:
    """Intrinsics for an image ``2^scale`` times smaller: rows 0 and 1 (fx, skew, cx; fy, cy) divided by 2^scale.

    With the image sides multiples of 2^scale (the config enforces multiples of 32) this equals the reference's
    normalised K times ``(W // 2^s, H // 2^s)``.

    Args:
        K: B×4×4 intrinsics in pixels of the scale-0 image.
        scale: non-negative integer.

    Returns:
        B×4×4 intrinsics in pixels of the scale-``scale`` image.
    """
    _check_shape("K", K, ("B", 4, 4))
    if scale < 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    factor = 2.0**scale
    return torch.cat([K[:, :2] / factor, K[:, 2:]], dim=1)


def _pixel_grid(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """Homogeneous integer pixel coordinates, 3×(H·W), row-major (x varies fastest)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=like.device, dtype=like.dtype),
        torch.arange(width, device=like.device, dtype=like.dtype),
        indexing="ij",
    )
    return torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones_like(xs).reshape(-1)], dim=0)


def backproject(depth: torch.Tensor, inv_K: torch.Tensor) -> torch.Tensor:
    """Lift every pixel to a 3D point in its camera: ``X = depth · K⁻¹ [x, y, 1]ᵀ`` (made homogeneous).

    Args:
        depth: B×1×H×W depth.
        inv_K: B×4×4 inverse intrinsics of the H×W image.

    Returns:
        B×4×(H·W) homogeneous points, pixels in row-major order (index ``y·W + x``).
    """
    _check_shape("depth", depth, ("B", 1, "H", "W"))
    _check_shape("inv_K", inv_K, (depth.shape[0], 4, 4))
    batch, _, height, width = depth.shape
    pixels = _pixel_grid(height, width, depth)
    rays = inv_K[:, :3, :3].to(depth.dtype) @ pixels  # B×3×HW
    points = depth.reshape(batch, 1, height * width) * rays
    return torch.cat([points, torch.ones_like(points[:, :1])], dim=1)


def _project(points: torch.Tensor, P: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Project homogeneous points (..., 4, H·W) with a 3×4 matrix (..., 3, 4) to a (..., H, W, 2) grid."""
    cam = P @ points  # ...×3×HW
    pix = cam[..., :2, :] / (cam[..., 2:3, :] + PROJECTION_EPS)
    lead = pix.shape[:-2]
    pix = pix.reshape(*lead, 2, height, width).movedim(-3, -1)  # ...×H×W×2
    size = torch.tensor([width - 1, height - 1], device=pix.device, dtype=pix.dtype)
    return 2.0 * pix / size - 1.0


def project_to_grid(
    points: torch.Tensor, K: torch.Tensor, T_src_tgt: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Move target-camera points into the source camera and project them to a normalised sampling grid.

    ``p = (K · T_src_tgt)[:3] · X``; ``u = p_x/(p_z + 1e-7)``, ``v = p_y/(p_z + 1e-7)``; then
    ``u' = 2u/(W−1) − 1``, ``v' = 2v/(H−1) − 1`` (the ``align_corners=True`` convention). Points behind the
    camera or outside the image are not masked (as in the reference).

    Args:
        points: B×4×(H·W) homogeneous target-camera points from :func:`backproject`.
        K: B×4×4 source intrinsics (pixels of the H×W image).
        T_src_tgt: B×4×4 transform from target to source camera.
        height: H of the grid.
        width: W of the grid.

    Returns:
        B×H×W×2 grid of (u', v') for ``grid_sample(..., align_corners=True)``.
    """
    _check_shape("points", points, ("B", 4, height * width))
    batch = points.shape[0]
    _check_shape("K", K, (batch, 4, 4))
    _check_shape("T_src_tgt", T_src_tgt, (batch, 4, 4))
    P = (K.to(points.dtype) @ T_src_tgt.to(points.dtype))[:, :3, :]
    return _project(points, P, height, width)


def _rodrigues(axisangle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) from axis-angle vectors (..., 3), the reference's Rodrigues formula."""
    angle = torch.linalg.vector_norm(axisangle, dim=-1, keepdim=True)
    axis = axisangle / (angle + ANGLE_EPS)
    ca, sa = torch.cos(angle), torch.sin(angle)
    c = 1.0 - ca
    x, y, z = axis.unbind(-1)
    ca, sa, c = ca[..., 0], sa[..., 0], c[..., 0]
    rows = [
        torch.stack([x * x * c + ca, x * y * c - z * sa, z * x * c + y * sa], dim=-1),
        torch.stack([x * y * c + z * sa, y * y * c + ca, y * z * c - x * sa], dim=-1),
        torch.stack([z * x * c - y * sa, y * z * c + x * sa, z * z * c + ca], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def pose_vec_to_mat(axisangle: torch.Tensor, translation: torch.Tensor, invert: bool = False) -> torch.Tensor:
    """4×4 rigid transforms from axis-angle rotations and translations (REFERENCE.md §2.3).

    Rotation by Rodrigues with ``θ = ‖a‖`` and axis ``a/(θ + 1e-7)`` (so a = 0 gives the identity).
    Not inverted: ``M = T(t)·R`` (rotate, then translate), i.e. ``[[R, t], [0, 1]]``. Inverted:
    ``M = Rᵀ·T(−t)`` = ``[[Rᵀ, −Rᵀt], [0, 1]]``, exactly the inverse of the non-inverted matrix.

    Args:
        axisangle: B×3 (any leading dims) axis-angle vectors (radians).
        translation: same shape as ``axisangle``.
        invert: return the inverse transform.

    Returns:
        B×4×4 (leading dims of the inputs, then 4×4).
    """
    if not isinstance(axisangle, torch.Tensor) or axisangle.dim() < 1 or axisangle.shape[-1] != 3:
        raise ValueError(f"axisangle must have shape B×3, got {getattr(axisangle, 'shape', type(axisangle))}")
    if not isinstance(translation, torch.Tensor) or translation.shape != axisangle.shape:
        raise ValueError(
            f"translation must have the shape of axisangle {tuple(axisangle.shape)}, "
            f"got {getattr(translation, 'shape', type(translation))}"
        )
    R = _rodrigues(axisangle)
    t = translation.to(R.dtype).unsqueeze(-1)  # ...×3×1
    if invert:
        R = R.transpose(-1, -2)
        t = -(R @ t)
    top = torch.cat([R, t], dim=-1)  # ...×3×4
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def stereo_transform(target_is_left: bool, flipped: bool, baseline: float = 0.1) -> torch.Tensor:
    """``T_src_tgt`` from a stereo image to its partner (REFERENCE.md §2.9).

    Identity rotation; x-translation ``= (−1 if target_is_left else +1) · (−1 if flipped else +1) · baseline``.
    Why −1 for a left target: the right camera sits at ``+baseline`` along x in the left camera's frame, so a
    point's x in the right camera is its left-camera x minus the baseline. A horizontal flip swaps the roles.
    The baseline 0.1 is the reference's normalised one (KITTI's 0.54 m gives the evaluation factor 5.4).

    Args:
        target_is_left: the target image is the left camera's.
        flipped: the sample was flipped horizontally.
        baseline: distance between the cameras in the network's units.

    Returns:
        4×4 float32 tensor.
    """
    sign = (-1.0 if target_is_left else 1.0) * (-1.0 if flipped else 1.0)
    T = torch.eye(4, dtype=torch.float32)
    T[0, 3] = sign * baseline
    return T


def source_grids(
    depth: torch.Tensor,
    T_src_tgt: torch.Tensor,
    K: torch.Tensor,
    inv_K: torch.Tensor,
) -> torch.Tensor:
    """Where each target pixel's point lands in each of N sources: the normalised sampling grids of :func:`warp`.

    Args:
        depth: B×1×H×W depth of the target view.
        T_src_tgt: B×N×4×4, transform n maps target-camera points into source n's camera.
        K: B×4×4 intrinsics of the H×W images (shared by target and sources).
        inv_K: B×4×4 inverse of ``K``.

    Returns:
        B×N×H×W×2 grids of (u', v') in the ``align_corners=True`` convention (−1 and 1 are the border pixel
        centres).
    """
    _check_shape("depth", depth, ("B", 1, "H", "W"))
    batch, _, height, width = depth.shape
    _check_shape("T_src_tgt", T_src_tgt, (batch, "N", 4, 4))
    _check_shape("K", K, (batch, 4, 4))
    _check_shape("inv_K", inv_K, (batch, 4, 4))
    points = backproject(depth, inv_K).unsqueeze(1)  # B×1×4×HW, broadcast over the N sources
    P = (K.to(depth.dtype).unsqueeze(1) @ T_src_tgt.to(depth.dtype))[..., :3, :]  # B×N×3×4
    return _project(points, P, height, width)  # B×N×H×W×2


def in_view(grid: torch.Tensor) -> torch.Tensor:
    """True where a sampling grid point lies inside the source image (``|u'| <= 1`` and ``|v'| <= 1``).

    Outside, ``grid_sample(padding_mode="border")`` returns the clamped border pixel, whose value does not
    depend on the depth along the clamped axis (its gradient there is zero). No tolerance: a sample on the
    border itself may fall on either side by float error (|u'| = 1 ± 1e-7), where its value is the same. A point
    behind the source camera is not told apart here (its projection is mirrored and may land inside): the grid
    alone cannot show it.

    Args:
        grid: (..., 2) normalised grid from :func:`source_grids` or :func:`project_to_grid`.

    Returns:
        (...) bool.
    """
    return (grid.abs() <= 1).all(dim=-1)


def sample_sources(sources: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear ``grid_sample`` of B×N×C×H×W sources at B×N×H×W×2 grids (``padding_mode="border"``,
    ``align_corners=True``, as the reference): B×N×C×H×W."""
    _check_shape("sources", sources, ("B", "N", "C", "H", "W"))
    batch, num, channels, height, width = sources.shape
    _check_shape("grid", grid, (batch, num, height, width, 2))
    sampled = F.grid_sample(
        sources.reshape(batch * num, channels, height, width),
        grid.reshape(batch * num, height, width, 2).to(sources.dtype),
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )
    return sampled.reshape(batch, num, channels, height, width)


def warp(
    sources: torch.Tensor,
    depth: torch.Tensor,
    T_src_tgt: torch.Tensor,
    K: torch.Tensor,
    inv_K: torch.Tensor,
) -> torch.Tensor:
    """Synthesise the target view from N source images, the target depth and the target→source transforms.

    All B·N sources go through one bilinear ``grid_sample`` (``padding_mode="border"``, ``align_corners=True``):
    :func:`sample_sources` at :func:`source_grids`.

    Args:
        sources: B×N×C×H×W source images (C is usually 3).
        depth: B×1×H×W depth of the target view.
        T_src_tgt: B×N×4×4, transform n maps target-camera points into source n's camera.
        K: B×4×4 intrinsics of the H×W images (shared by target and sources).
        inv_K: B×4×4 inverse of ``K``.

    Returns:
        B×N×C×H×W: source n resampled into the target view.
    """
    _check_shape("sources", sources, ("B", "N", "C", "H", "W"))
    batch, num, channels, height, width = sources.shape
    _check_shape("depth", depth, (batch, 1, height, width))
    _check_shape("T_src_tgt", T_src_tgt, (batch, num, 4, 4))
    return sample_sources(sources, source_grids(depth, T_src_tgt, K, inv_K))
