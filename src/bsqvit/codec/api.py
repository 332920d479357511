"""Compress and decompress images and videos into ``.bsq`` files: on tokens, tensors and files.

>>> from bsqvit import load_tokenizer
>>> from bsqvit.codec import TokenPrior, compress, decompress
>>> model = load_tokenizer("runs/cpu-small/model")                 # BSQViT or BSQCNN (config arch)
>>> prior = TokenPrior.from_pretrained("runs/prior-ar/prior")      # or None: raw L-bit fields
>>> res = compress(x, model, prior)                                 # x: (3,H,W) or (3,T,H,W) in [-1, 1]
>>> res.data, res.stats["bpp"]
>>> y = decompress(res.data, model, prior)                          # == model.decode(model.encode(x))

The pixels of :func:`decompress` are those of ``bsqvit reconstruct`` with the same model: the same
``encode``/``decode`` calls, the same video chunking (``bsqvit.models.frames.encode_frames`` /
``decode_frames`` in chunks of the model's ``num_frames``).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from ..io import InputError
from ..models.frames import decode_frames, encode_frames, video_chunk
from ..quantizers.base import index_bits
from .coding import (
    DEFAULT_PROB_BITS,
    CodingStats,
    DecodeError,
    SymbolCoder,
    as_engine,
    code_frame,
    decoder_for,
    pack_raw,
    prior_threads,
    raw_size,
    unpack_raw,
)
from .container import (
    BSQFormatError,
    Header,
    Limits,
    read_container,
    short_id,
    tokens_crc,
    tokens_digest,
    write_container,
)
from .intprior import ARITHMETIC
from .temporal import check_threshold, copy_video, video_latents

DEFAULT_FRAMES_PER_CHUNK = 8
RAW_SLICE = 1024  # raw tokens unpacked at a time (a multiple of 8: every slice starts on a byte)


@dataclass
class CodecOptions:
    """Coding choices. ``prob_bits`` and ``frames_per_chunk`` are recorded in the header (the
    decoder follows them); ``prior_threads`` (None: the caller's torch threads) and ``tile_batch``
    (tiles evaluated together) only set speed and memory, on either side: the integer prior gives
    the same frequencies whatever they are."""

    prior_threads: int | None = None
    tile_batch: int | None = None  # None: DEFAULT_TILE_BATCH of the prior's kind
    prob_bits: int = DEFAULT_PROB_BITS
    frames_per_chunk: int = DEFAULT_FRAMES_PER_CHUNK
    # videos, encoder only: the temporal copy threshold (codec/temporal.py); None: the one the
    # prior was trained for (0 without a video prior). The decoder needs nothing.
    temporal_copy: float | None = None


@dataclass
class CompressResult:
    data: bytes
    header: Header
    stats: dict = field(default_factory=dict)


# ---- helpers --------------------------------------------------------------------------------------
def token_bits(model) -> int:
    """Bits of a raw token field: log2 of the codebook size, rounded up."""
    return index_bits(model.quantizer.codebook_size)


def _chunk_frames(model) -> int:
    return video_chunk(model)


def _check_prior(prior, model_bits: int, bits: int) -> None:
    c = prior.config
    if c.bits != model_bits:
        raise InputError(f"the prior models {c.bits}-bit tokens, the tokenizer makes {model_bits}-bit tokens")
    if bits != c.bits and bits not in (c.rates or []):
        raise InputError(f"the prior codes the rates {c.rates or [c.bits]} bits per token, not {bits}")


def coded_bits(model, bits: int | None) -> int:
    """Bits per token a file holds: the rate ``bits`` of a nested-bits model (checked), else all."""
    if bits is None:
        return token_bits(model)
    try:
        model.check_bits(bits)
    except ValueError as e:
        raise InputError(str(e)) from None
    return int(bits)


def to_file_tokens(tokens: np.ndarray, model, bits: int) -> np.ndarray:
    """Full-width indices -> the ``bits``-bit tokens a file stores (their first ``bits`` bits)."""
    return tokens >> (token_bits(model) - bits)


def from_file_tokens(tokens: np.ndarray, model, bits: int) -> np.ndarray:
    """A file's ``bits``-bit tokens -> the tokenizer's full-width indices (the dropped bits 0)."""
    return tokens << (token_bits(model) - bits)


def _engine(prior, header: Header):
    """The integer engine of ``prior`` at the file's rate (``header.bits``)."""
    engine = as_engine(prior)
    return engine.at_rate(header.bits) if hasattr(engine, "at_rate") else engine


def base_header(model, media: str, H: int, W: int, T: int, fps: float, prior, opts: CodecOptions,
                bits: int | None = None) -> Header:
    """The header of a file of ``model``'s tokens; ``bits``: the rate of a nested-bits model."""
    p = model.patch_size
    gh, gw = -(-H // p), -(-W // p)
    L = coded_bits(model, bits)
    fpc = 1 if media == "image" else max(1, opts.frames_per_chunk)
    h = Header(
        media=media, coder="raw", tokenizer_id=short_id(model.weights_hash()), bits=L, patch_size=p,
        height=H, width=W, frames=T, fps=float(fps) if media == "video" else 0.0,
        pad_bottom=gh * p - H, pad_right=gw * p - W, pad_mode=model.config.pad_mode,
        chunk_frames=_chunk_frames(model), frames_per_chunk=fpc, n_chunks=-(-T // fpc),
    )
    if prior is not None:
        _check_prior(prior, token_bits(model), L)
        c = prior.config
        h.coder = c.kind
        h.prior_id = short_id(prior.weights_hash())
        h.group_bits = c.group_bits
        h.tile = tuple(c.tile)
        if c.kind == "parallel":
            h.passes, h.schedule = c.passes, c.schedule
        h.arithmetic = ARITHMETIC
        h.prob_bits = opts.prob_bits
        h.video_cond = bool(c.video)
        h.skip_map = bool(c.video and c.temporal_copy) and media == "video"
    return h


# ---- tokens <-> bytes -------------------------------------------------------------------------------
def encode_tokens(tokens: np.ndarray, header: Header, prior=None,
                  options: CodecOptions | None = None) -> tuple[bytes, dict]:
    """Token frames (T, h, w) -> the whole ``.bsq`` file; ``header`` describes them (see :func:`base_header`)."""
    opts = options or CodecOptions()
    tokens = np.asarray(tokens, dtype=np.int64)
    T, gh, gw = tokens.shape
    if (T, gh, gw) != (header.frames, *header.grid):
        raise ValueError(f"tokens {tokens.shape} do not match the header ({header.frames}, {header.grid})")
    if tokens.min() < 0 or tokens.max() >= (1 << header.bits):
        raise ValueError(f"tokens outside [0, 2^{header.bits})")
    header.tokens_digest = tokens_digest(tokens)
    engine = _engine(prior, header) if header.coder != "raw" else None
    chunks, stats = [], CodingStats()
    t0 = time.perf_counter()
    start = 0
    for n in header.chunk_frame_counts():
        block = tokens[start : start + n]
        if header.coder == "raw":
            payload = pack_raw(block, header.bits)
        else:
            coder = SymbolCoder(prob_bits=header.prob_bits)
            with prior_threads(opts.prior_threads):
                for i in range(n):
                    f = start + i
                    prev = tokens[f - 1] if (header.video_cond and f > 0) else None
                    code_frame(engine, coder, gh, gw, block[i], prev, opts.tile_batch, header.skip_map,
                               _skips(tokens[f - 1], tokens[f - 2]) if header.skip_map and f > 1 else None)
            payload = coder.finish()
            stats.add(coder.stats)
        chunks.append((payload, tokens_crc(block)))
        start += n
    data = write_container(header, chunks)
    n_tok = tokens.size
    payload_bits = 8 * sum(len(p) for p, _ in chunks)
    ideal = stats.ideal_bits if header.coder != "raw" else float(n_tok * header.bits)
    info = {
        "tokens": int(n_tok),
        "payload_bytes": payload_bits // 8,
        "header_bytes": len(data) - payload_bits // 8,
        "ideal_bits_per_token": ideal / n_tok,
        "payload_bits_per_token": payload_bits / n_tok,
        "coder_overhead": payload_bits / ideal - 1 if ideal > 0 else None,
        "chunks": len(chunks),
        "seconds_entropy": time.perf_counter() - t0,
    }
    if header.coder != "raw":
        info["quantized_model_bits_per_token"] = stats.model_bits / n_tok
    return data, info


def _skips(frame: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """The skip map of ``frame``: its tokens equal to the previous frame's (the context of the next map)."""
    return frame == prev


def iter_decode_tokens(header: Header, chunks, prior=None, options: CodecOptions | None = None) -> Iterator[np.ndarray]:
    """Yield the token frames of every chunk ((n, h, w) int64), each checked against its CRC; the
    digest of all tokens is checked after the last chunk."""
    opts = options or CodecOptions()
    gh, gw = header.grid
    engine = _engine(prior, header) if header.coder != "raw" else None
    digest = hashlib.sha256()
    last = before = None  # the previous two frames
    for ci, ((payload, tcrc), n) in enumerate(zip(chunks, header.chunk_frame_counts())):
        try:
            if header.coder == "raw":
                block = _unpack_raw_chunk(payload, n * gh * gw, header.bits).reshape(n, gh, gw)
            else:
                coder = decoder_for(payload, header.prob_bits)
                frames = []
                with prior_threads(opts.prior_threads):
                    for _ in range(n):
                        prev = last if header.video_cond else None
                        frame = code_frame(engine, coder, gh, gw, None, prev, opts.tile_batch, header.skip_map,
                                           _skips(last, before) if header.skip_map and before is not None else None)
                        before, last = last, frame
                        frames.append(frame)
                block = np.stack(frames)
        except DecodeError as e:
            raise BSQFormatError(f"chunk {ci}: {e} (file corrupt or decoded with other weights or numerics)") from None
        if tokens_crc(block) != tcrc:
            raise BSQFormatError(
                f"chunk {ci}: decoded tokens fail their CRC (the decoder drifted from the encoder: other prior "
                f"weights, or a platform/library whose arithmetic differs)")
        before, last = (block[-2] if n > 1 else last), block[-1]
        digest.update(np.ascontiguousarray(block, dtype="<i8").tobytes())
        if ci == len(chunks) - 1 and digest.digest()[:16].hex() != header.tokens_digest:
            raise BSQFormatError("decoded tokens do not match the file's token digest (corrupt file)")
        yield block


def _unpack_raw_chunk(payload, n_tokens: int, bits: int) -> np.ndarray:
    """A raw chunk -> tokens: its size is checked first, then it is unpacked slice by slice, so
    that the bit planes of a large chunk (8 bytes per bit) never exist all at once."""
    if len(payload) != raw_size(n_tokens, bits):
        raise DecodeError(f"raw chunk has {len(payload)} bytes, expected {raw_size(n_tokens, bits)}")
    out = np.empty(n_tokens, np.int64)
    for s in range(0, n_tokens, RAW_SLICE):
        n = min(RAW_SLICE, n_tokens - s)
        lo = s * bits // 8
        out[s : s + n] = unpack_raw(bytes(payload[lo : lo + raw_size(n, bits)]), n, bits)
    return out


def _in_codebook(blocks: Iterator[np.ndarray], model) -> Iterator[np.ndarray]:
    """Refuse tokens the tokenizer has no code for (an L-bit field can exceed a codebook that is
    not a power of two: VQ and FSQ), before they reach an embedding lookup."""
    size = model.quantizer.codebook_size
    for block in blocks:
        if block.size and int(block.max()) >= size:
            raise BSQFormatError(f"token {int(block.max())} is outside the tokenizer's codebook of {size} codes "
                                 "(corrupt or forged file)")
        yield block


def check_decoders(header: Header, model=None, prior=None) -> None:
    """Refuse weights other than the ones the file was made with."""
    if model is not None:
        mid = short_id(model.weights_hash())
        if mid != header.tokenizer_id:
            raise BSQFormatError(f"file was made for other tokenizer weights (id {header.tokenizer_id[:12]}..., "
                                 f"the given model is {mid[:12]}...)")
        rates = getattr(model, "nested_bits", None) or ()
        if (token_bits(model) != header.bits and header.bits not in rates) or model.patch_size != header.patch_size:
            raise BSQFormatError("tokenizer bits or patch size differ from the file's")
        if _chunk_frames(model) != header.chunk_frames or model.config.pad_mode != header.pad_mode:
            raise BSQFormatError("tokenizer frames per chunk or padding differ from the file's")
    if header.coder == "raw":
        return
    if prior is None:
        raise BSQFormatError(f"file was coded with a prior ({header.coder}, id {header.prior_id[:12]}...); "
                             "give it with --prior DIR")
    pid = short_id(prior.weights_hash())
    if pid != header.prior_id:
        raise BSQFormatError(f"file was made for other prior weights (id {header.prior_id[:12]}..., "
                             f"the given prior is {pid[:12]}...)")
    c = prior.config
    ok = (c.kind == header.coder and c.group_bits == header.group_bits and tuple(c.tile) == tuple(header.tile)
          and (c.bits == header.bits or header.bits in (c.rates or [])) and bool(c.video) == header.video_cond)
    if c.kind == "parallel":
        ok = ok and c.passes == header.passes and c.schedule == header.schedule
    if not ok:
        raise BSQFormatError("the prior's configuration differs from the file's")


def decode_tokens(data: bytes, prior=None, limits: Limits | None = None,
                  options: CodecOptions | None = None) -> tuple[Header, np.ndarray]:
    """A whole ``.bsq`` file -> (header, tokens (T, h, w))."""
    header, chunks = read_container(data, limits)
    check_decoders(header, None, prior)
    return header, np.concatenate(list(iter_decode_tokens(header, chunks, prior, options)))


# ---- tensors ------------------------------------------------------------------------------------------
def tokenize(model, x: torch.Tensor, amp: bool = False, bits: int | None = None,
             temporal_copy: float = 0.0) -> np.ndarray:
    """(3, H, W) -> (1, h, w); (3, T, H, W) -> (T, h, w): the calls of ``bsqvit reconstruct``.
    ``bits``: the rate of a nested-bits model (full-width indices, dropped bits 0).
    ``temporal_copy``: videos, the encoder's copy threshold (:mod:`.temporal`; 0: plain tokens)."""
    x = x.to(model.device)
    if x.ndim == 3:
        return model.encode(x[None], amp=amp, **({} if bits is None else {"bits": bits}))[0].cpu().numpy()[None]
    n = _chunk_frames(model)
    if temporal_copy:
        return copy_video(video_latents(model, x, amp=amp), model.quantizer.dim, bits, temporal_copy).cpu().numpy()
    return np.concatenate([encode_frames(model, x[:, s : s + n], amp=amp, bits=bits).cpu().numpy()
                           for s in range(0, x.shape[1], n)])


def temporal_copy_of(options: CodecOptions | None, prior, media: str) -> float:
    """The copy threshold a compression uses: the option, else the video prior's own (0 for images)."""
    t = (options or CodecOptions()).temporal_copy
    if media != "video":
        return 0.0
    if t is None:
        return float(getattr(getattr(prior, "config", None), "temporal_copy", 0.0) or 0.0)
    return check_threshold(t)


def compress(x: torch.Tensor, model, prior=None, fps: float = 25.0, options: CodecOptions | None = None,
             amp: bool = False, bits: int | None = None) -> CompressResult:
    """An image (3, H, W) or a video (3, T, H, W) in [-1, 1] -> ``.bsq`` bytes. ``bits``: code
    only the first ``bits`` bits of every token (a rate of a nested-bits model)."""
    if x.ndim not in (3, 4) or x.shape[0] != 3:
        raise ValueError(f"expected (3,H,W) or (3,T,H,W), got {tuple(x.shape)}")
    t0 = time.perf_counter()
    media = "image" if x.ndim == 3 else "video"
    H, W = x.shape[-2:]
    T = 1 if media == "image" else x.shape[1]
    header = base_header(model, media, H, W, T, fps, prior, options or CodecOptions(), bits=bits)
    copy = temporal_copy_of(options, prior, media)
    tokens = to_file_tokens(tokenize(model, x, amp=amp, bits=bits, temporal_copy=copy), model, header.bits)
    t1 = time.perf_counter()
    data, info = encode_tokens(tokens, header, prior, options)
    stats = summarize(data, header, info, time.perf_counter() - t0)
    stats["seconds_tokenizer"] = t1 - t0
    if copy:
        stats["temporal_copy"] = copy
    return CompressResult(data, header, stats)


def summarize(data: bytes, header: Header, info: dict, seconds: float) -> dict:
    n = info["tokens"]
    return {
        "bytes": len(data),
        "bpp": 8 * len(data) / header.pixels,
        "bits_per_token": 8 * len(data) / n,
        "seconds": seconds,
        "coder": header.coder,
        "raw_bits_per_token": header.bits,
        **info,
    }


def _decode_pixels(model, header: Header, token_blocks: Iterator[np.ndarray], amp: bool = False):
    """Yield uint8-ready pixel chunks (3, t, H, W) in [-1, 1] (t = the tokenizer's chunk)."""
    size = (header.height, header.width)
    n = header.chunk_frames
    bits = file_rate(model, header)
    buf: list[np.ndarray] = []
    count = 0
    for block in token_blocks:
        for f in block:
            buf.append(f)
            count += 1
            if len(buf) == n:
                yield decode_frames(model, _indices(buf, model, header), size, amp=amp, bits=bits)
                buf = []
    if buf:
        yield decode_frames(model, _indices(buf, model, header), size, amp=amp, bits=bits)


def file_rate(model, header: Header) -> int | None:
    """The ``bits=`` the tokenizer decodes a file's tokens with (None: all of its bits)."""
    return None if header.bits == token_bits(model) else header.bits


def decode_image(model, header: Header, tokens: np.ndarray, amp: bool = False) -> torch.Tensor:
    """An image file's tokens (1, h, w) -> pixels (3, H, W) in [-1, 1], at the file's rate."""
    idx = torch.from_numpy(from_file_tokens(tokens, model, header.bits))
    kw = {} if file_rate(model, header) is None else {"bits": header.bits}
    return model.decode(idx, size=(header.height, header.width), amp=amp, **kw)[0]


def _indices(frames: list[np.ndarray], model, header: Header) -> torch.Tensor:
    return torch.from_numpy(from_file_tokens(np.stack(frames), model, header.bits))


def decompress(data: bytes, model, prior=None, limits: Limits | None = None, amp: bool = False,
               options: CodecOptions | None = None) -> torch.Tensor:
    """``.bsq`` bytes -> pixels in [-1, 1] on the CPU: (3, H, W) for an image, (3, T, H, W) for a
    video. The tokenizer runs where its weights are; the prior's integer arithmetic decides the bits."""
    header, chunks = read_container(data, limits)
    check_decoders(header, model, prior)
    blocks = _in_codebook(iter_decode_tokens(header, chunks, prior, options), model)
    if header.media == "image":
        return decode_image(model, header, next(blocks), amp=amp).cpu()
    return torch.cat([px.cpu() for px in _decode_pixels(model, header, blocks, amp=amp)], dim=1)
