"""The items of a tokenizer evaluation: images, or clips of consecutive video frames, under the
eval protocol (:mod:`bsqvit.evaluation.protocol`), and batches of same-shaped items.

Video: clips of ``T`` consecutive frames from the start of every video file / frame folder
(``clips_per_video`` consecutive clips per source).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from ..data.images import find_images
from ..data.transforms import eval_transform
from ..data.video import find_videos
from ..io import InputError, from_uint8, iter_video_frames, load_image, to_uint8, video_info
from .protocol import EvalConfig

__all__ = ["Item", "list_images", "load_eval_image", "iter_images", "iter_clips", "batches"]


@dataclass
class Item:
    name: str
    x: torch.Tensor  # (3, H, W) or (3, T, H, W) in [-1, 1]
    fps: float = 0.0
    start: int = 0


def list_images(data: str | os.PathLike) -> tuple[Path, list[Path]]:
    """(root, sorted image files) for a file or a folder (searched recursively)."""
    p = Path(data)
    if p.is_file():
        return p.parent, [p]
    files = [Path(f) for f in find_images(str(p))]
    if not files:
        raise InputError(f"{p}: no images found")
    return p, files


def load_eval_image(path: Path, resolution: int | None, resize: str) -> torch.Tensor:
    """(3, H, W) in [-1, 1] under the protocol (``resize="none"``: the file as is)."""
    x = load_image(path)
    if resize == "none":
        return x
    return eval_transform(resolution, resample=resize)(Image.fromarray(to_uint8(x)))


def _source_frames(src, n: int) -> tuple[list[np.ndarray], float]:
    """First ``n`` frames (uint8 HWC) of a video file or frame folder, and its frame rate."""
    if src.is_folder:
        frames = [to_uint8(load_image(f)) for f in src.frames[:n]]  # io's RGB policy, InputError
        if len({a.shape for a in frames}) > 1:
            raise InputError(f"{src.path}: frames of different sizes")
        return frames, 25.0
    frames = list(iter_video_frames(src.path, max_frames=n))
    return frames, float(video_info(src.path)["fps"])


def _relative_name(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if root in path.parents else path.name


def iter_images(cfg: EvalConfig, resolution: int | None) -> tuple[int, Iterator[Item]]:
    """(number of items, the items) of the images in ``cfg.data`` (the first ``cfg.limit``)."""
    root, files = list_images(cfg.data)
    if cfg.limit:
        files = files[: cfg.limit]

    def gen():
        for f in files:
            yield Item(_relative_name(f, root), load_eval_image(f, resolution, cfg.resize))

    return len(files), gen()


def _clip_tensor(clip: np.ndarray, cfg: EvalConfig, resolution: int | None) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> (3, T, H', W') in [-1, 1] under the protocol."""
    if cfg.resize == "none":
        return from_uint8(clip)
    return eval_transform(resolution, resample=cfg.resize).apply_frames([Image.fromarray(f) for f in clip])


def iter_clips(cfg: EvalConfig, T: int, resolution: int | None, skipped: list) -> tuple[int, Iterator[Item]]:
    """(at most how many clips, the clips) of the videos in ``cfg.data``; sources shorter than
    ``T`` frames are appended to ``skipped`` as they are met."""
    p = Path(cfg.data)
    sources = find_videos(str(p))
    if not sources:
        raise InputError(f"{p}: no videos or frame folders found")
    total = len(sources) * cfg.clips_per_video
    if cfg.limit:
        total = min(total, cfg.limit)
    root = p if p.is_dir() else p.parent

    def gen():
        count = 0
        for src in sources:
            name = _relative_name(Path(src.path), root)
            frames, fps = _source_frames(src, T * cfg.clips_per_video)
            n_clips = len(frames) // T
            if n_clips == 0:
                skipped.append({"name": name, "reason": f"{len(frames)} frames < {T}"})
                continue
            for k in range(n_clips):
                if cfg.limit and count >= cfg.limit:
                    return
                x = _clip_tensor(np.stack(frames[k * T:(k + 1) * T]), cfg, resolution)
                count += 1
                yield Item(name if n_clips == 1 else f"{name}#clip{k}", x, fps, k * T)

    return total, gen()


def batches(items: Iterator[Item], batch: int) -> Iterator[list[Item]]:
    """Consecutive items of the same shape, at most ``batch`` at a time."""
    buf: list[Item] = []
    for it in items:
        if buf and (len(buf) == batch or it.x.shape != buf[0].x.shape):
            yield buf
            buf = []
        buf.append(it)
    if buf:
        yield buf
