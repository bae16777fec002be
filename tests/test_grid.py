"""Grid files: every file in experiments/ loads and validates; bad files fail naming the file and the row.

(This is the project's ``test_experiments``: it loads every grid shipped in ``experiments/``.)
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from md2bench.config import load_config
from md2bench.grid import FLAG_KEYS, METRICS, GridError, Row, is_grid_file, list_grids, load_grid

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
# Every TOML in experiments/ with [[rows]] is a grid (the folder also holds search spaces for `md2bench tune`).
GRID_FILES = sorted(p for p in EXPERIMENTS.glob("*.toml") if is_grid_file(p))


def _write(tmp_path: Path, text: str, name: str = "g.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# --------------------------------------------------------------------------------------------- shipped grids
def test_the_three_grids_are_shipped() -> None:
    assert {p.stem for p in GRID_FILES} >= {"paper-ablation", "synth-ablation", "smoke"}


@pytest.mark.parametrize("path", GRID_FILES, ids=lambda p: p.stem)
def test_every_grid_file_loads_and_expands(path: Path) -> None:
    grid = load_grid(path)
    assert grid.name == path.stem  # the file name is the name users type
    specs = grid.expand()
    assert len(specs) == len(grid.rows) * len(grid.seeds)
    # Distinct (row, seed) pairs are distinct runs: no two share a run folder.
    assert len({s.run_key for s in specs}) == len(specs)
    for spec in specs:
        assert spec.config.name == spec.row and spec.config.train.seed == spec.seed
        assert spec.run_key == spec.config.run_key
        assert spec.grid == grid.name and spec.run_name == f"{spec.row}/seed{spec.seed}"
    for row in grid.rows:
        assert set(row.flags) <= set(FLAG_KEYS) and set(row.paper) <= set(METRICS)
        if row.paper:  # a row with paper numbers gives all seven
            assert set(row.paper) == set(METRICS)


@pytest.mark.parametrize("name", ["paper-ablation", "synth-ablation"])
def test_ablation_rows_switch_what_their_paper_flags_say(name: str) -> None:
    # Flags are the paper's columns; the loss switches of the config must agree with them (pretraining is
    # checked only at the paper's settings: the synthetic grid trains every row from scratch on purpose).
    grid = load_grid(name)
    for row in grid.rows:
        cfg = grid.config_for(row, 0)
        f = row.flags
        assert cfg.loss.automask == f["automask"], row.name
        assert (cfg.loss.reprojection == "min") == f["min_reprojection"], row.name
        assert (cfg.loss.multiscale == "full_res") == f["full_res"], row.name
        assert cfg.loss.predictive_mask == f.get("zhou_mask", False), row.name
        assert (cfg.data.split == "eigen_full") == f.get("full_eigen", False), row.name
        if name == "paper-ablation":
            assert (cfg.model.pretrained == "imagenet") == f["pretrained"], row.name
            assert cfg.train.epochs == (20 if f["pretrained"] else 30), row.name  # paper: w/o pt trains 30 epochs
        else:
            assert cfg.model.pretrained == "scratch"


def test_paper_ablation_has_every_table2_row_with_the_printed_numbers() -> None:
    grid = load_grid("paper-ablation")
    assert grid.base == "paper" and grid.seeds == (0, 1, 2)
    assert len(grid.rows) == 14  # Table 2: 10 rows in (a), 2 in (b), 2 in (c)
    full = grid.row("monodepth2_full")
    # Table 2 "Monodepth2 (full)": 0.115 0.903 4.863 0.193 0.877 0.959 0.981
    assert dict(full.paper) == dict(zip(METRICS, (0.115, 0.903, 4.863, 0.193, 0.877, 0.959, 0.981)))
    no_min = grid.row("monodepth2_no_min_reproj")
    # The paper prints δ = 0.870 / 0.957 / 0.980 for this row (Tables 2 and 6), not the full model's values.
    assert (no_min.paper["a1"], no_min.paper["a2"], no_min.paper["a3"]) == (0.870, 0.957, 0.980)
    eigen = grid.row("baseline_full_eigen")
    assert eigen.paper["abs_rel"] == 0.146 and grid.config_for(eigen, 0).data.split == "eigen_full"
    small = grid.config_for("monodepth2_small", 0)
    assert (small.data.height, small.data.width) == (128, 416)


def test_paper_ablation_agrees_with_md2bench_paper() -> None:
    from md2bench import paper

    grid = load_grid("paper-ablation")
    for row in grid.rows:
        ref = paper.paper_row(row.name)  # row names are md2bench.paper keys, so reports can join them
        assert dict(row.paper) == dict(ref.metrics), row.name
        # one vocabulary: the grid's ✓/✗ flags are the paper row's, under the same keys
        assert {k: row.flags[k] for k in paper.FLAG_NAMES if k in row.flags} == dict(ref.flags), row.name
        # The same run: the paper preset with md2bench.paper's overrides gives the grid's run_key.
        expected = load_config("paper", {**ref.overrides, "name": row.name, "train.seed": 0})
        assert grid.config_for(row, 0).run_key == expected.run_key, row.name


def test_paper_ablation_matches_the_shared_csv_up_to_the_documented_erratum() -> None:
    csv_path = Path(__file__).resolve().parents[2] / "shared" / "data" / "paper_ablation.csv"
    if not csv_path.is_file():
        pytest.skip("../shared/data/paper_ablation.csv not present")
    import csv

    grid = load_grid("paper-ablation")
    by_abs_sq = {(r.paper["abs_rel"], r.paper["sq_rel"]): r for r in grid.rows}
    rows = list(csv.DictReader(csv_path.open()))
    for line in rows:
        row = by_abs_sq[(float(line["abs_rel"]), float(line["sq_rel"]))]
        for m in METRICS:
            if row.name == "monodepth2_no_min_reproj" and m in ("a1", "a2", "a3"):
                # the erratum: the paper's text has 0.870/0.957/0.980 whatever the CSV copy says
                continue
            assert row.paper[m] == float(line[m]), (row.name, m)


def test_synth_ablation_is_sized_and_skips_full_eigen() -> None:
    grid = load_grid("synth-ablation")
    specs = grid.expand()
    assert len(specs) == 12 * 3  # (a) 10 rows + (b) 2 rows, 3 seeds; no full-Eigen rows
    assert all(s.config.data.dataset == "synthetic" and s.config.data.synth_preset == "default" for s in specs)
    images = sum(s.config.train.max_steps * s.config.train.batch_size for s in specs)
    # 30 runs x 400 x 12 + 6 runs x 600 x 12 = 144,000 + 43,200 (15,600 steps: the budget in the file's comment)
    assert images == 187_200
    small = grid.config_for("monodepth2_small", 0)
    assert (small.data.height, small.data.width) == (64, 224)


def test_smoke_is_two_tiny_rows_one_seed() -> None:
    grid = load_grid("smoke")
    assert grid.seeds == (0,) and len(grid.rows) == 2 and grid.base == "tiny"
    for spec in grid.expand():
        assert spec.config.data.synth_preset == "tiny" and 0 < spec.config.train.max_steps <= 4


def test_names_resolve_from_any_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./experiments here: the checkout's folder is used
    assert load_grid("smoke").path == EXPERIMENTS / "smoke.toml"
    (tmp_path / "experiments").mkdir()
    _write(tmp_path / "experiments", """
        name = "smoke"
        base = "tiny"
        [[rows]]
        name = "local"
    """, "smoke.toml")
    assert load_grid("smoke").rows[0].name == "local"  # ./experiments wins
    assert [p.stem for p in list_grids()].count("smoke") == 1


# --------------------------------------------------------------------------------------------- semantics
def test_override_order_base_then_grid_then_row(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        name = "order"
        base = "tiny"
        seeds = [3, 5]
        [set]
        "train.lr" = 2e-4
        "train.batch_size" = 4
        [[rows]]
        name = "a"
        [[rows]]
        name = "b"
        label = "Row B"
        set = { "train.lr" = 3e-4, "loss.automask" = false, "loss.predictive_mask" = true }
    """)
    grid = load_grid(path)
    a, b = grid.config_for("a", 3), grid.config_for("b", 5)
    assert (a.train.lr, a.train.batch_size, a.name, a.train.seed) == (2e-4, 4, "a", 3)  # grid [set] over tiny
    assert (b.train.lr, b.train.batch_size, b.name, b.train.seed) == (3e-4, 4, "b", 5)  # row set over grid [set]
    # two coupled switches in one row validate together (predictive mask needs automask off)
    assert b.loss.predictive_mask and not b.loss.automask
    assert a.data.height == 64  # untouched keys come from the tiny preset
    assert grid.row("b").label == "Row B" and grid.row("a").label == "a"


