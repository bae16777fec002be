"""Atomic small-file writes (no torch here: the orchestrator and the progress file use them too).

A per-process temp file beside the target, then ``os.replace``: a reader sees the old file or the new one, never
half of one. Checkpoints have their own writer with fsync (``md2bench.checkpoint.save_checkpoint``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented, key-sorted JSON to ``path`` atomically; returns the path."""
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str))
