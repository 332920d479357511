"""``bsqvit demo``: the command's options and checks; the work is :func:`bsqvit.demo.run_demo`."""

from __future__ import annotations

from pathlib import Path

from ..demo import run_demo
from ..io import InputError
from .common import setup_torch


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job on the embedded models: Kodak compress/decompress, RD plot, samples",
                       description=(
                           "Compress and decompress every image of --data with the embedded tokenizer and prior "
                           "(real .bsq files), print bpp / PSNR / seconds per image, compare with JPEG and WebP "
                           "(rd.png, rd.md, rd.json) and draw a generated sample grid. Offline."))
    p.add_argument("--data", required=True, metavar="DIR", help="a folder of images (e.g. Kodak)")
    p.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (default: demo-out)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N images")
    p.add_argument("--no-lpips", action="store_true", help="skip the LPIPS stand-in")
    p.add_argument("--threads", type=int, default=None, metavar="N")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    if not Path(args.data).is_dir():
        raise InputError(f"{args.data}: not a directory (give --data DIR)")
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1, got {args.limit}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    setup_torch(args)
    run_demo(args.data, out, limit=args.limit, lpips=not args.no_lpips, echo=lambda m: print(m, flush=True))
    return 0
