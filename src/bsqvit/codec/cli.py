"""``bsqvit compress / decompress / info / train-prior / rd``: the codec's commands.

Registered in :data:`bsqvit.cli.COMMANDS` through :data:`CODEC_COMMANDS`. Same error policy as
the rest of the command line: bad input prints one ``bsqvit: error: ...`` line and exits with 2;
outputs are written atomically and never replace an input. Heavy imports happen inside the
``cmd_`` functions so that building the parser stays cheap.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .container import FORMAT_LIMITS, Limits


def _base():
    from .. import cli

    return cli


def resolve_prior(arg: str | None, model=None):
    """``--prior``: a directory written by ``save_pretrained``; ``none`` for raw tokens; absent:
    the embedded default prior when it was trained for ``model`` (else raw)."""
    from .prior import TokenPrior

    if arg is not None and str(arg).lower() == "none":
        return None
    if arg is None:
        from ..pretrained import default_dir

        d = default_dir("prior")
        if d is None:
            return None
        prior = TokenPrior.from_pretrained(str(d)).eval()
        h = prior.config.tokenizer_hash
        if model is not None and h is not None and h != model.weights_hash():
            return None
        return prior
    prior = TokenPrior.from_pretrained(str(arg))
    prior.eval()
    return prior


def _has_default_prior() -> bool:
    from ..pretrained import available

    return available("prior")


def _prior_files(arg) -> list[Path]:
    if arg is None or str(arg).lower() == "none":
        return []
    return _base().model_files(arg)


def _print_json(d: dict) -> None:
    print(json.dumps(d, indent=2, sort_keys=True, default=str))


def _positive(name: str, v: int | None, hi: int) -> None:
    if v is not None and not (1 <= v <= hi):
        from ..io import InputError

        raise InputError(f"{name} must be in 1..{hi}, got {v}")


# ---- compress ------------------------------------------------------------------------------------
def add_compress(sub) -> None:
    base = _base()
    p = sub.add_parser("compress", help="image or video -> .bsq file (tokens, optional prior + range coding)",
                       description=(
                           "Tokenize IN with the model and write OUT.bsq: raw L-bit token fields "
                           "(--prior none) or range-coded with a learned prior (--prior DIR; by default the "
                           "embedded prior when it matches the tokenizer). See docs/CODEC.md."))
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT.bsq")
    base.add_model_args(p)
    p.add_argument("--prior", default=None, metavar="DIR|none", help="token prior directory, or none (raw); default: the embedded prior")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="video: only the first N frames")
    _add_prior_runtime_args(p)
    p.add_argument("--frames-per-chunk", type=int, default=None, metavar="N", help="video frames per chunk (default 8)")
    p.add_argument("--json", action="store_true", help="print statistics as JSON")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_compress)


def _add_prior_runtime_args(p) -> None:
    p.add_argument("--prior-threads", type=int, default=None, metavar="N",
                   help="torch threads of the integer prior (speed only; default: --threads)")
    p.add_argument("--tile-batch", type=int, default=None, metavar="N",
                   help="prior tiles evaluated together, 1..256 (speed and memory only; default 32 for ar, 8 for parallel)")


def _options(args):
    from .api import CodecOptions

    _positive("--prior-threads", args.prior_threads, 255)
    _positive("--tile-batch", args.tile_batch, 256)
    _positive("--frames-per-chunk", getattr(args, "frames_per_chunk", None), 4096)
    opts = CodecOptions()
    for name in ("prior_threads", "tile_batch", "frames_per_chunk"):
        if getattr(args, name, None) is not None:
            setattr(opts, name, getattr(args, name))
    return opts


def cmd_compress(args) -> int:
    base = _base()
    from .api import compress_file

    inp = base.check_input(args.input)
    out = base.check_output(args.output, [inp, *base.model_files(args.model), *_prior_files(args.prior)],
                            force=args.force)
    opts = _options(args)
    base.setup_torch(args)
    model = base.resolve_model(args.model)
    prior = resolve_prior(args.prior, model)
    warnings = []
    if prior is not None and prior.config.tokenizer_hash and prior.config.tokenizer_hash != model.weights_hash():
        warnings.append("the prior was trained on another tokenizer's tokens (decodable, but expect more bits)")
    stats = compress_file(inp, out, model, prior, opts, max_frames=args.max_frames, amp=args.amp)
    if warnings:
        stats["warnings"] = warnings
        for w in warnings:
            print(f"{base.PROG}: warning: {w}", file=__import__("sys").stderr)
    if args.json:
        _print_json(stats)
    else:
        over = stats["coder_overhead"]
        print(f"{inp} -> {out}: {stats['media']}, {stats['bytes']} bytes, {stats['bpp']:.4f} bpp, "
              f"{stats['bits_per_token']:.3f} bits/token (raw {stats['raw_bits_per_token']}), coder {stats['coder']}"
              + (f", overhead {100 * over:.2f}% over -sum log2 p" if over is not None else "")
              + f", {stats['seconds']:.2f} s")
    return 0


def _limits(args) -> Limits:
    """The reader's bounds: the defaults, raised (up to the format's) by --max-pixels / --max-tokens."""
    limits = Limits()
    for name in ("max_pixels", "max_tokens"):
        value = getattr(args, name)
        if value is not None:
            _positive("--" + name.replace("_", "-"), value, getattr(FORMAT_LIMITS, name))
            setattr(limits, name, value)
    return limits


# ---- decompress ----------------------------------------------------------------------------------
def add_decompress(sub) -> None:
    base = _base()
    p = sub.add_parser("decompress", help=".bsq file -> image (PNG, ...) or video (MP4, or a folder of PNG frames)",
                       description=(
                           "Decode IN.bsq with the model (and prior) it was made with. Images: OUT is an image "
                           "file. Videos: OUT is a video file (.mp4, ...) or, without suffix, a new directory "
                           "of PNG frames. The pixels equal `bsqvit reconstruct` of the original with that model."))
    p.add_argument("input", metavar="IN.bsq")
    p.add_argument("output", metavar="OUT")
    base.add_model_args(p)
    p.add_argument("--prior", default=None, metavar="DIR", help="the token prior the file was coded with")
    base.add_video_out_args(p)
    _add_prior_runtime_args(p)
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help=f"refuse files whose frames have more than N pixels (default {Limits().max_pixels})")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help=f"refuse files of more than N tokens in all (default {Limits().max_tokens})")
    p.add_argument("--json", action="store_true", help="print statistics as JSON")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_decompress)


def cmd_decompress(args) -> int:
    base = _base()
    from .api import decompress_file, is_frames_dir, read_bsq
    from .container import read_container

    inp = base.check_input(args.input)
    out_arg = args.output
    inputs = [inp, *base.model_files(args.model), *_prior_files(args.prior)]
    if is_frames_dir(out_arg):
        out = Path(out_arg.rstrip(os.sep) or out_arg)
        if any(out.resolve() == Path(i).resolve() for i in inputs):
            raise base.InputError(f"{out}: refusing to overwrite the input")
    else:
        out = base.check_output(out_arg, inputs, force=args.force)
    opts = _options(args)
    limits = _limits(args)
    header, _ = read_container(read_bsq(inp, limits), limits)  # a bad file fails here, before any model is loaded
    if header.coder != "raw" and (
            args.prior is not None and str(args.prior).lower() == "none" or args.prior is None and not _has_default_prior()):
        raise base.InputError(f"{inp}: coded with a {header.coder} prior (id {header.prior_id[:12]}...); "
                              "give it with --prior DIR")
    base.setup_torch(args)
    model = base.resolve_model(args.model)
    prior = resolve_prior(args.prior) if header.coder != "raw" else None  # the id is checked on decode
    if prior is not None and args.prior is None:
        from .container import short_id

        if short_id(prior.weights_hash()) != header.prior_id:  # not the embedded prior's file
            raise base.InputError(f"{inp}: coded with a {header.coder} prior (id {header.prior_id[:12]}...) that is "
                                  "not the embedded one; give it with --prior DIR")
    stats = decompress_file(inp, out_arg, model, prior, limits=limits, crf=args.crf, lossless=args.lossless,
                            amp=args.amp, options=opts)
    if args.json:
        _print_json(stats)
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
    from .api import info

    _print_json(info(_base().check_input(args.input)))
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
    base = _base()
    from .train_prior import load_prior_train_config, train_prior

    cfg = load_prior_train_config(base.check_input(args.config), args.overrides)
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
    p.add_argument("--json", default=None, metavar="OUT.json")
    p.add_argument("--markdown", default=None, metavar="OUT.md")
    p.add_argument("--plot", default=None, metavar="OUT.png")
    p.set_defaults(func=cmd_rd)


def cmd_rd(args) -> int:
    base = _base()
    from .rd import run_rd

    _positive("--limit", args.limit, 1 << 30)
    base.setup_torch(args)
    for path in (args.json, args.markdown, args.plot):
        if path:
            base.check_output(path)
    models, priors = list(args.model), list(args.prior)
    if not models:  # the embedded default tokenizer and (when it matches) its prior
        models = [str(base.default_model_dir())]
        if not priors:
            from ..pretrained import default_dir

            d = default_dir("prior")
            if d is not None:
                priors = [str(d)]
    report = run_rd(args.data, models=models, priors=priors, video=args.video, limit=args.limit,
                    max_frames=args.max_frames, codecs=args.codecs.split(",") if args.codecs else None,
                    lpips=not args.no_lpips, json_out=args.json, md_out=args.markdown, plot_out=args.plot)
    print(report["markdown"])
    return 0


CODEC_COMMANDS = [add_compress, add_decompress, add_info, add_train_prior, add_rd]
