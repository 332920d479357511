"""Export of the tokenizer to other runtimes: :func:`export_onnx` writes the encoder (images ->
indices) and the decoder (indices -> images) as two ONNX graphs with dynamic batch, height and
width (``bsqvit export --format onnx``; ``docs/EXPORT.md``). Needs the ``export`` extra."""

from __future__ import annotations

from .onnx import (
    DEFAULT_OPSET,
    OPSETS,
    ImageDecoder,
    ImageEncoder,
    check_exportable,
    export_onnx,
    metadata,
)

FORMATS = ("onnx",)

__all__ = ["DEFAULT_OPSET", "FORMATS", "OPSETS", "ImageDecoder", "ImageEncoder", "check_exportable", "export_onnx", "metadata"]
