"""``md2bench.runtime.keep_freed_memory``: large blocks come from the heap, not from fresh mmaps.

Each case runs in its own interpreter (the setting is process-wide), allocates 256 MiB with the C library's
``malloc`` and reports which mapping of ``/proc/self/maps`` holds the block.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import ctypes, json, sys
from md2bench.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
address = libc.malloc(256 << 20)
where = None
with open("/proc/self/maps") as fh:
    for line in fh:
        span, _, _, _, _, *name = line.split()
        lo, hi = (int(x, 16) for x in span.split("-"))
        if lo <= address < hi:
            where = name[0] if name else "anonymous"
print(json.dumps({"applied": applied, "where": where}))
"""


def _where(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc/self/maps")
def test_keep_freed_memory_serves_large_blocks_from_the_heap() -> None:
    default = _where("default")
    kept = _where("keep")
    assert default["where"] == "anonymous"  # glibc's default: a 256 MiB block is its own fresh mapping
    assert kept == {"applied": True, "where": "[heap]"}
