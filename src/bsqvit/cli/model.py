"""``bsqvit reconstruct / tokenize / detokenize / presets / init-model``: the tokenizer's commands.

Token files: :mod:`bsqvit.io.tokens`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..io import (
    InputError,
    atomic_dir,
    from_uint8,
    is_video_path,
    iter_video_frames,
    load_image,
    save_image,
    to_uint8,
    video_info,
)
from ..io.tokens import load_tokens, save_tokens
from ..metrics.pixel import psnr_from_sse
from ..models import build_tokenizer, get_preset, preset_names
from ..quantizers.base import bits_per_token
from ..quantizers.leech import CODEBOOK_SIZE as LEECH_CODEBOOK_SIZE
from ..models.batching import encode_images
from ..models.frames import chunks, decode_frames, encode_frames, video_chunk
from ..models.streaming import NotStreamableError, check_streamable, decode_stream, encode_stream
from .common import (
    PROG,
    add_folder_args,
    add_input_args,
    add_model_args,
    all_or_nothing,
    add_video_out_args,
    check_input,
    check_kinds,
    check_output,
    folder_job,
    model_files,
    resolve_model,
    setup_torch,
    video_writer,
)


def summary(src, dst, kind: str, psnr: float, bits: float, tokens: int, pixels: int, seconds: float) -> str:
    return (
        f"{src} -> {dst}: {kind}, PSNR {psnr:.2f} dB, {bits * tokens / pixels:.4f} bpp raw "
        f"({bits:g} bits x {tokens} tokens / {pixels} px), {seconds:.2f} s"
    )


# ---- reconstruct ----------------------------------------------------------------------------------
def add_reconstruct(sub) -> None:
    p = sub.add_parser("reconstruct", help="encode and decode an image or video", description=(
        "Tokenize IN and decode the tokens back to OUT. Images -> image file (format by suffix); "
        "videos -> MP4, in chunks of the model's num_frames frames."))
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    add_model_args(p)
    add_input_args(p)
    add_video_out_args(p)
    p.add_argument("--stream", action="store_true",
                   help="video, block-causal models: encode and decode frame block by frame block with a "
                        "key/value cache (same tokens as without; memory of one clip, latency of one block)")
    p.add_argument("--stream-window", type=int, default=None, metavar="W",
                   help="with --stream: attend to the last W blocks without clip restarts (docs/STREAMING.md)")
    p.add_argument("--bits", type=int, default=None, metavar="L'",
                   help="nested-bits models: keep the first L' bits of every token (one of the model's levels)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_reconstruct)


def cmd_reconstruct(args) -> int:
    inp, video = check_input(args.input), is_video_path(args.input)
    out = check_output(args.output, [inp, *model_files(args.model)], force=args.force)
    check_kinds(inp, out, video)
    setup_torch(args)
    model = resolve_model(args.model, args.device, video=video, compile=args.compile)
    bits = float(model.bits_per_token)
    if args.bits is not None:
        try:
            bits = float(model.check_bits(args.bits))
        except ValueError as e:
            raise InputError(str(e)) from None
    t0 = time.perf_counter()
    if not video:
        x = load_image(inp, max_pixels=args.max_pixels)
        H, W = x.shape[-2:]
        idx = encode_frames(model, x[:, None].to(model.device), amp=args.amp, bits=args.bits)
        rec = decode_frames(model, idx, (H, W), amp=args.amp, bits=args.bits)[:, 0]
        rec8 = to_uint8(rec).astype(np.float64)
        ref = ((x.double().clamp(-1, 1) + 1) * 127.5).movedim(0, -1).numpy()
        sse, count = float(((rec8 - ref) ** 2).sum()), rec8.size
        save_image(rec, out)
        tokens, pixels, kind = idx[0].numel(), H * W, f"image {W}x{H}"
    else:
        info = video_info(inp, max_pixels=args.max_pixels)
        n = video_chunk(model)
        sse, count, tokens, T = 0.0, 0, 0, 0
        H, W = info["height"], info["width"]
        frame_iter = iter_video_frames(inp, max_frames=args.max_frames, max_pixels=args.max_pixels)
        pairs = _stream_pairs(model, frame_iter, (H, W), args) if args.stream else _chunk_pairs(model, frame_iter, n, (H, W), args)
        with video_writer(out, info["fps"], args) as writer:
            for frames, idx, rec8 in pairs:
                sse += float(((rec8.astype(np.float64) - frames) ** 2).sum())
                count += rec8.size
                tokens += idx.numel()
                T += frames.shape[0]
                writer.write(rec8)
        pixels, kind = T * H * W, f"video {T}x{W}x{H} @ {info['fps']:g} fps"
    print(summary(inp, out, kind, psnr_from_sse(sse, count), bits, tokens, pixels, time.perf_counter() - t0))
    return 0


def _chunk_pairs(model, frame_iter, n: int, size, args):
    """(original uint8 frames, their indices, reconstruction uint8) per clip of ``n`` frames."""
    for frames in chunks(frame_iter, n):
        idx = encode_frames(model, from_uint8(frames).to(model.device), amp=args.amp, bits=args.bits)
        yield frames, idx, to_uint8(decode_frames(model, idx, size, amp=args.amp, bits=args.bits))


def _stream_pairs(model, frame_iter, size, args):
    """The same per frame block, through the streaming encoder and decoder (one cache each)."""
    if args.stream_window is not None and args.stream_window < 1:
        raise InputError(f"--stream-window must be >= 1, got {args.stream_window}")
    try:
        check_streamable(model)
    except NotStreamableError as e:
        raise InputError(f"--stream: {e}") from None
    pending, blocks = [], []

    def frames():
        for f in frame_iter:
            pending.append(f)
            yield from_uint8(f[None]).to(model.device)[None]

    def indices():
        for idx in encode_stream(model, frames(), window=args.stream_window, amp=args.amp, bits=args.bits):
            blocks.append(idx[0])
            yield idx

    for rec in decode_stream(model, indices(), size, window=args.stream_window, amp=args.amp, bits=args.bits):
        rec8 = to_uint8(rec[0])
        ref = np.stack(pending[: len(rec8)])
        del pending[: len(rec8)]
        yield ref, blocks.pop(0), rec8


# ---- tokenize / detokenize ------------------------------------------------------------------------
def add_tokenize(sub) -> None:
    p = sub.add_parser("tokenize", help="image or video -> token indices (.npz); a folder of images -> a folder", description=(
        "Write the token indices of IN to OUT.npz (keys: indices, height, width, frames, fps, bits, "
        "patch_size, model_hash, version). IN a folder of images: OUT is a folder, one .npz per image "
        "(same relative path), same-size images encoded --batch at a time."))
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT.npz")
    add_model_args(p)
    add_input_args(p)
    add_folder_args(p)
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_tokenize)


def cmd_tokenize(args) -> int:
    if Path(args.input).is_dir():
        return _tokenize_folder(args)
    inp, video = check_input(args.input), is_video_path(args.input)
    out = check_output(args.output, [inp, *model_files(args.model)], force=args.force)
    if is_video_path(out):
        raise InputError(f"{out}: token files are .npz archives")
    setup_torch(args)
    model = resolve_model(args.model, args.device, video=video, compile=args.compile)
    t0 = time.perf_counter()
    if not video:
        x = load_image(inp, max_pixels=args.max_pixels)
        H, W = x.shape[-2:]
        indices = model.encode(x[None].to(model.device), amp=args.amp)[0].cpu()
        frames, fps = 0, 0.0
    else:
        info = video_info(inp, max_pixels=args.max_pixels)
        H, W, fps = info["height"], info["width"], info["fps"]
        parts = [encode_frames(model, from_uint8(f).to(model.device), amp=args.amp).cpu()
                 for f in chunks(iter_video_frames(inp, max_frames=args.max_frames, max_pixels=args.max_pixels), video_chunk(model))]
        indices = np.concatenate([p.numpy() for p in parts]) if parts else None
        if indices is None:
            raise InputError(f"{inp}: no frames selected")
        frames = indices.shape[0]
    indices = np.asarray(indices, dtype=np.int64)
    save_tokens(out, indices, height=H, width=W, frames=frames, fps=fps, bits=float(model.bits_per_token),
                patch_size=model.patch_size, model_hash=model.weights_hash())
    shape = "x".join(str(s) for s in indices.shape)
    print(f"{inp} -> {out}: {shape} tokens, {float(model.bits_per_token):g} bits each, "
          f"{float(model.bits_per_token) * indices.size / (max(frames, 1) * H * W):.4f} bpp raw, "
          f"{time.perf_counter() - t0:.2f} s")
    return 0


def _tokenize_folder(args) -> int:
    files, outs = folder_job(args, ".npz", model_files(args.model))
    setup_torch(args)
    model = resolve_model(args.model, args.device, compile=args.compile)
    t0, n = time.perf_counter(), 0
    bits, h = float(model.bits_per_token), model.weights_hash()
    with all_or_nothing(Path(args.output), outs) as written:
        for i, H, W, tokens in encode_images(model, files, batch=args.batch, amp=args.amp,
                                             max_pixels=args.max_pixels):
            save_tokens(outs[i], tokens, height=H, width=W, frames=0, fps=0.0, bits=bits,
                        patch_size=model.patch_size, model_hash=h)
            written.append(outs[i])
            n += tokens.size
    dt = time.perf_counter() - t0
    print(f"{args.input} -> {args.output}: {len(files)} images, {n} tokens, {bits:g} bits each, "
          f"{dt:.2f} s ({len(files) / dt:.2f} images/s, batch {args.batch})")
    return 0


def add_detokenize(sub) -> None:
    p = sub.add_parser("detokenize", help="token indices (.npz) -> image or video",
                       description="Decode a token file written by `bsqvit tokenize` with the same model.")
    p.add_argument("input", metavar="IN.npz")
    p.add_argument("output", metavar="OUT")
    add_model_args(p)
    p.add_argument("--force", action="store_true",
                   help="replace OUT if it exists, and decode even if the model hash differs (warning only)")
    add_video_out_args(p)
    p.set_defaults(func=cmd_detokenize)


def cmd_detokenize(args) -> int:
    inp = check_input(args.input)
    out = check_output(args.output, [inp, *model_files(args.model)], force=args.force)
    tok = load_tokens(inp)
    idx_np = tok["indices"]
    video = idx_np.ndim == 3
    check_kinds(inp, out, video)
    setup_torch(args)
    model = resolve_model(args.model, args.device, tokenizer_id=tok["model_hash"], compile=args.compile)
    if tok["patch_size"] != model.patch_size or abs(tok["bits"] - float(model.bits_per_token)) > 1e-9:
        raise InputError(f"{inp}: tokens are for patch {tok['patch_size']} / {tok['bits']:g} bits, the model has "
                         f"patch {model.patch_size} / {float(model.bits_per_token):g} bits")
    if idx_np.min() < 0 or idx_np.max() >= model.quantizer.codebook_size:
        raise InputError(f"{inp}: indices outside [0, {model.quantizer.codebook_size})")
    if tok["model_hash"] != model.weights_hash():
        msg = f"{inp}: tokens were made by a different model (hash {tok['model_hash'][:12]}...)"
        if not args.force:
            raise InputError(msg + "; use --force to decode anyway")
        print(f"{PROG}: warning: {msg}", file=sys.stderr)
    t0 = time.perf_counter()
    H, W = tok["height"], tok["width"]
    idx = torch.from_numpy(idx_np)
    if not video:
        rec = model.decode(idx[None], size=(H, W), amp=args.amp)[0]
        save_image(rec, out)
        kind = f"image {W}x{H}"
    else:
        n = video_chunk(model)
        with video_writer(out, tok["fps"], args) as writer:
            for s in range(0, idx.shape[0], n):
                writer.write(to_uint8(decode_frames(model, idx[s:s + n], (H, W), amp=args.amp)))
        kind = f"video {idx.shape[0]}x{W}x{H} @ {tok['fps']:g} fps"
    print(f"{inp} -> {out}: {kind}, {time.perf_counter() - t0:.2f} s")
    return 0


# ---- models ---------------------------------------------------------------------------------------
def add_presets(sub) -> None:
    p = sub.add_parser("presets", help="list the named architectures")
    p.set_defaults(func=cmd_presets)


def cmd_presets(args) -> int:
    print(f"{'name':<22} {'arch':<4} {'params':>12}  {'image':>9}  patch  frames  quantizer")
    for name in preset_names():
        cfg = get_preset(name)
        with torch.device("meta"):  # count parameters without allocating or initialising them
            n = build_tokenizer(cfg).num_parameters()
        q = cfg.quantizer
        print(f"{name:<22} {cfg.arch:<4} {n:>12,}  {cfg.image_size[0]:>4}x{cfg.image_size[1]:<4}  {cfg.patch_size:>5}  "
              f"{cfg.num_frames:>6}  {q.type} " + (f"dim {q.dim}, {bits_per_token(LEECH_CODEBOOK_SIZE):.2f} bits" if q.type == "leech" else f"L={q.dim}"))
    return 0


def add_init_model(sub) -> None:
    p = sub.add_parser("init-model", help="save a randomly initialised model (for tests and benchmarks)")
    p.add_argument("--preset", required=True, help="preset name (see `bsqvit presets`)")
    p.add_argument("output", metavar="OUT_DIR")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_init_model)


def cmd_init_model(args) -> int:
    out = Path(args.output)
    if not out.parent.is_dir():
        raise InputError(f"{out}: output directory {out.parent} does not exist")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not an empty directory; refusing to overwrite")
    cfg = get_preset(args.preset)  # KeyError for unknown names
    torch.manual_seed(args.seed)
    model = build_tokenizer(cfg)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
    print(f"{out}: preset {args.preset}, {model.num_parameters():,} parameters, seed {args.seed}")
    return 0


MODEL_COMMANDS = [add_reconstruct, add_tokenize, add_detokenize, add_presets, add_init_model]
