"""``bsqvit compress / decompress / info / train-prior / rd``: the codec's commands.

Same error policy as the rest of the command line (:mod:`bsqvit.cli.common`): bad input prints
one ``bsqvit: error: ...`` line and exits with 2; outputs are written atomically and never
replace an input.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .. import pretrained
from ..codec.api import CodecOptions
from ..codec.files import compress_file, compress_images, decompress_file, info, is_frames_dir, read_bsq
from ..codec.container import FORMAT_LIMITS, Limits, read_container, short_id
from ..codec.temporal import check_threshold
from ..codec.train_prior import load_prior_train_config, train_prior
from ..evaluation.rd import run_rd
from ..io import InputError, is_video_path
from .common import (
    PROG,
    add_device_arg,
    add_folder_args,
    add_input_args,
    add_model_args,
    add_video_out_args,
    all_or_nothing,
    check_input,
    check_output,
    check_range,
    folder_job,
    has_default_prior,
    model_files,
    print_json,
    prior_files,
    resolve_model,
    resolve_prior,
    setup_torch,
)


# ---- compress ------------------------------------------------------------------------------------
def add_compress(sub) -> None:
    p = sub.add_parser("compress", help="image or video -> .bsq file (tokens, optional prior + range coding)",
                       description=(
                           "Tokenize IN with the model and write OUT.bsq: raw L-bit token fields "
                           "(--prior none) or range-coded with a learned prior (--prior DIR; by default the "
                           "embedded prior when it matches the tokenizer). See docs/CODEC.md."))
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT.bsq")
    add_model_args(p)
    p.add_argument("--prior", default=None, metavar="DIR|none", help="token prior directory, or none (raw); default: the embedded prior")
    p.add_argument("--bits", type=int, default=None, metavar="L'",
                   help="rate: keep the first L' bits of every token (nested-bits models; one of their levels, "
                        "see `bsqvit info`); default: all")
    add_input_args(p)
    _add_prior_runtime_args(p)
    p.add_argument("--frames-per-chunk", type=int, default=None, metavar="N", help="video frames per chunk (default 8)")
    _add_copy_arg(p)
    add_folder_args(p)
    p.add_argument("--json", action="store_true", help="print statistics as JSON")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_compress)


def _add_prior_runtime_args(p) -> None:
    p.add_argument("--prior-threads", type=int, default=None, metavar="N",
                   help="torch threads of the integer prior (speed only; default: --threads)")
    p.add_argument("--tile-batch", type=int, default=None, metavar="N",
                   help="prior tiles evaluated together, 1..256 (speed and memory only; default 32 for ar, 8 for parallel)")


def _add_copy_arg(p) -> None:
    p.add_argument("--temporal-copy", type=float, default=None, metavar="TAU",
                   help="video: send the previous frame's token where that costs at most TAU of squared latent "
                        "distance (0..4; 0 = plain tokens; encoder only). Default: the threshold the prior was "
                        "trained for (docs/CODEC.md)")


def _copy_threshold(value: float | None) -> float | None:
    """``--temporal-copy`` checked before any work (the codec's own rule, the flag's name in the error)."""
    try:
        return None if value is None else check_threshold(value)
    except ValueError:
        raise InputError(f"--temporal-copy must be in [0, 4], got {value}") from None


def _options(args):
    check_range("--prior-threads", args.prior_threads, 255)
    check_range("--tile-batch", args.tile_batch, 256)
    check_range("--frames-per-chunk", getattr(args, "frames_per_chunk", None), 4096)
    opts = CodecOptions(temporal_copy=_copy_threshold(getattr(args, "temporal_copy", None)))
    for name in ("prior_threads", "tile_batch", "frames_per_chunk"):
        if getattr(args, name, None) is not None:
            setattr(opts, name, getattr(args, name))
    return opts


def _prior_warnings(prior, model) -> list[str]:
    if prior is not None and prior.config.tokenizer_hash and prior.config.tokenizer_hash != model.weights_hash():
        return ["the prior was trained on another tokenizer's tokens (decodable, but expect more bits)"]
    return []


def _compress_folder(args) -> int:
    files, outs = folder_job(args, ".bsq", [*model_files(args.model), *prior_files(args.prior)])
    opts = _options(args)
    setup_torch(args)
    model = resolve_model(args.model, args.device, compile=args.compile)
    prior = resolve_prior(args.prior, model)
    for w in _prior_warnings(prior, model):
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    total, pixels, t0 = 0, 0, time.perf_counter()
    with all_or_nothing(Path(args.output), outs) as written:
        for stats in compress_images(files, outs, model, prior, opts, batch=args.batch, amp=args.amp,
                                     max_pixels=args.max_pixels, bits=args.bits):
            written.append(Path(stats["output"]))
            total, pixels = total + stats["bytes"], pixels + 8 * stats["bytes"] / stats["bpp"]
            if args.json:
                print(json.dumps(stats, sort_keys=True))
    dt = time.perf_counter() - t0
    print(f"{args.input} -> {args.output}: {len(files)} files, {total} bytes, {8 * total / pixels:.4f} bpp, "
          f"{dt:.2f} s ({len(files) / dt:.2f} images/s, batch {args.batch})", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_compress(args) -> int:
    if Path(args.input).is_dir():
        return _compress_folder(args)
    inp = check_input(args.input)
    out = check_output(args.output, [inp, *model_files(args.model), *prior_files(args.prior)],
                            force=args.force)
    opts = _options(args)
    setup_torch(args)
    model = resolve_model(args.model, args.device, video=is_video_path(inp), compile=args.compile)
    prior = resolve_prior(args.prior, model)
    warnings = _prior_warnings(prior, model)
    stats = compress_file(inp, out, model, prior, opts, max_frames=args.max_frames, amp=args.amp,
                          max_pixels=args.max_pixels, bits=args.bits)
    if warnings:
        stats["warnings"] = warnings
        for w in warnings:
            print(f"{PROG}: warning: {w}", file=sys.stderr)
    if args.json:
        print_json(stats)
    else:
        print(f"{inp} -> {out}: {stats['media']}, {stats['bytes']} bytes, {stats['bpp']:.4f} bpp, "
              f"{stats['bits_per_token']:.3f} bits/token (raw {stats['raw_bits_per_token']}), coder {stats['coder']}"
              + _overhead_note(stats) + f", {stats['seconds']:.2f} s")
    return 0


def _overhead_note(stats: dict) -> str:
    """The coder's overhead over the ideal -sum log2 p, and why when a tiny payload inflates it."""
    over = stats.get("coder_overhead")
    if over is None:
        return ""
    note = f", overhead {100 * over:.2f}% over -sum log2 p"
    extra_bits = 8 * stats["payload_bytes"] - stats["ideal_bits_per_token"] * stats["tokens"]
    if over > 0.05 and extra_bits <= 32 * stats.get("chunks", 1):
        note += (f" (the range coder writes whole 32-bit words: {extra_bits:.0f} bits of rounding on "
                 f"{stats['tokens']} token{'s' if stats['tokens'] != 1 else ''})")
    return note


