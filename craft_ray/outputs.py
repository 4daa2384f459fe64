"""One rule for every file or directory a command writes.

Check every output before any work (`check_output`), never replace an existing one unless the user
said `--overwrite`, and write under a temporary sibling name that is renamed into place only when
the writing finished (`atomic_file`, `atomic_dir`): an interrupted or failed command leaves either
the old output or nothing, never half of a new one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from craft_ray.errors import CraftError


class OutputExistsError(CraftError):
    """An output path already exists and `--overwrite` was not given (or it has the wrong kind)."""


def check_output(path: str | os.PathLike, overwrite: bool = False, kind: str = "file") -> Path:
    """Validate an output path before any work. kind: 'file' or 'dir' (a directory that must be
    absent or empty). Returns the path."""
    path = Path(path)
    if kind == "file":
        if path.is_dir():
            raise OutputExistsError(f"{path} is a directory; expected a file path to write")
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
    elif kind == "dir":
        if path.exists() and not path.is_dir():
            raise OutputExistsError(f"{path} exists and is not a directory")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise OutputExistsError(f"{path} is not empty; choose an empty directory or pass --overwrite")
    else:
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    parent = path.resolve().parent
    if parent.exists() and not parent.is_dir():
        raise OutputExistsError(f"cannot write {path}: {parent} is not a directory")
    return path


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it takes the place of `path` (an
    existing one, checked by `check_output` first, is removed only then)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)
