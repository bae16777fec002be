"""What a local grid shows: the live ``Display`` (table redrawn in place on a TTY, plain lines otherwise), the table
rows, the whole-grid progress line (``grid_progress``), and the skip, summary and final lines."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TYPE_CHECKING, Mapping, Sequence, TextIO

from md2bench.launch.estimate import fmt_duration
from md2bench.launch.outcome import BLOCKED, BUSY, FAILED, FINISHED, KILLED, SKIPPED, GridResult, RunOutcome
from md2bench.launch.plan import PlanItem
from md2bench.train.rundir import STDOUT_NAME

if TYPE_CHECKING:
    from md2bench.launch.local import _Active


class Display:
    """The live table: redrawn in place on a TTY, one plain line per event otherwise.

    Args:
        stream: where to write (default stdout).
        live: redraw in place; None decides from ``stream.isatty()``.
        heartbeat_s: on a non-TTY, a progress line for every running run this often.
    """

    def __init__(self, stream: TextIO | None = None, live: bool | None = None, heartbeat_s: float = 60.0) -> None:
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.heartbeat_s = heartbeat_s
        self._drawn = 0
        self._last_beat = time.monotonic()

    def event(self, text: str) -> None:
        """A state change; on a TTY it appears above the table."""
        stamp = time.strftime("%H:%M:%S")
        if self.live:
            self._clear()
        self.stream.write(f"[{stamp}] {text}\n")
        self.stream.flush()
        self._drawn = 0

    def table(self, rows: Sequence[tuple[str, ...]], summary: str, force_beat: bool = False) -> None:
        """Redraw the table (TTY) or, every ``heartbeat_s``, print the running rows (non-TTY)."""
        if self.live:
            self._clear()
            height = shutil.get_terminal_size((120, 40)).lines
            shown = list(rows)
            if len(shown) + 3 > height:  # keep the table on screen: the most interesting rows first
                shown = sorted(shown, key=lambda r: _STATE_ORDER.get(r[3].split(" ")[0], 9))[: max(1, height - 4)]
                summary += f"  ({len(rows) - len(shown)} more rows not shown)"
            lines = _format_table(shown) + [summary]
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
            self._drawn = len(lines)
            return
        now = time.monotonic()
        if force_beat or now - self._last_beat >= self.heartbeat_s:
            self._last_beat = now
            running = [r for r in rows if r[3].startswith("running")]
            for r in running:
                self.stream.write(f"[{time.strftime('%H:%M:%S')}]   {r[0]} ({r[1]}) {r[3]} {r[4]} {r[5]}\n")
            self.stream.write(f"[{time.strftime('%H:%M:%S')}] {summary}\n")
            self.stream.flush()

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0


_HEADER = ("run", "run_key", "device", "state", "step", "eta")
_STATE_ORDER = {"running": 0, "stopping": 0, "queued": 1, FAILED: 2, BLOCKED: 3, BUSY: 4, KILLED: 5, FINISHED: 6,
                SKIPPED: 7}


def _format_table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    all_rows = [_HEADER, *rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(_HEADER))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in all_rows]


def table_rows(outcomes: Mapping[str, RunOutcome], active: Mapping[int, _Active]) -> list[tuple[str, ...]]:
    """One row per run: ``(run, run_key, device, state, step, eta)``; running runs show their phase and step."""
    running = {a.outcome.spec.run_key: a for a in active.values()}
    rows = []
    for key, o in outcomes.items():
        step, eta = "", ""
        a = running.get(key)
        state = o.state
        if a is not None:
            state = "running" if a.term_sent is None else "stopping"
            if a.term_sent is None and a.phase in ("validate", "evaluate"):
                state = "validating" if a.phase == "validate" else "evaluating (test)"
            if a.step is not None:
                cur, total = a.step
                step = f"{cur}/{total}" if total else str(cur)
                rate = steps_per_s(a)
                if total and rate:
                    eta = fmt_duration((total - cur) / rate)
        elif state == "queued" and o.attempts:
            state = f"queued (retry {o.attempts})"
        rows.append((o.spec.run_name, key, o.device or "-", state, step, eta))
    return rows


def steps_per_s(a: _Active) -> float | None:
    """A running child's step rate since this invocation first read its progress; None before it moved."""
    if a.step is None or a.first_step is None or a.step[0] <= a.first_step[0]:
        return None
    return (a.step[0] - a.first_step[0]) / max(time.monotonic() - a.first_step[1], 1e-9)


def skip_line(item: PlanItem) -> str:
    """The event line of a run that is not trained because it finished."""
    return f"skip   {item.spec.run_name} ({item.spec.run_key}): {item.reason}"


def summary_line(outcomes: Mapping[str, RunOutcome], active: Mapping[int, _Active]) -> str:
    """The line under the table: runs per state and the grid's progress (``grid_progress``)."""
    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[o.state] = counts.get(o.state, 0) + 1
    parts = [f"{n} {state}" for state, n in sorted(counts.items())]
    progress = grid_progress(outcomes, active)
    return "total: " + ", ".join(parts) + (f"; {progress}" if progress else "")


def grid_progress(outcomes: Mapping[str, RunOutcome], active: Mapping[int, _Active]) -> str:
    """The whole grid's progress in optimiser steps, e.g. ``grid 1,200/4,200 steps (29%), ~25m left``.

    Finished and skipped runs count in full, running ones at their last reported step, the others at 0 (a
    queued run's checkpoint is not read here). The time left divides the remaining steps by the summed rate of
    the running runs (their steps since this invocation started them), so it assumes the slots stay busy. Empty
    when a run's length is not known in steps (``train.max_steps = 0``).
    """
    running = {a.outcome.spec.run_key: a for a in active.values()}
    done = total = 0
    rate = 0.0
    for key, o in outcomes.items():
        steps = o.spec.config.train.max_steps
        a = running.get(key)
        if a is not None and a.step is not None and a.step[1]:
            steps = a.step[1]
        if not steps:
            return ""
        total += steps
        if o.state in (FINISHED, SKIPPED):
            done += steps
        elif a is not None and a.step is not None:
            done += min(a.step[0], steps)
            rate += steps_per_s(a) or 0.0
    if not total:
        return ""
    images = [a.images_per_s for a in active.values() if a.images_per_s is not None and a.phase == "train"]
    now = f", {sum(images):.1f} img/s now" if images else ""
    left = f", ~{fmt_duration((total - done) / rate)} left" if rate > 0 and done < total else ""
    return f"grid {done:,}/{total:,} steps ({100 * done // total}%){now}{left}"


def final_summary(result: GridResult) -> str:
    """The last event of a grid: counts per state, then one line per blocked, failed or busy run."""
    counts = result.counts()
    lines = [f"grid {result.grid}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
             + ("  (interrupted: run the same command again to resume)" if result.interrupted else "")]
    for o in result.by_state(BLOCKED):
        lines.append(f"  blocked: {o.spec.run_name} — needs ImageNet weights (see its message above)")
    for o in result.by_state(FAILED):
        lines.append(f"  failed:  {o.spec.run_name} after {o.attempts} attempt(s); log {o.spec.run_dir / STDOUT_NAME}")
    for o in result.by_state(BUSY):
        lines.append(f"  running elsewhere: {o.spec.run_name}")
    return "\n".join(lines)
