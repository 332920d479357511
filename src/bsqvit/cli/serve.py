"""``bsqvit serve``: the local web demo (:mod:`bsqvit.serve`, the ``serve`` extra)."""

from __future__ import annotations

from pathlib import Path

from ..io import InputError
from ..serve.app import DEFAULT_MAX_UPLOAD, create_app
from ..serve.pipeline import DEFAULT_MAX_PIXELS, load_models
from .common import add_device_arg, setup_torch


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="local web demo: upload an image, see .bsq against JPEG/WebP, bit-planes, samples",
                       description=(
                           "Serve a local web page: upload or pick an image and see its .bsq reconstruction and "
                           "size, JPEG and WebP at the same file size, PSNR/MS-SSIM, the token grid's bit-planes "
                           "and a generated sample per class; every file is downloadable. Needs the 'serve' extra "
                           "(pip install 'bsqvit[serve]'). Docs: docs/SERVE.md."))
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--model", default=None, metavar="DIR", help="tokenizer directory (default: the embedded one)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse images over N pixels, from the header (default {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD / 1e6, metavar="MB",
                   help=f"refuse request bodies over MB megabytes (10^6 bytes) (default {DEFAULT_MAX_UPLOAD / 1e6:g})")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    add_device_arg(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be in 1..65535, got {args.port}")
    if args.max_upload_mb <= 0:
        raise InputError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if args.model is not None and not Path(args.model).is_dir():
        raise InputError(f"{args.model}: not a model directory")
    setup_torch(args)
    app = create_app(args.model, args.device, args.max_pixels, int(args.max_upload_mb * 1e6))
    load_models(args.model, args.device)  # load (and verify) before the first request
    print(f"bsqvit serve: http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    app.run(host=args.host, port=args.port, threaded=True)
    return 0
