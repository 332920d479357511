"""The one transformer block of bsqvit: pre-LN attention + MLP on SDPA, with a key/value-cache step.

The tokenizer's encoder and decoder (:mod:`bsqvit.models.transformer`), the token prior
(:mod:`bsqvit.codec.prior`) and the masked generator (:mod:`bsqvit.generate.model`) all stack
:class:`Block`. Parameter names (``ln1``, ``attn.qkv``, ``attn.proj``, ``ln2``, ``mlp.fc``,
``mlp.proj``) are part of the saved weights' format: a model whose files use other names maps
them at save and load time (see :func:`use_flat_block_names`).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class Attention(nn.Module):
    """Multi-head self-attention: one fused ``qkv`` projection, SDPA, an output projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, N, D = x.shape
        return self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)

    def _merge(self, y: Tensor) -> Tensor:
        B, H, N, d = y.shape
        return self.proj(y.transpose(1, 2).reshape(B, N, H * d))

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """``mask``: boolean SDPA mask (True = may attend), broadcastable to (B, heads, N, N);
        ``causal``: a lower-triangular mask over the sequence (only without ``mask``)."""
        q, k, v = self._split(x)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self._merge(y)

    def step(self, x: Tensor, cache: Tensor, t: int) -> Tensor:
        """Causal attention of one new position ``t``: ``x`` (B, 1, D); ``cache`` (2, B, heads,
        N, head_dim) holds the keys and values of positions ``< t`` and is filled in place at ``t``."""
        return self.forward_cached(x, cache, t)

    def forward_cached(self, x: Tensor, cache: Tensor, start: int, begin: int = 0) -> Tensor:
        """Attention of a block of new positions, which all see one another, to themselves and to
        cached earlier positions: :meth:`step` for a block.

        ``x`` (B, n, D); ``cache`` (2, B, heads, N, head_dim) holds the keys and values of the
        earlier positions the block sees at ``[begin, start)``; the block's own are written in place
        at ``[start, start + n)`` and the block attends to ``[begin, start + n)``, unmasked. Equals
        the block's rows of ``forward`` over the whole sequence with a block-causal mask (a banded
        one when ``begin > 0``), up to floating-point summation order.
        """
        q, k, v = self._split(x)
        end = start + q.shape[2]
        cache[0, :, :, start:end] = k
        cache[1, :, :, start:end] = v
        return self._merge(F.scaled_dot_product_attention(q, cache[0, :, :, begin:end], cache[1, :, :, begin:end]))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        if h.requires_grad:
            h = self.act(h)
        else:
            # No autograd graph: GELU in place on the fresh (N, hidden) buffer. Same values; one
            # large temporary fewer, which on CPU avoids most of the page faults per forward.
            h = torch.ops.aten.gelu_(h)
        return self.proj(h)


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        x = x + self.attn(self.ln1(x), mask, causal)
        return x + self.mlp(self.ln2(x))

    def step(self, x: Tensor, cache: Tensor, t: int) -> Tensor:
        """One new position ``t`` of a causal sequence with a key/value ``cache`` (see
        :meth:`Attention.step`); equals row ``t`` of ``forward(x_0..t, causal=True)``."""
        return self.step_block(x, cache, t)

    def step_block(self, x: Tensor, cache: Tensor, start: int, begin: int = 0) -> Tensor:
        """A block of new positions with a key/value ``cache`` of earlier ones (see
        :meth:`Attention.forward_cached`); equals the block's rows of ``forward`` with a
        block-causal mask."""
        x = x + self.attn.forward_cached(self.ln1(x), cache, start, begin)
        return x + self.mlp(self.ln2(x))


# Module names -> the names some files use for them ("flat" blocks, docs/FORMAT.md section 4).
FLAT_BLOCK_NAMES = {"attn.qkv": "qkv", "attn.proj": "proj", "mlp.fc": "fc1", "mlp.proj": "fc2"}


def use_flat_block_names(module: nn.Module, attr: str = "blocks") -> None:
    """Save and load the :class:`Block` stack ``module.<attr>`` under flat tensor names.

    ``<attr>.{l}.attn.qkv.weight`` is saved as ``<attr>.{l}.qkv.weight`` and so on
    (:data:`FLAT_BLOCK_NAMES`): ``state_dict()`` returns the flat names, so whatever saves or
    hashes it sees them, and ``load_state_dict()`` takes them. Nothing else is renamed.
    """
    names = "|".join(re.escape(k) for k in FLAT_BLOCK_NAMES)
    flat = "|".join(re.escape(v) for v in FLAT_BLOCK_NAMES.values())
    inverse = {v: k for k, v in FLAT_BLOCK_NAMES.items()}

    def rename(state: dict, pattern: re.Pattern, table: dict) -> None:
        items = list(state.items())
        state.clear()
        for key, value in items:
            m = pattern.match(key)
            state[f"{m[1]}{table[m[2]]}.{m[3]}" if m else key] = value

    def to_file(_module, state, prefix, _meta):
        rename(state, re.compile(rf"^({re.escape(prefix + attr)}\.\d+\.)({names})\.(weight|bias)$"), FLAT_BLOCK_NAMES)

    def from_file(_module, state, prefix, *_args):
        rename(state, re.compile(rf"^({re.escape(prefix + attr)}\.\d+\.)({flat})\.(weight|bias)$"), inverse)

    module.register_state_dict_post_hook(to_file)
    module.register_load_state_dict_pre_hook(from_file)


def init_gpt(module: nn.Module, blocks, layers: int, extra: tuple[nn.Parameter, ...] = ()) -> None:
    """GPT-2 initialisation: every Linear truncated N(0, 0.02) with zero bias, every Embedding and
    each of ``extra`` N(0, 0.02), then the residual output projections of ``blocks`` scaled by
    ``1 / sqrt(2 * layers)`` (in that order, so a seed gives the same weights as before)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
    for p in extra:
        nn.init.normal_(p, std=0.02)
    for blk in blocks:
        nn.init.trunc_normal_(blk.attn.proj.weight, std=0.02 / math.sqrt(2 * layers))
        nn.init.trunc_normal_(blk.mlp.proj.weight, std=0.02 / math.sqrt(2 * layers))


__all__ = ["Attention", "MLP", "Block", "init_gpt", "FLAT_BLOCK_NAMES", "use_flat_block_names"]
