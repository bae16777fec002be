"""Render the synthetic worlds a grid's runs need once, in the orchestrator, before any run starts.

Each trainer renders its world on first use (``md2bench.data.synthetic.ensure_world``), so without this step the
runs of a grid started at once on a fresh machine would each render the same world side by side, with no progress
shown (children run with ``--no-progress``), before their first step: on 2 cores two renders of the ``default``
world take about twice as long as one. Here the orchestrator renders each distinct world once, with a progress bar
on a terminal, and the children find it complete. The runs share the orchestrator's working directory, so the
cache folder (``.md2bench_cache/synth/<preset>-<seed>``) and any relative ``data.path`` are the same for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, TextIO

from md2bench.grid import RunSpec
from md2bench.launch.slots import OrchestratorError


def _world_key(spec: RunSpec) -> tuple[str, str, int] | None:
    data = spec.config.data
    if data.dataset != "synthetic":
        return None
    return (data.path, data.synth_preset, data.synth_seed)


def prepare_worlds(specs: Sequence[RunSpec], out: TextIO, progress: bool = False) -> list[Path]:
    """Make sure every synthetic world the ``specs`` train on is rendered; render the missing ones here, once each.

    Args:
        specs: the runs about to start (KITTI runs are left alone).
        out: where to say which world is being rendered (one line each; nothing for a world already there).
        progress: show the renderer's progress bar.

    Returns:
        The root of each distinct world, in the order of first use.

    Raises:
        OrchestratorError: a ``data.path`` that is a non-empty folder without a world (``ensure_world``'s message,
            naming the run), before any run starts.
    """
    from md2bench.data.synthetic import ensure_world, is_rendered, world_cache_path

    roots: list[Path] = []
    seen: set[tuple[str, str, int]] = set()
    for spec in specs:
        key = _world_key(spec)
        if key is None or key in seen:
            continue
        seen.add(key)
        path, preset, seed = key
        root = Path(path) if path else world_cache_path(preset, seed)
        if not is_rendered(root):
            out.write(f"rendering the synthetic world '{preset}' (seed {seed}) into {root}, once, before the runs "
                      "start\n")
            out.flush()
        try:
            roots.append(ensure_world(spec.config, progress=progress))
        except ValueError as err:
            raise OrchestratorError(f"{spec.run_name}: {err}") from None
    return roots
