"""Files: the one error type of bad input, and atomic writes (temporary file or directory, then rename)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


class InputError(ValueError):
    """A file could not be read or written as requested (one-line message naming the file)."""


def one_line(msg: object) -> str:
    """Collapse a message to a single line (for error reporting)."""
    return " ".join(str(msg).split())


def temp_path_for(path: str | os.PathLike, suffix: str | None = None) -> Path:
    """Create an empty temporary file next to ``path`` (same directory, same suffix) and return it.

    Raises :class:`InputError` when the output directory is missing or ``path`` is a directory.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"{path}: output directory {parent} does not exist")
    if path.is_dir():
        raise InputError(f"{path}: is a directory")
    suffix = path.suffix if suffix is None else suffix
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp" + suffix)
    except OSError as e:
        raise InputError(f"{path}: cannot write ({one_line(e.strerror or e)})") from None
    os.close(fd)
    return Path(tmp)


def commit_temp(tmp: Path, path: str | os.PathLike) -> None:
    """Give ``tmp`` the usual umask permissions and move it onto ``path`` (atomic on one filesystem).
    A symbolic link is moved as it is (its target is left alone)."""
    if not Path(tmp).is_symlink():
        os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def discard_temp(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        Path(tmp).unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    The temporary name keeps the output's suffix (or ``suffix``) so that format detection by
    extension still works, and the final file gets the usual umask-based permissions.
    """
    tmp = temp_path_for(path, suffix)
    try:
        yield tmp
        commit_temp(tmp, path)
    except BaseException:
        discard_temp(tmp)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _swap_dir(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` onto ``out``; an existing ``out`` is moved aside first, then removed."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    os.replace(out, old)  # onto the empty placeholder directory
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Write a directory atomically: fill the yielded temporary directory (beside ``out``); on
    success it and its files get the umask's permissions and it is renamed to ``out``; on failure
    it is removed.

    ``out`` must not exist or be an empty directory (:class:`InputError` otherwise) unless
    ``replace``, when an existing ``out`` is swapped out and deleted once the new one is in place.
    """
    out = Path(out)
    if not out.parent.is_dir():
        raise InputError(f"{out}: output directory {out.parent} does not exist")
    if not replace and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not an empty directory; refusing to overwrite")
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        umask = _umask()
        for f in [tmp, *tmp.iterdir()]:
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
        _swap_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
