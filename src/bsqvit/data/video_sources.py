"""Video sources for training: finding videos and frame folders, counting and reading frames (PyAV).

Sources:
* video files: ``.mp4 .avi .mkv .mov .webm ...`` and raw H.264/H.265 Annex-B streams
  (``.264 .h264 .jsv .265 .hevc``; PyAV auto-detects them, no timestamps needed: frames are
  counted in decode order);
* frame folders: a folder whose files are images is one video (frames in natural name order);
* folders are searched recursively for both.

Frame counts come from the container (``stream.frames``) or, for raw streams, from counting
demuxed packets (no decoding; this matched full decoding on every test clip). Reading decodes
from the first frame (or the nearest keyframe when seeking is safe) up to the last frame wanted;
only the wanted frames are converted to RGB.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..io.video import VIDEO_SUFFIXES
from .images import IMAGE_EXTENSIONS

__all__ = ["VIDEO_EXTENSIONS", "VideoSource", "find_videos", "count_frames", "read_frames", "packet_index"]

log = logging.getLogger(__name__)

# The video suffix table lives in io (one table for reading, writing and discovery).
VIDEO_EXTENSIONS: frozenset[str] = VIDEO_SUFFIXES
# Inside folders, image extensions win (a .gif there is a frame); an explicit file source is a video.


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


class VideoSource:
    """One video: a file, or a folder of frame images (``frames`` set)."""

    __slots__ = ("path", "frames")

    def __init__(self, path: str, frames: list[str] | None = None):
        self.path = path
        self.frames = frames

    @property
    def is_folder(self) -> bool:
        return self.frames is not None

    def __repr__(self) -> str:
        kind = f"folder, {len(self.frames)} frames" if self.frames is not None else "file"
        return f"VideoSource({self.path!r}, {kind})"


def find_videos(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> list[VideoSource]:
    """Video files and frame folders in ``sources`` (deterministic order: sources as given,
    inside a folder sorted by relative path)."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out: list[VideoSource] = []
    for src in sources:
        src = os.fspath(src)
        if os.path.isfile(src):
            out.append(VideoSource(src))
            continue
        if not os.path.isdir(src):
            raise FileNotFoundError(f"video source not found: {src}")
        found: list[tuple[tuple, VideoSource]] = []
        for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            images, videos = [], []
            for fn in filenames:
                if fn.startswith("."):
                    continue
                ext = os.path.splitext(fn)[1].lower()
                if ext in IMAGE_EXTENSIONS:
                    images.append(fn)
                elif ext in VIDEO_EXTENSIONS:
                    videos.append(fn)
            rel = Path(os.path.relpath(dirpath, src)).parts
            if images:
                images.sort(key=_natural_key)
                found.append((rel, VideoSource(dirpath, [os.path.join(dirpath, f) for f in images])))
            for fn in videos:
                found.append((rel + (fn,), VideoSource(os.path.join(dirpath, fn))))
        found.sort(key=lambda kv: kv[0])
        out.extend(v for _, v in found)
    return out


# ----------------------------------------------------------------------------- decoding

_COUNT_CACHE: dict[tuple, int] = {}
_COUNT_LOCK = threading.Lock()


def file_key(path: str) -> tuple:
    """(absolute path, size, mtime): a cache key that changes when the file does."""
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def count_frames(path: str, exact: bool = False) -> int:
    """Number of frames of a video file: container metadata if present, else demuxed packet
    count (raw streams); ``exact=True`` decodes everything. Cached per (path, size, mtime)."""
    import av

    key = file_key(path) + (exact,)
    with _COUNT_LOCK:
        if key in _COUNT_CACHE:
            return _COUNT_CACHE[key]
    with av.open(path) as c:
        if not c.streams.video:
            raise ValueError(f"no video stream in {path}")
        s = c.streams.video[0]
        if exact:
            s.thread_type = "AUTO"
            n = sum(1 for _ in c.decode(s))
        else:
            n = int(s.frames or 0)
            if n <= 0:
                n = sum(1 for p in c.demux(s) if p.size > 0)
    with _COUNT_LOCK:
        _COUNT_CACHE[key] = n
    return n


