"""Image transforms that run on the training device, and the per-sample augmentation draw.

The data loader only decodes, resizes to scale 0 and flips (``md2bench.data.kitti``); it ships uint8 frames
plus the per-sample jitter parameters. On the device, ``make_pyramid`` builds the float scales and
``color_jitter`` applies one jitter per sample to all of its frames (the reference's semantics: one
``ColorJitter`` draw per item, applied to every frame - REFERENCE §3.1 and §7 item 5).

Colour jitter follows ``torchvision.transforms.functional.adjust_*`` on float tensors:
    brightness f: clamp(f·x, 0, 1)
    contrast f:   clamp(f·x + (1 − f)·mean(gray(x)), 0, 1), the mean over each frame
    saturation f: clamp(f·x + (1 − f)·gray(x), 0, 1)
    hue h:        RGB → HSV, H ← (H + h) mod 1, HSV → RGB
with gray = 0.2989 R + 0.587 G + 0.114 B. Operation ids: 0 brightness, 1 contrast, 2 saturation, 3 hue,
applied in the sample's ``color_order`` (torchvision ``ColorJitter`` draws a random permutation too).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# Ranges of the reference's ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1): factors
# uniform in [0.8, 1.2], hue shift uniform in [-0.1, 0.1]; each applied with probability 0.5 per sample.
JITTER_STRENGTH: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.1)
AUG_PROBABILITY: float = 0.5
IDENTITY_JITTER: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 0.0)
GRAY_WEIGHTS: tuple[float, float, float] = (0.2989, 0.587, 0.114)  # torchvision rgb_to_grayscale (ITU-R 601)


def sample_augmentation(rng: np.random.Generator, color_aug: bool, flip: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """Draw one sample's augmentation: jitter factors, jitter order and the flip decision.

    The same number of values is always drawn, so switching colour augmentation off does not change the
    flip decision of any sample.

    Args:
        rng: a generator seeded per sample from (seed, epoch, index).
        color_aug: colour augmentation is enabled (it then happens with probability 0.5).
        flip: flipping is enabled (it then happens with probability 0.5).

    Returns:
        (factors float32[4] = brightness, contrast, saturation, hue shift; order int64[4], a permutation of
        0..3; flip). Without jitter: factors (1, 1, 1, 0) and order (0, 1, 2, 3).
    """
    coins = rng.random(2)
    order = rng.permutation(4).astype(np.int64)
    b, c, s, h = JITTER_STRENGTH
    factors = np.array(
        [rng.uniform(1 - b, 1 + b), rng.uniform(1 - c, 1 + c), rng.uniform(1 - s, 1 + s), rng.uniform(-h, h)],
        dtype=np.float32,
    )
    do_color = color_aug and bool(coins[0] < AUG_PROBABILITY)
    do_flip = flip and bool(coins[1] < AUG_PROBABILITY)
    if not do_color:
        factors = np.array(IDENTITY_JITTER, dtype=np.float32)
        order = np.arange(4, dtype=np.int64)
    return factors, order, do_flip


def make_pyramid(images: torch.Tensor, scales: Sequence[int]) -> dict[int, torch.Tensor]:
    """Float image pyramid from raw uint8 frames.

    Scale s has size (H // 2^s, W // 2^s), made by area averaging of scale 0 (a box filter: for sizes that
    divide exactly, the same as halving s times). Runs on the tensor's device.

    Args:
        images: uint8 B×F×3×H×W (or float in [0, 1]).
        scales: scales to return, e.g. (0, 1, 2, 3).

    Returns:
        {s: float32 B×F×3×(H//2^s)×(W//2^s) in [0, 1]}; scale 0 is the input as float.
    """
    if images.dim() != 5 or images.shape[2] != 3:
        raise ValueError(f"images must be B×F×3×H×W, got {tuple(images.shape)}")
    base = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    b, f, c, h, w = base.shape
    flat = base.reshape(b * f, c, h, w)
    out: dict[int, torch.Tensor] = {}
    for s in scales:
        if s == 0:
            out[0] = base
            continue
        size = (h // 2**s, w // 2**s)
        out[s] = F.interpolate(flat, size=size, mode="area").reshape(b, f, c, *size)
    return out


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1.0 - factor) * other).clamp(0.0, 1.0)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=-3)
    wr, wg, wb = GRAY_WEIGHTS
    return (wr * r + wg * g + wb * b).unsqueeze(-3)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=-3)
    v, _ = x.max(dim=-3)
    mn, _ = x.min(dim=-3)
    chroma = v - mn
    flat = chroma == 0
    s = torch.where(v > 0, chroma / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    safe = torch.where(flat, torch.ones_like(chroma), chroma)
    # hue sector by which channel is the maximum (ties: red first, then green), in units of 1/6 turn
    h_r = ((g - b) / safe) % 6.0
    h_g = (b - r) / safe + 2.0
    h_b = (r - g) / safe + 4.0
    h = torch.where(v == r, h_r, torch.where(v == g, h_g, h_b))
    h = torch.where(flat, torch.zeros_like(h), h) / 6.0
    return torch.stack((h % 1.0, s, v), dim=-3)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(dim=-3)
    h6 = h * 6.0
    sector = torch.floor(h6)
    frac = h6 - sector
    sector = sector.long() % 6
    p = v * (1.0 - s)
    q = v * (1.0 - s * frac)
    t = v * (1.0 - s * (1.0 - frac))
    # (r, g, b) per sector 0..5: (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    choices = torch.stack((v, q, p, p, t, v, t, v, v, q, p, p, p, p, t, v, v, q), dim=-3)
    choices = choices.reshape(*choices.shape[:-3], 3, 6, *choices.shape[-2:])
    index = sector.unsqueeze(-3).unsqueeze(-3).expand(*sector.shape[:-2], 3, 1, *sector.shape[-2:])
    return torch.gather(choices, -3, index).squeeze(-3)


def _apply(op: int, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """One jitter op on N×F×3×H×W with per-sample factors N (broadcast over frames and pixels)."""
    f = factor.view(-1, 1, 1, 1, 1).to(x.dtype)
    if op == 0:
        return (f * x).clamp(0.0, 1.0)
    if op == 1:
        mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
        return _blend(x, mean, f)
    if op == 2:
        return _blend(x, _gray(x), f)
    hsv = _rgb_to_hsv(x)
    hue = (hsv[:, :, 0:1] + f) % 1.0
    return _hsv_to_rgb(torch.cat((hue, hsv[:, :, 1:]), dim=2))


def color_jitter(images: torch.Tensor, color_aug: torch.Tensor, color_order: torch.Tensor) -> torch.Tensor:
    """Apply each sample's colour jitter to all of its frames.

    Samples whose parameters are the identity (1, 1, 1, 0) are returned unchanged (bit-exact).

    Args:
        images: float B×F×3×H×W in [0, 1].
        color_aug: B×4 brightness, contrast, saturation factors and hue shift.
        color_order: B×4 int, the order of operations (ids 0 brightness, 1 contrast, 2 saturation, 3 hue).

    Returns:
        float B×F×3×H×W in [0, 1].
    """
    if images.dim() != 5 or images.shape[2] != 3:
        raise ValueError(f"images must be B×F×3×H×W, got {tuple(images.shape)}")
    bsz = images.shape[0]
    if color_aug.shape != (bsz, 4) or color_order.shape != (bsz, 4):
        raise ValueError(f"color_aug and color_order must be B×4 with B={bsz}, got {tuple(color_aug.shape)}, "
                         f"{tuple(color_order.shape)}")
    color_aug = color_aug.to(images.device)
    color_order = color_order.to(images.device)
    identity = torch.tensor(IDENTITY_JITTER, device=images.device, dtype=color_aug.dtype)
    active = ~(color_aug == identity).all(dim=1)
    idx = torch.nonzero(active).flatten()
    if idx.numel() == 0:
        return images
    x = images[idx]
    params = color_aug[idx]
    order = color_order[idx]
    for step in range(4):
        for op in range(4):
            sel = torch.nonzero(order[:, step] == op).flatten()
            if sel.numel() == 0:
                continue
            x[sel] = _apply(op, x[sel], params[sel, op])
    out = images.clone()
    out[idx] = x
    return out
