"""What every tokenizer shares: the contract of :class:`BSQViT` and :class:`BSQCNN`.

A tokenizer maps pixels in [-1, 1] -- images (B,3,H,W), videos (B,3,T,H,W) -- to int64 token
indices (B,h,w) / (B,T,h,w) and back, through a quantizer (BSQ, LFQ, ...) between an encoder and a
decoder. :class:`Tokenizer` holds the parts that do not depend on the encoder and decoder: input
checks and padding, quantization, nested bits, ``encode`` / ``decode`` / ``forward``, saving and
the weights hash. A subclass sets ``arch`` (the config's ``arch`` it builds) and provides

* ``encode_continuous(x, amp) -> (z (B, T*h*w, L), (T, h, w))``: pre-quantization features;
* ``decode_codes(zq, thw, amp) -> (B, 3, T, h*p, w*p)``: quantized vectors to pixels, unclamped;
* ``last_layer()``: the last decoder weight (adaptive GAN weight); ``flops(h, w, frames)``;
* ``code_weight()``: the parameter whose device and dtype the codes are moved to.

``patch_size`` is the total downsampling factor: one token per ``patch_size`` x ``patch_size`` pixels.
"""

from __future__ import annotations

import abc
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError
from ..nn import PretrainedModule
from ..nn.pretrained import weights_hash
from ..quantizers import QuantizerOutput
from . import presets
from .config import VIT_ONLY, BSQViTConfig, config_dict


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TokenizerOutput:
    reconstruction: Tensor  # same shape as the input, clamped to [-1, 1]
    quant: QuantizerOutput  # quantizer output (loss terms, indices, diagnostics)
    indices: Tensor  # (B, h, w) or (B, T, h, w)

    @property
    def quant_loss(self) -> Tensor:
        return self.quant.loss


class Tokenizer(PretrainedModule, abc.ABC):
    """Base of the tokenizers (see the module docstring). Build one from a config with
    :func:`bsqvit.models.build_tokenizer`, load one with :func:`bsqvit.models.load_tokenizer`."""

    config_class = BSQViTConfig
    arch: ClassVar[str] = ""
    # config fields that do not change what the weights compute (left out of weights_hash)
    _HASH_IGNORED = ("grad_checkpointing",)
    # the networks compile_inference compiles (submodule names; the quantizer stays eager)
    _NETWORKS: ClassVar[tuple[str, ...]] = ("encoder", "decoder")

    def __init__(self, config: BSQViTConfig | dict | None = None, **overrides):
        if self.arch != "vit" and "arch" not in overrides and (config is None or isinstance(config, dict) and "arch" not in config):
            overrides["arch"] = self.arch  # BSQCNN() / BSQCNN({...}) mean arch cnn
        super().__init__(config, **overrides)
        if self.config.arch != self.arch:
            raise ConfigError(f"this config is arch {self.config.arch!r}, {type(self).__name__} builds arch {self.arch!r}: "
                              "use bsqvit.models.build_tokenizer(config) or load_tokenizer(path)")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "Tokenizer":
        return cls(presets.get_preset(name, **overrides))

    def config_dict(self) -> dict:
        return config_dict(self.config)

    def weights_hash(self) -> str:
        """SHA-256 over the config and the tensors (see :class:`PretrainedModule`); a CNN's hash
        leaves out the ViT-only fields, which it does not read."""
        ignored = set(self._HASH_IGNORED) | (set(VIT_ONLY) if self.config.arch != "vit" else set())
        return weights_hash(self, {k: v for k, v in self.config_dict().items() if k not in ignored})

    def compile_inference(self, mode: str = "default", dynamic: bool | None = None) -> "Tokenizer":
        """``torch.compile`` the encoder and decoder networks in place, for inference throughput;
        returns ``self``, in eval mode.

        ``mode``: one of :data:`COMPILE_MODES`; on CUDA ``"reduce-overhead"`` replays CUDA graphs
        and ``"max-autotune"`` also searches GEMM kernels. Each new input shape compiles once more
        (``dynamic=None``: a second shape compiles a shape-generic graph), so it pays off for many
        inputs of one size: ``eval``, ``bench``, video chunks, batches. Names and values of the
        parameters do not change (``state_dict``, ``save_pretrained`` and ``weights_hash`` are
        those of the eager model). Tokens equal the eager model's up to float rounding at exact
        ties of the quantizer, as between devices; ``.bsq`` bits do not depend on it.
        """
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
        self.eval()
        for name in self._NETWORKS:
            self.get_submodule(name).compile(mode=mode, dynamic=dynamic)
        return self

    # ---- provided by the architecture (abstract: a subclass missing one fails when built) ---------
    @abc.abstractmethod
    def encode_continuous(self, x: Tensor, amp: bool = False) -> tuple[Tensor, tuple[int, int, int]]:
        """Pre-quantization features (B, T*h*w, L) and the token grid (T, h, w)."""

    @abc.abstractmethod
    def decode_codes(self, zq: Tensor, thw: tuple[int, int, int], amp: bool = False) -> Tensor:
        """Quantized vectors (B, T*h*w, L) -> pixels (B, 3, T, H, W), unclamped."""

    @abc.abstractmethod
    def last_layer(self) -> Tensor:
        """Weight of the decoder's last layer (for the adaptive GAN weight)."""

    @abc.abstractmethod
    def code_weight(self) -> Tensor:
        """Weight of the layer that reads the quantized codes."""

    @abc.abstractmethod
    def flops(self, height: int, width: int, frames: int = 1) -> dict[str, float]:
        """Forward FLOPs (2 x multiply-adds) of encode and decode for one item."""

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

    def _amp(self, x: Tensor, amp: bool):
        return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16) if amp else nullcontext()

    # ---- quantizer --------------------------------------------------------------------------
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

    # ---- tokens -----------------------------------------------------------------------------
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
        weight = self.code_weight()
        flat = idx.reshape(B, T * h * w).to(weight.device)
        zq = self.quantizer.indices_to_codes(flat) if bits is None else self.quantizer.indices_to_codes(flat, bits=bits)
        x = self.decode_codes(zq.to(weight.dtype), (T, h, w), amp=amp)
        if size is not None:
            H, W = size
            if H > h * self.patch_size or W > w * self.patch_size:
                raise ValueError(f"size {size} is larger than the token grid {h}x{w} x patch {self.patch_size}")
            x = x[..., :H, :W]
        x = x.clamp(-1, 1)
        return x if video else x[:, :, 0]

    # ---- training forward -------------------------------------------------------------------
    def forward(self, x: Tensor, amp: bool = False, bits: int | None = None) -> TokenizerOutput:
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
        return TokenizerOutput(reconstruction=rec, quant=q, indices=idx)
