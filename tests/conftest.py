"""Test-wide settings.

The CI machine has 2 cores and the orchestrator tests start real trainer subprocesses next to the test
process; PyTorch's default of one thread per core then oversubscribes the CPU and makes every step many times
slower. One intra-op thread per process (inherited by subprocesses through the environment) keeps tests fast.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
