"""Streaming video through a block-causal BSQ-ViT: one frame block at a time, with a key/value cache.

A block-causal model (``mask_type="block-causal"``) lets the tokens of frame block k attend to the
blocks <= k of the same clip and never to later ones, in the encoder and in the decoder. So a clip
can be computed block by block: each layer keeps the keys and values of the blocks seen so far, and
a new block attends to them and to itself (:meth:`bsqvit.nn.Block.step_block`). Cost per block is
one block of tokens against at most one clip of cached keys, whatever the length of the video.

The temporal position embedding covers ``num_frames`` frames (the training clip); a longer stream
needs a rule. Two are offered (docs/STREAMING.md has the details and the measurements):

``window=None`` (default, exact)
    The stream is cut into clips of ``num_frames`` frames, exactly as :mod:`bsqvit.models.frames`
    (``bsqvit reconstruct``/``tokenize``/``compress``) cuts it, and the cache is restarted at each
    clip: frame f has temporal position ``f % num_frames`` and attends to the blocks of its own clip
    up to its own. The tokens are those of the whole-clip computation of each clip (the same token
    files as before), while latency drops from one clip to one block and memory is one clip's
    cache plus one block's activations.

``window=W`` (sliding window of W blocks, W * mask_block_size <= num_frames)
    No restarts: block k attends to blocks k-W+1..k, each kept in the cache as it was computed
    when it was the newest block (a banded block-causal mask, so the receptive field still grows
    by W-1 blocks per layer, like sliding-window attention in language models). Block k gets the
    temporal positions of block ``min(k, W-1)``: the first W blocks are exactly the whole-clip
    computation of the first W*mask_block_size frames; later blocks reuse the newest position of
    a W-block clip, and so do the cached blocks they attend to. This is not a computation the model
    was trained for (past blocks carry the same temporal position); it is defined exactly (the
    tests reproduce it by brute force with an explicit banded mask) and has no clip seams.

Results equal the whole-clip computation up to floating-point summation order: the BLAS matrix
products are not row-independent for small row counts, so continuous features differ by a few ulps
(about 1e-15 in float64, 1e-6 in float32); token indices are equal unless a feature lies within
that distance of a quantizer decision boundary (never seen in the tests).

Image models (``num_frames == 1``) stream trivially (every frame is its own clip). Models whose
frames attend to later frames (``mask_type`` ``"none"``/``"full"`` with ``num_frames > 1``) or with a
token-level ``"causal"`` mask cannot be computed block by block and are refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from .transformer import ViT, patchify, unpatchify


class NotStreamableError(ValueError):
    """The model's attention mask does not allow block-by-block computation."""


def check_streamable(model) -> None:
    """Raise :class:`NotStreamableError` unless ``model`` can be streamed block by block."""
    cfg = model.config
    if getattr(cfg, "arch", "vit") != "vit":
        raise NotStreamableError(f"cannot stream an arch {cfg.arch!r} tokenizer: streaming is ViT-only (a key/value "
                                 "cache); it codes videos frame by frame with encode/decode")
    if cfg.mask_type == "block-causal" or (cfg.num_frames == 1 and cfg.mask_type in ("none", "full", None)):
        return
    if cfg.mask_type == "causal":
        why = "a token-level causal mask (streaming works on frame blocks)"
    else:
        why = f"mask_type={cfg.mask_type!r} over {cfg.num_frames} frames, so every frame attends to later frames"
    raise NotStreamableError(
        f"cannot stream this model: it has {why}; streaming needs mask_type='block-causal' "
        "(or an image model, num_frames=1). Code whole clips with bsqvit.models.frames.encode_frames instead."
    )


class _Schedule:
    """Which frames form the next block, its first temporal position, and what the cache keeps."""

    def __init__(self, num_frames: int, block_frames: int, window: int | None):
        self.clip, self.block, self.window = max(1, num_frames), max(1, block_frames), window
        if window is not None:
            if int(window) != window or window < 1:
                raise ValueError(f"window must be a positive number of blocks, got {window!r}")
            if window * self.block > self.clip:
                raise ValueError(
                    f"window of {window} blocks x {self.block} frames exceeds the model's "
                    f"{self.clip} temporal positions; use window <= {self.clip // self.block}"
                )

    def next_block(self, frame: int) -> tuple[int, int, bool, int | None]:
        """For the block starting at stream frame ``frame``: (frames in it, first temporal position,
        whether the cache restarts before it, blocks the cache keeps after it (None: all))."""
        b = self.block
        if self.window is None:
            i = frame % self.clip
            n = min(b, self.clip - i)
            return n, i, i == 0, (0 if i + n == self.clip else None)
        k = frame // b
        return b, min(k, self.window - 1) * b, False, self.window - 1

    def cache_frames(self) -> int:
        """Frames the preallocated cache holds: one clip, or two windows (moved back when full)."""
        return self.clip if self.window is None else (2 * (self.window - 1) + 1) * self.block


