"""Experiment grids: a TOML file of named rows × seeds → validated ``Config``s and ``RunSpec``s.

A grid file (``experiments/<name>.toml``)::

    name = "synth-ablation"
    description = "..."
    base = "synth"                 # a preset name, or a TOML path relative to this file
    seeds = [0, 1, 2]
    paper_table = "Godard et al. 2019, arXiv v4 Table 2"     # optional

    [set]                          # dotted overrides applied to every row
    "train.epochs" = 5

    [[rows]]
    name = "baseline"              # short id: run names are "baseline/seed0"
    label = "Baseline"             # as printed in the paper's table
    flags = { automask = false, min_reprojection = false, full_res = false, pretrained = true }
    set = { "loss.reprojection" = "avg", "loss.automask" = false, "loss.multiscale" = "per_scale" }
    paper = { abs_rel = 0.140, sq_rel = 1.610, rmse = 5.512, rmse_log = 0.223, a1 = 0.852, a2 = 0.946, a3 = 0.973 }

A row's config is: the base, then the grid's ``[set]``, then the row's ``set``, then ``name = row.name`` and
``train.seed = seed`` (all applied together and validated once, so a row may switch two coupled settings, e.g.
``loss.predictive_mask = true`` with ``loss.automask = false``). Every row's config is built when the file is
loaded: a bad key or value fails with ``GridError`` naming the file and the row.

``flags`` are the paper's ✓/✗ columns as printed (for the report), not settings: a synthetic row may train
from scratch while its ``pretrained`` column says what the paper's row did.

Findings (optional) are claims the report checks against the runs, with the spread over seeds
(``md2bench.findings`` holds the rule)::

    [[findings]]
    claim = "removing min reprojection worsens the occluded-pixel error"
    metric = "occluded/abs_rel"          # a test metric: abs_rel ... a3, optionally <subset>/ in front
    better = "monodepth2_full"           # kind = "contrast" (the default): row `better` beats row `worse`
    worse = "monodepth2_no_min_reproj"

    [[findings]]
    claim = "the full model is best or tied overall"
    kind = "best"                        # row `row` is best, or tied within the spread, among all rows
    metric = "abs_rel"
    row = "monodepth2_full"
    rows = ["monodepth2_full", "baseline"]  # optional: among these rows only (they must include `row`)

    [[findings]]
    claim = "every row beats the row prior by at least 2x"
    kind = "floor"                       # every row beats the floor by `factor` (errors: row x factor < floor;
    metric = "abs_rel"                   # accuracies a1..a3: row > factor x floor)
    factor = 2.0                         # default 1.0
    floor = "row_prior"                  # or "constant"; default row_prior
    rows = ["monodepth2_full"]           # optional: only these rows (default: every row)

    [[findings]]
    claim = "the full model reaches abs rel 0.20"
    kind = "target"                      # row `row` reaches `value` (errors: <= value; a1..a3: >= value)
    metric = "abs_rel"
    row = "monodepth2_full"
    value = 0.20

Subsets: ``moving``, ``static`` and the synthetic world's regions ``occluded``, ``comoving``, ``low_texture``
(``md2bench.regions``). Unknown keys, kinds, metrics or rows fail with ``GridError`` naming the valid ones.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from md2bench.config import PRESETS, Config, ConfigError, load_config, preset_path, valid_keys
from md2bench.names import DEPTH_METRICS as METRICS
from md2bench.names import FLAG_KEYS
from md2bench.regions import SUBSET_NAMES, metric_names

# The ✓/✗ columns a row may carry (report column order) and the seven depth metrics: md2bench.names.

_TOP_KEYS = ("name", "description", "base", "seeds", "paper_table", "set", "rows", "findings")
_ROW_KEYS = ("name", "label", "flags", "set", "paper")
FINDING_KINDS: tuple[str, ...] = ("contrast", "best", "floor", "target")
FINDING_FLOORS: tuple[str, ...] = ("constant", "row_prior")  # md2bench.floors.FLOOR_NAMES (kept light here)
# keys every finding may have, and those of each kind
_FINDING_COMMON = ("claim", "kind", "metric")
_FINDING_KEYS: dict[str, tuple[str, ...]] = {
    "contrast": ("better", "worse"),
    "best": ("row", "rows"),
    "floor": ("factor", "floor", "rows"),
    "target": ("row", "value"),
}
_ROW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class GridError(ValueError):
    """An invalid grid file: bad structure, unknown key, or a row whose config does not validate."""


@dataclass(frozen=True)
class Row:
    """One row of a grid (one line of the paper's table).

    Attributes:
        name: short id (letters, digits, ``_.+-``), unique in the grid; run names are ``<name>/seed<k>``.
        label: the row as printed in the paper's table.
        flags: the paper's ✓/✗ columns (keys from ``FLAG_KEYS``).
        overrides: dotted config overrides of this row (applied after the grid's ``[set]``).
        paper: the paper's numbers for this row (keys from ``METRICS``); empty when the paper has none.
    """

    name: str
    label: str
    flags: Mapping[str, bool] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    paper: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """A claim the report checks against the runs (see the module docstring for the TOML form).

    Attributes:
        claim: the claim in words, as printed.
        kind: ``contrast`` (row ``better`` beats row ``worse``), ``best`` (row ``row`` is best or tied) or
            ``floor`` (every row, or every row of ``only``, beats the floor ``floor`` by ``factor``) or ``target``
            (row ``row`` reaches ``value``).
        metric: a test metric (``abs_rel``, ``occluded/abs_rel``, ``a1``, ...); lower is better for errors,
            higher for ``a1``/``a2``/``a3``.
        better: contrast: the row claimed better.
        worse: contrast: the row claimed worse.
        row: best: the row claimed best.
        factor: floor: how many times better than the floor each row must be.
        floor: floor: ``row_prior`` or ``constant``.
        only: floor and best: the rows the claim concerns (TOML key ``rows``); empty: every row.
        value: target: the value the row must reach (an error at most, an accuracy at least).
    """

    claim: str
    kind: str
    metric: str
    better: str = ""
    worse: str = ""
    row: str = ""
    factor: float = 1.0
    floor: str = "row_prior"
    only: tuple[str, ...] = ()
    value: float = math.nan

    def rows(self) -> tuple[str, ...]:
        """The rows the claim names (for ``floor``, and ``best`` with ``rows``, its ``only`` rows; none when a floor
        concerns every row)."""
        if self.kind == "contrast":
            return (self.better, self.worse)
        if self.kind == "floor" or (self.kind == "best" and self.only):
            return self.only
        return (self.row,)


@dataclass(frozen=True)
class RunSpec:
    """One training run of a grid: a row at a seed, with its validated config.

    Attributes:
        grid: the grid's name (MLflow experiment and ``md2bench.grid`` tag).
        row: the row's name (``md2bench.row`` tag).
        label: the row's printed label.
        seed: ``train.seed`` of this run (``md2bench.seed`` tag).
        config: the full config of this run.
        run_key: ``config.run_key``; the run folder is ``<train.out_dir>/<run_key>/``.
        flags: the row's table flags (``md2bench.flag.<key>`` tags and ``flag.<key>`` params of the run).
    """

    grid: str
    row: str
    label: str
    seed: int
    config: Config
    run_key: str
    flags: Mapping[str, bool] = field(default_factory=dict)

    @property
    def run_name(self) -> str:
        """MLflow run name, e.g. ``baseline/seed0``."""
        return f"{self.row}/seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        """The trainer's run folder ``<train.out_dir>/<run_key>`` (relative to the working directory)."""
        return Path(self.config.train.out_dir) / self.run_key


@dataclass(frozen=True)
class Grid:
    """A loaded, validated grid.

    Attributes:
        name: grid name (MLflow experiment name).
        description: free text.
        base: the preset name or base TOML path as written in the file.
        seeds: the seeds listed in the file.
        rows: the rows, in file order.
        path: the grid file (None for grids built in code).
        paper_table: where the ``paper`` numbers come from, if any.
        overrides: the grid's ``[set]`` overrides.
        extra: overrides applied after every row's own (from the command line; see ``with_overrides``).
        base_config: the loaded base; None loads ``base`` (relative to ``path``) when first needed.
        findings: the claims the report checks (``[[findings]]``).
    """

    name: str
    description: str
    base: str
    seeds: tuple[int, ...]
    rows: tuple[Row, ...]
    path: Path | None = None
    paper_table: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    base_config: Config | None = None
    findings: tuple[Finding, ...] = ()

    def row(self, name: str) -> Row:
        """The row called ``name`` (``GridError`` naming the rows otherwise)."""
        for row in self.rows:
            if row.name == name:
                return row
        raise GridError(f"{self._where()}: no row {name!r}; rows: {', '.join(r.name for r in self.rows)}")

    def config_for(self, row: Row | str, seed: int) -> Config:
        """The config of ``row`` at ``seed``: base, grid ``[set]``, row ``set``, extra, name, seed.

        Raises:
            GridError: naming the file and the row, when the merged overrides do not validate.
        """
        row = self.row(row) if isinstance(row, str) else row
        merged: dict[str, Any] = {**self.overrides, **row.overrides, **self.extra}
        merged["name"] = row.name
        merged["train.seed"] = int(seed)
        base = self.base_config
        if base is None:
            base = _load_base(self.base, self.path if self.path is not None else Path.cwd() / "grid.toml")
        try:
            return base.override(merged)
        except ConfigError as exc:
            raise GridError(f"{self._where()}: row {row.name!r}: {exc}") from exc

    def shared_config(self) -> Config:
        """The config every row starts from: the base with the grid's ``[set]`` and extra overrides (name and
        seed as in the base). Falls back to the first row's config at the first seed when the grid's overrides
        alone do not validate (a row completes them). Use it for what all rows share: dataset, world, splits.
        """
        base = self.base_config
        if base is None:
            base = _load_base(self.base, self.path if self.path is not None else Path.cwd() / "grid.toml")
        try:
            return base.override({**self.overrides, **self.extra})
        except ConfigError:
            return self.config_for(self.rows[0], self.seeds[0])

    def seeds_for(self, n: int | None = None) -> tuple[int, ...]:
        """The seeds to run: all listed (``n`` None), the first ``n``, or the listed ones extended to ``n``.

        When the file lists fewer than ``n`` seeds, the smallest unused non-negative integers are added (so a
        file listing ``[0, 1, 2]`` with ``n = 5`` gives ``0..4``).
        """
        if n is None:
            return self.seeds
        if n < 1:
            raise GridError(f"--seeds must be >= 1, got {n}")
        seeds = list(self.seeds[:n])
        candidate = 0
        while len(seeds) < n:
            if candidate not in seeds:
                seeds.append(candidate)
            candidate += 1
        return tuple(seeds)

    def expand(self, seeds: int | None = None, rows: Sequence[str] | None = None) -> list[RunSpec]:
        """Every (row, seed) as a ``RunSpec``, seed-major (every row at the first seed, then every row at the
        second, ...), so a grid stopped part-way has covered every row before it adds spread.

        Args:
            seeds: how many seeds (see ``seeds_for``); None for the file's list.
            rows: only these row names (file order kept); None for all.
        """
        wanted = set(rows) if rows is not None else None
        if wanted is not None:
            unknown = sorted(wanted - {r.name for r in self.rows})
            if unknown:
                raise GridError(
                    f"{self._where()}: no row(s) {', '.join(unknown)}; rows: {', '.join(r.name for r in self.rows)}"
                )
        specs: list[RunSpec] = []
        for seed in self.seeds_for(seeds):
            for row in self.rows:
                if wanted is not None and row.name not in wanted:
                    continue
                cfg = self.config_for(row, seed)
                specs.append(RunSpec(self.name, row.name, row.label, seed, cfg, cfg.run_key, dict(row.flags)))
        return specs

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Grid":
        """A copy whose every run also gets ``overrides`` (after the rows' own), revalidated.

        Used by the command line (``--out-dir``, ``--set``); e.g. ``{"train.out_dir": "runs"}``.
        """
        _check_keys(dict(overrides), f"{self._where()}: command-line override")
        grid = Grid(
            name=self.name, description=self.description, base=self.base, seeds=self.seeds, rows=self.rows,
            path=self.path, paper_table=self.paper_table, overrides=self.overrides,
            extra={**self.extra, **overrides}, base_config=self.base_config, findings=self.findings,
        )
        grid.validate()
        return grid

    def validate(self) -> None:
        """Build every row's config at the first seed (``GridError`` naming the row on failure)."""
        for row in self.rows:
            self.config_for(row, self.seeds[0])

    def _where(self) -> str:
        return str(self.path) if self.path is not None else f"grid {self.name!r}"


# --------------------------------------------------------------------------------------------- loading
def experiments_dirs() -> list[Path]:
    """Where grid names are looked up: ``./experiments``, then the source checkout's ``experiments/``."""
    dirs = [Path.cwd() / "experiments"]
    repo = Path(__file__).resolve().parent.parent / "experiments"
    if repo.resolve() != dirs[0].resolve():
        dirs.append(repo)
    return dirs


def resolve_grid_path(path_or_name: str | Path) -> Path:
    """A grid file from a path, or a name looked up as ``experiments/<name>.toml`` (see ``experiments_dirs``)."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    if path.suffix != ".toml" and len(path.parts) == 1:
        for folder in experiments_dirs():
            candidate = folder / f"{path.name}.toml"
            if candidate.is_file():
                return candidate
    names = sorted(p.stem for p in list_grids())
    raise GridError(
        f"grid {str(path_or_name)!r} is neither a file nor a name in experiments/ "
        f"(known: {', '.join(names) or 'none'})"
    )


def is_grid_file(path: str | Path) -> bool:
    """True for a TOML file with ``[[rows]]`` (``experiments/`` also holds other files, e.g. search spaces)."""
    try:
        return "rows" in tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False


def list_grids() -> list[Path]:
    """Every grid file under the experiment folders (``./experiments`` first), one per name."""
    seen: dict[str, Path] = {}
    for folder in experiments_dirs():
        if folder.is_dir():
            for p in sorted(folder.glob("*.toml")):
                if is_grid_file(p):
                    seen.setdefault(p.stem, p)
    return list(seen.values())


def load_grid(path_or_name: str | Path) -> Grid:
    """Read, check and expand a grid file; every row's config is built here.

    Args:
        path_or_name: a TOML path, or a name resolving to ``experiments/<name>.toml``.

    Raises:
        GridError: the file is missing or malformed, or a row's config is invalid (the message names the file
            and the row).
    """
    path = resolve_grid_path(path_or_name)
    where = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"{where}: not valid TOML: {exc}") from exc
    _check_known(data, _TOP_KEYS, where, "top-level key")

    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise GridError(f"{where}: name must be a non-empty string, got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise GridError(f"{where}: description must be a string")
    paper_table = data.get("paper_table")
    if paper_table is not None and not isinstance(paper_table, str):
        raise GridError(f"{where}: paper_table must be a string")

    base = data.get("base", "synth")
    if not isinstance(base, str) or not base:
        raise GridError(f"{where}: base must be a preset name ({', '.join(PRESETS)}) or a TOML path")
    base_config = _load_base(base, path)

    seeds = data.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise GridError(f"{where}: seeds must be a non-empty list of distinct integers >= 0, got {seeds!r}")

    grid_set = _flatten_set(data.get("set", {}), f"{where}: [set]")
    _check_keys(grid_set, f"{where}: [set]")

    raw_rows = data.get("rows")
    if not isinstance(raw_rows, list) or not raw_rows or not all(isinstance(r, dict) for r in raw_rows):
        raise GridError(f"{where}: needs at least one [[rows]] table")
    rows: list[Row] = []
    for i, raw in enumerate(raw_rows):
        rows.append(_parse_row(raw, i, where))
    names = [r.name for r in rows]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise GridError(f"{where}: row names must be unique; repeated: {', '.join(dupes)}")

    findings = _parse_findings(data.get("findings", []), names, where)

    grid = Grid(
        name=name, description=description.strip(), base=base, seeds=tuple(seeds), rows=tuple(rows), path=path,
        paper_table=paper_table, overrides=grid_set, base_config=base_config, findings=findings,
    )
    grid.validate()
    keys = [grid.config_for(r, grid.seeds[0]).run_key for r in rows]
    for i, key in enumerate(keys):
        if keys.index(key) != i:
            raise GridError(
                f"{where}: rows {rows[keys.index(key)].name!r} and {rows[i].name!r} give the same config "
                f"(run_key {key}); make them differ or drop one"
            )
    return grid


def _load_base(base: str, grid_path: Path) -> Config:
    """The base config: a packaged preset, or a TOML file relative to the grid file."""
    if base in PRESETS:
        source: Path = preset_path(base)
    else:
        source = Path(base)
        if not source.is_absolute():
            source = grid_path.parent / source
        if not source.is_file():
            raise GridError(
                f"{grid_path}: base {base!r} is neither a preset ({', '.join(PRESETS)}) nor a file "
                f"(looked for {source})"
            )
    try:
        return load_config(source)
    except ConfigError as exc:
        raise GridError(f"{grid_path}: base {base!r}: {exc}") from exc


def _parse_row(raw: Mapping[str, Any], index: int, where: str) -> Row:
    name = raw.get("name")
    if not isinstance(name, str) or not _ROW_NAME.match(name):
        raise GridError(
            f"{where}: row {index + 1}: name must be a short id of letters, digits and _.+- "
            f"(it is used in run names like 'baseline/seed0'), got {name!r}"
        )
    rwhere = f"{where}: row {name!r}"
    _check_known(raw, _ROW_KEYS, rwhere, "key")
    label = raw.get("label", name)
    if not isinstance(label, str):
        raise GridError(f"{rwhere}: label must be a string")

    flags = raw.get("flags", {})
    if not isinstance(flags, dict):
        raise GridError(f"{rwhere}: flags must be a table like {{ automask = true }}")
    _check_known(flags, FLAG_KEYS, f"{rwhere}: flags", "flag")
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise GridError(f"{rwhere}: flags.{key} must be true or false, got {value!r}")

    paper = raw.get("paper", {})
    if not isinstance(paper, dict):
        raise GridError(f"{rwhere}: paper must be a table like {{ abs_rel = 0.115, ... }}")
    _check_known(paper, METRICS, f"{rwhere}: paper", "metric")
    for key, value in paper.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GridError(f"{rwhere}: paper.{key} must be a number, got {value!r}")

    overrides = _flatten_set(raw.get("set", {}), f"{rwhere}: set")
    _check_keys(overrides, f"{rwhere}: set")
    return Row(
        name=name, label=label, flags=dict(flags), overrides=overrides,
        paper={k: float(v) for k, v in paper.items()},
    )


def _parse_findings(raw: Any, rows: Sequence[str], where: str) -> tuple[Finding, ...]:
    """``[[findings]]`` tables -> ``Finding``s, each checked against the grid's rows and the metric names."""
    if not isinstance(raw, list) or not all(isinstance(f, dict) for f in raw):
        raise GridError(f"{where}: findings must be [[findings]] tables (claim, metric, and the rows they name)")
    metrics = metric_names()
    out: list[Finding] = []
    for i, table in enumerate(raw):
        fwhere = f"{where}: finding {i + 1}"
        claim = table.get("claim")
        if not isinstance(claim, str) or not claim.strip():
            raise GridError(f"{fwhere}: claim must be a non-empty string saying what should show")
        fwhere += f" ({claim.strip()!r})"
        kind = table.get("kind", "contrast")
        if kind not in FINDING_KINDS:
            raise GridError(f"{fwhere}: unknown kind {kind!r} (valid: {', '.join(FINDING_KINDS)})")
        allowed = _FINDING_COMMON + _FINDING_KEYS[kind]
        for key in table:
            if key not in allowed:
                owner = [k for k, keys in _FINDING_KEYS.items() if key in keys]
                hint = f" (it belongs to kind = {owner[0]!r})" if owner else ""
                raise GridError(f"{fwhere}: unknown key {key!r} for kind = {kind!r}{hint} "
                                f"(valid: {', '.join(allowed)})")
        metric = table.get("metric")
        if metric not in metrics:
            near = difflib.get_close_matches(str(metric), list(metrics), n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise GridError(f"{fwhere}: unknown metric {metric!r}; {hint}valid: abs_rel, sq_rel, rmse, rmse_log, a1, "
                            f"a2, a3, each optionally prefixed by a subset ({', '.join(SUBSET_NAMES)}), e.g. "
                            "'occluded/abs_rel'")
        values: dict[str, Any] = {"claim": claim.strip(), "kind": kind, "metric": metric}
        for key in _FINDING_KEYS[kind]:
            if key in ("better", "worse", "row"):
                if key not in table:
                    raise GridError(f"{fwhere}: kind = {kind!r} needs {key!r} (a row name: {', '.join(rows)})")
                if table[key] not in rows:
                    raise GridError(f"{fwhere}: {key} = {table[key]!r} is not a row of this grid; rows: "
                                    f"{', '.join(rows)}")
                values[key] = table[key]
        if kind == "contrast" and values["better"] == values["worse"]:
            raise GridError(f"{fwhere}: better and worse name the same row {values['better']!r}")
        if kind == "floor":
            factor = table.get("factor", 1.0)
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
                raise GridError(f"{fwhere}: factor must be a number > 0 (e.g. 2 for 'beats the floor by 2x'), "
                                f"got {factor!r}")
            floor = table.get("floor", "row_prior")
            if floor not in FINDING_FLOORS:
                raise GridError(f"{fwhere}: unknown floor {floor!r} (valid: {', '.join(FINDING_FLOORS)})")
            values.update(factor=float(factor), floor=floor)
        if kind in ("floor", "best") and "rows" in table:
            only = table["rows"]
            if not isinstance(only, list) or not only or any(r not in rows for r in only):
                raise GridError(f"{fwhere}: rows must be a non-empty list of row names of this grid "
                                f"({', '.join(rows)}), got {only!r}")
            if kind == "best" and values["row"] not in only:
                raise GridError(f"{fwhere}: rows must include the row claimed best ({values['row']!r}), "
                                f"got {only!r}")
            values["only"] = tuple(only)
        if kind == "target":
            value = table.get("value")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise GridError(f"{fwhere}: kind = 'target' needs value, a number (e.g. value = 0.20 for "
                                f"'abs rel at most 0.20'), got {value!r}")
            values["value"] = float(value)
        out.append(Finding(**values))
    return tuple(out)


def _flatten_set(table: Any, where: str) -> dict[str, Any]:
    """``{"train.epochs": 5}`` or TOML's nested ``{"train": {"epochs": 5}}`` → flat dotted keys."""
    if not isinstance(table, dict):
        raise GridError(f"{where} must be a table of dotted overrides like {{ \"train.epochs\" = 5 }}")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            for sub, v in _flatten_set(value, where).items():
                out[f"{key}.{sub}"] = v
        else:
            out[key] = value
    return out


def _check_keys(overrides: Mapping[str, Any], where: str) -> None:
    """Every key must be a config key; ``name`` and ``train.seed`` belong to the grid, not to overrides."""
    valid = valid_keys()
    for key in overrides:
        if key in ("name", "train.seed"):
            raise GridError(f"{where}: {key!r} is set by the grid (row name and seeds); remove it")
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise GridError(f"{where}: unknown config key {key!r}{hint}")


def _check_known(table: Mapping[str, Any], allowed: Sequence[str], where: str, what: str) -> None:
    for key in table:
        if key not in allowed:
            near = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise GridError(f"{where}: unknown {what} {key!r}{hint} (valid: {', '.join(allowed)})")
