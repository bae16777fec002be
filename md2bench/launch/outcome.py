"""What a grid invocation reports, whichever backend ran it: the final states of a run, ``RunOutcome`` and
``GridResult`` (with the exit code of ``md2bench run-ablation``)."""

from __future__ import annotations

from dataclasses import dataclass

from md2bench.grid import RunSpec

# Final states of a run in a GridResult.
FINISHED, SKIPPED, FAILED, BLOCKED, BUSY, KILLED = "finished", "skipped", "failed", "blocked", "busy", "killed"


@dataclass
class RunOutcome:
    """What happened to one run.

    Attributes:
        spec: the run.
        state: ``finished``, ``skipped``, ``failed``, ``blocked``, ``busy`` (running elsewhere), ``killed`` or
            ``queued`` (never started: the grid was interrupted first).
        attempts: how many times a trainer was started.
        returncode: the last trainer exit code (None if never started).
        message: the reason (skip reason, the trainer's blocking message, the last log lines of a failure).
        device: the slot's label of the last attempt.
        resumed: the first attempt of this invocation started from an existing checkpoint.
    """

    spec: RunSpec
    state: str = "queued"
    attempts: int = 0
    returncode: int | None = None
    message: str = ""
    device: str = ""
    resumed: bool = False


@dataclass
class GridResult:
    """The outcome of one ``run_grid`` invocation."""

    grid: str
    parent_run_id: str | None
    outcomes: list[RunOutcome]
    interrupted: bool = False

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.state] = out.get(o.state, 0) + 1
        return out

    def by_state(self, state: str) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.state == state]

    @property
    def exit_code(self) -> int:
        """0 all finished/skipped/running elsewhere; 130 interrupted; 1 any failed; 3 only blocked ones left."""
        if self.interrupted:
            return 130
        states = {o.state for o in self.outcomes}
        if FAILED in states or "queued" in states:
            return 1
        if BLOCKED in states:
            return 3
        return 0