class CachedTrunk:
    """A :class:`ViT` run block by block with a preallocated key/value cache per layer.

    The cache holds ``capacity_frames`` frames; positions ``[begin, start)`` are the ones the next
    block attends to. Allocated once per stream, so memory does not depend on its length."""

    def __init__(self, vit: ViT, capacity_frames: int):
        self.vit, self.capacity_frames = vit, capacity_frames
        self.cache: Tensor | None = None  # (layers, 2, B, heads, capacity, head_dim)
        self.reset()

    def reset(self) -> None:
        self.begin = self.start = 0

    def cached_tokens(self) -> int:
        return self.start - self.begin

    def _make_room(self, h: Tensor, n: int, tokens_per_frame: int) -> None:
        cap = self.capacity_frames * tokens_per_frame
        if self.cache is None or self.cache.shape[2] != h.shape[0] or self.cache.shape[4] != cap:
            dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
            heads = self.vit.blocks[0].attn.heads
            shape = (len(self.vit.blocks), 2, h.shape[0], heads, cap, h.shape[-1] // heads)
            self.cache = torch.empty(shape, dtype=dtype, device=h.device)
        if self.start + n > cap:  # sliding window: move the kept positions to the front
            kept = self.cache[..., self.begin : self.start, :]
            if self.begin < self.start - self.begin:  # would overlap (not with the schedule's capacity)
                kept = kept.clone()
            self.cache[..., : self.start - self.begin, :] = kept
            self.begin, self.start = 0, self.start - self.begin

    def step(self, h: Tensor, pos0: int, thw: tuple[int, int, int], keep_tokens: int | None) -> Tensor:
        """One block ``h`` (B, t*h*w, D) -> trunk output; the next block then attends to the last
        ``keep_tokens`` positions (None: all since the last reset)."""
        n = h.shape[1]
        self._make_room(h, n, thw[1] * thw[2])
        x = h + self.vit.position_embedding(thw[0], thw[1:], start=pos0).to(h.dtype)
        x = self.vit.ln_pre(x)
        for i, blk in enumerate(self.vit.blocks):
            x = blk.step_block(x, self.cache[i], self.start, self.begin)
        self.start += n
        if keep_tokens == 0:
            self.reset()
        elif keep_tokens is not None:
            self.begin = max(self.begin, self.start - keep_tokens)
        return self.vit.ln_post(x)


class _Streamer:
    """Frames (or token frames) in, one output per block out; subclasses compute a block."""

    def __init__(self, model, vit: ViT, window: int | None, amp: bool, dim: int, bits: int | None = None):
        check_streamable(model)
        cfg = model.config
        self.model, self.amp, self.dim = model, amp, dim  # dim: the time axis of the inputs
        self.bits = model.check_bits(bits)  # the rate of a nested-bits model (None: all bits)
        self.schedule = _Schedule(cfg.num_frames, cfg.mask_block_size, window)
        self.trunk = CachedTrunk(vit, self.schedule.cache_frames())
        self.frame = 0  # stream frames already computed
        self._buf: list[Tensor] = []
        self._buffered = 0
        self._shape: tuple | None = None

    def _check(self, x: Tensor) -> None:
        dim = self.dim
        shape = x.shape[:1] + x.shape[dim + 1 :]
        if self._shape is None:
            self._shape = tuple(shape)
        elif tuple(shape) != self._shape:
            raise ValueError(f"stream frame shape changed from {self._shape} to {tuple(shape)}")

    def _take(self, n: int) -> Tensor:
        dim = self.dim
        x = torch.cat(self._buf, dim) if len(self._buf) > 1 else self._buf[0]
        head, rest = x.narrow(dim, 0, n), x.narrow(dim, n, x.shape[dim] - n)
        self._buf = [rest] if rest.shape[dim] else []
        self._buffered -= n
        return head

    def _push(self, x: Tensor | None, final: bool = False) -> list[Tensor]:
        if x is not None and x.shape[self.dim]:
            self._check(x)
            self._buf.append(x)
            self._buffered += x.shape[self.dim]
        out = []
        while self._buffered:
            n, pos0, restart, keep = self.schedule.next_block(self.frame)
            if self._buffered < n and not final:
                break
            n = min(n, self._buffered)
            if restart:
                self.trunk.reset()
            keep_tokens = None if keep is None else keep * self.schedule.block * self._tokens_per_frame
            with torch.no_grad(), self.model._amp(self.model.quant_embed.weight, self.amp):
                out.append(self._block(self._take(n), pos0, keep_tokens))
            self.frame += n
        return out

    def flush(self) -> list[Tensor]:
        """End of stream: compute the last, shorter block if frames are left over."""
        return self._push(None, final=True)


class StreamingEncoder(_Streamer):
    """Frames (B, 3, t, H, W) in [-1, 1], pushed in any numbers -> token indices (B, t_k, h, w) per
    block, as soon as each block is complete. Call :meth:`flush` at the end of the stream.
    ``bits=L'`` (nested-bits models): only the first L' bits of every token, as ``encode(bits=L')``."""

    def __init__(self, model, window: int | None = None, amp: bool = False, bits: int | None = None):
        super().__init__(model, model.encoder, window, amp, dim=2, bits=bits)

    def push(self, frames: Tensor) -> list[Tensor]:
        if frames.ndim != 5 or frames.shape[1] != 3:
            raise ValueError(f"expected frames (B,3,t,H,W), got shape {tuple(frames.shape)}")
        p = self.model.patch_size
        self._tokens_per_frame = -(-frames.shape[-2] // p) * -(-frames.shape[-1] // p)
        return self._push(frames)

    def _block(self, x: Tensor, pos0: int, keep_tokens: int | None) -> Tensor:
        model = self.model
        tokens, thw = patchify(model._pad(x), model.patch_size)
        h = model.encoder.patch_embed(tokens)
        z = model.quant_embed(self.trunk.step(h, pos0, thw, keep_tokens)).float()
        q = model.quantizer
        idx = q.codes_to_indices(q.project(z)) if hasattr(q, "project") else q(z).indices
        if self.bits is not None:
            idx = q.keep_bits(idx, self.bits)
        return idx.reshape(x.shape[0], *thw)


class StreamingDecoder(_Streamer):
    """Token indices (B, t, h, w), pushed in any numbers -> pixels (B, 3, t_k, H, W) in [-1, 1] per
    block (cropped to ``size`` (H, W) if given). Call :meth:`flush` at the end of the stream.
    ``bits=L'``: tokens of a nested-bits model at rate L', as ``decode(bits=L')``."""

    def __init__(self, model, size: tuple[int, int] | None = None, window: int | None = None, amp: bool = False,
                 bits: int | None = None):
        super().__init__(model, model.decoder, window, amp, dim=1, bits=bits)
        self.size = size

    def push(self, indices: Tensor) -> list[Tensor]:
        if indices.ndim != 4:
            raise ValueError(f"expected indices (B,t,h,w), got shape {tuple(indices.shape)}")
        self._tokens_per_frame = indices.shape[2] * indices.shape[3]
        if self.size is not None:
            H, W, p = *self.size, self.model.patch_size
            if H > indices.shape[2] * p or W > indices.shape[3] * p:
                raise ValueError(f"size {self.size} is larger than the token grid {tuple(indices.shape[2:])} x patch {p}")
        return self._push(indices)

    def _block(self, idx: Tensor, pos0: int, keep_tokens: int | None) -> Tensor:
        model = self.model
        B, t, h, w = idx.shape
        flat = idx.reshape(B, t * h * w).to(model.quant_embed.weight.device)
        kw = {} if self.bits is None else {"bits": self.bits}
        zq = model.quantizer.indices_to_codes(flat, **kw)
        hid = model.post_quant_embed(zq.to(model.post_quant_embed.weight.dtype))
        out = model.decoder.head(self.trunk.step(hid, pos0, (t, h, w), keep_tokens))
        x = unpatchify(out.float(), model.patch_size, (t, h, w))
        if self.size is not None:
            x = x[..., : self.size[0], : self.size[1]]
        return x.clamp(-1, 1)


def encode_stream(model, frames: Iterable[Tensor], window: int | None = None, amp: bool = False,
                  bits: int | None = None) -> Iterator[Tensor]:
    """Frame chunks (B, 3, t, H, W) -> token indices (B, t_k, h, w), one frame block at a time."""
    enc = StreamingEncoder(model, window=window, amp=amp, bits=bits)
    for x in frames:
        yield from enc.push(x)
    yield from enc.flush()


def decode_stream(
    model, indices: Iterable[Tensor], size: tuple[int, int] | None = None, window: int | None = None, amp: bool = False,
    bits: int | None = None,
) -> Iterator[Tensor]:
    """Token chunks (B, t, h, w) -> pixels (B, 3, t_k, H, W) in [-1, 1], one frame block at a time."""
    dec = StreamingDecoder(model, size=size, window=window, amp=amp, bits=bits)
    for idx in indices:
        yield from dec.push(idx)
    yield from dec.flush()


__all__ = [
    "CachedTrunk",
    "NotStreamableError",
    "StreamingDecoder",
    "StreamingEncoder",
    "check_streamable",
    "decode_stream",
    "encode_stream",
]
