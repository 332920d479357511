"""``bsqvit demo``: the command's options and checks; the work is :func:`bsqvit.demo.run_demo`."""

from __future__ import annotations

from pathlib import Path

from ..demo import run_demo
from ..io import InputError
from .common import add_device_arg, check_output_dir, setup_torch


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job on the embedded models: compress/decompress, RD against JPEG/WebP, samples",
                       description=(
                           "Compress and decompress every image of --data (default: five Kodak photos shipped "
                           "in the package) with the embedded tokenizer and prior (real .bsq files), print bpp / "
                           "PSNR / seconds per image, compare with JPEG and WebP at equal rate (rd.png, rd.md, "
                           "rd.json) and draw a generated sample grid with class names. Offline."))
    p.add_argument("--data", default=None, metavar="DIR", help="a folder of your images (default: the shipped samples)")
    p.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (default: demo-out)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N images")
    p.add_argument("--force", action="store_true", help="write into an existing non-empty --out")
    p.add_argument("--no-lpips", action="store_true", help="skip the LPIPS stand-in")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    add_device_arg(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    if args.data is not None and not Path(args.data).is_dir():
        raise InputError(f"{args.data}: not a directory (give --data DIR)")
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1, got {args.limit}")
    out = check_output_dir(args.out, [args.data] if args.data else [], force=args.force)
    setup_torch(args)
    run_demo(args.data, out, limit=args.limit, lpips=not args.no_lpips, echo=lambda m: print(m, flush=True),
             device=args.device, progress=not args.no_progress)
    return 0