_INDEX_CACHE: dict[tuple, tuple[list[int], list[int]] | None] = {}


def packet_index(path: str) -> tuple[list[int], list[int]] | None:
    """``(pts of all frames in display order, pts of keyframes)`` from one demux pass (no
    decoding), or ``None`` when timestamps are missing or not unique (raw Annex-B streams):
    such files are always decoded sequentially. Cached per (path, size, mtime)."""
    import av

    key = file_key(path)
    with _COUNT_LOCK:
        if key in _INDEX_CACHE:
            return _INDEX_CACHE[key]
    res: tuple[list[int], list[int]] | None
    with av.open(path) as c:
        s = c.streams.video[0]
        pts, keys = [], []
        ok = True
        for p in c.demux(s):
            if p.size <= 0:
                continue
            if p.pts is None:
                ok = False
                break
            pts.append(int(p.pts))
            if p.is_keyframe:
                keys.append(int(p.pts))
        res = None
        if ok and pts and keys and len(set(pts)) == len(pts):
            res = (sorted(pts), sorted(keys))
    with _COUNT_LOCK:
        _INDEX_CACHE[key] = res
    return res


def _decode_sequential(path: str, want: dict[int, list[int]], out: list) -> int:
    """Decode from the first frame; fill ``out``; returns the number of frames decoded."""
    import av

    last = max(want)
    n = 0
    prev = None
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for i, frame in enumerate(c.decode(s)):
            n = i + 1
            if i in want:
                img = frame.to_image()
                for k in want[i]:
                    out[k] = img
            prev = frame
            if i >= last:
                break
        if n <= last:
            if prev is None:
                raise ValueError(f"no frames decoded from {path}")
            log.warning("%s: stream ended after %d frames, wanted frame %d; repeating the last",
                        path, n, last)
            pad = prev.to_image()
            for k in range(len(out)):
                if out[k] is None:
                    out[k] = pad
    return n


def _decode_seek(path: str, want: dict[int, list[int]], out: list,
                 index: tuple[list[int], list[int]]) -> bool:
    """Seek to the last keyframe at or before the first wanted frame and decode from there,
    identifying frames by their pts. Returns False (caller falls back) if any wanted frame
    did not come out."""
    import av

    pts_list, key_pts = index
    first = min(want)
    if first >= len(pts_list) or max(want) >= len(pts_list):
        return False
    target = pts_list[first]
    cands = [k for k in key_pts if k <= target]
    if not cands or cands[-1] == pts_list[0]:
        return False  # the first keyframe: a sequential decode is just as short
    kpts = cands[-1]
    pos = {p: i for i, p in enumerate(pts_list)}
    need = set(want)
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        c.seek(kpts, stream=s, backward=True, any_frame=False)
        for frame in c.decode(s):
            i = pos.get(frame.pts) if frame.pts is not None else None
            if i is None or i not in need:
                if i is not None and i > max(want) + 16:
                    break
                continue
            img = frame.to_image()
            for k in want[i]:
                out[k] = img
            need.discard(i)
            if not need:
                break
    return not need


def read_frames(path: str, indices: Sequence[int], seek: bool = True) -> list[Image.Image]:
    """Decode the frames ``indices`` (0-based, display order) of a video file as RGB PIL images.

    Files with timestamps (mp4/mkv/avi...) seek to the last keyframe before the first wanted
    frame (frames identified by pts, so B-frames / open GOPs are safe); raw streams and any
    failed seek decode sequentially from the start up to ``max(indices)``. If the stream
    ends early the last decoded frame is repeated (logged); a stream with no frame raises.
    """
    if not len(indices):
        return []
    want: dict[int, list[int]] = {}
    for k, i in enumerate(indices):
        want.setdefault(int(i), []).append(k)
    out: list[Image.Image | None] = [None] * len(indices)
    if seek and min(want) > 0:
        index = packet_index(path)
        if index is not None:
            try:
                if _decode_seek(path, want, out, index):
                    return out  # type: ignore[return-value]
            except Exception:  # noqa: BLE001 - fall back to the sequential path
                pass
            out = [None] * len(indices)
    _decode_sequential(path, want, out)
    return out  # type: ignore[return-value]


