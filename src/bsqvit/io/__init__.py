"""Reading and writing images and videos as tensors in [-1, 1].

Layouts: an image is ``(3, H, W)``, a video ``(3, T, H, W)``, both float32 in [-1, 1]
(``x = u8 / 127.5 - 1``). Every writer is atomic: it writes a temporary file in the output's
directory and ``os.replace``-s it onto the output only once complete, so a failure never
leaves a partial file behind.

Bad input (missing, unreadable or corrupt files, unsupported suffixes, a missing output
directory) raises :class:`InputError`, a ``ValueError`` with a one-line message naming the file.
"""

from __future__ import annotations

import contextlib
import os
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
    """Give ``tmp`` the usual umask permissions and move it onto ``path`` (atomic on one filesystem)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
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


from .image import IMAGE_SUFFIXES, from_uint8, load_image, save_image, to_uint8  # noqa: E402
from .video import (  # noqa: E402
    RAW_STREAM_SUFFIXES,
    VIDEO_SUFFIXES,
    VideoWriter,
    is_video_path,
    iter_video_frames,
    read_video,
    video_info,
    write_video,
    write_video_lossless,
)

__all__ = [
    "InputError",
    "atomic_path",
    "temp_path_for",
    "commit_temp",
    "discard_temp",
    "one_line",
    "IMAGE_SUFFIXES",
    "load_image",
    "save_image",
    "to_uint8",
    "from_uint8",
    "VIDEO_SUFFIXES",
    "RAW_STREAM_SUFFIXES",
    "is_video_path",
    "video_info",
    "iter_video_frames",
    "read_video",
    "VideoWriter",
    "write_video",
    "write_video_lossless",
]
