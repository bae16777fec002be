"""Reports: table values against MLflow, missing rows, files, figures, artifacts, error messages.

The store is real: a grid of three rows on a mini synthetic world, two rows trained for one step at two
seeds each with ``trainer.fit`` (the third row is never run), plus one FAILED run that must not count.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from md2bench import report
from md2bench.paper import METRICS
from tests.conftest import release_when_passing

GRID = """
name = "report-test"
description = "Two trained rows and one row never run."
base = "tiny"
seeds = [0, 1]
paper_table = "Godard et al. 2019, Table 2"

[set]
"train.max_steps" = 1
"data.path" = "{world}"
"train.out_dir" = "{runs}"

[[rows]]
name = "baseline"
label = "Baseline"
flags = {{ automask = false, min_reprojection = false, full_res = false, pretrained = true }}
set = {{ "loss.reprojection" = "avg", "loss.automask" = false, "loss.multiscale" = "per_scale" }}
paper = {{ abs_rel = 0.140, sq_rel = 1.610, rmse = 5.512, rmse_log = 0.223, a1 = 0.852, a2 = 0.946, a3 = 0.973 }}

[[rows]]
name = "full"
label = "Monodepth2 (full)"
flags = {{ automask = true, min_reprojection = true, full_res = true, pretrained = true }}
paper = {{ abs_rel = 0.115, sq_rel = 0.903, rmse = 4.863, rmse_log = 0.193, a1 = 0.877, a2 = 0.959, a3 = 0.981 }}

[[rows]]
name = "no_ssim"
label = "Monodepth2 w/o SSIM"
flags = {{ automask = true, min_reprojection = true, full_res = true, pretrained = true }}
set = {{ "loss.ssim" = false }}
"""


# ============================================================================================ pure pieces
def _runs(values: dict[tuple[str, int], float]) -> pd.DataFrame:
    rows = []
    for i, ((row, seed), v) in enumerate(values.items()):
        rows.append({"run_id": f"r{i}", "row": row, "label": row, "seed": seed, "status": "FINISHED",
                     "start_time": pd.Timestamp(1000 + i, unit="s", tz="UTC"),
                     **{m: v for m in METRICS}})
    return pd.DataFrame(rows).astype({"seed": "Int64"})


def test_summary_by_hand() -> None:
    runs = _runs({("a", 0): 0.1, ("a", 1): 0.3, ("b", 0): 0.2})
    rows = [report.ReportRow("a", "A", {"automask": True}, {"abs_rel": 0.25}), report.ReportRow("b", "B"),
            report.ReportRow("c", "C")]
    table = report.summarize(report.select_runs(runs), rows).set_index("row")
    # a: mean (0.1 + 0.3) / 2 = 0.2; sample std sqrt(((0.1-0.2)^2 + (0.3-0.2)^2) / (2-1)) = sqrt(0.02) = 0.14142.
    assert table.loc["a", "abs_rel_mean"] == pytest.approx(0.2)
    assert table.loc["a", "abs_rel_std"] == pytest.approx(math.sqrt(0.02))
    assert table.loc["a", "abs_rel_diff"] == pytest.approx(0.2 - 0.25)
    # b: one seed -> no std (NaN, shown without "±"); c: never run -> n = 0 and NaN, not zero.
    assert table.loc["b", "n"] == 1 and math.isnan(table.loc["b", "abs_rel_std"])
    assert table.loc["c", "n"] == 0 and math.isnan(table.loc["c", "abs_rel_mean"])
    # abs_rel: lower is better -> a (0.2) and b (0.2) tie as best; a1: higher is better -> also both 0.2.
    assert table["abs_rel_best"].tolist() == [True, True, False]
    md = report.to_markdown(table.reset_index())
    # One flag column (AM, the only flag used); C has no flag given (blank), n = 0 and "—" in all seven metrics.
    assert "| C *(not run)* |  | 0 | — | — | — | — | — | — | — |" in md
    assert "**0.200 ± 0.141**" in md and "**0.200**" in md  # b's single seed: mean only
    assert "0.250 (-0.050)" in md  # the paper line: paper value (ours - paper)


def test_newest_finished_run_per_row_and_seed_wins() -> None:
    runs = _runs({("a", 0): 0.1, ("a", 1): 0.3})
    newer = runs.iloc[[0]].assign(run_id="new", start_time=pd.Timestamp(5000, unit="s", tz="UTC"), abs_rel=0.5)
    failed = runs.iloc[[0]].assign(run_id="bad", status="FAILED", start_time=pd.Timestamp(9000, unit="s", tz="UTC"))
    picked = report.select_runs(pd.concat([runs, newer, failed], ignore_index=True))
    assert sorted(picked["run_id"]) == ["new", "r1"]


# ============================================================================================ a real store
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    from md2bench.data.synthetic import render_world
    from md2bench.grid import load_grid
    from md2bench.tracking import MLflowTracker
    from md2bench.train.loop import fit

    base = tmp_path_factory.mktemp("report")
    world = Path(render_world(base / "mini", preset="tiny", sequences=3, frames=5, progress=False).root)
    grid_path = base / "report-test.toml"
    grid_path.write_text(GRID.format(world=world, runs=base / "runs"))
    grid = load_grid(grid_path)
    uri = f"sqlite:///{base}/mlruns.db"
    tracker = MLflowTracker(uri)
    parent = tracker.start_run(grid.name, run_name="grid", tags={"md2bench.kind": "grid", "md2bench.grid": grid.name})
    for row in grid.rows[:2]:
        for seed in grid.seeds:
            result = fit(grid.config_for(row, seed), tracker, experiment=grid.name, run_name=f"{row.name}/seed{seed}",
                         tags={"md2bench.grid": grid.name}, parent_run_id=parent.run_id, progress=False)
            assert result.status == "FINISHED", result.message
    # A newer failed attempt of baseline/seed0 with an absurd metric: must not enter the table.
    bad = tracker.start_run(grid.name, run_name="baseline/seed0", parent_run_id=parent.run_id,
                            tags={"md2bench.row": "baseline", "md2bench.seed": "0", "md2bench.grid": grid.name})
    bad.log_metrics({"test/abs_rel": 99.0}, step=0)
    bad.end("FAILED")
    parent.end()
    out = base / "out"
    built = report.build_report(grid_path, out=out, tracking_uri=uri)
    yield {"base": base, "uri": uri, "grid": grid, "grid_path": grid_path, "parent": parent.run_id,
           "report": built, "out": out}
    release_when_passing(request, base)


def _finished_metrics(uri: str, experiment: str) -> dict[str, list[dict[str, float]]]:
    """Per row, the test metrics of its FINISHED runs, read straight from the MLflow client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, list[dict[str, float]]] = {}
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'"):
        if "md2bench.kind" in run.data.tags:
            continue
        out.setdefault(run.data.tags["md2bench.row"], []).append(run.data.metrics)
    return out


