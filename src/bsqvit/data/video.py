"""Video clips from video files and frame folders (:mod:`.video_sources`), as a map-style data set.

Clip index: a video with ``n`` frames and clip span ``s = (T-1)*stride + 1`` gives
``max(1, n // s)`` clips (or ``clips_per_video``). Training draws the start uniformly inside
the clip's own stratum of the valid range ``[0, n - s]`` (seeded by ``(seed, epoch, index)``);
evaluation uses evenly spaced fixed starts (start 0 for a single clip). The same crop/flip is
applied to every frame of a clip. Output ``(3, T, R, R)`` float32 in [-1, 1].

Frame counts are cached per (path, size, mtime) in memory and optionally in a JSON file.
Decoding goes from the first frame up to the clip's last frame; memory stays at one clip.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Literal, Sequence

import torch

from ..io.files import InputError, atomic_path
from .images import BadItemPolicy, _split_key, open_rgb
from .transforms import ImageTransform, eval_transform, frames_to_tensor, sample_generator, train_transform
from .video_sources import VIDEO_EXTENSIONS, VideoSource, count_frames, file_key, find_videos, packet_index, read_frames

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
                    ck = "|".join(map(str, file_key(v.path) + (exact_count,)))
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
