"""The ``md2bench`` command line: each command parses its options, builds a Config, and makes one package call.

Examples:
    md2bench data synth --out data/synth --preset small --preview
    md2bench train                                   # the synthetic world, synth preset
    md2bench train paper data.path=/data/kitti        # the paper's schedule on KITTI
    md2bench run-ablation experiments/synth-ablation.toml --seeds 3
    md2bench report synth-ablation --out reports/synth-ablation
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

import typer

if TYPE_CHECKING:
    from md2bench.config import Config

app = typer.Typer(
    help="md2bench: reproduce, extend and trust the Monodepth2 ablation study.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Make and check datasets: the synthetic world, KITTI raw.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _debug_option() -> typer.models.OptionInfo:
    return typer.Option(False, "--debug", help="Show full tracebacks (and MLflow's own database errors) instead of "
                        "one line per failure.")


def _quiet_unless(debug: bool) -> None:
    """Without ``--debug``, MLflow's own traceback per failed database statement is not printed."""
    if not debug:
        from md2bench.tracking import quiet_store_logs

        quiet_store_logs()


def _fail_on(exc: BaseException, debug: bool, code: int = 1, uri: Optional[str] = None) -> None:
    """One line naming what failed and why (``md2bench.errors.describe_failure``); the traceback with --debug."""
    if debug:
        raise exc
    from md2bench.errors import describe_failure
    from md2bench.tracking import resolve_uri

    _fail(describe_failure(exc, resolve_uri(uri)) + "  (--debug shows the traceback)", code)


# --------------------------------------------------------------------------------------------- data
@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the world into (KITTI raw layout)."),
    preset: str = typer.Option("small", help="tiny (tests/CI), small (default training), default (ablation grid)."),
    sequences: Optional[int] = typer.Option(None, help="Number of drives (overrides the preset)."),
    frames: Optional[int] = typer.Option(None, help="Frames per drive (overrides the preset)."),
    height: Optional[int] = typer.Option(None, help="Image height in pixels (overrides the preset)."),
    width: Optional[int] = typer.Option(None, help="Image width in pixels (overrides the preset)."),
    seed: int = typer.Option(0, help="World seed: the same seed and options give byte-identical files."),
    preview: bool = typer.Option(False, help="Also write preview.png: RGB, coloured depth and motion mask."),
) -> None:
    """Render the procedural driving world with exact depth, poses and motion masks."""
    from md2bench.data import synthetic

    try:
        summary = synthetic.render_world(
            out, preset=preset, sequences=sequences, frames=frames, height=height, width=width, seed=seed,
            preview=preview, progress=True,
        )
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(summary.describe())