def _limits(args) -> Limits:
    """The reader's bounds: the defaults, raised (up to the format's) by --max-pixels / --max-tokens."""
    limits = Limits()
    for name in ("max_pixels", "max_tokens"):
        value = getattr(args, name)
        if value is not None:
            check_range("--" + name.replace("_", "-"), value, getattr(FORMAT_LIMITS, name))
            setattr(limits, name, value)
    return limits


# ---- decompress ----------------------------------------------------------------------------------
def add_decompress(sub) -> None:
    p = sub.add_parser("decompress", help=".bsq file -> image (PNG, ...) or video (MP4, or a folder of PNG frames)",
                       description=(
                           "Decode IN.bsq with the model (and prior) it was made with. Images: OUT is an image "
                           "file. Videos: OUT is a video file (.mp4, ...) or, without suffix, a new directory "
                           "of PNG frames. The pixels equal `bsqvit reconstruct` of the original with that model."))
    p.add_argument("input", metavar="IN.bsq")
    p.add_argument("output", metavar="OUT")
    add_model_args(p)
    p.add_argument("--prior", default=None, metavar="DIR", help="the token prior the file was coded with")
    add_video_out_args(p)
    _add_prior_runtime_args(p)
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help=f"refuse files whose frames have more than N pixels (default {Limits().max_pixels})")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help=f"refuse files of more than N tokens in all (default {Limits().max_tokens})")
    p.add_argument("--json", action="store_true", help="print statistics as JSON")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_decompress)


def cmd_decompress(args) -> int:
    inp = check_input(args.input)
    out_arg = args.output
    inputs = [inp, *model_files(args.model), *prior_files(args.prior)]
    if is_frames_dir(out_arg):
        out = Path(out_arg.rstrip(os.sep) or out_arg)
        if any(out.resolve() == Path(i).resolve() for i in inputs):
            raise InputError(f"{out}: refusing to overwrite the input")
    else:
        out = check_output(out_arg, inputs, force=args.force)
    opts = _options(args)
    limits = _limits(args)
    header, _ = read_container(read_bsq(inp, limits), limits)  # a bad file fails here, before any model is loaded
    if header.coder != "raw" and (
            args.prior is not None and str(args.prior).lower() == "none" or args.prior is None and not has_default_prior()):
        raise InputError(f"{inp}: coded with a {header.coder} prior (id {header.prior_id[:12]}...); "
                              "give it with --prior DIR")
    setup_torch(args)
    model = resolve_model(args.model, args.device, tokenizer_id=header.tokenizer_id, compile=args.compile)
    prior = resolve_prior(args.prior, model) if header.coder != "raw" else None  # the id is checked on decode
    if prior is not None and args.prior is None:
        if short_id(prior.weights_hash()) != header.prior_id:  # not the embedded prior's file
            raise InputError(f"{inp}: coded with a {header.coder} prior (id {header.prior_id[:12]}...) that is "
                                  "not the embedded one; give it with --prior DIR")
    stats = decompress_file(inp, out_arg, model, prior, limits=limits, crf=args.crf, lossless=args.lossless,
                            amp=args.amp, options=opts)
    if args.json:
        print_json(stats)
    else:
        kind = f"image {stats['width']}x{stats['height']}" if stats["media"] == "image" else \
            f"video {stats['frames']}x{stats['width']}x{stats['height']}"
        print(f"{inp} -> {out}: {kind}, {stats['coder']}, {stats['seconds']:.2f} s")
    return 0


