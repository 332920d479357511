"""Reading and writing images and videos as tensors in [-1, 1].

Layouts: an image is ``(3, H, W)``, a video ``(3, T, H, W)``, both float32 in [-1, 1]
(``x = u8 / 127.5 - 1``). Every writer is atomic: it writes a temporary file (or directory,
:func:`atomic_dir`) in the output's directory and ``os.replace``-s it onto the output only once
complete, so a failure never leaves a partial file behind.

Bad input (missing, unreadable or corrupt files, unsupported suffixes, a missing output
directory) raises :class:`InputError`, a ``ValueError`` with a one-line message naming the file.
"""

from __future__ import annotations

from .files import InputError, atomic_dir, atomic_path, commit_temp, discard_temp, one_line, temp_path_for
from .grid import grid_layout, tile
from .image import IMAGE_SUFFIXES, from_uint8, load_image, load_square, save_image, to_rgb, to_rgb01, to_uint8
from .video import (
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
    "atomic_dir",
    "temp_path_for",
    "commit_temp",
    "discard_temp",
    "one_line",
    "tile",
    "grid_layout",
    "IMAGE_SUFFIXES",
    "load_image",
    "load_square",
    "save_image",
    "to_uint8",
    "to_rgb",
    "to_rgb01",
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
