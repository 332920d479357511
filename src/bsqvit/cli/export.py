"""``bsqvit export --format onnx``: the tokenizer as two ONNX graphs (encoder, decoder) and an
``export.json`` in OUT_DIR. The work is :func:`bsqvit.export.export_onnx`; ``docs/EXPORT.md``."""

from __future__ import annotations

from pathlib import Path

from ..export import DEFAULT_OPSET, FORMATS, OPSETS, export_onnx
from ..extras import require
from ..io import InputError
from .common import check_output_dir, model_files, resolve_model, setup_torch


def add_export(sub) -> None:
    p = sub.add_parser("export", help="the tokenizer as ONNX: encoder.onnx + decoder.onnx (dynamic size)", description=(
        "Write the tokenizer's encoder (images (B,3,H,W) float32 in [-1,1] -> indices (B,h,w) int64) and "
        "decoder (indices + size [H,W] -> images) as two ONNX models with dynamic batch, height and width, "
        "and export.json (model hash, bits, patch size, opset, conventions) into OUT_DIR. "
        "Image tokenizers only; needs the 'export' extra (onnx, onnxruntime). See docs/EXPORT.md."))
    p.add_argument("output", metavar="OUT_DIR")
    p.add_argument("--format", required=True, metavar="|".join(FORMATS), help="export format (onnx)")
    p.add_argument("--model", default=None, metavar="DIR", help="model directory or Hub id (default: the embedded tokenizer)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N", help=f"ONNX opset, 14..21 (default {DEFAULT_OPSET})")
    p.add_argument("--force", action="store_true", help="replace an existing OUT_DIR")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    fmt = args.format.lower()
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {args.format!r}")
    if args.opset not in OPSETS:
        raise InputError(f"--opset must be in {OPSETS[0]}..{OPSETS[-1]}, got {args.opset}")
    out = Path(args.output)
    check_output_dir(out, model_files(args.model), force=args.force)
    require("onnx", "bsqvit export --format onnx")
    setup_torch(args)
    model = resolve_model(args.model, "cpu")
    meta = export_onnx(model, out, opset=args.opset, force=args.force)
    sizes = ", ".join(f"{name} {(out / name).stat().st_size / 1e6:.1f} MB" for name in ("encoder.onnx", "decoder.onnx"))
    print(f"{out}: {sizes}, export.json (opset {meta['opset']}, {meta['bits']} bits, patch {meta['patch_size']}, "
          f"model {meta['model_hash'][:12]}); dynamic batch/height/width")
    return 0


EXPORT_COMMANDS = [add_export]
