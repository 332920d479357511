"""ONNX export of an image tokenizer: ``encoder.onnx`` (images -> indices) and ``decoder.onnx``
(indices -> images), two separate graphs with dynamic batch, height and width.

The graphs re-state :meth:`BSQViT.encode` / :meth:`BSQViT.decode` for one frame with every
shape-dependent step written as a graph operation, so nothing is frozen at the size used for
tracing:

* padding to a multiple of the patch size is a ``Gather`` of clamped (replicate), mirrored
  (reflect, falling back to replicate when the pad is not smaller than the side, as
  :meth:`BSQViT._pad` does) or masked (constant: zeros) row/column indices;
* the spatial position embeddings are always resampled to the token grid with ONNX ``Resize``
  (cubic, a = -0.75, half-pixel: PyTorch's ``bicubic`` with ``align_corners=False``); on the
  training grid that resampling is the identity;
* indices are built from the signs of the projected features with ``2^k`` weights (bit 0 =
  channel 0 = most significant, as :func:`bsqvit.quantizers.base.bits_to_indices`) and read
  back with integer division and ``Mod`` (ONNX ``BitShift`` takes unsigned types only);
* the decoder crops to its ``size`` input with a ``Gather`` over ``Range(size)``.

The exporter is PyTorch's TorchScript-based ``torch.onnx.export(dynamo=False)``: it handles the
dynamic ``Resize`` and ``Range`` above and needs only ``onnx`` (the dynamo exporter would also
need ``onnxscript``). Video tokenizers (``num_frames > 1``) are refused: their temporal
embeddings and block-causal masks are not part of this export.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..extras import require
from ..io import InputError, atomic_dir
from ..models.transformer import ViT
from ..version import __version__

DEFAULT_OPSET = 17  # the first opset with LayerNormalization; onnxruntime >= 1.14 runs it
OPSETS = range(14, 22)  # 14: scaled_dot_product_attention in the TorchScript exporter
FORMAT_VERSION = 1
ENCODER_FILE, DECODER_FILE, META_FILE = "encoder.onnx", "decoder.onnx", "export.json"


# ---- graph pieces ------------------------------------------------------------------------------------
def _pad_index(n: Tensor, p: int, fallback: Tensor | None) -> tuple[Tensor, Tensor]:
    """Source rows for a side of length ``n`` padded to a multiple of ``p``: (indices, in-range
    mask). ``fallback``: None for replicate, else reflect unless ``fallback`` (then replicate)."""
    padded = torch.div(n + (p - 1), p, rounding_mode="floor") * p
    i = torch.arange(padded, dtype=torch.int64)
    inside = i < n
    replicate = torch.minimum(i, n - 1)
    if fallback is None:
        return replicate, inside
    mirrored = torch.where(inside, i, 2 * (n - 1) - i).clamp(min=0)
    return torch.where(fallback, replicate, mirrored), inside


def _pad(x: Tensor, p: int, mode: str) -> Tensor:
    """(B, C, H, W) -> (B, C, ceil(H/p) p, ceil(W/p) p), as :meth:`BSQViT._pad`: replicate,
    constant zeros, or reflect -- which turns into replicate on both sides when either pad is
    not smaller than its side."""
    shape = torch._shape_as_tensor(x)
    H, W = shape[2], shape[3]
    fallback = None
    if mode == "reflect":
        fallback = ((-H) % p >= H) | ((-W) % p >= W)
    rows, rin = _pad_index(H, p, fallback)
    cols, cin = _pad_index(W, p, fallback)
    x = x.index_select(2, rows).index_select(3, cols)
    if mode == "constant":
        x = x * (rin[:, None] & cin[None, :]).to(x.dtype)
    return x


def _position(vit: ViT, h: Tensor, w: Tensor) -> Tensor:
    """Spatial embeddings (h*w, D) for an h x w grid: ``ViT.spatial_embedding`` without its
    shortcut for the training grid (where bicubic resampling is the identity)."""
    D = vit.pos_embed.shape[1]
    pe = vit.pos_embed.float().reshape(1, *vit.grid, D).permute(0, 3, 1, 2)
    pe = F.interpolate(pe, size=(h, w), mode="bicubic", align_corners=False)
    return pe.permute(0, 2, 3, 1).reshape(-1, D)


def _mask(mask_type: str, n: Tensor) -> Tensor | None:
    """The attention mask of one frame: only ``causal`` masks inside a frame."""
    if mask_type != "causal":
        return None
    i = torch.arange(n, dtype=torch.int64)
    return i[:, None] >= i[None, :]


def _trunk(vit: ViT, x: Tensor, h: Tensor, w: Tensor, mask_type: str) -> Tensor:
    x = vit.ln_pre(x + _position(vit, h, w).to(x.dtype))
    mask = _mask(mask_type, x.shape[1])
    for blk in vit.blocks:
        x = blk(x, mask)
    return vit.ln_post(x)


class ImageEncoder(nn.Module):
    """images (B, 3, H, W) float32 in [-1, 1] -> indices (B, ceil(H/p), ceil(W/p)) int64."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        L = model.quantizer.dim
        self.register_buffer("weights", 2 ** torch.arange(L - 1, -1, -1, dtype=torch.int64), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        m, p = self.model, self.model.patch_size
        x = _pad(images, p, m.config.pad_mode)
        B, C = x.shape[0], x.shape[1]
        h, w = x.shape[2] // p, x.shape[3] // p
        tokens = x.reshape(B, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(B, h * w, C * p * p)
        feats = _trunk(m.encoder, m.encoder.patch_embed(tokens), h, w, m.config.mask_type)
        u = m.quantizer.project(m.quant_embed(feats))
        return ((u > 0).to(torch.int64) * self.weights).sum(-1).reshape(B, h, w)


class ImageDecoder(nn.Module):
    """indices (B, h, w) int64 + size (2,) int64 [H, W] -> images (B, 3, H, W) float32 in [-1, 1]."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        L = model.quantizer.dim
        self.register_buffer("weights", 2 ** torch.arange(L - 1, -1, -1, dtype=torch.int64), persistent=False)

    def forward(self, indices: Tensor, size: Tensor) -> Tensor:
        m, p = self.model, self.model.patch_size
        B, h, w = indices.shape
        bits = torch.div(indices.unsqueeze(-1), self.weights, rounding_mode="floor") % 2
        codes = (bits.to(torch.float32) * 2 - 1) * m.quantizer.scale
        feats = m.post_quant_embed(codes.reshape(B, h * w, -1))
        out = m.decoder.head(_trunk(m.decoder, feats, h, w, m.config.mask_type))
        x = out.reshape(B, h, w, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, 3, h * p, w * p)
        x = x.index_select(2, torch.arange(size[0], dtype=torch.int64))
        x = x.index_select(3, torch.arange(size[1], dtype=torch.int64))
        return x.clamp(-1, 1)


# ---- export ------------------------------------------------------------------------------------------
def check_exportable(model) -> None:
    """Refuse models this export does not cover (a :class:`ValueError` saying why)."""
    if getattr(model.config, "arch", "vit") != "vit":
        raise InputError(f"ONNX export covers the ViT tokenizer; this model is arch {model.config.arch!r}")
    if model.config.num_frames != 1:
        raise InputError(f"ONNX export covers image tokenizers; this model is a video tokenizer "
                         f"(num_frames={model.config.num_frames})")
    if not hasattr(model.quantizer, "project"):
        raise InputError(f"ONNX export covers binary quantizers (bsq, lfq); this model uses "
                         f"{type(model.quantizer).__name__}")


def _export(module: nn.Module, args: tuple, path: Path, names: tuple[list, list], axes: dict, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=names[0], output_names=names[1],
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True)


def metadata(model, opset: int, sample: tuple[int, int]) -> dict:
    """What ``export.json`` records: the model, the opset and the graphs' conventions."""
    c = model.config
    return {
        "format": "bsqvit-onnx", "format_version": FORMAT_VERSION, "bsqvit_version": __version__,
        "torch_version": torch.__version__, "opset": opset, "model_hash": model.weights_hash(),
        "bits": int(model.quantizer.dim), "patch_size": c.patch_size, "image_size": list(c.image_size),
        "pad_mode": c.pad_mode, "traced_size": list(sample),
        "encoder": {
            "file": ENCODER_FILE,
            "inputs": {"images": {"dtype": "float32", "shape": ["batch", 3, "height", "width"],
                                  "range": [-1, 1], "layout": "RGB, NCHW; x = uint8 / 127.5 - 1"}},
            "outputs": {"indices": {"dtype": "int64", "shape": ["batch", "ceil(height/patch)", "ceil(width/patch)"]}},
        },
        "decoder": {
            "file": DECODER_FILE,
            "inputs": {"indices": {"dtype": "int64", "shape": ["batch", "h", "w"]},
                       "size": {"dtype": "int64", "shape": [2], "meaning": f"[H, W] to crop to: H <= h * {c.patch_size}, W <= w * {c.patch_size}"}},
            "outputs": {"images": {"dtype": "float32", "shape": ["batch", 3, "H", "W"], "range": [-1, 1]}},
        },
        "indices": f"bit k (k = 0 most significant) is 1 where channel k of the projected feature is > 0; "
                   f"values in [0, 2^{int(model.quantizer.dim)})",
        "to_uint8": "round((x + 1) * 127.5) clamped to [0, 255]",
        "exported": ["encoder", "decoder"],
        "not_exported": {"prior": "see docs/EXPORT.md: the integer prior step is not part of this export"},
    }


def export_onnx(model, out_dir: str | os.PathLike, opset: int = DEFAULT_OPSET, image_size: tuple[int, int] | None = None,
                force: bool = False, check: bool = True) -> dict:
    """Write ``encoder.onnx``, ``decoder.onnx`` and ``export.json`` into ``out_dir`` (atomically;
    an existing non-empty ``out_dir`` only with ``force``). ``image_size``: the (H, W) traced
    (default: the training size); the graphs accept any size. Returns the metadata."""
    onnx = require("onnx", "ONNX export")
    check_exportable(model)
    if opset not in OPSETS:
        raise InputError(f"opset must be in {OPSETS[0]}..{OPSETS[-1]}, got {opset}")
    H, W = image_size or tuple(model.config.image_size)
    model = model.float().eval()
    enc, dec = ImageEncoder(model).eval(), ImageDecoder(model).eval()
    x = torch.zeros(2, 3, H, W).uniform_(-1, 1, generator=torch.Generator().manual_seed(0))
    meta = metadata(model, opset, (H, W))
    with torch.no_grad(), atomic_dir(out_dir, replace=force) as tmp:
        idx = enc(x)
        _export(enc, (x,), tmp / ENCODER_FILE, (["images"], ["indices"]),
                {"images": {0: "batch", 2: "height", 3: "width"}, "indices": {0: "batch", 1: "h", 2: "w"}}, opset)
        _export(dec, (idx, torch.tensor([H, W])), tmp / DECODER_FILE, (["indices", "size"], ["images"]),
                {"indices": {0: "batch", 1: "h", 2: "w"}, "images": {0: "batch", 2: "height", 3: "width"}}, opset)
        if check:
            for name in (ENCODER_FILE, DECODER_FILE):
                onnx.checker.check_model(str(tmp / name))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


__all__ = ["DEFAULT_OPSET", "OPSETS", "ImageDecoder", "ImageEncoder", "check_exportable", "export_onnx", "metadata"]
