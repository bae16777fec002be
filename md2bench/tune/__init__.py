"""Hyperparameter search: Optuna over md2bench configs, every trial a nested MLflow run (``run_study``)."""

from md2bench.tune.plots import plot_history, plot_importance, trials_frame
from md2bench.tune.space import KINDS, RESERVED_KEYS, Param, SearchSpace, TuneError, load_space, parse_space
from md2bench.tune.storage import (DEFAULT_GRACE_S, DEFAULT_HEARTBEAT_S, HEARTBEAT_ATTR, RUN_ID_ATTR,
                                   default_storage, heartbeat, make_storage, normalise_storage, reap_stale_trials)
from md2bench.tune.study import StudyResult, export_best, finish_study_run, resolve_devices, run_study
from md2bench.tune.worker import TrialInterrupted, WorkerSpec, finished_count, make_objective, run_worker

__all__ = [
    "DEFAULT_GRACE_S", "DEFAULT_HEARTBEAT_S", "HEARTBEAT_ATTR", "KINDS", "RESERVED_KEYS", "RUN_ID_ATTR", "Param",
    "SearchSpace", "StudyResult", "TrialInterrupted", "TuneError", "WorkerSpec", "default_storage", "export_best",
    "finish_study_run", "finished_count", "heartbeat", "load_space", "make_objective", "make_storage",
    "normalise_storage", "parse_space", "plot_history", "plot_importance", "reap_stale_trials", "resolve_devices",
    "run_study", "run_worker", "trials_frame",
]