@data_app.command("prepare-kitti")
def data_prepare_kitti(
    raw: Path = typer.Option(..., "--raw", help="KITTI raw root (holding 2011_09_26/ ...)."),
    to_jpeg: bool = typer.Option(False, "--to-jpeg", help="Convert image PNGs to JPEG (quality 92) in place."),
    chroma: str = typer.Option("4:2:0", help="JPEG chroma subsampling: 4:2:0 (the reference's ImageMagick "
                               "2x2,1x1,1x1) or 4:4:4."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for gt_depths.npz (default: the raw folder)."),
    annotated: Optional[Path] = typer.Option(None, help="KITTI depth annotations (data_depth_annotated) for the "
                                             "improved eigen_benchmark GT."),
    split: List[str] = typer.Option(["eigen_zhou", "eigen"], "--split", help="Packaged splits to check."),
    export: bool = typer.Option(True, "--export/--no-export", help="Export the test ground truth."),
) -> None:
    """Check a KITTI raw download against the splits, optionally convert to JPEG, export test GT.

    Example: md2bench data prepare-kitti --raw /data/kitti --to-jpeg
    """
    from md2bench.data.prepare import prepare_kitti

    try:
        result = prepare_kitti(raw, to_jpeg=to_jpeg, out_dir=out, annotated=annotated, splits=split, chroma=chroma,
                               export=export, progress=True)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(result.report.describe())
    if to_jpeg:
        typer.echo(f"JPEG: {result.converted} converted, {result.skipped} already done")
    for path in result.gt_files:
        typer.echo(f"ground truth: {path}")
    for note in result.notes:
        typer.echo(note)
    if not result.report.ok:
        raise typer.Exit(1)


# --------------------------------------------------------------------------------------------- config arguments
def _config_args() -> typer.models.ArgumentInfo:
    """The ``[CONFIG] [KEY=VALUE]...`` positional shared by train, tune and bench."""
    return typer.Argument(
        None, metavar="[CONFIG] [KEY=VALUE]...",
        help="A TOML file or preset (paper, synth, tiny; default synth), then dotted overrides.",
    )


def _split_config_args(args: List[str]) -> tuple[Optional[str], List[str]]:
    """``[CONFIG] [key=value ...]``: a first positional containing '=' means no config was given."""
    if not args:
        return None, []
    if "=" in args[0]:
        return None, list(args)
    return args[0], list(args[1:])


def _load_config_args(args: Optional[List[str]], extra: Sequence[str] = ()) -> "Config":
    """Config from ``[CONFIG] [KEY=VALUE]...`` plus ``extra`` overrides; a bad config exits 2 with its message."""
    from md2bench.config import ConfigError, load_config

    source, overrides = _split_config_args(list(args or []))
    try:
        return load_config(source, overrides + list(extra))
    except ConfigError as exc:
        _fail(str(exc))


# --------------------------------------------------------------------------------------------- bench
@app.command("bench")
def bench_cmd(
    args: Optional[List[str]] = _config_args(),
    height: Optional[int] = typer.Option(None, help="Input height (overrides data.height)."),
    width: Optional[int] = typer.Option(None, help="Input width (overrides data.width)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size (overrides train.batch_size)."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (overrides train.device)."),
    steps: int = typer.Option(10, help="Timed training steps (after warm-up)."),
    warmup: int = typer.Option(3, help="Untimed warm-up steps."),
    parts: str = typer.Option("train,loader,render", help="Which measurements: train, loader, render, reference."),
    concurrent: str = typer.Option("", help="Also measure total images/s of K concurrent runs, e.g. '1,2,4'."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Measure training images/s, data-loading images/s and rendering frames/s on this device.

    Example: md2bench bench synth --height 96 --width 320 --batch-size 8 --device cpu --json
    """
    from md2bench import bench

    options = (("data.height", height), ("data.width", width), ("train.batch_size", batch_size),
               ("train.device", device))
    cfg = _load_config_args(args, [f"{key}={value}" for key, value in options if value is not None])
    try:
        result = bench.run_benchmark(
            cfg, steps=steps, warmup=warmup, parts=[p.strip() for p in parts.split(",") if p.strip()],
            concurrent=[int(k) for k in concurrent.split(",") if k.strip()],
        )
    except ValueError as exc:  # an unknown part, or --concurrent that is not a list of integers
        _fail(f"{exc} (see md2bench bench --help)")
    typer.echo(bench.format_result(result))
    if as_json:
        import json

        typer.echo(json.dumps(result, sort_keys=True))


# --------------------------------------------------------------------------------------------- train / evaluate


def _parse_tags(items: List[str]) -> dict[str, str]:
    """``--tag k=v`` pairs; a key without a dot is namespaced (``grid=x`` -> ``md2bench.grid=x``)."""
    tags: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            _fail(f"--tag {item!r} must look like key=value, e.g. --tag grid=synth-ablation")
        key, _, value = item.partition("=")
        key = key.strip()
        tags[key if "." in key else f"md2bench.{key}"] = value.strip()
    return tags


@app.command(
    "train",
    epilog="Examples: md2bench train | md2bench train tiny train.max_steps=10 | "
    "md2bench train paper data.path=/data/kitti --run-name baseline/seed0 --tag grid=paper",
)
def train_cmd(
    args: Optional[List[str]] = _config_args(),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)."
    ),
    experiment: str = typer.Option("md2bench", "--experiment", help="MLflow experiment name."),
    run_name: Optional[str] = typer.Option(None, "--run-name", help="MLflow run name (default: the config's name)."),
    tag: Optional[List[str]] = typer.Option(None, "--tag", help="Extra MLflow tag key=value (repeatable)."),
    parent_run_id: Optional[str] = typer.Option(None, "--parent-run-id", help="Nest under this MLflow run."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from the run's checkpoint if any."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    debug: bool = _debug_option(),
) -> None:
    """Train one configuration: the synthetic world by default, KITTI when the config says so.

    Exit codes: 0 finished (or already finished), 1 failed (non-finite numbers, disk full, store read-only, any
    other error: one line, the traceback in the run's train.log or with --debug), 2 bad config, 3 blocked
    (ImageNet weights missing), 4 busy (another process trains this run, from this folder or, through its claim
    in the MLflow store, from any other), 75 interrupted (checkpoint written; run again to resume).
    """
    import signal

    from md2bench.train import rundir  # torch-free: the exit codes before the heavy imports

    # Until fit installs its own handlers, SIGTERM (the orchestrator's or Slurm's stop) acts as Ctrl-C: a stop
    # during the imports exits 75 (interrupted, resumable) rather than dying of the signal or click's exit 1.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        from md2bench.models.encoder import WeightsNotFoundError
        from md2bench.tracking import MLflowTracker
        from md2bench.train.loop import fit
    except KeyboardInterrupt:
        _fail("interrupted during start-up; run the same command to resume", rundir.EXIT_INTERRUPTED)

    cfg = _load_config_args(args)
    _quiet_unless(debug)
    try:
        tracker = MLflowTracker(tracking_uri)
        result = fit(
            cfg, tracker, experiment=experiment, run_name=run_name, tags=_parse_tags(list(tag or [])),
            parent_run_id=parent_run_id, resume=resume, progress=progress,
        )
    except WeightsNotFoundError as exc:
        _fail(str(exc), rundir.EXIT_BLOCKED)
    except rundir.RunBusyError as exc:
        _fail(str(exc), rundir.EXIT_BUSY)
    except KeyboardInterrupt:
        _fail("interrupted; the last checkpoint is kept, run the same command to resume", rundir.EXIT_INTERRUPTED)
    except Exception as exc:  # the traceback is in <run_dir>/train.log
        _fail_on(exc, debug, rundir.EXIT_FAILED, tracking_uri)
    typer.echo(f"{result.status}: {result.message}")
    typer.echo(f"run folder: {result.run_dir}   MLflow run: {result.run_id}   store: {tracker.uri}")
    if result.test_metrics:
        typer.echo(_metrics_table(result.test_metrics))
    raise typer.Exit(result.exit_code)


def _metrics_table(metrics: dict[str, float]) -> str:
    """Metric names over values (``test/`` prefixes dropped), two lines per pixel subset: all pixels first, then
    ``moving/``, ``static/``, ``occluded/``... each on its own pair of lines."""
    names = [k for k in metrics if not k.startswith("test/ratio")]
    groups: dict[str, list[str]] = {}
    for k in names:
        head = k.removeprefix("test/")
        groups.setdefault(head.rsplit("/", 1)[0] + "/" if "/" in head else "", []).append(k)
    blocks = []
    for prefix, keys in groups.items():
        heads = [k.removeprefix("test/") for k in keys]
        widths = [max(len(h), 8) for h in heads]
        top = "  ".join(h.rjust(w) for h, w in zip(heads, widths))
        bottom = "  ".join(f"{metrics[k]:.4f}".rjust(w) for k, w in zip(keys, widths))
        blocks.append(f"{top}\n{bottom}")
    return "\n".join(blocks)


@app.command(
    "evaluate",
    epilog="Examples: md2bench evaluate --checkpoint md2bench_runs/<run_key>/checkpoint.pt --out eval.csv | "
    "md2bench evaluate --floor row_prior synth data.synth_preset=default   (the no-learning floor of a world)",
)
def evaluate_cmd(
    args: Optional[List[str]] = typer.Argument(
        None, metavar="[CONFIG] [KEY=VALUE]...",
        help="With --floor: the config (a TOML file or preset, default synth) and overrides whose dataset and test "
        "split to use. A checkpoint carries its own config.",
    ),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="A checkpoint.pt (or last.pt) written by "
                                              "md2bench train."),
    floor: Optional[str] = typer.Option(None, "--floor", help="Evaluate a no-learning floor instead of a "
                                        "checkpoint: constant or row_prior (per-image median scaling)."),
    split: Optional[str] = typer.Option(None, "--split", help="test (default: the config's test split), val, eigen, "
                                        "eigen_benchmark or synth."),
    post_process: bool = typer.Option(False, "--post-process", help="Blend with the flipped image's prediction."),
    crop: Optional[str] = typer.Option(None, "--crop", help="garg or none: override the split's crop (default: "
                                       "garg for eigen, none otherwise)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the per-image metrics to this CSV."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Evaluate a trained checkpoint (or a no-learning floor) with the standard depth protocol; print the metrics."""
    from md2bench.checkpoint import CheckpointError, load_for_inference
    from md2bench.evaluate import evaluate_depth
    from md2bench.train.device import resolve_device

    if (checkpoint is None) == (floor is None):
        _fail("give exactly one of --checkpoint PATH (a trained model) or --floor constant|row_prior")
    if crop not in (None, "garg", "none"):
        _fail(f"--crop must be garg (the Eigen/Garg crop) or none, got {crop!r}")
    if checkpoint is not None and args:
        _fail(f"config arguments ({' '.join(args)}) go with --floor; a checkpoint carries its own config")
    try:
        if floor is not None:
            from md2bench.data.kitti import DatasetFileError, DatasetNotFoundError
            from md2bench.floors import FloorUnavailable, evaluate_floor

            cfg = _load_config_args(args)
            try:
                result = evaluate_floor(floor, cfg, split=split, progress=True, crop=crop)
            except (FloorUnavailable, DatasetNotFoundError, DatasetFileError) as exc:
                _fail(str(exc))
        else:
            assert checkpoint is not None
            torch_device = resolve_device(device)
            cfg, models = load_for_inference(checkpoint, torch_device)
            result = evaluate_depth(models, cfg, split=split, post_process=post_process, device=torch_device,
                                    crop=crop)
    except (CheckpointError, FileNotFoundError, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    metrics = {f"test/{k}": v for k, v in result.mean.items()}
    typer.echo(result.describe() + (f" [floor: {floor}]" if floor else ""))
    typer.echo(_metrics_table(metrics))
    if out is not None:
        typer.echo(f"per-image metrics: {result.save_csv(out)}")


# ------------------------------------------------------------------------------------------- run-ablation
@app.command(
    "run-ablation",
    epilog="Examples: md2bench run-ablation smoke | md2bench run-ablation synth-ablation --runs-per-gpu 4 | "
    "md2bench run-ablation paper-ablation --dry-run --set data.path=/data/kitti | "
    "md2bench run-ablation paper-ablation --backend slurm --partition gpu --time 1440",
)
def run_ablation_cmd(
    grid_name: str = typer.Argument(..., metavar="GRID", help="A grid TOML file or a name in experiments/ "
                                    "(paper-ablation, synth-ablation, smoke)."),
    gpus: str = typer.Option("all", "--gpus", help="all, none, or GPU indices like 0,1."),
    runs_per_gpu: Optional[int] = typer.Option(None, "--runs-per-gpu", help="Runs packed per GPU (default: from "
                                               "measured free memory, 1 if unknown)."),
    cpu_jobs: int = typer.Option(1, "--cpu-jobs", help="Concurrent runs where there is no GPU."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Run the first N seeds (more than listed: 0..N-1)."),
    rows: Optional[List[str]] = typer.Option(None, "--row", help="Only this row (repeatable)."),
    backend: str = typer.Option("local", "--backend", help="local (subprocesses here) or slurm (a job array)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print runs, skips/resumes and a rough time; run nothing."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow store (default "
                                               "$MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)."),
    retries: int = typer.Option(1, "--retries", help="Extra attempts of a failed run (resuming its checkpoint)."),
    out_dir: Optional[str] = typer.Option(None, "--out-dir", help="Run folders root (train.out_dir)."),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="Extra override key=value for every run "
                                             "(repeatable), e.g. --set data.path=/data/kitti."),
    partition: Optional[str] = typer.Option(None, "--partition", help="slurm: partition."),
    time_min: int = typer.Option(24 * 60, "--time", help="slurm: time limit per run in minutes."),
    gpus_per_run: int = typer.Option(1, "--gpus-per-run", help="slurm: GPUs per run (0: CPU)."),
    mem_gb: Optional[float] = typer.Option(None, "--mem", help="slurm: memory per run in GB."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="slurm: submitit cluster (default auto; "
                                          "'local' runs the array on this machine)."),
    wait: bool = typer.Option(False, "--wait/--no-wait", help="slurm: wait for every task and report."),
    debug: bool = _debug_option(),
) -> None:
    """Run every row × seed of a grid: skip finished runs, resume interrupted ones, pack the rest on the GPUs.

    Exit codes: 0 all finished (or skipped, or running elsewhere), 1 a run failed (or the store cannot be used:
    one line, the traceback with --debug), 2 bad grid or options, 3 runs blocked (ImageNet weights missing; the
    message says where to put the file), 130 interrupted (run the command again to resume).
    """
    from md2bench.config import ConfigError, parse_overrides
    from md2bench.grid import GridError, load_grid
    from md2bench.launch import OrchestratorError, run_grid

    _quiet_unless(debug)
    try:
        grid = load_grid(grid_name)
        extra = parse_overrides(list(sets or []))
        if out_dir is not None:
            extra["train.out_dir"] = out_dir
        if extra:
            grid = grid.with_overrides(extra)
        if backend == "local":
            result = run_grid(
                grid, seeds=seeds, rows=rows or None, gpus=gpus, runs_per_gpu=runs_per_gpu, cpu_jobs=cpu_jobs,
                retries=retries, tracking_uri=tracking_uri, dry_run=dry_run,
            )
        elif backend == "slurm":
            from md2bench.launch.slurm import run_grid_slurm

            result = run_grid_slurm(
                grid, seeds=seeds, rows=rows or None, tracking_uri=tracking_uri, partition=partition,
                time_min=time_min, gpus_per_run=gpus_per_run, mem_gb=mem_gb, retries=retries, cluster=cluster,
                wait=wait, dry_run=dry_run,
            )
        else:
            _fail(f"--backend {backend!r}: choose local or slurm")
    except (GridError, ConfigError, OrchestratorError) as exc:
        _fail(str(exc))
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        _fail_on(exc, debug, 1, tracking_uri)
    if not dry_run and backend == "local":
        typer.echo(next_steps(grid, tracking_uri))
    raise typer.Exit(0 if dry_run else result.exit_code)


def next_steps(grid: Any, tracking_uri: str | None) -> str:
    """What to run after a grid (printed whether it finished or was interrupted: the report uses what finished)."""
    from md2bench.tracking import resolve_uri

    uri = resolve_uri(tracking_uri)
    store = "" if tracking_uri is None else f" --tracking-uri {uri}"
    target = str(grid.path) if grid.path is not None and grid.path.parent.name != "experiments" else grid.name
    return (f"next:\n  md2bench report {target} --out reports/{grid.name}{store}   # the table (finished runs so far)\n"
            f"  mlflow ui --backend-store-uri {uri}   # browse the runs")


# ------------------------------------------------------------------------------------------- report / tune
@app.command(
    "report",
    epilog="Examples: md2bench report smoke | md2bench report experiments/synth-ablation.toml --out "
    "reports/synth-ablation | md2bench report my-experiment --tracking-uri sqlite:///other.db --no-qualitative",
)
def report_cmd(
    target: str = typer.Argument(..., metavar="GRID_OR_EXPERIMENT",
                                 help="A grid TOML file, a grid name in experiments/, or an MLflow experiment name."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default reports/<grid>)."),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)."
    ),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Draw the figures (PNG and PDF)."),
    qualitative: bool = typer.Option(True, "--qualitative/--no-qualitative",
                                     help="Draw the qualitative grid (loads each row's checkpoint and test data)."),
    images: int = typer.Option(3, "--images", help="Test images in the qualitative grid."),
    device: str = typer.Option("cpu", "--device", help="Where the qualitative predictions run (cpu, cuda)."),
    log: bool = typer.Option(True, "--log/--no-log", help="Log the report (and the floors) on the grid's MLflow "
                             "parent run."),
    floors: bool = typer.Option(True, "--floors/--no-floors", help="Evaluate the no-learning floors (constant "
                                "depth, per-row prior) on the grid's test split: reference rows in every table; "
                                "rows that do not beat the row prior are marked not learned."),
    debug: bool = _debug_option(),
) -> None:
    """Tables (Markdown, LaTeX, CSV, HTML) and figures of a grid's runs, the paper's numbers beside ours, the
    no-learning floors as reference rows, errors per region (synthetic world) and the grid's findings."""
    from md2bench.report import ReportError, build_report

    _quiet_unless(debug)
    try:
        report = build_report(target, out, tracking_uri, figures=figures, qualitative=qualitative and figures,
                              log_to_mlflow=log, num_images=images, device=device, floors=floors)
    except ReportError as exc:
        _fail(str(exc))
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        _fail_on(exc, debug, 1, tracking_uri)
    done = int((report.summary["n"] > 0).sum())
    typer.echo(f"report of {report.experiment}: {done}/{len(report.summary)} rows with finished runs, "
               f"{len(report.files)} files in {report.out_dir} (open {report.out_dir / 'README.md'})")
    if report.logged_to:
        typer.echo(f"logged as artifacts report/ on MLflow run {report.logged_to}")
    for line in report.headline:
        typer.echo(line)
    for verdict in report.verdicts:
        typer.echo(f"finding: {verdict.status}: {verdict.finding.claim} ({verdict.reason})")
    for note in report.notes:
        typer.echo(f"note: {note}")


@app.command(
    "tune",
    epilog="Example: md2bench tune synth --space experiments/search-space.toml --trials 20 --study lr-smooth "
    "--export best.toml   (run the same command again to add 20 more trials)",
)
def tune_cmd(
    args: Optional[List[str]] = _config_args(),
    space: Path = typer.Option(..., "--space", help="Search-space TOML (see experiments/search-space.toml)."),
    trials: int = typer.Option(..., "--trials", help="Finished trials (complete or pruned) to add."),
    study: str = typer.Option(..., "--study", help="Optuna study name (also the MLflow experiment)."),
    storage: Optional[str] = typer.Option(
        None, "--storage", help="Optuna storage: an RDB URL (postgresql://...) or journal:FILE; default a journal "
        "file beside the MLflow store."
    ),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="auto (every visible GPU, one worker each), cpu, or "
                                       "indices like 0,1."),
    export: Optional[Path] = typer.Option(None, "--export", help="Write the best trial as a config TOML here."),
    seed: int = typer.Option(0, "--seed", help="Sampler seed (TPE)."),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)."
    ),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Show each trial's progress bar."),
    debug: bool = _debug_option(),
) -> None:
    """Search hyperparameters with Optuna (TPE, median pruning); each trial is an MLflow run under the study run."""
    from md2bench.config import ConfigError
    from md2bench.tune import TuneError, run_study

    _quiet_unless(debug)
    source, overrides = _split_config_args(list(args or []))
    try:
        result = run_study(source, space, study_name=study, trials=trials, overrides=overrides, storage=storage,
                           tracking_uri=tracking_uri, gpus=gpus, seed=seed, export=export, progress=progress)
    except (TuneError, ConfigError) as exc:
        _fail(str(exc))
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        _fail_on(exc, debug, 1, tracking_uri)
    states: dict[str, int] = {}
    for t in result.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    typer.echo(f"study {result.study_name}: {result.new_trials} new trials, {len(result.trials)} in all "
               f"({', '.join(f'{k.lower()} {v}' for k, v in sorted(states.items()))}); storage {result.storage}")
    typer.echo(f"MLflow study run: {result.study_run_id}")
    if result.best_params:
        typer.echo(f"best: {result.best_value:.6g} with {result.best_params}")
    if result.exported:
        typer.echo(f"best config written to {result.exported} (md2bench train {result.exported})")
    for note in result.notes:
        typer.echo(f"note: {note}")
