"""Temporal token copying: the video encoder's skip decision (conditional replenishment).

A token grid per frame codes every position afresh, even where nothing moved; the previous-frame
prior then still pays for the bits that flip between frames because the latent sits near a
boundary of the binary quantizer. The encoder may instead send, at a position, the token it sent
there in the previous frame whenever that costs little distortion in the latent space:

    copy  iff  ||u - q(prev)||^2 - ||u - q(u)||^2 <= threshold

with ``u`` the position's latent projected onto the unit sphere of the kept bits (rate L') and
``q(.)`` the BSQ code of a token at that rate (entries +-1/sqrt(L')). The left side is
``4 / sqrt(L') * sum |u_j|`` over the kept bits ``j`` where the previous token differs from the
latent's own signs: bits the latent is unsure of cost almost nothing to take from the previous
frame. ``threshold`` is on the scale of squared distances on the unit sphere (0 = never copy,
the plain tokens; a token's own quantization error is about 0.4 at BSQ's typical latents). LFQ
latents (codes +-1, no sphere) are compared on their unit sphere too: the same rule, free of scale.

This is an encoder-only choice, like a motion search: the file holds tokens as always, and the
decoder (and the ``.bsq`` format) need nothing new. The decision for frame ``t`` uses only frame
``t``'s latents and the tokens already chosen for frame ``t - 1``, so it is causal and streams.
A previous-frame prior trained on copied tokens (``train-prior`` with ``data.temporal_copy``)
learns that an unchanged token is likely and codes it in a fraction of a bit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..models.frames import encode_frames_latent, video_chunk
from ..quantizers.base import bits_to_indices, indices_to_bits


def check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not (0.0 <= threshold <= 4.0) or math.isnan(threshold):
        raise ValueError(f"the temporal copy threshold must be in [0, 4] (squared distance on the unit sphere), "
                         f"got {threshold}")
    return threshold


def _full_bits(model) -> int:
    q = model.quantizer
    if not hasattr(q, "project") or not hasattr(q, "check_bits"):
        raise ValueError(f"temporal copying needs a binary (bsq/lfq) quantizer, this model has {type(q).__name__}")
    return int(q.dim)


def copy_tokens(z: Tensor, dim: int, bits: int | None, threshold: float, prev: Tensor | None = None) -> Tensor:
    """Latents ``z`` (T, h, w, L) of consecutive frames -> token indices (T, h, w) at rate ``bits``
    (full-width indices, dropped bits 0, as ``Tokenizer.encode(bits=)`` gives), every frame's
    positions copied from the previous frame's chosen tokens where the copy cost is at most
    ``threshold`` (see the module docstring). ``prev``: the chosen tokens (h, w) of the frame
    before ``z[0]`` (another chunk of the same video), or None at the start of a video.
    ``threshold=0`` gives exactly the plain tokens."""
    threshold = check_threshold(threshold)
    Lk = dim if bits is None else int(bits)
    u = z[..., :Lk].float()
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    own = u > 0  # the latent's own bits (sign(0) -> 0, as the quantizer)
    scale = 4.0 / math.sqrt(Lk)
    out, last = [], None if prev is None else indices_to_bits(prev.to(z.device), dim)[..., :Lk].bool()
    for t in range(z.shape[0]):
        b = own[t]
        if last is not None and threshold > 0:
            cost = scale * (u[t].abs() * (b != last)).sum(-1)
            b = torch.where((cost <= threshold).unsqueeze(-1), last, b)
        out.append(b)
        last = b
    kept = torch.stack(out)
    pad = torch.zeros(*kept.shape[:-1], dim - Lk, dtype=torch.bool, device=kept.device)
    return bits_to_indices(torch.cat([kept, pad], -1))


def video_latents(model, x: Tensor, amp: bool = False) -> list[Tensor]:
    """A video (3, T, H, W) in [-1, 1] -> the latents (t, h, w, L) of each of its chunks of
    ``video_chunk(model)`` frames (the chunking of every token file), computed once for all rates."""
    _full_bits(model)
    n = video_chunk(model)
    return [encode_frames_latent(model, x[:, s : s + n], amp=amp) for s in range(0, x.shape[1], n)]


def copy_video(latents: list[Tensor], dim: int, bits: int | None, threshold: float) -> Tensor:
    """Chunk latents (:func:`video_latents`) -> the video's tokens (T, h, w) at rate ``bits`` with
    temporal copying across chunk borders too (the previous-frame prior conditions across them)."""
    out, prev = [], None
    for z in latents:
        out.append(copy_tokens(z, dim, bits, threshold, prev))
        prev = out[-1][-1]
    return torch.cat(out) if out else torch.zeros((0,), dtype=torch.int64)
