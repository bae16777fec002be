"""One-line, actionable descriptions of the environment failures a user can fix (full disk, read-only files or
stores, a file where a folder should be), for command-line messages and MLflow failure tags.

``describe_failure(exc, uri)`` is the single entry point: it names the path and the cause ("no space left on
device: ...") and says what to change, or falls back to ``Type: message`` (first line only) for anything else.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Iterator

_ADVICE = {
    errno.ENOSPC: "free space on that disk or write somewhere else (train.out_dir, --out-dir, --tracking-uri)",
    errno.EDQUOT: "free space within your quota or write somewhere else (train.out_dir, --out-dir, --tracking-uri)",
    errno.EROFS: "write somewhere writable (train.out_dir, --out-dir, --tracking-uri)",
    errno.EACCES: "fix the permissions or write somewhere else (train.out_dir, --out-dir, --tracking-uri)",
    errno.EPERM: "fix the permissions or write somewhere else (train.out_dir, --out-dir, --tracking-uri)",
    errno.ENOTDIR: "a file stands where a folder is needed: move it aside",
    errno.EEXIST: "a file stands where a folder is needed: move it aside",
}


class ActionableError(Exception):
    """An error whose message is already one line naming what failed, why, and what to do."""


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during (``__cause__``, else ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def find_os_error(exc: BaseException) -> OSError | None:
    """The first ``OSError`` with an errno in ``exc``'s chain (torch wraps ENOSPC in a ``RuntimeError``)."""
    for err in exception_chain(exc):
        if isinstance(err, OSError) and err.errno is not None:
            return err
    return None


def describe_os_error(err: OSError, what: str = "", where: str = "train.out_dir, --out-dir, --tracking-uri") -> str:
    """``"no space left on device: could not write <what> (<file>); free space ..."`` for one ``OSError``.

    Args:
        err: the error (its ``errno``, ``strerror`` and ``filename`` are used).
        what: what was being written, e.g. ``"checkpoint /runs/abc/checkpoint.pt"``.
        where: the settings that choose another place, named in the advice.
    """
    cause = (err.strerror or str(err)).lower()
    blocking = _blocking_file(err.filename) if err.errno in (errno.ENOTDIR, errno.EEXIST) else None
    if blocking is not None:
        return (f"{cause}: {blocking} is a file where a folder is needed (writing {err.filename}); move that file "
                "aside")
    target = what or (str(err.filename) if err.filename else "")
    if what and err.filename and str(err.filename) not in what:
        target = f"{what} ({err.filename})"
    advice = _ADVICE.get(err.errno or -1, "").replace("train.out_dir, --out-dir, --tracking-uri", where)
    line = f"{cause}: could not write {target}" if target else cause
    return f"{line}; {advice}" if advice else line


def _blocking_file(filename: object) -> Path | None:
    """The nearest existing ancestor of ``filename`` (itself included) that is not a folder, if any."""
    if not filename:
        return None
    path = Path(str(filename))
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def describe_failure(exc: BaseException, uri: str | None = None) -> str:
    """One line for ``exc``: a store failure (``tracking.describe_store_error``), an OS error naming its path
    and cause, or ``Type: first line of the message``."""
    from md2bench.tracking import describe_store_error

    for err in exception_chain(exc):
        if isinstance(err, ActionableError):
            return str(err)
    if uri:
        store = describe_store_error(exc, uri)
        if store is not None:
            return store
    os_error = find_os_error(exc)
    if os_error is not None and os_error.errno in _ADVICE:
        return describe_os_error(os_error)
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
