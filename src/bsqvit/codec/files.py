"""``.bsq`` files on disk: read with a size bound, compress an image or video file, decompress to
an image, a video or a folder of frames (atomically), and ``info``."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import (
    IMAGE_SUFFIXES,
    InputError,
    VideoWriter,
    atomic_dir,
    atomic_path,
    from_uint8,
    is_video_path,
    iter_video_frames,
    load_image,
    save_image,
    to_uint8,
    video_info,
)
from ..io.image import MAX_PIXELS
from ..models.frames import chunks as frame_chunks
from ..models.batching import encode_images
from ..models.frames import encode_frames, encode_frames_latent
from .api import (
    CodecOptions,
    _chunk_frames,
    _decode_pixels,
    _in_codebook,
    base_header,
    check_decoders,
    decode_image,
    encode_tokens,
    iter_decode_tokens,
    summarize,
    to_file_tokens,
    temporal_copy_of,
    tokenize,
)
from .container import BSQFormatError, Header, Limits, max_file_bytes, read_container
from .temporal import copy_video


def read_bsq(path: str | os.PathLike, limits: Limits | None = None) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file" if not p.exists() else f"{p}: not a regular file")
    size = p.stat().st_size
    if size > max_file_bytes(limits or Limits()):
        raise BSQFormatError(f"{p}: too large for a .bsq file ({size} bytes)")
    return p.read_bytes()


def compress_file(inp, out, model, prior=None, options: CodecOptions | None = None, max_frames: int | None = None,
                  amp: bool = False, max_pixels: int | None = MAX_PIXELS, bits: int | None = None) -> dict:
    """Image or video file -> ``.bsq`` file (written atomically). Returns the statistics.
    Inputs over ``max_pixels`` per image or frame are refused from their header. ``bits``: the
    rate of a nested-bits tokenizer (bits kept per token)."""
    t0 = time.perf_counter()
    opts = options or CodecOptions()
    if is_video_path(inp):
        info = video_info(inp, max_pixels=max_pixels)
        H, W, fps = info["height"], info["width"], info["fps"]
        frames = iter_video_frames(inp, max_frames=max_frames, max_pixels=max_pixels)
        base_header(model, "video", H, W, 1, fps, prior, opts, bits=bits)  # refuses a bad rate before any work
        chunks = (from_uint8(f).to(model.device) for f in frame_chunks(frames, _chunk_frames(model)))
        copy = temporal_copy_of(opts, prior, "video")
        if copy:  # the encoder's skip decision, chunk after chunk (codec/temporal.py)
            parts = [copy_video((encode_frames_latent(model, c, amp=amp) for c in chunks), model.quantizer.dim,
                                bits, copy).cpu().numpy()]
        else:
            parts = [encode_frames(model, c, amp=amp, bits=bits).cpu().numpy() for c in chunks]
        if not parts or not len(parts[0]):
            raise InputError(f"{inp}: no frames selected")
        tokens = np.concatenate(parts)
        header = base_header(model, "video", H, W, tokens.shape[0], fps, prior, opts, bits=bits)
    else:
        x = load_image(inp, max_pixels=max_pixels)
        H, W = x.shape[-2:]
        header = base_header(model, "image", H, W, 1, 0.0, prior, opts, bits=bits)
        tokens = tokenize(model, x, amp=amp, bits=bits)
    return _code_and_write(tokens, header, model, prior, opts, out, t0)


def _code_and_write(tokens: np.ndarray, header: Header, model, prior, opts: CodecOptions, out, t0: float) -> dict:
    """Tokens (T, h, w) -> the ``.bsq`` file ``out`` (atomically); its statistics, timed from ``t0``."""
    tokens = to_file_tokens(tokens, model, header.bits)
    t1 = time.perf_counter()
    data, info = encode_tokens(tokens, header, prior, opts)
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(data)
    stats = summarize(data, header, info, time.perf_counter() - t0)
    stats.update(seconds_tokenizer=t1 - t0, media=header.media, frames=header.frames)
    copy = temporal_copy_of(opts, prior, header.media)
    if copy:
        stats["temporal_copy"] = copy
    return stats


def compress_images(files, outs, model, prior=None, options: CodecOptions | None = None, batch: int = 8,
                    amp: bool = False, max_pixels: int | None = MAX_PIXELS, bits: int | None = None) -> Iterator[dict]:
    """Many image files -> one ``.bsq`` file each (``outs[i]`` for ``files[i]``, written
    atomically), the tokenizer running ``batch`` same-size images per forward pass
    (:func:`~bsqvit.models.batching.encode_images`); the prior codes each file on its own, so every
    file is the one ``compress_file`` writes from the same tokens. Yields each file's statistics
    with its ``input`` and ``output``, in the order the batches finish."""
    opts = options or CodecOptions()
    base_header(model, "image", 1, 1, 1, 0.0, prior, opts, bits=bits)  # refuses a bad rate before any work
    t0 = time.perf_counter()
    for i, H, W, tokens in encode_images(model, files, batch=batch, amp=amp, bits=bits, max_pixels=max_pixels):
        header = base_header(model, "image", H, W, 1, 0.0, prior, opts, bits=bits)
        stats = _code_and_write(tokens[None], header, model, prior, opts, outs[i], t0)
        stats.update(input=str(files[i]), output=str(outs[i]))
        t0 = time.perf_counter()
        yield stats


def is_frames_dir(out: str | os.PathLike) -> bool:
    """A video is written as PNG frames into ``out`` when it has no suffix or ends with a slash."""
    s = os.fspath(out)
    return s.endswith(os.sep) or Path(s).suffix == ""


def decompress_file(inp, out, model, prior=None, limits: Limits | None = None, crf: int = 18,
                    lossless: bool = False, amp: bool = False, options: CodecOptions | None = None) -> dict:
    """``.bsq`` file -> image file, video file or directory of PNG frames; nothing partial on error."""
    t0 = time.perf_counter()
    data = read_bsq(inp, limits)
    header, chunks = read_container(data, limits)
    check_decoders(header, model, prior)
    blocks = _in_codebook(iter_decode_tokens(header, chunks, prior, options), model)  # lazy: decodes when read
    out_s = os.fspath(out)
    if header.media == "image":
        if is_video_path(out_s) or Path(out_s).suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"{out}: the file holds an image; the output needs an image suffix (.png)")
        save_image(decode_image(model, header, next(blocks), amp=amp), out)
    elif is_video_path(out_s):
        with VideoWriter(out, header.fps, crf=crf, lossless=lossless) as writer:
            for px in _decode_pixels(model, header, blocks, amp=amp):
                writer.write(to_uint8(px))
    elif is_frames_dir(out_s):
        _write_frames_dir(Path(out_s.rstrip(os.sep) or out_s), model, header, blocks, amp)
    else:
        raise InputError(f"{out}: the file holds a video; write a video (.mp4) or a directory of PNG frames "
                         "(a path without suffix)")
    return {"bytes": len(data), "media": header.media, "frames": header.frames, "width": header.width,
            "height": header.height, "coder": header.coder, "seconds": time.perf_counter() - t0}


def _write_frames_dir(out: Path, model, header: Header, blocks, amp: bool) -> None:
    with atomic_dir(out) as tmp:
        i = 0
        for px in _decode_pixels(model, header, blocks, amp=amp):
            for frame in to_uint8(px):
                Image.fromarray(frame).save(tmp / f"frame_{i:06d}.png")
                i += 1


def info(path: str | os.PathLike, limits: Limits | None = None) -> dict:
    """The header of a ``.bsq`` file as a JSON-ready dict, plus sizes (every chunk CRC is checked)."""
    data = read_bsq(path, limits)
    header, chunks = read_container(data, limits)
    payload = sum(len(p) for p, _ in chunks)
    d = header.to_json()
    d.update({
        "file_bytes": len(data),
        "payload_bytes": payload,
        "header_bytes": len(data) - payload,
        "chunk_bytes": [len(p) for p, _ in chunks][:64],
        "tokens": header.tokens_per_frame * header.frames,
        "bpp": 8 * len(data) / header.pixels,
        "bits_per_token": 8 * len(data) / (header.tokens_per_frame * header.frames),
    })
    return d