def test_seed_selection(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        base = "tiny"
        seeds = [0, 1, 2]
        [[rows]]
        name = "a"
    """)
    grid = load_grid(path)
    assert grid.seeds_for(None) == (0, 1, 2)
    assert grid.seeds_for(2) == (0, 1)  # the first N
    assert grid.seeds_for(5) == (0, 1, 2, 3, 4)  # more than listed: 0..N-1
    assert [s.seed for s in grid.expand(seeds=2)] == [0, 1]
    odd = load_grid(_write(tmp_path, 'base = "tiny"\nseeds = [7]\n[[rows]]\nname = "a"\n', "odd.toml"))
    assert odd.seeds_for(3) == (7, 0, 1)  # listed seeds first, then the smallest unused


def test_base_may_be_a_toml_path_relative_to_the_grid(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "mine.toml").write_text('name = "x"\n[train]\nbatch_size = 3\n')
    path = _write(tmp_path, 'base = "cfg/mine.toml"\n[[rows]]\nname = "a"\n')
    assert load_grid(path).config_for("a", 0).train.batch_size == 3


def test_with_overrides_applies_after_rows(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        base = "tiny"
        [[rows]]
        name = "a"
        set = { "train.out_dir" = "row_dir" }
    """)
    grid = load_grid(path).with_overrides({"train.out_dir": "cli_dir"})
    spec = grid.expand()[0]
    assert spec.config.train.out_dir == "cli_dir" and spec.run_dir == Path("cli_dir") / spec.run_key


