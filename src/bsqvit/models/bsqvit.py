"""BSQ-ViT: ViT encoder -> Linear to L -> quantizer -> Linear -> ViT decoder -> per-patch head."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..config import to_dict
from ..nn import PretrainedModule
from ..quantizers import QuantizerOutput, build_quantizer
from . import official, presets, streaming
from .config import BSQViTConfig
from .transformer import ViT, attention_mask, count_flops_per_token, init_linear, patchify, unpatchify


@dataclass
class BSQViTOutput:
    reconstruction: Tensor  # same shape as the input, clamped to [-1, 1]
    quant: QuantizerOutput  # quantizer output (loss terms, indices, diagnostics)
    indices: Tensor  # (B, h, w) or (B, T, h, w)

    @property
    def quant_loss(self) -> Tensor:
        return self.quant.loss


class Encoder(ViT):
    def __init__(self, cfg: BSQViTConfig):
        super().__init__(cfg.width, cfg.layers, cfg.heads, cfg.grid, cfg.num_frames, cfg.mlp_ratio, cfg.grad_checkpointing)
        self.patch_embed = nn.Linear(3 * cfg.patch_size**2, cfg.width, bias=False)
        nn.init.trunc_normal_(self.patch_embed.weight, std=0.02)


class Decoder(ViT):
    def __init__(self, cfg: BSQViTConfig):
        w = cfg.dec_width
        super().__init__(
            w,
            cfg.decoder_layers or cfg.layers,
            cfg.decoder_heads or cfg.heads,
            cfg.grid,
            cfg.num_frames,
            cfg.mlp_ratio,
            cfg.grad_checkpointing,
        )
        hidden = cfg.head_dim or 4 * w
        self.head = nn.Sequential()
        self.head.add_module("fc", nn.Linear(w, hidden))
        self.head.add_module("act", nn.Tanh())
        self.head.add_module("proj", nn.Linear(hidden, 3 * cfg.patch_size**2))
        init_linear(self.head.fc)
        init_linear(self.head.proj)


class BSQViT(
    PretrainedModule,
    tags=["image-tokenizer", "video-tokenizer", "bsq"],
    repo_url="https://github.com/bsqvit/bsqvit",
):
    """The BSQ-ViT tokenizer. Inputs are in [-1, 1]: images (B,3,H,W), videos (B,3,T,H,W).

    >>> model = BSQViT.from_preset("tiny")
    >>> idx = model.encode(torch.rand(1, 3, 70, 90) * 2 - 1)   # (1, 9, 12) int64
    >>> x = model.decode(idx, size=(70, 90))                   # (1, 3, 70, 90)
    """

    config_class = BSQViTConfig

    def __init__(self, config: BSQViTConfig | dict | None = None, **overrides):
        super().__init__(config, **overrides)
        config = self.config
        L = config.quantizer.dim
        self.encoder = Encoder(config)
        self.quant_embed = nn.Linear(config.width, L)
        self.quantizer = build_quantizer(config.quantizer)
        self.post_quant_embed = nn.Linear(L, config.dec_width)
        self.decoder = Decoder(config)
        init_linear(self.quant_embed)
        init_linear(self.post_quant_embed)

    # ---- construction helpers ---------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "BSQViT":
        return cls(presets.get_preset(name, **overrides))

    @classmethod
    def from_official(cls, checkpoint_path, config_path=None, use_ema: bool = True) -> "BSQViT":
        """Load a checkpoint released with the reference implementation (see ``models/official.py``)."""
        return official.load_official(cls, checkpoint_path, config_path=config_path, use_ema=use_ema)

    # config fields that do not change what the weights compute (left out of weights_hash)
    _HASH_IGNORED = ("grad_checkpointing",)

    # ---- shapes -----------------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def bits_per_token(self) -> float:
        return self.quantizer.bits

    def _to_video(self, x: Tensor) -> tuple[Tensor, bool]:
        if x.ndim == 4:
            return x.unsqueeze(2), False
        if x.ndim == 5:
            return x, True
        raise ValueError(f"expected (B,3,H,W) or (B,3,T,H,W), got shape {tuple(x.shape)}")

    def _pad(self, x: Tensor) -> Tensor:
        p = self.patch_size
        H, W = x.shape[-2:]
        ph, pw = (-H) % p, (-W) % p
        if ph == 0 and pw == 0:
            return x
        B, C, T = x.shape[:3]
        flat = x.reshape(B, C * T, H, W)
        mode = self.config.pad_mode
        if mode == "reflect" and (ph >= H or pw >= W):
            mode = "replicate"
        flat = F.pad(flat, (0, pw, 0, ph), mode=mode)
        return flat.reshape(B, C, T, H + ph, W + pw)

    def _mask(self, thw: tuple[int, int, int], device) -> Tensor | None:
        T, h, w = thw
        if T == 1 and self.config.mask_type == "block-causal":
            return None  # one frame is one block: nothing to mask
        return attention_mask(self.config.mask_type, T, h * w, self.config.mask_block_size, device)

    def _amp(self, x: Tensor, amp: bool):
        return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16) if amp else nullcontext()

    # ---- encoder ----------------------------------------------------------------------------
    def encode_continuous(self, x: Tensor, amp: bool = False) -> tuple[Tensor, tuple[int, int, int]]:
        """Pre-quantization features (B, T*h*w, L) and the token grid (T, h, w)."""
        x5, _ = self._to_video(x)
        if x5.shape[1] != 3:
            raise ValueError(f"expected 3 channels, got {x5.shape[1]}")
        x5 = self._pad(x5)
        with self._amp(x5, amp):
            tokens, thw = patchify(x5, self.patch_size)
            h = self.encoder.patch_embed(tokens)
            h = self.encoder(h, thw[0], thw[1:], self._mask(thw, x.device))
            z = self.quant_embed(h)
        return z.float(), thw

    def quantize(self, z: Tensor, bits: int | None = None) -> QuantizerOutput:
        return self.quantizer(z) if bits is None else self.quantizer(z, bits=bits)

    @property
    def nested_bits(self) -> tuple[int, ...] | None:
        """The rates L' (kept bits per token) a nested-bits model was trained for, else None."""
        return getattr(self.quantizer, "nested_bits", None)

    def check_bits(self, bits: int | None) -> int | None:
        """``bits`` checked against the model's levels (ValueError when it has none or not this one)."""
        if bits is None:
            return None
        if not hasattr(self.quantizer, "check_bits"):
            raise ValueError(f"--bits needs a binary (bsq/lfq) quantizer, this model has {type(self.quantizer).__name__}")
        return self.quantizer.check_bits(bits)

    @torch.no_grad()
    def encode(self, x: Tensor, amp: bool = False, bits: int | None = None) -> Tensor:
        """int64 token indices: (B, h, w) for images, (B, T, h, w) for videos.

        ``bits=L'`` (nested-bits models): only the first L' bits of every token; the others are
        0, so the indices stay in the full L-bit index space.
        """
        self.check_bits(bits)
        z, (T, h, w) = self.encode_continuous(x, amp=amp)
        q = self.quantizer
        if hasattr(q, "project"):  # binary quantizers: no need for the entropy terms
            idx = q.codes_to_indices(q.project(z))
            if bits is not None:
                idx = q.keep_bits(idx, bits)
        else:
            idx = q(z).indices
        idx = idx.reshape(x.shape[0], T, h, w)
        return idx if x.ndim == 5 else idx[:, 0]

    # ---- decoder ----------------------------------------------------------------------------
    def decode_codes(self, zq: Tensor, thw: tuple[int, int, int], amp: bool = False) -> Tensor:
        """Quantized vectors (B, T*h*w, L) -> pixels (B, 3, T, h*p, w*p), unclamped."""
        with self._amp(zq, amp):
            h = self.post_quant_embed(zq)
            h = self.decoder(h, thw[0], thw[1:], self._mask(thw, zq.device))
            out = self.decoder.head(h)
        return unpatchify(out.float(), self.patch_size, thw)

    @torch.no_grad()
    def decode(self, indices: Tensor, size: tuple[int, int] | None = None, amp: bool = False,
               bits: int | None = None) -> Tensor:
        """Token indices -> pixels in [-1, 1], cropped to ``size`` (H, W) if given. ``bits=L'``:
        tokens of a nested-bits model at rate L' (only their first L' bits are read)."""
        self.check_bits(bits)
        if indices.ndim not in (3, 4):
            raise ValueError(f"expected indices (B,h,w) or (B,T,h,w), got shape {tuple(indices.shape)}")
        video = indices.ndim == 4
        idx = indices if video else indices.unsqueeze(1)
        B, T, h, w = idx.shape
        flat = idx.reshape(B, T * h * w).to(self.quant_embed.weight.device)
        zq = self.quantizer.indices_to_codes(flat) if bits is None else self.quantizer.indices_to_codes(flat, bits=bits)
        x = self.decode_codes(zq.to(self.post_quant_embed.weight.dtype), (T, h, w), amp=amp)
        if size is not None:
            H, W = size
            if H > h * self.patch_size or W > w * self.patch_size:
                raise ValueError(f"size {size} is larger than the token grid {h}x{w} x patch {self.patch_size}")
            x = x[..., :H, :W]
        x = x.clamp(-1, 1)
        return x if video else x[:, :, 0]

    # ---- streaming video (models/streaming.py) --------------------------------------------------
    def encode_stream(self, frames, window: int | None = None, amp: bool = False):
        """Frame chunks (B,3,t,H,W) -> token indices (B,t_k,h,w), one frame block at a time, with a
        key/value cache (block-causal models; rules in :mod:`bsqvit.models.streaming`)."""
        return streaming.encode_stream(self, frames, window=window, amp=amp)

    def decode_stream(self, indices, size: tuple[int, int] | None = None, window: int | None = None, amp: bool = False):
        """Token chunks (B,t,h,w) -> pixels (B,3,t_k,H,W) in [-1, 1], one frame block at a time."""
        return streaming.decode_stream(self, indices, size=size, window=window, amp=amp)

    # ---- training forward -------------------------------------------------------------------
    def forward(self, x: Tensor, amp: bool = False, bits: int | None = None) -> BSQViTOutput:
        """Encode, quantize, decode. Returns the clamped reconstruction and the quantizer terms.
        A nested-bits model in training mode draws its rate per call unless ``bits`` is given."""
        x5, video = self._to_video(x)
        H, W = x5.shape[-2:]
        z, thw = self.encode_continuous(x5, amp=amp)
        q = self.quantize(z, self.check_bits(bits))
        rec = self.decode_codes(q.quantized, thw, amp=amp)[..., :H, :W].clamp(-1, 1)
        idx = q.indices.reshape(x.shape[0], *thw)
        if not video:
            rec, idx = rec[:, :, 0], idx[:, 0]
        return BSQViTOutput(reconstruction=rec, quant=q, indices=idx)

    def last_layer(self) -> Tensor:
        """Weight of the last decoder layer (for the adaptive GAN weight)."""
        return self.decoder.head.proj.weight

    # ---- accounting -------------------------------------------------------------------------
    def flops(self, height: int, width: int, frames: int = 1) -> dict[str, float]:
        """Forward FLOPs (2 x multiply-adds) of encode and decode for one item."""
        cfg = self.config
        p = cfg.patch_size
        n = frames * math.ceil(height / p) * math.ceil(width / p)
        L = cfg.quantizer.dim
        enc = n * (2 * 3 * p * p * cfg.width + count_flops_per_token(cfg.width, cfg.layers, n, cfg.mlp_ratio) + 2 * cfg.width * L)
        dw = cfg.dec_width
        hidden = cfg.head_dim or 4 * dw
        dec = n * (
            2 * L * dw
            + count_flops_per_token(dw, cfg.decoder_layers or cfg.layers, n, cfg.mlp_ratio)
            + 2 * dw * hidden
            + 2 * hidden * 3 * p * p
        )
        return {"encode": float(enc), "decode": float(dec), "total": float(enc + dec)}


def save_config_json(model: BSQViT, path: Path) -> None:
    path.write_text(json.dumps(to_dict(model.config), indent=2, sort_keys=True))
