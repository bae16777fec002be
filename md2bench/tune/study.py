"""A study: ``run_study`` (create or resume the Optuna study and its MLflow study run, start the workers),
``finish_study_run`` (the study run's plots, table and best trial) and ``export_best``.

``run_study(config, space, study_name=..., trials=N)``:

- **Workers**: one per GPU (``--gpus 0,1`` or all visible GPUs), each a process sharing the storage; on CPU one
  in-process worker.
- **MLflow**: one study run (tag ``md2bench.kind = study``) in the experiment named after the study; each trial's
  training run is nested under it with tags ``md2bench.trial``, ``md2bench.param.<key>`` and
  ``md2bench.trial_state`` (COMPLETE / PRUNED / FAIL). The study run holds ``history.png``,
  ``importance.png`` (when at least two trials completed), ``trials.csv`` and the best trial's config.
- **Export**: ``export_best`` writes the best trial as a full config TOML that ``md2bench train`` and grids
  (``base = "best.toml"``) accept.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from md2bench.config import Config, load_config
from md2bench.tracking import END_ERROR, END_FINISHED, END_INTERRUPTED, TAG, Heartbeat, MLflowTracker, resolve_uri
from md2bench.tune.plots import plot_history, plot_importance, trials_frame
from md2bench.tune.space import SearchSpace, TuneError, load_space, space_to_dict
from md2bench.tune.storage import DEFAULT_GRACE_S, DEFAULT_HEARTBEAT_S, make_storage, normalise_storage
from md2bench.tune.worker import WorkerSpec, finished_count, run_worker


# --------------------------------------------------------------------------------------------- the study
@dataclass
class StudyResult:
    """What ``run_study`` did.

    Attributes:
        study_name: the study.
        storage: the storage spec.
        study_run_id: the MLflow study run.
        trials: the study's trials after this invocation (Optuna ``FrozenTrial``s).
        new_trials: how many trials this invocation added.
        best_params: the best trial's params (empty when none completed).
        best_value: its objective (NaN when none).
        exported: the exported config file, if any.
        notes: plots skipped and similar.
    """

    study_name: str
    storage: str
    study_run_id: str
    trials: list[Any]
    new_trials: int
    best_params: dict[str, Any] = field(default_factory=dict)
    best_value: float = math.nan
    exported: Path | None = None
    notes: list[str] = field(default_factory=list)


def resolve_devices(gpus: str | None, cfg: Config) -> list[str]:
    """Devices for the workers: ``["cpu"]`` / ``[""]`` (one worker, the config's device) or one CUDA index each.

    Args:
        gpus: ``None``/``"auto"`` (every visible GPU when the config may use CUDA, else one worker), ``"cpu"``,
            or a comma-separated list of GPU indices (``"0,1"``).
    """
    if gpus in (None, "", "auto"):
        if cfg.train.device == "cpu":
            return [""]
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [str(i) for i in range(count)] or [""]
    if gpus == "cpu":
        return ["cpu"]
    parts = [p.strip() for p in gpus.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise TuneError(f"--gpus {gpus!r}: give 'auto', 'cpu' or GPU indices like '0,1'")
    return parts


def _study_run(tracker: MLflowTracker, experiment: str, name: str, storage: str, space: SearchSpace,
               base: Config) -> str:
    """The study's MLflow run: the newest existing one (re-opened) or a new one."""
    found = tracker.find_runs(experiment, tags={TAG + "kind": "study", TAG + "study": name})
    if found:
        return tracker.resume_run(found[0].info.run_id).run_id
    run = tracker.start_run(experiment, run_name=f"study/{name}",
                            tags={TAG + "kind": "study", TAG + "study": name, TAG + "storage": storage,
                                  TAG + "metric": f"val/{space.metric}", TAG + "direction": space.direction})
    run.log_params({f"space.{p.key}": p.describe() for p in space.params})
    run.log_text(base.to_toml(), "base_config.toml")
    return run.run_id


def run_study(
    config: str | Path | None,
    space: str | Path,
    *,
    study_name: str,
    trials: int,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    storage: str | None = None,
    tracking_uri: str | None = None,
    gpus: str | None = None,
    seed: int = 0,
    export: str | Path | None = None,
    heartbeat_s: int = DEFAULT_HEARTBEAT_S,
    grace_s: int = DEFAULT_GRACE_S,
    max_retry: int = 2,
    progress: bool = False,
) -> StudyResult:
    """Create or resume a study and add ``trials`` finished (complete or pruned) trials to it.

    Args:
        config: base config (TOML path or preset name).
        space: search-space TOML.
        study_name: Optuna study name, also the MLflow experiment.
        trials: finished trials to add in this invocation.
        overrides: dotted overrides applied to the base config.
        storage: Optuna storage (see ``normalise_storage``); default a journal file beside the MLflow store.
        tracking_uri: MLflow store.
        gpus: see ``resolve_devices``.
        seed: sampler seed; worker w of an invocation that finds k trials uses ``seed + 1000·w + k`` so a resumed
            study draws new points instead of replaying its first ones.
        export: write the best trial's config here.
        heartbeat_s, grace_s, max_retry: dead-trial detection and retries.
        progress: progress bars.

    Raises:
        TuneError: bad space or storage, or a study created with a different space.
    """
    import optuna

    if trials < 1:
        raise TuneError(f"--trials must be >= 1, got {trials}")
    base = load_config(config, overrides)
    search = load_space(space, base)
    tracking_uri = resolve_uri(tracking_uri)
    spec_storage = normalise_storage(storage, tracking_uri)
    devices = resolve_devices(gpus, base)
    if len(devices) > 1 and spec_storage.startswith("sqlite"):
        warnings.warn("Optuna advises against SQLite for parallel workers; prefer the default journal file or a "
                      "PostgreSQL/MySQL URL", stacklevel=2)

    study = _open_study(study_name, make_storage(spec_storage, heartbeat_s, grace_s, max_retry), spec_storage,
                        search, base)
    tracker = MLflowTracker(tracking_uri)
    tracker.require_writable()
    tracker.reap_stale_runs(study_name, tags={TAG + "kind": "trial"})  # trials left RUNNING by dead processes
    study_run_id = _study_run(tracker, study_name, study_name, spec_storage, search, base)
    study_run = tracker.run(study_run_id)
    study_run.claim_tags()
    beat = Heartbeat(study_run).start()
    before = len(study.trials)
    done = finished_count(study)
    specs = [
        WorkerSpec(
            study_name=study_name, storage=spec_storage, tracking_uri=tracking_uri, experiment=study_name,
            study_run_id=study_run_id, base_toml=base.to_toml(), space=space_to_dict(search),
            target=done + trials, max_attempts=2 * trials + max_retry, seed=seed + 1000 * w + before,
            device={"": "", "cpu": "cpu"}.get(dev, "cuda" if len(devices) > 1 else f"cuda:{dev}"),
            heartbeat_s=heartbeat_s, grace_s=grace_s, max_retry=max_retry, progress=progress,
        )
        for w, dev in enumerate(devices)
    ]
    status, reason = "FINISHED", END_FINISHED
    try:
        if len(specs) == 1:
            run_worker(specs[0])
        else:
            _run_worker_processes(specs, devices)
    except Exception:
        status, reason = "FAILED", END_ERROR
        raise
    except BaseException:  # Ctrl-C / SIGTERM: the interrupted trial resumes next time
        status, reason = "KILLED", END_INTERRUPTED
        raise
    finally:
        beat.stop()
        try:
            study = optuna.load_study(study_name=study_name, storage=make_storage(spec_storage, heartbeat_s,
                                      grace_s, max_retry))
            notes = finish_study_run(tracker, study_run_id, study, search, status, reason)
        except Exception:  # the plots or artifacts failed: the study run still gets a true end
            with contextlib.suppress(Exception):
                study_run.end("FAILED" if status == "FINISHED" else status, END_ERROR if status == "FINISHED"
                              else reason)
            raise
    result = StudyResult(study_name, spec_storage, study_run_id, list(study.trials), len(study.trials) - before,
                         notes=notes)
    best = _best_trial(study)
    if best is not None:
        result.best_params, result.best_value = dict(best.params), float(best.value)
        if export is not None:
            result.exported = export_best(study, base, export)
    elif export is not None:
        result.notes.append("no trial completed; nothing exported")
    return result


def _open_study(study_name: str, storage: Any, where: str, search: SearchSpace, base: Config) -> Any:
    """Create the Optuna study, or load it and check that it was made with the same space and direction."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=storage, direction=search.direction,
                                load_if_exists=True)
    stored = study.user_attrs.get("md2bench.space")
    if stored is None:
        study.set_user_attr("md2bench.space", search.to_json())
        study.set_user_attr("md2bench.base_config", base.to_toml())
    elif stored != search.to_json():
        raise TuneError(
            f"study {study_name!r} in {where} was created with a different search space or objective; "
            f"use the same space file or a new --study name"
        )
    if study.direction.name.lower() != search.direction:
        raise TuneError(f"study {study_name!r} optimises in direction {study.direction.name.lower()}; "
                        f"the space says {search.direction}")
    return study


def _run_worker_processes(specs: Sequence[WorkerSpec], devices: Sequence[str]) -> None:
    """One ``python -m md2bench.tune`` process (``md2bench/tune/__main__.py``) per GPU (``CUDA_VISIBLE_DEVICES``
    set to it); wait for all."""
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for w, (spec, dev) in enumerate(zip(specs, devices)):
            path = Path(tmp) / f"worker{w}.json"
            path.write_text(json.dumps(spec.__dict__))
            env = dict(os.environ)
            if dev not in ("", "cpu"):
                env["CUDA_VISIBLE_DEVICES"] = dev
            procs.append(subprocess.Popen([sys.executable, "-m", "md2bench.tune", str(path)], env=env))
        try:
            codes = [p.wait() for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                    p.wait()
    failed = [f"worker {w} (GPU {d}): exit {c}" for w, (c, d) in enumerate(zip(codes, devices)) if c != 0]
    if failed:
        raise RuntimeError("tuning workers failed: " + "; ".join(failed))


def _best_trial(study: Any) -> Any:
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    return study.best_trial


# ------------------------------------------------------------------------------------ the study run's results
def finish_study_run(tracker: MLflowTracker, run_id: str, study: Any, space: SearchSpace,
                     status: str = "FINISHED", reason: str | None = None) -> list[str]:
    """Log the history and importance plots, ``trials.csv`` and the best trial onto the study run; end it."""
    from optuna.trial import TrialState

    notes: list[str] = []
    run = tracker.run(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        frame = trials_frame(study)
        frame.to_csv(folder / "trials.csv", index=False)
        run.log_artifact(folder / "trials.csv")
        fig = plot_history(study, space.direction)
        for suffix in ("png", "pdf"):
            fig.savefig(folder / f"history.{suffix}", dpi=150)
            run.log_artifact(folder / f"history.{suffix}")
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(complete) < 2:
            notes.append(f"parameter importance needs >= 2 complete trials (have {len(complete)}); plot skipped")
        else:
            try:
                fig = plot_importance(study)
                for suffix in ("png", "pdf"):
                    fig.savefig(folder / f"importance.{suffix}", dpi=150)
                    run.log_artifact(folder / f"importance.{suffix}")
            except Exception as exc:  # noqa: BLE001 - e.g. every complete trial drew the same values
                notes.append(f"parameter importance skipped: {type(exc).__name__}: {exc}")
    counts = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        if t.state.name.lower() in counts:
            counts[t.state.name.lower()] += 1
    step = len(study.trials)
    metrics = {f"trials/{k}": float(v) for k, v in counts.items()}
    best = _best_trial(study)
    if best is not None:
        metrics["best_value"] = float(best.value)
        run.set_tags({TAG + "best_trial": str(best.number), **{f"{TAG}best.{k}": str(v) for k, v in best.params.items()}})
    run.log_metrics(metrics, step=step)
    if notes:
        run.log_text("\n".join(notes) + "\n", "notes.txt")
    run.end(status, reason)
    return notes


def export_best(study: Any, base: Config, path: str | Path) -> Path:
    """Write the best trial as a full config TOML (base + best params, named ``<study>-best``)."""
    best = _best_trial(study)
    if best is None:
        raise TuneError(f"study {study.study_name!r} has no complete trial to export")
    cfg = base.override({**best.params, "name": f"{study.study_name}-best"})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Best trial of Optuna study {study.study_name!r}: trial {best.number}, objective {best.value:.6g}\n"
              f"# params: {json.dumps(best.params)}\n")
    path.write_text(header + cfg.to_toml())
    return path