# --------------------------------------------------------------------------------------------- errors
def test_bad_key_in_a_row_names_file_and_row(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        base = "tiny"
        [[rows]]
        name = "good"
        [[rows]]
        name = "typo_row"
        set = { "loss.automsk" = false }
    """)
    with pytest.raises(GridError) as exc:
        load_grid(path)
    msg = str(exc.value)
    assert str(path) in msg and "'typo_row'" in msg and "loss.automask" in msg  # the nearest valid key


def test_bad_value_in_a_row_names_file_and_row(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        base = "tiny"
        [[rows]]
        name = "bad_value"
        set = { "loss.reprojection" = "median" }
    """)
    with pytest.raises(GridError, match=r"row 'bad_value'.*loss.reprojection"):
        load_grid(path)


def test_invalid_combination_names_the_row(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        base = "tiny"
        [[rows]]
        name = "zhou"
        set = { "loss.predictive_mask" = true }
    """)
    with pytest.raises(GridError, match=r"row 'zhou'.*automask"):
        load_grid(path)


@pytest.mark.parametrize(
    "body, match",
    [
        ('[[rows]]\nname = "a"\nflags = { automasking = true }\n', r"row 'a'.*unknown flag 'automasking'.*automask"),
        ('[[rows]]\nname = "a"\nflags = { automask = 1 }\n', r"flags.automask must be true or false"),
        ('[[rows]]\nname = "a"\npaper = { abs_rel = 0.1, delta1 = 0.8 }\n', r"unknown metric 'delta1'"),
        ('[[rows]]\nname = "a"\npaper = { abs_rel = "low" }\n', r"paper.abs_rel must be a number"),
        ('[[rows]]\nname = "a"\nlable = "x"\n', r"unknown key 'lable'.*label"),
        ('[[rows]]\nname = "a b"\n', r"row 1: name must be a short id"),
        ('[[rows]]\nname = "a"\n[[rows]]\nname = "a"\n', r"unique; repeated: a"),
        ('[[rows]]\nname = "a"\n[[rows]]\nname = "b"\n', r"same config"),
        ('seeds = []\n[[rows]]\nname = "a"\n', r"seeds must be"),
        ('seeds = [0, 0]\n[[rows]]\nname = "a"\n', r"seeds must be"),
        ('[set]\n"train.seed" = 1\n[[rows]]\nname = "a"\n', r"set by the grid"),
        ('[set]\n"train.epoch" = 1\n[[rows]]\nname = "a"\n', r"\[set\]: unknown config key 'train.epoch'.*train.epochs"),
        ('rowz = []\n', r"unknown top-level key 'rowz'.*rows"),
        ('name = "x"\n', r"at least one \[\[rows\]\]"),
    ],
)
def test_malformed_grids_fail_clearly(tmp_path: Path, body: str, match: str) -> None:
    path = _write(tmp_path, 'base = "tiny"\n' + body)
    with pytest.raises(GridError, match=match):
        load_grid(path)


def test_missing_grid_and_base_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(GridError, match="neither a file nor a name"):
        load_grid("no-such-grid")
    path = _write(tmp_path, 'base = "nowhere.toml"\n[[rows]]\nname = "a"\n')
    with pytest.raises(GridError, match="neither a preset"):
        load_grid(path)


def test_unknown_rows_in_expand_fail(tmp_path: Path) -> None:
    grid = load_grid("smoke")
    with pytest.raises(GridError, match="no row"):
        grid.expand(rows=["nope"])
    assert [s.row for s in grid.expand(rows=["baseline"])] == ["baseline"]
    assert isinstance(grid.rows[0], Row)


# --------------------------------------------------------------------------------------------- findings
FINDINGS_ROWS = """
base = "tiny"
[[rows]]
name = "full"
[[rows]]
name = "no_min"
set = { "loss.reprojection" = "avg" }
"""


def test_findings_load(tmp_path: Path) -> None:
    path = _write(tmp_path, FINDINGS_ROWS + """
        [[findings]]
        claim = "removing min reprojection worsens the occluded-pixel error"
        metric = "occluded/abs_rel"
        better = "full"
        worse = "no_min"

        [[findings]]
        claim = "full is best or tied"
        kind = "best"
        metric = "a1"
        row = "full"

        [[findings]]
        claim = "every row beats the row prior by 2x"
        kind = "floor"
        metric = "abs_rel"
        factor = 2
    """)
    grid = load_grid(path)
    contrast, best, floor = grid.findings
    assert (contrast.kind, contrast.metric, contrast.better, contrast.worse) == ("contrast", "occluded/abs_rel",
                                                                                "full", "no_min")
    assert (best.kind, best.row, best.rows()) == ("best", "full", ("full",))
    among = load_grid(_write(tmp_path, FINDINGS_ROWS + """
        [[findings]]
        claim = "full is best among full and no_min"
        kind = "best"
        metric = "abs_rel"
        row = "full"
        rows = ["no_min", "full"]
    """)).findings[0]
    assert (among.only, among.rows()) == (("no_min", "full"), ("no_min", "full"))
    assert (floor.kind, floor.factor, floor.floor, floor.rows()) == ("floor", 2.0, "row_prior", ())
    assert grid.with_overrides({"train.max_steps": 1}).findings == grid.findings  # kept through CLI overrides


@pytest.mark.parametrize(
    "body, match",
    [
        ('claim = "x"\nmetric = "abs_rel"\nbetter = "full"\nworse = "nope"\n',
         r"finding 1 \('x'\): worse = 'nope' is not a row of this grid; rows: full, no_min"),
        ('claim = "x"\nmetric = "occluded/absrel"\nbetter = "full"\nworse = "no_min"\n',
         r"unknown metric 'occluded/absrel'; did you mean 'occluded/abs_rel'\?.*comoving, low_texture"),
        ('claim = "x"\nmetric = "abs_rel"\nbetter = "full"\n', r"kind = 'contrast' needs 'worse'"),
        ('claim = "x"\nmetric = "abs_rel"\nbetter = "full"\nworse = "full"\n', r"the same row 'full'"),
        ('claim = "x"\nkind = "best"\nmetric = "abs_rel"\nbetter = "full"\n',
         r"unknown key 'better' for kind = 'best' \(it belongs to kind = 'contrast'\)"),
        ('claim = "x"\nkind = "winner"\nmetric = "abs_rel"\n', r"unknown kind 'winner' \(valid: contrast, best, floor, target\)"),
        ('claim = "x"\nkind = "floor"\nmetric = "abs_rel"\nfactor = 0\n', r"factor must be a number > 0"),
        ('claim = "x"\nkind = "floor"\nmetric = "abs_rel"\nfloor = "median"\n',
         r"unknown floor 'median' \(valid: constant, row_prior\)"),
        ('claim = "x"\nkind = "floor"\nmetric = "abs_rel"\nrows = ["full", "nope"]\n',
         r"rows must be a non-empty list of row names of this grid \(full, no_min\)"),
        ('claim = "x"\nkind = "best"\nmetric = "abs_rel"\nrow = "full"\nrows = ["no_min"]\n',
         r"rows must include the row claimed best \('full'\)"),
        ('claim = "x"\nkind = "target"\nmetric = "abs_rel"\nrow = "full"\n', r"kind = 'target' needs value"),
        ('claim = "x"\nkind = "target"\nmetric = "abs_rel"\nvalue = 0.2\n', r"kind = 'target' needs 'row'"),
        ('metric = "abs_rel"\nbetter = "full"\nworse = "no_min"\n', r"finding 1: claim must be a non-empty string"),
    ],
)
def test_bad_findings_fail_naming_the_valid_choices(tmp_path: Path, body: str, match: str) -> None:
    path = _write(tmp_path, FINDINGS_ROWS)
    path.write_text(path.read_text() + "\n[[findings]]\n" + body)
    with pytest.raises(GridError, match=match):
        load_grid(path)


def test_the_findings_test_grid_loads() -> None:
    grid = load_grid(Path(__file__).resolve().parent / "grids" / "findings-test.toml")
    assert [f.kind for f in grid.findings] == ["contrast", "contrast", "best", "floor", "contrast"]
    assert grid.findings[3].factor == 2.0 and grid.findings[4].metric == "comoving/abs_rel"


def test_cpu_ablation_is_the_block_a_contrasts_with_its_findings() -> None:
    """The CPU grid: 5 rows x 3 seeds, exact poses, 192x64, a step budget; every claim names rows of the grid."""
    grid = load_grid("cpu-ablation")
    specs = grid.expand()
    assert len(specs) == 5 * 3 and sorted(grid.seeds) == [0, 1, 2]
    for s in specs:
        c = s.config
        assert (c.model.pose_source, c.data.height, c.data.width, c.train.device) == ("gt", 64, 192, "cpu")
        assert c.model.init_depth == 2.0 and c.train.max_steps == 500 and s.flags["gt_pose"] is True
    full = grid.config_for("monodepth2_full", 0)
    assert (full.loss.reprojection, full.loss.automask, full.loss.multiscale) == ("min", True, "full_res")
    base = grid.config_for("baseline", 0)
    assert (base.loss.reprojection, base.loss.automask, base.loss.multiscale) == ("avg", False, "per_scale")
    names = {r.name for r in grid.rows}
    kinds = sorted(f.kind for f in grid.findings)
    assert kinds == ["best", "contrast", "contrast", "contrast", "contrast", "floor"]
    for f in grid.findings:
        assert set(f.rows()) <= names
