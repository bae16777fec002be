"""Checkpoints: atomic writes, full resume state, and loading a trained model for inference.

A training checkpoint is one ``torch.save`` dict (see ``md2bench.train.state`` for what it holds: model state
dicts, optimiser, scheduler, epoch, step, batch position, RNG states, config, MLflow run id). Everything in
it is a tensor, a number, a string, or a list / tuple / dict of those, so it loads with
``torch.load(weights_only=True)``: opening a checkpoint never runs pickled code.

Writes are atomic: the state goes to a temporary file in the same folder, is flushed and ``fsync``-ed, then
``os.replace``-d over the target. A crash or a kill mid-write leaves the previous checkpoint intact. A write that
fails for a reason of the file system (disk full, read-only folder) raises ``CheckpointWriteError``, one line
naming the file and the cause, instead of torch's serialiser error.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from md2bench.config import Config
from md2bench.errors import ActionableError, describe_os_error, find_os_error

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or lacks what the caller needs."""


class CheckpointWriteError(ActionableError, OSError):
    """A checkpoint could not be written (disk full, read-only folder ...); the message names the file and the
    cause and says that the previous checkpoint is intact. ``errno`` is the underlying error's."""


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``).

    Args:
        path: destination file; its folder is created if needed.
        state: a dict of tensors, numbers, strings and containers of those.

    Returns:
        The destination path.

    Raises:
        CheckpointWriteError: the file system refused the write (the previous checkpoint, if any, is intact).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(exc, path) from exc
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; a checkpoint is an ordinary, shareable file
        with os.fdopen(fd, "wb") as handle:
            torch.save(dict(state), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        os_error = find_os_error(exc) if isinstance(exc, Exception) else None
        if os_error is not None:
            raise _write_error(os_error, path) from exc
        raise
    _fsync_dir(path.parent)
    return path


def _write_error(err: OSError, path: Path) -> CheckpointWriteError:
    """``CheckpointWriteError`` for ``err`` while writing ``path``: one line, the cause first."""
    existing = "the previous checkpoint is intact" if path.is_file() else "no earlier checkpoint exists"
    message = describe_os_error(err, f"checkpoint {path}", where="train.out_dir").replace("; ", f" ({existing}); ", 1)
    error = CheckpointWriteError(message)
    error.errno = err.errno
    return error


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: not every filesystem lets a folder be opened)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (``weights_only=True``: no code runs).

    Raises:
        CheckpointError: the file does not exist or is not a checkpoint dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train a model first (md2bench train) or fix the path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated file, foreign pickle, ...
        raise CheckpointError(f"{path} is not a readable md2bench checkpoint: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not an md2bench checkpoint dict")
    return state


def config_from_checkpoint(state: Mapping[str, Any], where: str = "checkpoint") -> Config:
    """The ``Config`` stored in a checkpoint dict."""
    if "config" not in state:
        raise CheckpointError(f"{where} has no 'config' entry; it was not written by md2bench")
    return Config.from_dict(state["config"], where=where)


def load_for_inference(path: str | Path, device: str | torch.device = "cpu") -> tuple[Config, torch.nn.ModuleDict]:
    """Rebuild the networks of a checkpoint for evaluation.

    The networks are built from the stored config with ``model.pretrained`` forced to ``scratch`` (the
    checkpoint's weights replace any initialisation, so no ImageNet weights file is needed), the stored state
    dicts are loaded strictly, and the models are put in eval mode on ``device``.

    Args:
        path: a training checkpoint (``checkpoint.pt``) or a weights-only one (``last.pt``).
        device: where to put the models.

    Returns:
        ``(cfg, models)``: the config the run was trained with (as stored) and a ``ModuleDict`` with the keys
        of ``md2bench.models.build_models``.
    """
    from md2bench.models import build_models

    state = load_checkpoint(path, map_location="cpu")
    cfg = config_from_checkpoint(state, where=str(path))
    if "models" not in state:
        raise CheckpointError(f"{path} has no 'models' entry (model state dicts)")
    models = build_models(cfg.override({"model.pretrained": "scratch"}))
    models.load_state_dict(state["models"], strict=True)
    models.to(device)
    models.eval()
    return cfg, models


def load_labelled(items: Sequence[str], device: str | torch.device = "cpu") -> dict[str, tuple[Config, torch.nn.ModuleDict]]:
    """Several checkpoints named on a command line as ``LABEL=PATH`` (the probes' ``--checkpoint``), each
    through :func:`load_for_inference`, by label in the given order.

    Raises:
        CheckpointError: an item is not ``LABEL=PATH``, a label repeats, or a checkpoint cannot be loaded.
    """
    loaded: dict[str, tuple[Config, torch.nn.ModuleDict]] = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise CheckpointError(f"a checkpoint is given as LABEL=PATH (e.g. full=md2bench_runs/<key>/checkpoint.pt), "
                                  f"got {item!r}")
        if label in loaded:
            raise CheckpointError(f"checkpoint label {label!r} is given twice: give each checkpoint its own label")
        loaded[label] = load_for_inference(path, device)
    return loaded


def init_from_checkpoint(models: torch.nn.ModuleDict, path: str | Path) -> list[str]:
    """Copy the weights of every network in ``models`` that the checkpoint at ``path`` also holds (a warm start).

    Args:
        models: the freshly built networks (``md2bench.models.build_models``).
        path: a training checkpoint (``checkpoint.pt``) or a weights-only one (``last.pt``).

    Returns:
        The names of the networks that were initialised (the others keep their initialisation).

    Raises:
        CheckpointError: the file is not a checkpoint, holds none of these networks, or holds one with other
            shapes (a different ResNet depth, pose input or number of frames): the message names it.
    """
    state = load_checkpoint(path, map_location="cpu")
    stored = state.get("models")
    if not isinstance(stored, Mapping):
        raise CheckpointError(f"{path} has no 'models' entry (model state dicts)")
    loaded: list[str] = []
    for name, module in models.items():
        prefix = name + "."
        sub = {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}
        if not sub:
            continue
        own = module.state_dict()
        wrong = [k for k in own if k not in sub or tuple(sub[k].shape) != tuple(own[k].shape)]
        if wrong:
            raise CheckpointError(f"model.init_from = {path}: its {name!r} network does not match this run's "
                                  f"({wrong[0]} differs: {len(wrong)} tensors); use a checkpoint trained with the same "
                                  "model settings (num_layers, pose_net, pose_input, frames)")
        module.load_state_dict(sub, strict=True)
        loaded.append(name)
    if not loaded:
        raise CheckpointError(f"model.init_from = {path}: it holds none of this run's networks "
                              f"({', '.join(models.keys())})")
    return loaded
