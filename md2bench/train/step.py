"""One optimiser step and its numbers: ``train_step``, the scalar diagnostics, non-finite checks, divergence errors.

``train_step`` raises ``NonFiniteLossError`` before the optimiser moves; ``fit`` raises the other
``DivergenceError``s on non-finite validation metrics or weights, so no checkpoint is ever written from them.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from md2bench.config import Config
from md2bench.train.device import autocast_for


# ============================================================================================ errors
class DivergenceError(RuntimeError):
    """Training produced NaN or infinite numbers (loss, validation or weights) at ``step``."""

    step: int = 0


class NonFiniteLossError(DivergenceError):
    """The loss became NaN or infinite; carries the step and the offending diagnostic terms."""

    def __init__(self, step: int, terms: Mapping[str, float], total: float) -> None:
        named = ", ".join(f"{k}={v}" for k, v in terms.items()) or f"total loss={total}"
        super().__init__(f"non-finite loss at step {step}: {named}")
        self.step = step
        self.terms = dict(terms)
        self.total = total


class NonFiniteValidationError(DivergenceError):
    """The epoch's validation metrics are NaN or infinite (the weights no longer give finite predictions)."""

    def __init__(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        named = ", ".join(f"{k}={v}" for k, v in list(values.items())[:8])
        super().__init__(f"non-finite validation after epoch {epoch} (step {step}): {named}")
        self.step = step
        self.values = dict(values)


class NonFiniteStateError(DivergenceError):
    """Weights or optimiser state hold NaN or infinite values; no checkpoint is written from them."""

    def __init__(self, step: int, names: list[str]) -> None:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        super().__init__(f"non-finite weights or optimiser state at step {step}: {shown}")
        self.step = step
        self.names = list(names)


# ============================================================================================ checks
def nonfinite_terms(diagnostics: Mapping[str, Any]) -> dict[str, float]:
    """The diagnostics entries that are NaN or infinite, loss terms (``loss/...``) first."""
    bad: dict[str, float] = {}
    for key, value in diagnostics.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad[key] = float(value.detach().float().flatten()[~torch.isfinite(value.detach().float().flatten())][0])
        elif isinstance(value, float) and not math.isfinite(value):
            bad[key] = value
    return dict(sorted(bad.items(), key=lambda kv: (not kv[0].startswith("loss"), kv[0])))


def nonfinite_state(models: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of parameters, buffers and optimiser-state tensors holding NaN or infinite values."""
    bad = [name for name, t in [*models.named_parameters(), *models.named_buffers()]
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    for index, (param, state) in enumerate(optimizer.state.items()):
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(f"optimizer.state[{index}].{key}")
    return bad


def nonfinite_values(metrics: Mapping[str, float]) -> dict[str, float]:
    """The entries of ``metrics`` that are NaN or infinite."""
    return {k: float(v) for k, v in metrics.items() if not math.isfinite(float(v))}


def scalar_diagnostics(diagnostics: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Scalar entries of the diagnostics as detached float tensors (no device sync)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in diagnostics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[key] = value.detach().float().reshape(())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = torch.tensor(float(value))
    return out


# ============================================================================================ the step
def train_step(
    models: torch.nn.ModuleDict,
    optimizer: torch.optim.Optimizer,
    batch: Mapping[str, torch.Tensor],
    cfg: Config,
    device: torch.device,
    step: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimiser step of the Monodepth2 loss (with the config of that step, ``cfg.at_step(step)``: no
    auto-masking during ``loss.automask_warmup_steps``).

    Args:
        step: the 1-based number of this step (named in the error on a non-finite loss).

    Returns:
        ``(total, diagnostics)``: the detached scalar loss and the scalar diagnostics.

    Raises:
        NonFiniteLossError: the loss is NaN or infinite; no optimiser step was taken.
    """
    from md2bench import method

    models.train()
    with autocast_for(device, cfg):
        total, diagnostics, _ = method.training_loss(models, batch, cfg.at_step(step), device)
    if not bool(torch.isfinite(total.detach()).item()):
        raise NonFiniteLossError(step, nonfinite_terms(diagnostics), float(total.detach()))
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return total.detach().float(), scalar_diagnostics(diagnostics)


__all__ = [
    "DivergenceError", "NonFiniteLossError", "NonFiniteStateError", "NonFiniteValidationError", "nonfinite_state",
    "nonfinite_terms", "nonfinite_values", "scalar_diagnostics", "train_step",
]
