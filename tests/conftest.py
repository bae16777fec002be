"""Test-wide settings.

The CI machine has 2 cores and the orchestrator tests start real trainer subprocesses next to the test
process; PyTorch's default of one thread per core then oversubscribes the CPU and makes every step many times
slower. One intra-op thread per process (inherited by subprocesses through the environment) keeps tests fast.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def release_when_passing(request: pytest.FixtureRequest, path: Path) -> None:
    """Remove a module fixture's scratch folder at teardown unless a test has failed so far.

    Every tiny run still writes full-size checkpoints (two ResNet-18s with Adam state, ~320 MB) and the MLflow
    copy of its weights, so the suite would leave ~14 GB behind per session. Function-scoped ``tmp_path``
    folders go when their test passes (``tmp_path_retention_policy = "failed"`` in pyproject); folders made
    with ``tmp_path_factory.mktemp`` for a module fixture are released here. On a failure they stay, for
    inspection.
    """
    if request.session.testsfailed == 0:
        shutil.rmtree(path, ignore_errors=True)
