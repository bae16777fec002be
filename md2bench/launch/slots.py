"""Where runs execute: ``Slot``, the visible GPUs (``--gpus``), their free memory, the per-run memory estimate, K runs
per GPU (``auto_runs_per_gpu``) and ``detect_slots``; ``OrchestratorError`` for a request this machine cannot meet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

from md2bench.config import Config
from md2bench.grid import RunSpec

# GPU memory model (rough): the reference needs ~9 GB for M training at 640×192, batch 12, fp32 (its README):
# ~1.5 GB of context, weights and Adam state plus ~7.5 GB of activations, which scale with pixels × batch ×
# frames; bf16 autocast keeps roughly 60 % of them.
_MEM_FIXED_GB = 1.5
_MEM_ACT_GB_REF = 7.5
MAX_AUTO_RUNS_PER_GPU = 8


class OrchestratorError(RuntimeError):
    """A grid cannot be run as asked (bad --gpus, no slots ...); the message says what to change."""


@dataclass(frozen=True)
class Slot:
    """One place a run can execute.

    Attributes:
        label: ``"cuda:0"`` (physical GPU id) or ``"cpu"``.
        gpu: the ``CUDA_VISIBLE_DEVICES`` value for the child, or None on CPU.
        index: slot number (several slots share a GPU when K > 1).
    """

    label: str
    gpu: str | None
    index: int

    @property
    def device(self) -> str:
        """``train.device`` for a child in this slot (the child sees only its GPU, as ``cuda``)."""
        return "cuda" if self.gpu is not None else "cpu"


def visible_gpus(gpus: str = "all") -> list[str]:
    """Physical GPU ids to use: ``"all"`` (every visible GPU), ``"none"``/``"cpu"``, or ``"0,1"``.

    Indices in ``"0,1"`` count within an inherited ``CUDA_VISIBLE_DEVICES``, as CUDA itself does.
    """
    spec = gpus.strip().lower()
    if spec in ("none", "cpu", ""):
        return []
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = _cuda_device_count()
    physical = (
        [g.strip() for g in inherited.split(",") if g.strip()][:count] if inherited is not None else
        [str(i) for i in range(count)]
    )
    if spec == "all":
        return physical
    try:
        wanted = [int(p) for p in spec.split(",") if p.strip()]
    except ValueError as exc:
        raise OrchestratorError(f"--gpus {gpus!r}: use 'all', 'none' or a list like '0,1'") from exc
    bad = [i for i in wanted if not 0 <= i < len(physical)]
    if bad:
        raise OrchestratorError(
            f"--gpus {gpus!r}: GPU(s) {bad} not present; this machine shows {len(physical)} GPU(s)"
        )
    return [physical[i] for i in wanted]


def _cuda_device_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # a broken driver counts as no GPU; the children would fail the same way
        return 0


def free_gpu_memory_gb(gpus: Sequence[str]) -> dict[str, float]:
    """Free memory per physical GPU id, measured with ``torch.cuda.mem_get_info`` in a short subprocess.

    A subprocess, so the orchestrator holds no CUDA context (≈0.5 GB per GPU) for the whole grid. Empty when the
    measurement fails.
    """
    if not gpus:
        return {}
    code = (
        "import json, torch\n"
        "print(json.dumps([torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]))\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(gpus)}
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
        ).stdout.strip().splitlines()[-1]
        free = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return {}
    return {g: float(b) / 2**30 for g, b in zip(gpus, free)}


def estimate_run_memory_gb(cfg: Config) -> float:
    """Rough peak GPU memory of one training run (GB), from the reference's 9 GB at 640×192×12, 3 frames, fp32."""
    pixels = cfg.data.height * cfg.data.width * cfg.train.batch_size * len(cfg.frames)
    act = _MEM_ACT_GB_REF * pixels / (192 * 640 * 12 * 3)
    if cfg.train.amp == "bf16":
        act *= 0.6
    if cfg.model.num_layers == 50:
        act *= 2.5
    if cfg.loss.predictive_mask:
        act *= 1.2
    return _MEM_FIXED_GB + act


def auto_runs_per_gpu(
    specs: Sequence[RunSpec], gpus: Sequence[str], free_gb: Mapping[str, float], cpu_count: int | None = None
) -> int:
    """K runs per GPU: what fits in 85 % of the least free memory, what the CPU cores can feed, at most 8.

    CPU bound: each run uses one process plus ``data.num_workers`` loader workers; K × GPUs × that must not
    exceed the cores. Returns 1 when the free memory is unknown.
    """
    if not gpus or not specs:
        return 1
    if not free_gb or any(g not in free_gb for g in gpus):
        return 1
    need = max(estimate_run_memory_gb(s.config) for s in specs)
    by_memory = int(0.85 * min(free_gb[g] for g in gpus) // need)
    cores = cpu_count or os.cpu_count() or 1
    per_run = 1 + max(s.config.data.num_workers for s in specs)
    by_cpu = cores // (per_run * len(gpus))
    return max(1, min(by_memory, by_cpu, MAX_AUTO_RUNS_PER_GPU))


def detect_slots(
    gpus: str = "all",
    runs_per_gpu: int | None = None,
    cpu_jobs: int = 1,
    specs: Sequence[RunSpec] = (),
    measure: bool = True,
) -> list[Slot]:
    """The execution slots: K per selected GPU, or ``cpu_jobs`` CPU slots when there is none.

    Args:
        gpus: ``"all"``, ``"none"`` or ``"0,1"`` (see ``visible_gpus``).
        runs_per_gpu: K; None picks it from measured free memory and ``estimate_run_memory_gb`` (1 if unknown).
        cpu_jobs: concurrent runs when there is no GPU.
        specs: the runs (for the memory estimate).
        measure: measure free GPU memory when K is None (False: K = 1).
    """
    ids = visible_gpus(gpus)
    if not ids:
        if cpu_jobs < 1:
            raise OrchestratorError(f"--cpu-jobs must be >= 1, got {cpu_jobs}")
        return [Slot("cpu", None, i) for i in range(cpu_jobs)]
    if runs_per_gpu is None:
        free = free_gpu_memory_gb(ids) if measure else {}
        runs_per_gpu = auto_runs_per_gpu(specs, ids, free)
    if runs_per_gpu < 1:
        raise OrchestratorError(f"--runs-per-gpu must be >= 1, got {runs_per_gpu}")
    # Interleave (gpu0, gpu1, gpu0, gpu1, ...) so a partly filled grid spreads over all GPUs.
    return [Slot(f"cuda:{g}", g, k * len(ids) + i) for k in range(runs_per_gpu) for i, g in enumerate(ids)]