@pytest.mark.slow
def test_table_matches_mlflow(store: dict[str, Any]) -> None:
    expected = _finished_metrics(store["uri"], "report-test")
    assert {k: len(v) for k, v in expected.items()} == {"baseline": 2, "full": 2}
    summary = store["report"].summary.set_index("row")
    assert list(summary.index) == ["baseline", "full", "no_ssim"]  # grid order
    for row, runs in expected.items():
        assert summary.loc[row, "n"] == 2
        for m in METRICS:
            values = [r[f"test/{m}"] for r in runs]
            assert summary.loc[row, f"{m}_mean"] == pytest.approx(statistics.mean(values))
            assert summary.loc[row, f"{m}_std"] == pytest.approx(statistics.stdev(values))
            paper = store["grid"].row(row).paper[m]
            assert summary.loc[row, f"{m}_diff"] == pytest.approx(statistics.mean(values) - paper)
    # The best mean per column: lowest abs_rel among the trained rows that beat the row prior (issue 16: a row
    # that did not learn depth is marked, not ranked); after one step neither may have.
    means = {row: statistics.mean(r["test/abs_rel"] for r in runs) for row, runs in expected.items()}
    learned = [row for row in means if summary.loc[row, "learned"]]
    if learned:
        assert summary.loc[min(learned, key=means.get), "abs_rel_best"]
    else:
        assert not summary["abs_rel_best"].any()
    # Moving / static table (synthetic world): the same statistics for test/moving/* and test/static/*.
    motion = store["report"].motion.set_index("row")
    for row, runs in expected.items():
        values = [r["test/moving/abs_rel"] for r in runs]
        assert motion.loc[row, "moving/abs_rel_mean"] == pytest.approx(statistics.mean(values))


