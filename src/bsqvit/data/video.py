"""Video clips from video files (PyAV) and frame folders, as a map-style data set.

Sources:
* video files: ``.mp4 .avi .mkv .mov .webm ...`` and raw H.264/H.265 Annex-B streams
  (``.264 .h264 .jsv .265 .hevc``; PyAV auto-detects them, no timestamps needed: frames are
  counted in decode order);
* frame folders: a folder whose files are images is one video (frames in natural name order);
* folders are searched recursively for both.

Clip index: a video with ``n`` frames and clip span ``s = (T-1)*stride + 1`` gives
``max(1, n // s)`` clips (or ``clips_per_video``). Training draws the start uniformly inside
the clip's own stratum of the valid range ``[0, n - s]`` (seeded by ``(seed, epoch, index)``);
evaluation uses evenly spaced fixed starts (start 0 for a single clip). The same crop/flip is
applied to every frame of a clip. Output ``(3, T, R, R)`` float32 in [-1, 1].

Frame counts come from the container (``stream.frames``) or, for raw streams, from counting
demuxed packets (no decoding; this matched full decoding on every file in shared/data/video).
They are cached per (path, size, mtime) in memory and optionally in a JSON file.

Decoding goes sequentially from the first frame up to the clip's last frame (only the clip's
frames are converted to RGB). Memory stays at one clip.

Note: ``bsqvit.io.video`` did not exist when this was written; the private readers here
(:func:`count_frames`, :func:`read_frames`) can be swapped for it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Literal, Sequence

import torch
from PIL import Image

from ..io.files import InputError, atomic_path
from ..io.video import VIDEO_SUFFIXES
from .images import IMAGE_EXTENSIONS, BadItemPolicy, _split_key, open_rgb
from .transforms import ImageTransform, eval_transform, frames_to_tensor, sample_generator, train_transform

__all__ = [
    "VIDEO_EXTENSIONS",
    "VideoSource",
    "find_videos",
    "count_frames",
    "read_frames",
    "packet_index",
    "clip_starts",
    "VideoClipDataset",
]

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


def _file_key(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def count_frames(path: str, exact: bool = False) -> int:
    """Number of frames of a video file: container metadata if present, else demuxed packet
    count (raw streams); ``exact=True`` decodes everything. Cached per (path, size, mtime)."""
    import av

    key = _file_key(path) + (exact,)
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

    key = _file_key(path)
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


def clip_starts(n_frames: int, span: int, n_clips: int) -> list[int]:
    """Evenly spaced eval starts in ``[0, n_frames - span]`` (``[0]`` for one clip)."""
    hi = max(0, n_frames - span)
    if n_clips <= 1:
        return [0]
    return [int(round(j * hi / (n_clips - 1))) for j in range(n_clips)]


class VideoClipDataset(BadItemPolicy, torch.utils.data.Dataset):
    """Fixed-length clips from video files and frame folders.

    Args:
        sources: video files, frame folders, or folders holding either (searched recursively).
        num_frames: T, frames per clip.
        stride: temporal stride between clip frames.
        resolution: output crop size R.
        train: random start + train transform (resize short side to ``train_resize``, random
            crop, hflip) vs fixed starts + eval transform (Lanczos short side + centre crop).
        train_resize: short side before the random crop (default ``resolution``).
        hflip: random horizontal flip in training.
        seed: augmentation seed; randomness is a function of ``(seed, epoch, index)``.
        clips_per_video: clips per video (default ``max(1, n // span)``).
        short: videos with fewer than ``span`` frames: ``"skip"`` them (logged) or ``"pad"``
            (the last frame is repeated).
        transform: override the spatial ``ImageTransform``.
        exact_count: count frames by decoding (slow; default uses metadata / packet count).
        count_cache: optional JSON file caching frame counts across runs.

    ``ds[i]`` -> ``{"video": (3,T,R,R), "index": int, "skipped": int, "start": int}``.
    """

    def __init__(self, sources: str | os.PathLike | Sequence[str | os.PathLike], num_frames: int = 16,
                 stride: int = 1, resolution: int = 128, train: bool = True,
                 train_resize: int | None = None, hflip: bool = True, seed: int = 0,
                 clips_per_video: int | None = None, short: Literal["skip", "pad"] = "skip",
                 transform: ImageTransform | None = None, exact_count: bool = False,
                 count_cache: str | os.PathLike | None = None, epoch: int = 0):
        self._init_bad()
        if num_frames < 1 or stride < 1:
            raise ValueError("num_frames and stride must be >= 1")
        if short not in ("skip", "pad"):
            raise ValueError(f"short must be 'skip' or 'pad', got {short!r}")
        self.num_frames = int(num_frames)
        self.stride = int(stride)
        self.span = (self.num_frames - 1) * self.stride + 1
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = int(epoch)
        if transform is None:
            transform = (train_transform(resolution, train_resize, hflip=hflip) if train
                         else eval_transform(resolution))
        self.transform = transform
        self.videos: list[VideoSource] = []
        self.lengths: list[int] = []
        disk = self._read_cache(count_cache)
        all_videos = find_videos(sources)
        if not all_videos:
            raise FileNotFoundError(f"no videos found in {sources}")
        for v in all_videos:
            try:
                if v.is_folder:
                    n = len(v.frames)
                else:
                    ck = "|".join(map(str, _file_key(v.path) + (exact_count,)))
                    n = disk.get(ck)
                    if n is None:
                        n = count_frames(v.path, exact=exact_count)
                        disk[ck] = n
            except Exception as e:  # noqa: BLE001 - unreadable at index time: leave it out
                self._record_bad(v.path, e)
                continue
            if n <= 0 or (n < self.span and short == "skip"):
                log.warning("skipping %s: %d frames < clip span %d", v.path, n, self.span)
                continue
            self.videos.append(v)
            self.lengths.append(n)
        self._write_cache(count_cache, disk)
        self.clips: list[tuple[int, int, int]] = []  # (video, clip j, clips of that video)
        for vi, n in enumerate(self.lengths):
            k = clips_per_video if clips_per_video is not None else max(1, n // self.span)
            k = max(1, int(k))
            self.clips.extend((vi, j, k) for j in range(k))
        if not self.clips:
            raise ValueError(f"no video in {sources} has >= {self.span} frames "
                             f"(num_frames={num_frames}, stride={stride})")

    # -- cache
    @staticmethod
    def _read_cache(path) -> dict:
        if not path or not os.path.isfile(path):
            return {}
        try:
            return dict(json.loads(Path(path).read_text()))
        except Exception:  # noqa: BLE001
            return {}

    @staticmethod
    def _write_cache(path, data: dict) -> None:
        if not path:
            return
        try:
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(data, sort_keys=True))
        except (OSError, InputError) as e:
            log.warning("could not write frame-count cache %s: %s", path, e)

    # -- API
    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _item_name(self, i: int) -> str:
        return self.videos[self.clips[i][0]].path

    def clip_start(self, i: int, generator: torch.Generator | None) -> int:
        vi, j, k = self.clips[i]
        n = self.lengths[vi]
        hi = max(0, n - self.span)  # valid starts 0..hi
        if not self.train:
            return clip_starts(n, self.span, k)[j]
        lo_j = (j * (hi + 1)) // k
        hi_j = max(lo_j, ((j + 1) * (hi + 1)) // k - 1)
        if hi_j == lo_j:
            return lo_j
        return lo_j + int(torch.randint(hi_j - lo_j + 1, (1,), generator=generator).item())

    def load(self, i: int, epoch: int | None = None) -> tuple[torch.Tensor, int]:
        """Decode + transform clip ``i`` -> ``((3,T,R,R), start)`` (raises on errors)."""
        epoch = self.epoch if epoch is None else epoch
        g = sample_generator(self.seed, epoch, i)
        start = self.clip_start(i, g)
        v = self.videos[self.clips[i][0]]
        n = self.lengths[self.clips[i][0]]
        idx = [min(start + t * self.stride, n - 1) for t in range(self.num_frames)]
        t = self.transform
        if v.is_folder:
            frames, size = [], None
            for k in idx:
                img, wh = open_rgb(v.frames[k], t if isinstance(t, ImageTransform) else None)
                size = size or wh
                frames.append(img)
        else:
            frames = read_frames(v.path, idx)
            size = frames[0].size
        if isinstance(t, ImageTransform):
            p = t.params(size[0], size[1], g)
            x = frames_to_tensor([t.apply_pil(f, p) for f in frames])
        else:
            if t is None:
                x = frames_to_tensor(frames)
            else:  # a generic callable: replay the same random stream for every frame
                state = g.get_state()
                out = []
                for f in frames:
                    g.set_state(state)
                    out.append(t(f, g))
                x = torch.stack(out, 1)
        return x, start

    def __getitem__(self, key) -> dict:
        epoch, index = _split_key(key)
        n = len(self.clips)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} clips")
        index %= n
        (x, start), used, skipped = self._get_with_skip(index, n, lambda i: self.load(i, epoch))
        return {"video": x, "index": used, "skipped": skipped, "start": start}
