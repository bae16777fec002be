"""Tracking behind one narrow interface; MLflow is the only implementation.

The trainer, orchestrator, tuner and report never import MLflow: they use ``MLflowTracker`` (which holds an
``MlflowClient``, never MLflow's global "active run") and the ``TrackedRun`` handles it returns.

Store: ``resolve_uri(uri)`` picks, in order, an explicit URI, ``$MLFLOW_TRACKING_URI``, else the embedded
default ``sqlite:///mlruns.db`` in the working directory, with artifacts in ``./mlartifacts``. Nothing needs a
server. Grids and studies are parent runs; their runs carry ``mlflow.parentRunId`` (MLflow's nesting tag).

Naming (read by ``report`` and ``orchestrator``; see ARCHITECTURE.md): tags ``md2bench.run_key``,
``md2bench.row``, ``md2bench.grid``, ``md2bench.seed``, ``md2bench.commit``, ``md2bench.device``...; metrics
``train/*``, ``val/*`` (per epoch), ``test/*`` (final).
"""

from __future__ import annotations

import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

DEFAULT_URI = "sqlite:///mlruns.db"
DEFAULT_EXPERIMENT = "md2bench"
TAG = "md2bench."  # prefix of our own tags
PARENT_TAG = "mlflow.parentRunId"


def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI to use: explicit > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///mlruns.db`` (working dir)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _artifact_root(uri: str) -> str | None:
    """Local artifact folder beside a SQLite store (``<db dir>/mlartifacts``); None lets a server decide."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.resolve().parent / "mlartifacts").as_uri()
    return None


def git_commit(cwd: str | Path | None = None) -> str:
    """The current git commit (with ``-dirty`` when the tree has changes), or ``unknown`` outside a checkout.

    ``$MD2BENCH_COMMIT`` takes precedence: set it where the code runs from a copy without ``.git`` (a cluster
    staging folder, a remote GPU machine), so runs still carry the commit that produced them.
    """
    if os.environ.get("MD2BENCH_COMMIT"):
        return os.environ["MD2BENCH_COMMIT"]
    where = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class TrackedRun:
    """A handle on one MLflow run: every write names this run explicitly."""

    client: Any
    run_id: str
    experiment_id: str

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values stringified; MLflow takes at most 100 per batch call)."""
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at ``step``; non-finite values are skipped (MLflow rejects NaN in some stores)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if math.isfinite(float(v))]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500], synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        if items:
            self.client.log_batch(self.run_id, tags=items, synchronous=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run ``FINISHED``, ``FAILED`` or ``KILLED``."""
        self.client.set_terminated(self.run_id, status)

    def artifact_uri(self) -> str:
        return self.client.get_run(self.run_id).info.artifact_uri


class MLflowTracker:
    """The MLflow implementation of md2bench's tracking interface.

    Args:
        uri: tracking URI (see ``resolve_uri``).
    """

    def __init__(self, uri: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = resolve_uri(uri)
        self.client = MlflowClient(tracking_uri=self.uri)

    # ------------------------------------------------------------------ experiments and runs
    def experiment_id(self, name: str = DEFAULT_EXPERIMENT, create: bool = True) -> str | None:
        """Id of experiment ``name``, created (with a local artifact root for SQLite) when missing."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        if not create:
            return None
        try:
            return self.client.create_experiment(name, artifact_location=_artifact_root(self.uri))
        except Exception:  # another process created it between our read and write
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def start_run(
        self,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> TrackedRun:
        """Create a new RUNNING run, nested under ``parent_run_id`` when given."""
        exp_id = self.experiment_id(experiment)
        all_tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
        return TrackedRun(self.client, run.info.run_id, exp_id)

    def resume_run(self, run_id: str) -> TrackedRun:
        """Re-open an existing run (status back to RUNNING) to continue logging into it."""
        run = self.client.get_run(run_id)
        self.client.update_run(run_id, status="RUNNING")
        return TrackedRun(self.client, run_id, run.info.experiment_id)

    def get_run(self, run_id: str) -> Any:
        return self.client.get_run(run_id)

    def find_runs(
        self,
        experiment: str | Iterable[str] | None = None,
        tags: Mapping[str, Any] | None = None,
        statuses: Iterable[str] | None = None,
        parent_run_id: str | None = None,
        max_results: int = 5000,
    ) -> list[Any]:
        """Runs (MLflow ``Run`` objects, newest first) matching tag equalities and statuses.

        Args:
            experiment: experiment name(s); None searches every experiment.
            tags: ``{"md2bench.run_key": "abc..."}`` equalities.
            statuses: keep only these statuses (RUNNING, FINISHED, FAILED, KILLED, SCHEDULED).
            parent_run_id: keep only runs nested under this run.
        """
        if experiment is None:
            exp_ids = [e.experiment_id for e in self.client.search_experiments()]
        else:
            names = [experiment] if isinstance(experiment, str) else list(experiment)
            exp_ids = [i for i in (self.experiment_id(n, create=False) for n in names) if i is not None]
        if not exp_ids:
            return []
        clauses = [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
        if parent_run_id:
            clauses.append(f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
        runs = self.client.search_runs(
            exp_ids, filter_string=" and ".join(clauses), max_results=max_results, order_by=["attributes.start_time DESC"]
        )
        if statuses is not None:
            wanted = set(statuses)
            runs = [r for r in runs if r.info.status in wanted]
        return list(runs)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` of one metric, in step order."""
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    def download_artifact(self, run_id: str, path: str, dst: str | Path) -> Path:
        Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(dst)))
