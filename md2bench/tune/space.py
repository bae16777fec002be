"""The search-space TOML: ``Param``, ``SearchSpace``, their validation (``parse_space``, ``load_space``), the
dict form worker processes receive, and the sampler and pruner a space configures; also ``TuneError``.

- **Search space** (``load_space``): a TOML file of config keys with float / int ranges (optionally log scale
  or stepped) or categorical choices, validated against the config like grids: an unknown key fails naming the
  nearest valid one, and every bound and choice must make a valid config. See ``experiments/search-space.toml``.
- **Sampler and pruner**: TPE with a fixed seed, and a median pruner fed the per-epoch validation metric the
  trainer reports (``epoch_callback`` in ``md2bench.tune.worker``: report to the trial, stop the run when
  ``trial.should_prune()``). The objective is the metric at the run's last validation (``val/abs_rel`` by
  default: tuning on the test split would leak it into the model choice).
"""

from __future__ import annotations

import difflib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from md2bench.config import Config, ConfigError, valid_keys
from md2bench.paper import LOWER_IS_BETTER

# Keys the tuner sets itself for each trial.
RESERVED_KEYS = ("name", "train.out_dir", "train.device")
KINDS = ("float", "int", "categorical")


class TuneError(ValueError):
    """A bad search space, storage or study; the message says what to change."""


# --------------------------------------------------------------------------------------------- search space
@dataclass(frozen=True)
class Param:
    """One searched config key.

    Attributes:
        key: dotted config key (``train.lr``).
        kind: ``"float"``, ``"int"`` or ``"categorical"``.
        low: lower bound (float/int).
        high: upper bound, inclusive (float/int).
        log: sample on a log scale (float/int, needs ``low > 0``).
        step: grid step (float/int; not with ``log``).
        choices: the values of a categorical parameter.
    """

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter from an Optuna trial."""
        if self.kind == "float":
            return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log,
                                       step=None if self.step is None else float(self.step))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log,
                                     step=1 if self.step is None else int(self.step))
        return trial.suggest_categorical(self.key, list(self.choices))

    def describe(self) -> str:
        """``float [1e-05, 0.001] log`` / ``categorical [4, 8, 12]``."""
        if self.kind == "categorical":
            return f"categorical {list(self.choices)}"
        extra = " log" if self.log else (f" step {self.step}" if self.step is not None else "")
        return f"{self.kind} [{self.low}, {self.high}]{extra}"


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space and how trials are judged.

    Attributes:
        params: the searched keys, in file order.
        metric: validation metric optimised (``abs_rel`` → ``val/abs_rel`` at the last validation).
        direction: ``"minimize"`` (errors, losses) or ``"maximize"`` (δ accuracies).
        sampler_startup_trials: random trials before TPE models the space.
        pruner_startup_trials: trials that run to the end before the median pruner may prune.
        pruner_warmup_epochs: epochs of every trial that are never pruned.
        path: the file it came from.
    """

    params: tuple[Param, ...]
    metric: str = "abs_rel"
    direction: str = "minimize"
    sampler_startup_trials: int = 10
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 0
    path: Path | None = None

    def to_json(self) -> str:
        """Canonical JSON of what defines the study (checked when a study is resumed)."""
        return json.dumps({"metric": self.metric, "direction": self.direction,
                           "params": [p.__dict__ | {"choices": list(p.choices)} for p in self.params]},
                          sort_keys=True, default=str)


