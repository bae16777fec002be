"""Pure loss functions of Monodepth2 (REFERENCE.md §2.5–2.8).

No function here reads a config or keeps state: every switch is an argument. Shapes are in the docstrings;
leading dimensions are free where said (e.g. B×N×3×H×W for N warped sources at once).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "SSIM_C1",
    "SSIM_C2",
    "ssim_error",
    "photometric_error",
    "reprojection_loss",
    "mask_regularisation",
    "smoothness_loss",
]

# SSIM stabilisers (Wang et al. 2004 with dynamic range 1), as in the reference.
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
# The reference normalises the disparity by its mean + this before the smoothness term.
SMOOTHNESS_EPS = 1e-7


def _pool3x3(t: torch.Tensor) -> torch.Tensor:
    """3×3 mean over a reflection-padded (by 1) neighbourhood, stride 1: (..., H, W) -> (..., H, W)."""
    # Separable box filter on shifted slices: the same mean as ``avg_pool2d(kernel_size=3, stride=1)`` up to
    # float summation order, but ~2.7x faster forward + backward on CPU (avg_pool2d's backward is slow there).
    height, width = t.shape[-2:]
    padded = F.pad(t.reshape(-1, 1, height, width), (1, 1, 1, 1), mode="reflect")
    rows = padded[..., :-2] + padded[..., 1:-1] + padded[..., 2:]
    pooled = (rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]) / 9.0
    return pooled.reshape(t.shape)


def _box3_adjoint(g: torch.Tensor, dim: int) -> torch.Tensor:
    """Adjoint of the 1-D reflect-padded 3-tap sum along ``dim`` (-1 or -2), without the 1/3.

    The 3-tap sum's adjoint is a 3-tap sum of the zero-padded gradient; the reflection's adjoint adds the
    gradient of the padded end positions to the samples they copied: index 1 gets ``g[0]``, index n−2 gets
    ``g[n−1]``.
    """
    n = g.shape[dim]
    pad = (1, 1) if dim == -1 else (0, 0, 1, 1)
    z = F.pad(g, pad)
    out = z.narrow(dim, 0, n) + z.narrow(dim, 1, n) + z.narrow(dim, 2, n)
    out.narrow(dim, 1, 1).add_(g.narrow(dim, 0, 1))
    out.narrow(dim, n - 2, 1).add_(g.narrow(dim, n - 1, 1))
    return out


def _pool3x3_adjoint(g: torch.Tensor) -> torch.Tensor:
    """The adjoint (transpose) of :func:`_pool3x3`: ``<pool(t), g> = <t, pool_adjoint(g)>`` for all t, g.

    The pool is separable (reflect-pad + 3-tap mean along rows, then along columns), so its adjoint is the
    product of the two 1-D adjoints.
    """
    return _box3_adjoint(_box3_adjoint(g / 9.0, -1), -2)


def _ssim_terms(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """μx, μy and the four SSIM factors A = 2μxμy + C1, B = 2σxy + C2, C = μx² + μy² + C1, D = σx² + σy² + C2."""
    mu_x, mean_xx, mean_xy = _pool3x3(x), _pool3x3(x * x), _pool3x3(x * y)
    mu_y, mean_yy = _pool3x3(y), _pool3x3(y * y)
    prod = mu_x * mu_y
    mu_x2 = mu_x * mu_x
    mu_y2 = mu_y * mu_y
    a = 2 * prod + SSIM_C1
    b = 2 * (mean_xy - prod) + SSIM_C2
    c = mu_x2 + mu_y2 + SSIM_C1
    d = (mean_xx - mu_x2) + (mean_yy - mu_y2) + SSIM_C2
    return mu_x, mu_y, a, b, c, d


class _SSIMErrorFunction(torch.autograd.Function):
    """SSIM dissimilarity with a hand-derived backward for ``x`` (``y`` takes no gradient).

    With S = AB/(CD) and gS = ∂L/∂S, the gradient reaches x through μx, E[x²] and E[xy]:
    ``∂L/∂μx = 2·gS·S·(μy(1/A − 1/B) + μx(1/D − 1/C))``, ``∂L/∂E[x²] = −gS·S/D``, ``∂L/∂E[xy] = 2·gS·S/B``,
    and ``∂L/∂x = pool*(∂L/∂μx) + 2x·pool*(∂L/∂E[x²]) + y·pool*(∂L/∂E[xy])`` (pool* the 3×3 mean's adjoint).
    Autograd through the same formula keeps ~60 full-size intermediates and slice-gradient buffers; this
    backward is three adjoint pools and a handful of element-wise products (2x faster on CPU). Tested against
    autograd (``gradcheck`` in float64 and the plain formula in float32).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        mu_x, mu_y, a, b, c, d = _ssim_terms(x, y)
        ssim = (a * b) / (c * d)
        value = (1 - ssim) / 2
        keep = (value >= 0) & (value <= 1)  # where clamp passes the gradient (torch.clamp's rule)
        ctx.save_for_backward(x, y, mu_x, mu_y, a, b, c, d, ssim, keep)
        return torch.clamp(value, 0, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        x, y, mu_x, mu_y, a, b, c, d, ssim, keep = ctx.saved_tensors
        t = torch.where(keep, grad * ssim * -0.5, 0.0)  # gS·S
        g_mu = 2 * t * (mu_y * (1 / a - 1 / b) + mu_x * (1 / d - 1 / c))
        g_xx = -t / d
        g_xy = 2 * t / b
        adjoint = _pool3x3_adjoint
        return adjoint(g_mu) + 2 * x * adjoint(g_xx) + y * adjoint(g_xy), None


def ssim_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel, per-channel SSIM dissimilarity ``clamp((1 − SSIM)/2, 0, 1)`` (REFERENCE.md §2.5).

    Local statistics use a 3×3 uniform average pool with stride 1 on 1-pixel reflection-padded images:
    ``SSIM = (2μxμy + C1)(2σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))``, C1 = 0.01², C2 = 0.03².

    When only ``x`` needs a gradient and has the broadcast shape (warped sources against a fixed target: the
    training case), a fused backward is used (:class:`_SSIMErrorFunction`); otherwise autograd runs through
    the formula. Both compute the same values.

    Args:
        x: (..., C, H, W) images in [0, 1] (H, W >= 2 for the reflection pad).
        y: broadcastable to ``x`` (e.g. a B×1×3×H×W target against B×N×3×H×W warped sources); statistics of
            ``y`` alone are computed at ``y``'s own shape, so broadcasting costs nothing extra.

    Returns:
        the broadcast shape of ``x`` and ``y``.
    """
    if x.dim() < 2 or y.dim() < 2 or x.shape[-2:] != y.shape[-2:]:
        raise ValueError(f"ssim_error needs images with equal H×W, got {tuple(x.shape)} and {tuple(y.shape)}")
    grad_on = torch.is_grad_enabled()
    if grad_on and x.requires_grad and not y.requires_grad and torch.broadcast_shapes(x.shape, y.shape) == x.shape:
        return _SSIMErrorFunction.apply(x, y)
    return _ssim_error_formula(x, y)


def _ssim_error_formula(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`ssim_error` written as plain tensor algebra (autograd differentiates it)."""
    _, _, a, b, c, d = _ssim_terms(x, y)
    return torch.clamp((1 - (a * b) / (c * d)) / 2, 0, 1)


def photometric_error(pred: torch.Tensor, target: torch.Tensor, ssim: bool, alpha: float = 0.85) -> torch.Tensor:
    """Per-pixel photometric error ``pe`` (REFERENCE.md §2.5), averaged over the colour channels.

    ``pe = α·ssim_error + (1 − α)·L1`` with ``ssim=True``, else ``pe = L1`` (L1: channel mean of |a − b|).

    Args:
        pred: (..., 3, H, W), e.g. B×N×3×H×W warped sources.
        target: broadcastable to ``pred``, e.g. B×1×3×H×W.
        ssim: include the SSIM term.
        alpha: weight of the SSIM term.

    Returns:
        (..., H, W): the broadcast leading dims, channel dim removed (e.g. B×N×H×W).
    """
    if pred.dim() < 3 or target.dim() < 3:
        raise ValueError(
            f"photometric_error needs (..., C, H, W) images, got {tuple(pred.shape)}, {tuple(target.shape)}"
        )
    l1 = (pred - target).abs().mean(dim=-3)
    if not ssim:
        return l1
    return alpha * ssim_error(pred, target).mean(dim=-3) + (1 - alpha) * l1


def reprojection_loss(
    reprojection_errors: torch.Tensor,
    identity_errors: torch.Tensor | None,
    reduce: Literal["min", "avg", "random"],
    noise_std: float = 1e-5,
    generator: torch.Generator | None = None,
    mask: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    draws: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One scale's photometric term: min/avg over sources, implicit auto-masking (REFERENCE.md §2.6).

    Steps, exactly as the reference: (1) a predictive mask multiplies the reprojection errors; (2) ``avg``
    averages the reprojection errors over sources to one channel, and the identity errors too; ``min`` keeps
    all N channels of both; ``random`` (not in the paper's code) keeps, per pixel, the reprojection and identity
    errors of one source drawn uniformly — an unbiased one-source estimate of ``avg``, one source's gradient per
    pixel as ``min`` but without its choice; (3) fresh Gaussian noise of std ``noise_std`` is added to the identity errors
    (tie-break); (4) channels are concatenated as ``[identity, reprojection]`` and the per-pixel minimum is
    taken (a single channel is used as is); (5) the loss is the mean over **all** B·H·W pixels. Pixels where
    an identity channel wins keep that (network-independent) error in the mean: the auto-mask is implicit.

    Args:
        reprojection_errors: B×N×H×W photometric errors of the warped sources against the target.
        identity_errors: B×N×H×W errors of the unwarped sources against the target, or None (no auto-mask).
        reduce: ``"min"`` (per-pixel minimum over sources), ``"avg"`` (mean over sources) or ``"random"`` (one
            source per pixel, drawn uniformly among the valid ones).
        noise_std: std of the tie-break noise added to the identity errors (0: none is drawn).
        generator: random generator for the noise; None uses the default generator of the errors' device.
        mask: B×N×H×W predictive (explainability) mask in (0, 1) multiplying the reprojection errors, or None.
        noise: standard-normal draws of the identity errors' shape after the min/avg step (B×N×H×W for
            ``min``, B×1×H×W for ``avg``) to use instead of drawing them here (``generator`` is then unused);
            lets a caller draw the noise outside compiled code. Scaled by ``noise_std`` like drawn noise.
        valid: B×N×H×W bool, or None (the reference: every source counts everywhere). Where given, a source's
            reprojection error counts only where it is valid (``loss.mask_out_of_view``: its sample lies inside
            the source image): ``min`` never picks an invalid source, ``avg`` averages the valid ones, ``random``
            draws among the valid ones. A pixel with no valid source keeps all of them, as without ``valid``.
            Identity errors are not affected (except that ``random`` takes the drawn source's).
        draws: ``random`` only: B×N×H×W uniform draws in [0, 1) to use instead of drawing them here from
            ``generator`` (lets a caller draw outside compiled code); each pixel takes the valid source with the
            largest draw.

    Returns:
        ``(loss, diagnostics)``: scalar loss; diagnostics (detached) hold ``per_pixel`` (B×H×W chosen value),
        ``chosen`` (B×H×W int64 index into the concatenated ``[identity, reprojection]`` channels) and, when
        identity errors are given, ``automask`` (B×H×W float, µ = 1 where a warped term won, 0 where an
        identity term won).
    """
    if reduce not in ("min", "avg", "random"):
        raise ValueError(f"reduce must be 'min', 'avg' or 'random', got {reduce!r}")
    if reprojection_errors.dim() != 4:
        raise ValueError(f"reprojection_errors must be B×N×H×W, got {tuple(reprojection_errors.shape)}")
    for name, other in (("identity_errors", identity_errors), ("mask", mask), ("valid", valid), ("draws", draws)):
        if other is not None and other.shape != reprojection_errors.shape:
            raise ValueError(
                f"{name} must have the shape of reprojection_errors {tuple(reprojection_errors.shape)}, "
                f"got {tuple(other.shape)}"
            )
    errors = reprojection_errors if mask is None else reprojection_errors * mask
    if valid is not None:
        valid = valid | ~valid.any(dim=1, keepdim=True)  # a pixel no source sees keeps every source
    if reduce == "avg":
        if valid is None:
            errors = errors.mean(dim=1, keepdim=True)
        else:
            weights = valid.to(errors.dtype)
            errors = (errors * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True)
    elif reduce == "random":
        if draws is None:
            draws = torch.rand(errors.shape, generator=generator, device=errors.device, dtype=errors.dtype)
        if valid is not None:
            draws = torch.where(valid, draws, torch.full_like(draws, -1.0))
        pick = draws.argmax(dim=1, keepdim=True)  # B×1×H×W source index
        errors = errors.gather(1, pick)
        if identity_errors is not None:
            identity_errors = identity_errors.gather(1, pick)
    elif valid is not None:
        errors = torch.where(valid, errors, torch.full_like(errors, float("inf")))
    num_identity = 0
    if identity_errors is not None:
        identity = identity_errors.mean(dim=1, keepdim=True) if reduce == "avg" else identity_errors
        if noise_std > 0:
            if noise is None:
                noise = torch.randn(
                    identity.shape, generator=generator, device=identity.device, dtype=identity.dtype
                )
            elif noise.shape != identity.shape:
                raise ValueError(f"noise must have shape {tuple(identity.shape)}, got {tuple(noise.shape)}")
            identity = identity + noise * noise_std
        num_identity = identity.shape[1]
        errors = torch.cat([identity, errors], dim=1)
    if errors.shape[1] == 1:
        per_pixel = errors[:, 0]
        chosen = torch.full_like(per_pixel, num_identity, dtype=torch.int64)
    else:
        per_pixel, chosen = torch.min(errors, dim=1)
    diagnostics = {"per_pixel": per_pixel.detach(), "chosen": chosen}
    if identity_errors is not None:
        diagnostics["automask"] = (chosen >= num_identity).to(per_pixel.dtype)
    return per_pixel.mean(), diagnostics


def mask_regularisation(mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of a predictive mask against all-ones: ``mean(−max(log m, −100))``.

    This is ``F.binary_cross_entropy(mask, ones)`` (PyTorch clamps the log at −100), written out so that it is
    also allowed under autocast.

    Args:
        mask: any shape, values in [0, 1].

    Returns:
        scalar.
    """
    return -torch.clamp(torch.log(mask), min=-100.0).mean()


def smoothness_loss(disp: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Edge-aware smoothness of the mean-normalised disparity (REFERENCE.md §2.7).

    ``d* = d / (mean_{H,W} d + 1e-7)`` per image; ``∂x = |d*(x) − d*(x+1)| · exp(−mean_c |I(x) − I(x+1)|)``
    and likewise for y; loss = mean(∂x) + mean(∂y), each over its own shape.

    Args:
        disp: B×1×H×W disparity (the reference feeds the raw sigmoid at its native scale).
        image: B×C×H×W guide image at the same resolution (the raw target).

    Returns:
        scalar.
    """
    if disp.dim() != 4 or disp.shape[1] != 1:
        raise ValueError(f"disp must be B×1×H×W, got {tuple(disp.shape)}")
    if image.dim() != 4 or image.shape[0] != disp.shape[0] or image.shape[-2:] != disp.shape[-2:]:
        raise ValueError(f"image must be B×C×H×W matching disp {tuple(disp.shape)}, got {tuple(image.shape)}")
    norm = disp / (disp.mean(dim=(2, 3), keepdim=True) + SMOOTHNESS_EPS)
    grad_disp_x = (norm[..., :, :-1] - norm[..., :, 1:]).abs()
    grad_disp_y = (norm[..., :-1, :] - norm[..., 1:, :]).abs()
    grad_img_x = (image[..., :, :-1] - image[..., :, 1:]).abs().mean(dim=1, keepdim=True)
    grad_img_y = (image[..., :-1, :] - image[..., 1:, :]).abs().mean(dim=1, keepdim=True)
    return (grad_disp_x * torch.exp(-grad_img_x)).mean() + (grad_disp_y * torch.exp(-grad_img_y)).mean()