# ---- info -----------------------------------------------------------------------------------------
def add_info(sub) -> None:
    p = sub.add_parser("info", help="print the header of a .bsq file as JSON",
                       description="Print the header of a .bsq file (and its sizes) as JSON; every CRC is checked.")
    p.add_argument("input", metavar="FILE")
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    print_json(info(check_input(args.input)))
    return 0


# ---- train-prior ----------------------------------------------------------------------------------
def add_train_prior(sub) -> None:
    p = sub.add_parser("train-prior", help="train a token prior (ar or parallel) on tokens of a tokenizer",
                       description=(
                           "Extract tokens of the training images (cached in OUTPUT_DIR/tokens) with the "
                           "tokenizer, then train the prior of CONFIG. Writes checkpoints/, prior/ "
                           "(config.json + model.safetensors), tb/ and log.jsonl. See configs/prior-*.yaml."))
    p.add_argument("config", help="YAML prior-training config")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer model directory")
    p.add_argument("--output-dir", required=True, metavar="DIR")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.set_defaults(func=cmd_train_prior)


def cmd_train_prior(args) -> int:
    cfg = load_prior_train_config(check_input(args.config), args.overrides)
    result = train_prior(cfg, args.tokenizer, args.output_dir, resume=args.resume, max_steps=args.max_steps,
                         progress=not args.no_progress)
    print(f"done: step {result['step']}, val {result.get('val_bits_per_token', float('nan')):.4f} bits/token "
          f"(raw {result['raw_bits']}) -> {Path(args.output_dir) / 'prior'}")
    return 0


# ---- rd -------------------------------------------------------------------------------------------
def add_rd(sub) -> None:
    p = sub.add_parser("rd", help="rate-distortion evaluation against JPEG/WebP/AVIF/JPEG2000 (H.264/H.265/AV1)",
                       description=(
                           "Rate-distortion points of our models (raw and with each prior) and of classical "
                           "codecs at quality sweeps, PSNR / MS-SSIM (dB) / LPIPS stand-in, BD-rate; JSON, "
                           "Markdown and a plot."))
    p.add_argument("--data", required=True, metavar="DIR", help="folder of images (or videos with --video)")
    p.add_argument("--video", action="store_true", help="evaluate videos (H.264, H.265, AV1 baselines)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N files")
    p.add_argument("--max-frames", type=int, default=16, metavar="N", help="video: frames per clip (default 16)")
    p.add_argument("--model", action="append", default=[], metavar="DIR", help="tokenizer (repeatable)")
    p.add_argument("--prior", action="append", default=[], metavar="DIR", help="token prior (repeatable)")
    p.add_argument("--codecs", default=None, help="comma-separated baselines (default: all available)")
    p.add_argument("--no-lpips", action="store_true", help="skip the LPIPS stand-in")
    p.add_argument("--threads", type=int, default=None, metavar="N")
    add_device_arg(p)
    p.add_argument("--bits", default=None, metavar="L1,L2,...",
                   help="rates of nested-bits models to code, one point each (default: all of their levels)")
    _add_copy_arg(p)
    p.add_argument("--json", default=None, metavar="OUT.json")
    p.add_argument("--markdown", default=None, metavar="OUT.md")
    p.add_argument("--plot", default=None, metavar="OUT.png")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.set_defaults(func=cmd_rd)


def _int_list(flag: str, text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1 or max(values) > 63:
        raise InputError(f"{flag} takes bits per token in 1..63, got {text!r}")
    return values


def cmd_rd(args) -> int:
    check_range("--limit", args.limit, 1 << 30)
    rates = _int_list("--bits", args.bits)
    copy = _copy_threshold(args.temporal_copy)
    setup_torch(args)
    for path in (args.json, args.markdown, args.plot):
        if path:
            check_output(path, [args.data], force=args.force)
    models, priors = list(args.model), list(args.prior)
    if not models:  # the embedded default tokenizer for images or videos and (when one ships) its prior
        d, p = pretrained.default_pair(video=args.video)
        models = [str(d)]
        if not priors and p is not None:
            priors = [str(p)]
    report = run_rd(args.data, models=models, priors=priors, video=args.video, limit=args.limit,
                    max_frames=args.max_frames, codecs=args.codecs.split(",") if args.codecs else None,
                    lpips=not args.no_lpips, json_out=args.json, md_out=args.markdown, plot_out=args.plot,
                    device=args.device, progress=True, rates=rates, temporal_copy=copy)
    print(report["markdown"])
    return 0


CODEC_COMMANDS = [add_compress, add_decompress, add_info, add_train_prior, add_rd]
