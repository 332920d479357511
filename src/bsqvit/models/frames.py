"""Video through a tokenizer: frames in chunks of the model's ``num_frames``.

The chunking is part of what a token file means (``bsqvit reconstruct``, ``tokenize``, the codec
and the prior's training all cut videos the same way), so it lives with the models, not with a
command. :func:`stream_encode_frames` / :func:`stream_decode_frames` give the same tokens block by
block (see :mod:`bsqvit.models.streaming`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from . import streaming


def video_chunk(model) -> int:
    """Frames per forward pass: the model's num_frames (1 = frame by frame)."""
    return max(1, int(model.config.num_frames))


def _bits(bits: int | None) -> dict:
    return {} if bits is None else {"bits": bits}


def encode_frames(model, x, amp: bool = False, bits: int | None = None):
    """(3, t, H, W) in [-1, 1] -> indices (t, h, w). Image models code frame by frame (as a batch).
    ``bits``: the rate of a nested-bits model (full-width indices, dropped bits 0)."""
    if model.config.num_frames == 1:
        return model.encode(x.movedim(1, 0), amp=amp, **_bits(bits))  # (t, h, w)
    return model.encode(x[None], amp=amp, **_bits(bits))[0]


@torch.no_grad()
def encode_frames_latent(model, x, amp: bool = False):
    """(3, t, H, W) in [-1, 1] -> the pre-quantization latents (t, h, w, L) whose quantization
    :func:`encode_frames` returns (same chunking: a batch of frames for image models)."""
    if model.config.num_frames == 1:
        z, (T, h, w) = model.encode_continuous(x.movedim(1, 0), amp=amp)
        return z.reshape(x.shape[1], h, w, -1)
    z, (T, h, w) = model.encode_continuous(x[None], amp=amp)
    return z.reshape(T, h, w, -1)


def decode_frames(model, idx, size: tuple[int, int], amp: bool = False, bits: int | None = None):
    """Indices (t, h, w) -> (3, t, H, W) in [-1, 1]; exact inverse path of :func:`encode_frames`."""
    if model.config.num_frames == 1:
        return model.decode(idx, size=size, amp=amp, **_bits(bits)).movedim(0, 1)
    return model.decode(idx[None], size=size, amp=amp, **_bits(bits))[0]


def stream_encode_frames(model, frames: Iterable, window: int | None = None, amp: bool = False,
                         bits: int | None = None) -> Iterator:
    """Chunks (3, t, H, W) in [-1, 1] of any lengths -> indices (t_k, h, w) as soon as they are known.

    Video models go block by block with a key/value cache (:mod:`bsqvit.models.streaming`); with
    ``window=None`` the tokens are those of :func:`encode_frames` on ``video_chunk(model)``-frame
    chunks (the same token files), with one block of latency instead of one clip. Image models code
    each chunk as a batch of frames, as :func:`encode_frames` does. ``bits``: the rate of a
    nested-bits model, as in :func:`encode_frames`.
    """
    if model.config.num_frames == 1:
        for x in frames:
            yield encode_frames(model, x, amp=amp, bits=bits)
        return
    for idx in streaming.encode_stream(model, (x[None] for x in frames), window=window, amp=amp, bits=bits):
        yield idx[0]


def stream_decode_frames(model, indices: Iterable, size: tuple[int, int], window: int | None = None,
                         amp: bool = False, bits: int | None = None) -> Iterator:
    """Indices (t, h, w) of any lengths -> (3, t_k, H, W) in [-1, 1]; inverse path of
    :func:`stream_encode_frames` (``window`` must be the same)."""
    if model.config.num_frames == 1:
        for idx in indices:
            yield decode_frames(model, idx, size, amp=amp, bits=bits)
        return
    for x in streaming.decode_stream(model, (i[None] for i in indices), size=size, window=window, amp=amp,
                                     bits=bits):
        yield x[0]


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
