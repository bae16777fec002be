"""Launching a grid's runs as trainer subprocesses: locally (``run_grid``) or as a Slurm job array; torch-free."""

from md2bench.launch.command import train_command
from md2bench.launch.local import run_grid
from md2bench.launch.outcome import BLOCKED, BUSY, FAILED, FINISHED, KILLED, SKIPPED, GridResult, RunOutcome
from md2bench.launch.plan import PlanItem, plan
from md2bench.launch.slots import OrchestratorError, Slot, detect_slots

__all__ = ["BLOCKED", "BUSY", "FAILED", "FINISHED", "KILLED", "SKIPPED", "GridResult", "OrchestratorError", "PlanItem",
           "RunOutcome", "Slot", "detect_slots", "plan", "run_grid", "train_command"]
