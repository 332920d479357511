"""Video through a tokenizer: frames in chunks of the model's ``num_frames``.

The chunking is part of what a token file means (``bsqvit reconstruct``, ``tokenize``, the codec
and the prior's training all cut videos the same way), so it lives with the models, not with a
command.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np


def video_chunk(model) -> int:
    """Frames per forward pass: the model's num_frames (1 = frame by frame)."""
    return max(1, int(model.config.num_frames))


def encode_frames(model, x, amp: bool = False):
    """(3, t, H, W) in [-1, 1] -> indices (t, h, w). Image models code frame by frame (as a batch)."""
    if model.config.num_frames == 1:
        return model.encode(x.movedim(1, 0), amp=amp)  # (t, h, w)
    return model.encode(x[None], amp=amp)[0]


def decode_frames(model, idx, size: tuple[int, int], amp: bool = False):
    """Indices (t, h, w) -> (3, t, H, W) in [-1, 1]; exact inverse path of :func:`encode_frames`."""
    if model.config.num_frames == 1:
        return model.decode(idx, size=size, amp=amp).movedim(0, 1)
    return model.decode(idx[None], size=size, amp=amp)[0]


def chunks(frames: Iterable[np.ndarray], n: int) -> Iterator[np.ndarray]:
    """Stack consecutive frames into arrays of ``n`` (the last one shorter)."""
    buf = []
    for f in frames:
        buf.append(f)
        if len(buf) == n:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)