@pytest.mark.slow
def test_missing_row_is_missing_not_zero(store: dict[str, Any]) -> None:
    summary = store["report"].summary.set_index("row")
    assert summary.loc["no_ssim", "n"] == 0
    assert all(math.isnan(summary.loc["no_ssim", f"{m}_mean"]) for m in METRICS)
    md = (store["out"] / "table.md").read_text()
    line = next(l for l in md.splitlines() if l.startswith("| Monodepth2 w/o SSIM"))
    assert "(not run)" in line and line.count("—") == len(METRICS) and "0.000" not in line
    csv = pd.read_csv(store["out"] / "table.csv").set_index("row")
    assert np.isnan(csv.loc["no_ssim", "abs_rel_mean"])
    assert "not run yet" in (store["out"] / "README.md").read_text()


@pytest.mark.slow
def test_files_figures_and_provenance(store: dict[str, Any]) -> None:
    out: Path = store["out"]
    for name in ("README.md", "table.md", "table.tex", "table.csv", "runs.csv", "motion.csv", "report.html",
                 "metrics.png", "metrics.pdf", "val_curves.png", "val_curves.pdf", "qualitative.png",
                 "qualitative.pdf"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    tex = (out / "table.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "\\checkmark" in tex
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # metrics, val curves, qualitative: all inlined
    assert "Two trained rows and one row never run." in page  # the grid's description heads the page
    assert "<b>wall time</b>:" in page and "min per run" in page
    readme = (out / "README.md").read_text()
    runs = store["report"].runs
    commit = runs["commit"].iloc[0]
    assert "report-test" in readme and commit in readme and "cpu" in readme
    # which bytes the runs trained on: every trained run of this store used the same synthetic world
    fingerprints = set(runs.loc[runs["status"] == "FINISHED", "data_fingerprint"])
    assert len(fingerprints) == 1 and len(next(iter(fingerprints))) == 16
    assert f"{next(iter(fingerprints))} (4 runs)" in readme and "data content" in readme
    assert "![metrics](metrics.png)" in readme and "Moving objects vs static pixels" in readme
    # The tidy table holds every training run (4 finished + 1 failed), one row each.
    assert len(runs) == 5 and sorted(runs["status"].value_counts().items()) == [("FAILED", 1), ("FINISHED", 4)]
    assert {"grid", "row", "seed", "status", "duration_s", "device", "commit", "flag.automask", "abs_rel"} <= set(runs)


@pytest.mark.slow
def test_a_flag_that_shows_the_papers_row_not_the_runs_is_said(store: dict[str, Any]) -> None:
    """The grid's rows print PT ✓ (the paper's rows are pretrained) while the tiny preset trains from scratch:
    the runs' table records it per run and the README's legend and notes say so, with the count."""
    runs = store["report"].runs
    finished = runs[runs["status"] == "FINISHED"]
    assert set(finished["flags_not_config"]) == {"pretrained: model.pretrained = scratch"}
    readme = (store["out"] / "README.md").read_text()
    assert "PT = ImageNet pretrained (the paper's row, not these runs: see Notes)" in readme
    assert ("the PT column (ImageNet pretrained) shows what the paper's row did, not these runs: 4 of 4 runs "
            "logged model.pretrained = scratch") in readme
    # the switches the runs' config agrees with get no such note
    assert "AM = auto-masking (the paper's row" not in readme and "the AM column" not in readme


def test_flag_notes_count_each_disagreement_once_per_run() -> None:
    from md2bench.report.build import flag_notes, paper_only_flags

    runs = pd.DataFrame({"flags_not_config": ["pretrained: model.pretrained = scratch", "",
                                              "automask: loss.automask = False; pretrained: model.pretrained = scratch",
                                              None]})
    assert paper_only_flags(runs) == ["automask", "pretrained"]
    notes = flag_notes(runs)
    assert notes == ["the AM column (auto-masking) shows what the paper's row did, not these runs: 1 of 4 runs "
                     "logged loss.automask = False",
                     "the PT column (ImageNet pretrained) shows what the paper's row did, not these runs: 2 of 4 runs "
                     "logged model.pretrained = scratch"]
    assert flag_notes(pd.DataFrame({"row": ["a"]})) == [] and paper_only_flags(pd.DataFrame()) == []


@pytest.mark.slow
def test_report_logged_on_the_grid_parent_run(store: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    assert store["report"].logged_to == store["parent"]
    names = {a.path for a in MlflowClient(store["uri"]).list_artifacts(store["parent"], "report")}
    assert {"report/README.md", "report/table.tex", "report/metrics.png"} <= names


@pytest.mark.slow
def test_errors_say_what_to_do(store: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(report.ReportError, match="experiments there: .*report-test"):
        report.build_report("no-such-thing", out=tmp_path / "x", tracking_uri=store["uri"])
    empty = tmp_path / "empty-grid.toml"
    empty.write_text(GRID.format(world=tmp_path, runs=tmp_path).replace('"report-test"', '"empty-grid"'))
    with pytest.raises(report.ReportError, match=f"md2bench run-ablation {empty}"):
        report.build_report(empty, out=tmp_path / "y", tracking_uri=store["uri"])
    # An experiment with only a failed run: "no finished training runs" and the command.
    from md2bench.tracking import MLflowTracker

    MLflowTracker(store["uri"]).start_run("only-failed", tags={"md2bench.row": "x"}).end("FAILED")
    with pytest.raises(report.ReportError, match="no finished training runs.*FAILED: 1.*run-ablation"):
        report.build_report("only-failed", out=tmp_path / "z", tracking_uri=store["uri"])


@pytest.mark.slow
def test_cli_report(store: dict[str, Any], tmp_path: Path) -> None:
    from md2bench.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["report", str(store["grid_path"]), "--out", str(tmp_path / "r"), "--tracking-uri",
                              store["uri"], "--no-figures", "--no-log"])
    assert out.exit_code == 0, out.output
    assert "2/3 rows with finished runs" in out.output
    assert "did not learn depth" in out.output or "beat the no-learning row prior" in out.output
    assert (tmp_path / "r" / "README.md").is_file() and (tmp_path / "r" / "floors.csv").is_file()
    plain = runner.invoke(app, ["report", str(store["grid_path"]), "--out", str(tmp_path / "p"), "--tracking-uri",
                                store["uri"], "--no-figures", "--no-log", "--no-floors"])
    assert plain.exit_code == 0, plain.output
    assert not (tmp_path / "p" / "floors.csv").exists() and "not judged" in plain.output
    bad = runner.invoke(app, ["report", "nope", "--tracking-uri", store["uri"]])
    assert bad.exit_code == 2 and "no grid file and no MLflow experiment" in bad.output


# ============================================================================================ floors, regions, findings
FLOOR_GRID = Path(__file__).resolve().parent / "grids" / "findings-test.toml"


@pytest.fixture(scope="module")
def floor_store(store: dict[str, Any]) -> dict[str, Any]:
    """A second grid in the same store whose runs carry known numbers: row "bad" logs the row prior's own
    evaluation (a real predictor through the real pipeline: by definition it does not beat the prior), row
    "good" a quarter of the prior's abs rel at both seeds (0.25·p and 0.26·p)."""
    from md2bench.floors import evaluate_floor
    from md2bench.grid import load_grid
    from md2bench.tracking import MLflowTracker

    base: Path = store["base"]
    world = store["grid"].config_for("baseline", 0).data.path
    grid_path = base / "floor-test.toml"
    grid_path.write_text(FLOOR_GRID.read_text().replace("{world}", str(world)))
    grid = load_grid(grid_path)
    prior = evaluate_floor("row_prior", grid.shared_config())
    tracker = MLflowTracker(store["uri"])
    parent = tracker.start_run(grid.name, run_name="grid", tags={"md2bench.kind": "grid", "md2bench.grid": grid.name})
    p = prior.mean["abs_rel"]
    for seed in grid.seeds:
        for row, metrics in (("bad", {f"test/{k}": v for k, v in prior.mean.items()}),
                             ("good", {"test/abs_rel": p * (0.25 + 0.01 * seed), "test/a1": 0.9})):
            run = tracker.start_run(grid.name, run_name=f"{row}/seed{seed}", parent_run_id=parent.run_id,
                                    tags={"md2bench.row": row, "md2bench.seed": seed, "md2bench.grid": grid.name})
            run.log_metrics(metrics, step=1)
            run.end("FINISHED")
    parent.end()
    built = report.build_report(grid_path, out=base / "floor-out", tracking_uri=store["uri"], qualitative=False)
    return {"report": built, "prior": prior, "parent": parent.run_id, "uri": store["uri"], "out": base / "floor-out"}


@pytest.mark.slow
def test_floors_are_reference_rows_and_logged_on_the_parent(floor_store: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    built, prior = floor_store["report"], floor_store["prior"]
    floors = built.floors.set_index("row")
    assert floors.loc["floor/row_prior", "abs_rel_mean"] == pytest.approx(prior.mean["abs_rel"])
    assert {"floor/constant", "floor/row_prior"} == set(floors.index)
    assert "occluded/abs_rel_mean" in floors  # the tiny world has region masks: region variants too
    logged = MlflowClient(floor_store["uri"]).get_run(floor_store["parent"]).data.metrics
    assert logged["floor/row_prior/abs_rel"] == pytest.approx(prior.mean["abs_rel"])
    assert logged["floor/row_prior/occluded/abs_rel"] == pytest.approx(prior.mean["occluded/abs_rel"])
    assert "floor/constant/a1" in logged
    md = (floor_store["out"] / "table.md").read_text()
    assert "| *floor: per-row mean training depth (median-scaled)* |" in md
    assert f"{prior.mean['abs_rel']:.3f}" in md
    tex = (floor_store["out"] / "table.tex").read_text()
    assert "\\textit{floor: constant depth (median-scaled)}" in tex
    assert "floor: per-row mean training depth" in (floor_store["out"] / "report.html").read_text()
    assert (floor_store["out"] / "floors.csv").is_file()


@pytest.mark.slow
def test_a_row_that_does_not_beat_the_prior_is_not_learned(floor_store: dict[str, Any]) -> None:
    built = floor_store["report"]
    summary = built.summary.set_index("row")
    # bad's mean abs rel equals the prior's: "does not beat" -> not learned; good's is a quarter of it
    assert summary.loc["bad", "learned"] is False and summary.loc["good", "learned"] is True
    assert not summary.loc["bad", "abs_rel_best"] and summary.loc["good", "abs_rel_best"]
    readme = (floor_store["out"] / "README.md").read_text()
    assert "1 of 2 rows did not learn depth: Bad (" in readme
    md = (floor_store["out"] / "table.md").read_text()
    bad_line = next(line for line in md.splitlines() if line.startswith("| Bad"))
    assert "*(not learned)*" in bad_line and "**" not in bad_line
    assert "\\textit{(not learned)}" in (floor_store["out"] / "table.tex").read_text()


@pytest.mark.slow
def test_trained_rows_are_judged_against_the_prior(store: dict[str, Any]) -> None:
    built = store["report"]
    prior = built.floors.set_index("row").loc["floor/row_prior", "abs_rel_mean"]
    summary = built.summary.set_index("row")
    for row in ("baseline", "full"):  # one training step each: whatever they reached, the mark must agree
        assert summary.loc[row, "learned"] is bool(summary.loc[row, "abs_rel_mean"] < prior)
    assert summary.loc["no_ssim", "learned"] is None  # never run: not judged
    assert any("did not learn depth" in h or "beat the no-learning row prior" in h for h in built.headline)


@pytest.mark.slow
def test_region_table(floor_store: dict[str, Any], store: dict[str, Any]) -> None:
    regions = store["report"].regions.set_index("row")
    expected = _finished_metrics(store["uri"], "report-test")
    for row, runs in expected.items():
        for key in ("occluded/abs_rel", "comoving/a1", "low_texture/abs_rel", "abs_rel"):
            values = [r[f"test/{key}"] for r in runs if f"test/{key}" in r]
            assert len(values) == 2, (row, key)  # the trainer logged every region metric
            assert regions.loc[row, f"{key}_mean"] == pytest.approx(statistics.mean(values))
    out = floor_store["out"]
    for name in ("regions.csv", "regions.tex", "findings.csv"):
        assert (out / name).is_file(), name
    readme = (out / "README.md").read_text()
    assert "## Errors per region" in readme and "occluded Abs Rel" in readme
    assert "*floor: constant depth (median-scaled)*" in readme.split("## Errors per region")[1]
    assert "\\textit{floor: constant depth" in (out / "regions.tex").read_text()


@pytest.mark.slow
def test_findings_section(floor_store: dict[str, Any]) -> None:
    verdicts = {v.finding.claim: v for v in floor_store["report"].verdicts}
    assert verdicts["good beats bad"].status == "shown"
    assert verdicts["bad beats good"].status == "not shown"
    assert verdicts["bad beats good"].reason.startswith("reversed")
    assert verdicts["good is best"].status == "shown" and verdicts["good is best"].reason == "best"
    assert verdicts["every row halves the row prior's error"].status == "not shown"
    assert "Bad" in verdicts["every row halves the row prior's error"].reason
    assert verdicts["good beats bad on co-moving pixels"].status == "not run"  # good never logged it
    readme = (floor_store["out"] / "README.md").read_text()
    findings = readme.split("## Findings")[1]
    for claim, verdict in verdicts.items():  # every claim is printed with its verdict, none hidden
        assert claim in findings and f"**{verdict.status}**" in findings
    assert "Findings: 2 of 5 shown, 2 not shown, 1 not run" in readme
    csv = pd.read_csv(floor_store["out"] / "findings.csv")
    assert sorted(csv["verdict"]) == ["not run", "not shown", "not shown", "shown", "shown"]


_PROBE = """<script>
window.addEventListener('load', () => {
  const shown = e => { const r = e.getBoundingClientRect(), s = getComputedStyle(e);
                       return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none'; };
  const out = {
    tables: [...document.querySelectorAll('table')].map(t => ({rows: t.rows.length, visible: shown(t)})),
    images: [...document.images].map(i => ({alt: i.alt, loaded: i.complete && i.naturalWidth > 0,
                                            visible: shown(i)})),
    title: document.title,
  };
  const pre = document.createElement('pre');
  pre.id = 'md2bench-probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.mark.slow
def test_report_html_renders_in_a_real_browser(store: dict[str, Any], tmp_path: Path) -> None:
    """The HTML report in headless Chromium: every table laid out with rows, every figure decoded and on screen."""
    import html
    import json
    import re
    import shutil
    import subprocess

    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium; .ci/run installs it where it can)")
    page = (store["out"] / "report.html").read_text()
    assert page.count("</body>") == 1
    probed = tmp_path / "report.html"
    probed.write_text(page.replace("</body>", _PROBE + "</body>"))
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="md2bench-probe">(.*?)</pre>', proc.stdout, re.S)
    assert proc.returncode == 0 and found, proc.stderr[-2000:]
    seen = json.loads(html.unescape(found.group(1)))
    assert seen["title"] == "md2bench report: report-test"
    assert len(seen["tables"]) >= 2 and all(t["visible"] and t["rows"] >= 2 for t in seen["tables"]), seen["tables"]
    assert [i["alt"] for i in seen["images"]] == ["metrics", "val_curves", "qualitative"]
    assert all(i["loaded"] and i["visible"] for i in seen["images"]), seen["images"]


def test_busy_stretches_merge_overlapping_runs_and_keep_gaps() -> None:
    from md2bench.report.collect import busy_stretches

    t = lambda minutes: pd.Timestamp("2026-12-07 04:00", tz="UTC") + pd.Timedelta(minutes=minutes)  # noqa: E731
    # three runs at once, then (after a 60-min gap) two more; one run never ended (left out)
    runs = [(t(0), t(30)), (t(5), t(40)), (t(10), t(35)), (t(100), t(130)), (t(130), t(150)), (t(120), pd.NaT)]
    assert busy_stretches(runs) == [(t(0), t(40)), (t(100), t(150))]
    assert busy_stretches([]) == []


def test_wall_time_names_the_stretches_of_a_grid_run_in_parts() -> None:
    from md2bench.report.collect import _wall_time

    t = lambda minutes: pd.Timestamp("2026-12-07 04:00", tz="UTC") + pd.Timedelta(minutes=minutes)  # noqa: E731
    one = pd.DataFrame({"start_time": [t(0), t(5)], "end_time": [t(30), t(40)], "duration_s": [1800.0, 2100.0]})
    assert _wall_time(one).startswith("40.0 min from the first run's start to the last run's end")
    two = pd.DataFrame({"start_time": [t(0), t(100)], "end_time": [t(30), t(150)], "duration_s": [1800.0, 3000.0]})
    text = _wall_time(two)
    assert text.startswith("80.0 min while runs were running, in 2 stretches (2026-12-07 04:00 – 04:30 (30.0 min), "
                           "2026-12-07 05:40 – 06:30 (50.0 min) UTC); 150.0 min from the first run's start")
    assert text.endswith("80.0 min of run time in all, 40.0 min per run")
