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

import functools
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


# Lanczos (a = 3) as Pillow resamples 8-bit images (``Image.resize(..., LANCZOS)``), which is how the reference
# builds scale s from scale s − 1 (REFERENCE §3.1): separable, horizontal pass first, each pass rounded to uint8.
LANCZOS_SUPPORT: float = 3.0


def _lanczos(x: np.ndarray) -> np.ndarray:
    """Pillow's ``lanczos_filter``: sinc(x)·sinc(x/3) on [−3, 3), 0 elsewhere (np.sinc is sin(πx)/(πx))."""
    return np.where((x >= -LANCZOS_SUPPORT) & (x < LANCZOS_SUPPORT), np.sinc(x) * np.sinc(x / LANCZOS_SUPPORT), 0.0)


@functools.lru_cache(maxsize=64)
def _lanczos_weights(in_size: int, out_size: int) -> np.ndarray:
    """out×in resampling matrix of Pillow's ``precompute_coeffs`` for a LANCZOS resize of one axis.

    Output pixel j has centre c = (j + 0.5)·scale (scale = in/out); its taps are the input pixels
    [trunc(c − support + 0.5), trunc(c + support + 0.5)) clipped to the image, support = 3·max(scale, 1), with
    weights lanczos((p − c + 0.5)/max(scale, 1)) normalised to sum 1 over the clipped taps (so border pixels
    renormalise rather than pad). Read-only float64 array (cached).
    """
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = LANCZOS_SUPPORT * filter_scale
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for j in range(out_size):
        centre = (j + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)  # C's (int) truncates toward zero
        hi = min(int(centre + support + 0.5), in_size)
        taps = _lanczos((np.arange(lo, hi) - centre + 0.5) / filter_scale)
        total = taps.sum()
        weights[j, lo:hi] = taps / total if total != 0 else taps
    weights.setflags(write=False)
    return weights


def _resample_last(x: torch.Tensor, out_size: int, quantise: bool) -> torch.Tensor:
    """Pillow-LANCZOS resample of the last axis of ``x`` (grey levels 0..255) to ``out_size``.

    Exact halving (the pyramid's case) runs as 12 strided multiply-adds on a zero-padded copy plus a per-output
    gain for the renormalised border pixels (elementwise only: no TF32 matmul can round it); any other ratio
    uses the dense matrix. ``quantise``: round half up and clip to 0..255 as Pillow's 8-bit path does.
    """
    in_size = x.shape[-1]
    weights = _lanczos_weights(in_size, out_size)
    half = 2 * LANCZOS_SUPPORT  # support of an exact halving: taps 2j − 5 .. 2j + 6
    first_interior, last_interior = 3, out_size - 4  # rows whose 12 taps are all inside the image
    if in_size == 2 * out_size and first_interior <= last_interior:
        left = int(half) - 1
        kernel = weights[first_interior, 2 * first_interior - left: 2 * first_interior + int(half) + 1]
        gain = np.ones(out_size)
        for j in list(range(first_interior)) + list(range(last_interior + 1, out_size)):
            inside = [t for t in range(kernel.size) if 0 <= 2 * j - left + t < in_size]
            gain[j] = 1.0 / kernel[inside].sum()
        padded = F.pad(x, (left, kernel.size - left))
        taps = kernel.tolist()
        out = padded[..., 0: 2 * out_size: 2] * taps[0]
        for t in range(1, len(taps)):
            out.add_(padded[..., t: t + 2 * out_size: 2], alpha=taps[t])
        for j in np.flatnonzero(gain != 1.0).tolist():  # python scalars: no host→device copy, no sync
            out[..., j].mul_(float(gain[j]))
    else:
        matrix = torch.tensor(weights, dtype=torch.float64, device=x.device)
        out = (x.double() @ matrix.T).to(x.dtype)
    if quantise:
        out = out.add_(0.5).floor_().clamp_(0.0, 255.0)
    return out


def _halve(x: torch.Tensor, size: tuple[int, int], quantise: bool) -> torch.Tensor:
    """(..., H, W) grey levels -> (..., size): Pillow LANCZOS, horizontal pass then vertical (each skipped if equal)."""
    if x.shape[-1] != size[1]:
        x = _resample_last(x, size[1], quantise)
    if x.shape[-2] != size[0]:
        x = _resample_last(x.transpose(-1, -2), size[0], quantise).transpose(-1, -2)
    return x


def make_pyramid(images: torch.Tensor, scales: Sequence[int]) -> dict[int, torch.Tensor]:
    """Float image pyramid from raw uint8 frames, as the reference's loader builds it.

    Scale s has size (H // 2^s, W // 2^s) and is resized from scale s − 1 (a chain, REFERENCE §3.1) with
    Pillow's LANCZOS filter on 8-bit images: separable, horizontal pass first, each pass rounded to 0..255
    (differences to Pillow are at most 1 grey level, at rare rounding ties). Float input (already in [0, 1]) is
    filtered the same way but not quantised (only clipped). Runs on the tensor's device.

    Args:
        images: uint8 B×F×3×H×W (or float in [0, 1]).
        scales: scales to return, e.g. (0, 1, 2, 3).

    Returns:
        {s: float32 B×F×3×(H//2^s)×(W//2^s) in [0, 1]}; scale 0 is the input as float.
    """
    if images.dim() != 5 or images.shape[2] != 3:
        raise ValueError(f"images must be B×F×3×H×W, got {tuple(images.shape)}")
    quantise = images.dtype == torch.uint8
    base = images.float() / 255.0 if quantise else images.float()
    b, f, c, h, w = base.shape
    out: dict[int, torch.Tensor] = {}
    if 0 in scales:
        out[0] = base
    levels = base * 255.0
    for s in range(1, max(scales, default=0) + 1):
        levels = _halve(levels, (h // 2**s, w // 2**s), quantise)
        if not quantise:
            levels = levels.clamp(0.0, 255.0)
        if s in scales:
            out[s] = levels / 255.0
    return {s: out[s] for s in scales}


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
