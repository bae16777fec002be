"""Where and how the networks run: the device, bf16 autocast, memory format and compilation, the optimiser.

Shared by ``fit`` and ``md2bench bench`` (and ``experiments/pose_probe.py``), so the benchmark times what
training runs.
"""

from __future__ import annotations

import contextlib
import os
import platform

import torch

from md2bench.config import Config


def resolve_device(spec: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` without a GPU fails with a clear message."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device = {spec!r} but CUDA is not available; use train.device=cpu or auto")
    return device


def device_tag(device: torch.device) -> str:
    """The ``md2bench.device`` tag of a run on ``device`` (also the key of the orchestrator's measured rates)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def autocast_for(device: torch.device, cfg: Config) -> contextlib.AbstractContextManager:
    """bf16 autocast when ``train.amp = "bf16"`` on CUDA, or on CPU with ``train.cpu_amp`` (fp16 is never used)."""
    enabled = cfg.train.amp == "bf16" and (device.type == "cuda" or (device.type == "cpu" and cfg.train.cpu_amp))
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def prepare_models(models: torch.nn.ModuleDict, cfg: Config, device: torch.device) -> torch.nn.ModuleDict:
    """Move the networks to ``device`` in the memory format and compilation the config asks for.

    On a CPU device with ``train.keep_freed_memory`` this also configures the process's allocator
    (:func:`md2bench.runtime.keep_freed_memory`).

    Shared by the trainer and the benchmark so the benchmark times what training runs. Neither the memory
    format nor compilation changes a state dict's keys or values.
    """
    if device.type == "cpu" and cfg.train.keep_freed_memory:
        from md2bench.runtime import keep_freed_memory

        keep_freed_memory()  # process-wide, idempotent: the CPU step's large tensors stop page-faulting
    models = models.to(device)
    if cfg.train.channels_last:  # CUDA (tensor cores) and CPU (oneDNN): 1.1-1.3x on this 2-core CPU
        models = models.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        for module in models.values():
            module.compile()  # in place: state-dict keys stay the same
    return models


def make_optimizer(models: torch.nn.ModuleDict, cfg: Config) -> torch.optim.Adam:
    """Adam over every network parameter, the fused implementation where torch has one for the device.

    Fused Adam computes the same update in one kernel per device (on this 2-core CPU 22 ms instead of 120 ms
    for the 27 M parameters of the default models); its state dict is the same as the loop implementation's.
    """
    params = list(models.parameters())
    fused = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=cfg.train.lr, fused=fused or None)


__all__ = ["autocast_for", "device_tag", "make_optimizer", "prepare_models", "resolve_device"]
