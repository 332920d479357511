"""BSQ-ViT: ViT encoder -> Linear to L -> quantizer -> Linear -> ViT decoder -> per-patch head."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch.nn as nn
from torch import Tensor

from ..quantizers import build_quantizer
from . import official, presets, streaming
from .config import BSQViTConfig, config_dict
from .tokenizer import Tokenizer, TokenizerOutput
from .transformer import ViT, attention_mask, count_flops_per_token, init_linear, patchify, unpatchify

BSQViTOutput = TokenizerOutput  # the name before there were two tokenizers


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
    Tokenizer,
    tags=["image-tokenizer", "video-tokenizer", "bsq"],
    repo_url="https://github.com/bsqvit/bsqvit",
):
    """The BSQ-ViT tokenizer. Inputs are in [-1, 1]: images (B,3,H,W), videos (B,3,T,H,W).
    The contract (encode, decode, forward, nested bits) is :class:`~bsqvit.models.tokenizer.Tokenizer`'s.

    >>> model = BSQViT.from_preset("tiny")
    >>> idx = model.encode(torch.rand(1, 3, 70, 90) * 2 - 1)   # (1, 9, 12) int64
    >>> x = model.decode(idx, size=(70, 90))                   # (1, 3, 70, 90)
    """

    config_class = BSQViTConfig
    arch = "vit"
    _NETWORKS = ("encoder", "decoder", "decoder.head")  # the head runs outside the decoder's forward

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

    # ---- shapes -----------------------------------------------------------------------------
    def _mask(self, thw: tuple[int, int, int], device) -> Tensor | None:
        T, h, w = thw
        if T == 1 and self.config.mask_type == "block-causal":
            return None  # one frame is one block: nothing to mask
        return attention_mask(self.config.mask_type, T, h * w, self.config.mask_block_size, device)

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

    # ---- decoder ----------------------------------------------------------------------------
    def decode_codes(self, zq: Tensor, thw: tuple[int, int, int], amp: bool = False) -> Tensor:
        """Quantized vectors (B, T*h*w, L) -> pixels (B, 3, T, h*p, w*p), unclamped."""
        with self._amp(zq, amp):
            h = self.post_quant_embed(zq)
            h = self.decoder(h, thw[0], thw[1:], self._mask(thw, zq.device))
            out = self.decoder.head(h)
        return unpatchify(out.float(), self.patch_size, thw)

    def code_weight(self) -> Tensor:
        return self.post_quant_embed.weight

    # ---- streaming video (models/streaming.py) --------------------------------------------------
    def encode_stream(self, frames, window: int | None = None, amp: bool = False, bits: int | None = None):
        """Frame chunks (B,3,t,H,W) -> token indices (B,t_k,h,w), one frame block at a time, with a
        key/value cache (block-causal models; rules in :mod:`bsqvit.models.streaming`)."""
        return streaming.encode_stream(self, frames, window=window, amp=amp, bits=bits)

    def decode_stream(self, indices, size: tuple[int, int] | None = None, window: int | None = None, amp: bool = False,
                      bits: int | None = None):
        """Token chunks (B,t,h,w) -> pixels (B,3,t_k,H,W) in [-1, 1], one frame block at a time."""
        return streaming.decode_stream(self, indices, size=size, window=window, amp=amp, bits=bits)

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
    path.write_text(json.dumps(config_dict(model.config), indent=2, sort_keys=True))
