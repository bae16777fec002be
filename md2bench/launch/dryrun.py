"""The dry run of ``md2bench run-ablation --dry-run``: the plan as a table, the slots it would use and the time
estimate; it starts nothing and writes nothing (not even the store)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, TextIO

from md2bench.config import Config
from md2bench.grid import Grid, RunSpec
from md2bench.launch.estimate import estimate_line
from md2bench.launch.outcome import BUSY, SKIPPED, GridResult, RunOutcome
from md2bench.launch.plan import plan
from md2bench.launch.slots import detect_slots
from md2bench.tracking import MLflowTracker


def dry_run_grid(
    grid: Grid, specs: Sequence[RunSpec], uri: str, gpus: str, runs_per_gpu: int | None, cpu_jobs: int, out: TextIO
) -> GridResult:
    """Print the plan of ``specs`` (row, seed, run_key, device, action, note), the action counts and the time
    estimate to ``out``; start nothing, create no store. The outcomes are ``skipped``, ``busy`` or ``queued``."""
    tracker = _existing_store(uri)
    items = plan(specs, tracker, grid.name)
    todo = [i.spec for i in items if i.action in ("train", "resume")]
    slots = detect_slots(gpus, runs_per_gpu, cpu_jobs, todo, measure=False)
    out.write(f"grid {grid.name} ({grid.path}): {len(grid.rows)} rows × {len(grid.seeds_for(None))} seeds listed; "
              f"{len(specs)} runs selected\n")
    out.write(f"store: {uri}{'' if tracker is not None else ' (not created yet)'}\n")
    out.write(f"slots: {', '.join(s.label for s in slots)}"
              + (" (K=1 per GPU without measuring; pass --runs-per-gpu or run for real to measure)\n"
                 if runs_per_gpu is None and slots and slots[0].gpu is not None else "\n"))
    rows = []
    for n, item in enumerate(items):
        spec = item.spec
        device = "-" if item.action in ("skip", "busy") else slots[n % len(slots)].label
        blocked = _weights_missing(spec.config)
        note = item.reason or ("will be blocked: ImageNet weights missing" if blocked else "")
        rows.append((spec.row, str(spec.seed), spec.run_key, device, item.action, note))
    header = ("row", "seed", "run_key", "device", "action", "note")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")
    actions = {a: sum(1 for i in items if i.action == a) for a in ("train", "resume", "skip", "busy")}
    out.write(f"{actions['train']} to train, {actions['resume']} to resume, {actions['skip']} to skip"
              + (f", {actions['busy']} busy elsewhere" if actions["busy"] else "") + "\n")
    out.write(estimate_line(todo, slots, tracker) + "\n")
    out.flush()
    states = {"skip": SKIPPED, "busy": BUSY}
    outcomes = [RunOutcome(i.spec, states.get(i.action, "queued"), message=i.reason) for i in items]
    return GridResult(grid.name, None, outcomes)


def _existing_store(uri: str) -> MLflowTracker | None:
    """A tracker on an existing store; None for a SQLite file that does not exist (a dry run creates nothing)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix):]).is_file():
        return None
    try:
        return MLflowTracker(uri)
    except Exception:
        return None


def _weights_missing(cfg: Config) -> bool:
    """True when the config needs ImageNet weights that are not on disk (the run would exit blocked)."""
    if cfg.model.pretrained != "imagenet":
        return False
    try:
        from md2bench.models.encoder import hub_cache_path

        path = Path(cfg.model.weights_path).expanduser() if cfg.model.weights_path else hub_cache_path(cfg.model.num_layers)
        return not path.is_file()
    except Exception:
        return False
