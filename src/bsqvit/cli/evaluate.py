"""``bsqvit eval / fid-stats / bench``: measuring a tokenizer (implementations:
:mod:`bsqvit.evaluation.tokenizer`, :mod:`bsqvit.evaluation.bench`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..evaluation.bench import bench, format_bench
from ..evaluation.protocol import FID_CHOICES, LPIPS_CHOICES, RESIZE_CHOICES, EvalConfig
from ..evaluation.results import format_markdown, write_json
from ..evaluation.tokenizer import compute_reference_stats, evaluate
from ..io import InputError, atomic_path
from ..models import build_tokenizer, get_preset
from .common import (
    add_compile_arg,
    add_device_arg,
    add_model_args,
    check_compile,
    check_output,
    check_output_dir,
    model_files,
    resolve_model,
    setup_torch,
)


def _eval_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resolution", type=int, default=None, metavar="R",
                   help="resize protocols: short side -> R, centre crop RxR (default: the model's training size)")
    p.add_argument("--resize", default="lanczos", choices=RESIZE_CHOICES,
                   help="lanczos (the paper's protocol, default), bilinear, bicubic, or none (original resolution)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N items (sorted by path)")
    p.add_argument("--batch", type=int, default=1, metavar="B", help="items per forward pass (same-size items only)")
    p.add_argument("--fid", default="auto", choices=FID_CHOICES,
                   help="rFID features: inception (real FID), squeeze-caffe (stand-in), auto (inception if found)")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="pt_inception-2015-12-05-6726825d.pth (default: weights dirs, torch hub cache)")
    p.add_argument("--weights-dir", default=None, metavar="DIR", help="extra directory searched for metric weights")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="reconstruction metrics of a tokenizer on an image folder or videos", description=(
        "PSNR/SSIM/MS-SSIM/LPIPS per item, rFID(-like), rFVD, token statistics. Prints a Markdown table; "
        "--json writes every number; --report writes visual comparisons. Stand-in scores (offline "
        "SqueezeNet-Caffe networks) are labelled as not comparable to published numbers."))
    add_model_args(p)
    p.add_argument("--data", required=True, metavar="PATH", help="image file/folder, or (--video) video files / frame folders")
    p.add_argument("--video", action="store_true", help="evaluate video clips")
    p.add_argument("--frames", type=int, default=None, metavar="T",
                   help="video: frames per clip (default: the model's num_frames; 16 for an image model)")
    p.add_argument("--clips-per-video", type=int, default=1, metavar="K", help="video: consecutive clips per video")
    _eval_data_args(p)
    p.add_argument("--lpips", default="auto", choices=LPIPS_CHOICES,
                   help="LPIPS network; auto: vgg, else alex, else the squeeze-caffe stand-in")
    p.add_argument("--fid-ref", default=None, metavar="PATH.npz",
                   help="reference statistics for rFID: read if the file exists, else computed from the originals and saved")
    p.add_argument("--fid-method", default="sqrtm", choices=("sqrtm", "symmetric"),
                   help="Fréchet distance: sqrtm (pytorch-fid, default) or symmetric (same value, much faster on CPU)")
    p.add_argument("--i3d-weights", default=None, metavar="PATH", help="video: i3d_pretrained_400.pt for rFVD")
    p.add_argument("--json", default=None, metavar="OUT", help="write every number to OUT (JSON)")
    p.add_argument("--report", default=None, metavar="DIR", help="write a PNG grid (video: side-by-side MP4 + frame strip)")
    p.add_argument("--report-items", type=int, default=4, metavar="N", help="items shown in the report (default 4)")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.set_defaults(func=cmd_eval)


def _eval_config(args, **extra):
    return EvalConfig(
        data=args.data, resolution=args.resolution, resize=args.resize, limit=args.limit, batch=args.batch,
        device=args.device, fid=args.fid, inception_weights=args.inception_weights, weights_dir=args.weights_dir,
        progress=not args.no_progress, **extra)


def cmd_eval(args) -> int:
    inputs = [args.data, *model_files(args.model)]
    if args.json:
        check_output(args.json, inputs, force=args.force)
    if args.report:
        check_output_dir(args.report, inputs, force=args.force)
    if args.fid_ref and Path(args.fid_ref).suffix != ".npz":
        raise InputError(f"{args.fid_ref}: reference statistics are .npz files")
    if args.fid_ref and not Path(args.fid_ref).exists():
        check_output(args.fid_ref, inputs)  # will be created: its directory must exist
    if not Path(args.data).exists():
        raise InputError(f"{args.data}: no such file or directory")
    setup_torch(args)
    model = resolve_model(args.model, args.device, compile=args.compile)
    cfg = _eval_config(args, video=args.video, amp=args.amp, lpips=args.lpips, fid_ref=args.fid_ref,
                       fid_method=args.fid_method,
                       i3d_weights=args.i3d_weights, frames=args.frames, clips_per_video=args.clips_per_video,
                       report=args.report, report_items=args.report_items)
    result = evaluate(model, cfg, model_path=str(args.model))
    if args.json:
        write_json(result, args.json)
    print(format_markdown(result))
    return 0


def add_fid_stats(sub) -> None:
    p = sub.add_parser("fid-stats", help="feature statistics of a reference image folder (.npz) for rFID",
                       description="Compute mu/sigma of the FID features of DATA under an eval protocol; "
                                   "use the file with `bsqvit eval --fid-ref`.")
    p.add_argument("data", metavar="DATA", help="image file or folder")
    p.add_argument("output", metavar="OUT.npz")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    add_device_arg(p)
    _eval_data_args(p)
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.set_defaults(func=cmd_fid_stats)


def cmd_fid_stats(args) -> int:
    if Path(args.output).suffix != ".npz":
        raise InputError(f"{args.output}: statistics are written as .npz")
    check_output(args.output, [args.data], force=args.force)
    if not Path(args.data).exists():
        raise InputError(f"{args.data}: no such file or directory")
    setup_torch(args)
    r = compute_reference_stats(_eval_config(args), args.output)
    note = "" if r["comparable_to_published"] else " (stand-in: not comparable to published numbers)"
    print(f"{args.data} -> {args.output}: {r['n']} images, {r['feature']}{note}; {r['protocol']}")
    return 0


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="encode/decode throughput, FLOPs and achieved FLOP/s vs a plain GEMM")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", default=None, metavar="DIR", help="model directory (save_pretrained format)")
    src.add_argument("--preset", default=None, metavar="NAME", help="randomly initialised preset (see `bsqvit presets`)")
    p.add_argument("--resolution", type=int, default=None, metavar="R", help="RxR inputs (default: the model's size)")
    p.add_argument("--batch", type=int, default=1, metavar="B")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="bf16 = bfloat16 autocast")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    p.add_argument("--frames", type=int, default=None, metavar="T", help="video models: frames per clip")
    p.add_argument("--repeats", type=int, default=5, metavar="K", help="timed repeats (median reported)")
    p.add_argument("--warmup", type=int, default=1, metavar="W", help="untimed warm-up calls")
    add_device_arg(p)
    add_compile_arg(p)
    p.add_argument("--json", default=None, metavar="OUT", help="write the numbers to OUT (JSON)")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    if args.json:
        check_output(args.json, model_files(args.model), force=args.force)
    setup_torch(args)
    check_compile(args.compile, args.device)  # before any model is built
    if args.preset:
        torch.manual_seed(0)
        model, name = build_tokenizer(get_preset(args.preset)), f"preset {args.preset} (random weights)"
    else:
        model, name = resolve_model(args.model, args.device), str(args.model)
    r = bench(model, resolution=args.resolution, batch=args.batch, dtype=args.dtype, frames=args.frames,
              repeats=args.repeats, warmup=args.warmup, device=args.device, model_name=name, compile=args.compile)
    if args.json:
        with atomic_path(args.json) as tmp:
            Path(tmp).write_text(json.dumps(r, indent=2) + "\n")
    print(format_bench(r))
    return 0


EVAL_COMMANDS = [add_eval, add_fid_stats, add_bench]