def _number(value: Any, where: str, integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise TuneError(f"{where} must be {'an integer' if integer else 'a number'}, got {value!r}")
    return value


def _parse_param(key: str, table: Mapping[str, Any], where: str) -> Param:
    allowed = ("type", "low", "high", "log", "step", "choices")
    for name in table:
        if name not in allowed:
            near = difflib.get_close_matches(name, allowed, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise TuneError(f"{where}: unknown field {name!r}{hint} (valid: {', '.join(allowed)})")
    kind = table.get("type")
    if kind not in KINDS:
        raise TuneError(f"{where}: type must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "categorical":
        choices = table.get("choices")
        if not isinstance(choices, list) or not choices:
            raise TuneError(f"{where}: a categorical parameter needs choices = [...] (a non-empty list)")
        if not all(isinstance(c, (str, int, float, bool)) for c in choices) or len(set(map(repr, choices))) != len(choices):
            raise TuneError(f"{where}: choices must be distinct strings, numbers or booleans, got {choices!r}")
        extra = sorted(set(table) - {"type", "choices"})
        if extra:
            raise TuneError(f"{where}: a categorical parameter takes only choices, not {', '.join(extra)}")
        return Param(key, kind, choices=tuple(choices))
    integer = kind == "int"
    if "low" not in table or "high" not in table:
        raise TuneError(f"{where}: a {kind} parameter needs low and high")
    low = _number(table["low"], f"{where}: low", integer)
    high = _number(table["high"], f"{where}: high", integer)
    if not low < high:
        raise TuneError(f"{where}: need low < high, got low = {low}, high = {high}")
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise TuneError(f"{where}: log must be true or false")
    if log and low <= 0:
        raise TuneError(f"{where}: log = true needs low > 0, got {low}")
    step = table.get("step")
    if step is not None:
        step = _number(step, f"{where}: step", integer)
        if step <= 0 or log:
            raise TuneError(f"{where}: step must be > 0 and cannot be combined with log = true")
    if "choices" in table:
        raise TuneError(f"{where}: choices belong to type = \"categorical\"")
    return Param(key, kind, low, high, log, step)


def _flatten_params(table: Mapping[str, Any], prefix: str = "") -> dict[str, Mapping[str, Any]]:
    """``{"train": {"lr": {...}}}`` or ``{"train.lr": {...}}`` → ``{"train.lr": {...}}`` (a leaf has ``type``)."""
    out: dict[str, Mapping[str, Any]] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and "type" not in value and all(isinstance(v, Mapping) for v in value.values()):
            out.update(_flatten_params(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def parse_space(data: Mapping[str, Any], base: Config | None = None, where: str = "search space") -> SearchSpace:
    """Build and validate a ``SearchSpace`` from parsed TOML.

    Args:
        data: ``{"params": {...}, "objective": {...}, "sampler": {...}, "pruner": {...}}``.
        base: the config trials start from; every bound and choice is checked to make a valid config from it.
        where: file name for messages.

    Raises:
        TuneError: unknown or reserved key (naming the nearest valid key), bad bounds, or a value the config
            rejects.
    """
    sections = ("params", "objective", "sampler", "pruner")
    for key in data:
        if key not in sections:
            raise TuneError(f"{where}: unknown table {key!r} (valid: {', '.join(sections)})")
    raw = data.get("params")
    if not isinstance(raw, Mapping) or not raw:
        raise TuneError(f'{where}: needs a [params] table, e.g. [params."train.lr"] type = "float" low = 1e-5 ...')
    keys = valid_keys()
    params: list[Param] = []
    for key, table in _flatten_params(raw).items():
        pwhere = f"{where}: params.{key}"
        if key not in keys:
            near = difflib.get_close_matches(key, keys, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise TuneError(f"{where}: unknown config key {key!r}{hint}")
        if key in RESERVED_KEYS:
            raise TuneError(f"{where}: {key!r} is set by the tuner for each trial; it cannot be searched")
        if not isinstance(table, Mapping):
            raise TuneError(f'{pwhere} must be a table like {{ type = "float", low = 1e-5, high = 1e-3, log = true }}')
        param = _parse_param(key, table, pwhere)
        if base is not None:
            values = param.choices if param.kind == "categorical" else (param.low, param.high)
            for value in values:
                try:
                    base.override({key: value})
                except ConfigError as exc:
                    raise TuneError(f"{pwhere}: value {value!r} does not make a valid config: {exc}") from exc
        params.append(param)

    objective = dict(data.get("objective", {}))
    metric = objective.pop("metric", "abs_rel")
    if not isinstance(metric, str) or not metric:
        raise TuneError(f"{where}: objective.metric must be a validation metric name such as 'abs_rel'")
    metric = metric.removeprefix("val/")
    direction = objective.pop("direction", "minimize" if LOWER_IS_BETTER.get(metric, True) else "maximize")
    if direction not in ("minimize", "maximize"):
        raise TuneError(f"{where}: objective.direction must be 'minimize' or 'maximize', got {direction!r}")
    if objective:
        raise TuneError(f"{where}: unknown objective field(s) {', '.join(objective)} (valid: metric, direction)")

    def count(section: str, name: str, default: int) -> int:
        table = dict(data.get(section, {}))
        unknown = set(table) - {name}
        if unknown:
            raise TuneError(f"{where}: unknown {section} field(s) {', '.join(sorted(unknown))} (valid: {name})")
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TuneError(f"{where}: {section}.{name} must be an integer >= 0, got {value!r}")
        return value

    pruner = dict(data.get("pruner", {}))
    startup = pruner.pop("startup_trials", 5)
    warmup = pruner.pop("warmup_epochs", 0)
    if pruner:
        raise TuneError(f"{where}: unknown pruner field(s) {', '.join(pruner)} (valid: startup_trials, warmup_epochs)")
    for name, value in (("pruner.startup_trials", startup), ("pruner.warmup_epochs", warmup)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TuneError(f"{where}: {name} must be an integer >= 0, got {value!r}")
    return SearchSpace(
        params=tuple(params), metric=metric, direction=direction,
        sampler_startup_trials=count("sampler", "startup_trials", 10),
        pruner_startup_trials=startup, pruner_warmup_epochs=warmup,
    )


def load_space(path: str | Path, base: Config | None = None) -> SearchSpace:
    """Read and validate a search-space TOML file (see ``parse_space``)."""
    path = Path(path)
    if not path.is_file():
        raise TuneError(f"search space {str(path)!r} not found (see experiments/search-space.toml for an example)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TuneError(f"{path}: not valid TOML: {exc}") from exc
    space = parse_space(data, base, where=str(path))
    return SearchSpace(space.params, space.metric, space.direction, space.sampler_startup_trials,
                       space.pruner_startup_trials, space.pruner_warmup_epochs, path)


# ------------------------------------------------------------------------------- dict form, sampler, pruner
def space_from_dict(data: Mapping[str, Any]) -> SearchSpace:
    """The inverse of ``space_to_dict`` (in a worker process)."""
    params = tuple(Param(**{**p, "choices": tuple(p.get("choices", ()))}) for p in data["params"])
    return SearchSpace(params, data["metric"], data["direction"], data["sampler_startup_trials"],
                       data["pruner_startup_trials"], data["pruner_warmup_epochs"])


def space_to_dict(space: SearchSpace) -> dict[str, Any]:
    """A JSON-serialisable dict of the space for ``WorkerSpec.space`` (without ``path``)."""
    return {
        "params": [{**p.__dict__, "choices": list(p.choices)} for p in space.params],
        "metric": space.metric, "direction": space.direction,
        "sampler_startup_trials": space.sampler_startup_trials,
        "pruner_startup_trials": space.pruner_startup_trials,
        "pruner_warmup_epochs": space.pruner_warmup_epochs,
    }


def make_sampler(space: SearchSpace, seed: int) -> Any:
    """TPE with ``seed`` and the space's random startup trials."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=space.sampler_startup_trials)


def make_pruner(space: SearchSpace) -> Any:
    """The median pruner with the space's startup trials and warm-up epochs."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=space.pruner_startup_trials,
                                       n_warmup_steps=space.pruner_warmup_epochs)
