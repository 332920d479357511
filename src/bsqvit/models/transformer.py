"""A pre-LN ViT: patch embedding, positional embeddings, blocks on SDPA, and attention masks."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

MASK_TYPES = ("none", "full", "block-causal", "causal")


def attention_mask(
    mask_type: str, num_frames: int, tokens_per_frame: int, block_frames: int = 1, device=None
) -> Tensor | None:
    """Boolean SDPA mask (True = may attend) over ``num_frames * tokens_per_frame`` tokens.

    * ``none``/``full``: no mask.
    * ``block-causal``: tokens of frame block k attend to every token of blocks <= k, where a block
      is ``block_frames`` consecutive frames. Later frames can never change earlier blocks.
    * ``causal``: plain token-level causal mask in (t, h, w) raster order.
    """
    if mask_type in ("none", "full") or mask_type is None:
        return None
    n = num_frames * tokens_per_frame
    if mask_type == "causal":
        return torch.ones(n, n, dtype=torch.bool, device=device).tril_()
    if mask_type == "block-causal":
        if block_frames < 1:
            raise ValueError(f"mask block size must be >= 1 frame, got {block_frames}")
        block = torch.arange(n, device=device) // (tokens_per_frame * block_frames)
        return block[:, None] >= block[None, :]
    raise ValueError(f"unknown mask type {mask_type!r}; expected one of {MASK_TYPES}")


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


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
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Transformer trunk over (B, T*h*w, D) tokens with spatial + temporal learned embeddings.

    Spatial embeddings live on the training grid ``grid``; other grids get a bicubic
    interpolation of them (cheap next to the blocks, so it is recomputed per call).
    """

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        grid: tuple[int, int],
        num_frames: int = 1,
        mlp_ratio: float = 4.0,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.grid = tuple(grid)
        self.num_frames = num_frames
        self.pos_embed = nn.Parameter(torch.empty(grid[0] * grid[1], width))
        self.temporal_embed = nn.Parameter(torch.zeros(num_frames, width)) if num_frames > 1 else None
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(layers))
        self.ln_post = nn.LayerNorm(width)
        self.grad_checkpointing = grad_checkpointing
        nn.init.normal_(self.pos_embed, std=0.02)
        for name, p in self.blocks.named_parameters():
            if "ln" in name:
                continue
            if name.endswith("weight"):
                nn.init.trunc_normal_(p, std=0.02)
            else:
                nn.init.zeros_(p)

    def spatial_embedding(self, grid: tuple[int, int]) -> Tensor:
        if tuple(grid) == self.grid:
            return self.pos_embed
        D = self.pos_embed.shape[1]
        pe = self.pos_embed.float().reshape(1, *self.grid, D).permute(0, 3, 1, 2)
        pe = F.interpolate(pe, size=tuple(grid), mode="bicubic", align_corners=False)
        return pe.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], D).to(self.pos_embed.dtype)

    def position_embedding(self, num_frames: int, grid: tuple[int, int]) -> Tensor:
        pe = self.spatial_embedding(grid)
        if self.temporal_embed is None:
            if num_frames != 1:
                raise ValueError("this model was built for images (num_frames=1); got a video")
            return pe
        if num_frames > self.num_frames:
            raise ValueError(f"{num_frames} frames exceed the model's maximum of {self.num_frames}")
        return pe.repeat(num_frames, 1) + self.temporal_embed[:num_frames].repeat_interleave(pe.shape[0], 0)

    def forward(self, x: Tensor, num_frames: int, grid: tuple[int, int], mask: Tensor | None) -> Tensor:
        x = x + self.position_embedding(num_frames, grid).to(x.dtype)
        x = self.ln_pre(x)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, mask, use_reentrant=False)
            else:
                x = blk(x, mask)
        return self.ln_post(x)


def patchify(x: Tensor, p: int) -> tuple[Tensor, tuple[int, int, int]]:
    """(B, C, T, H, W) -> (B, T*h*w, C*p*p), channel-major inside a patch (reference layout)."""
    B, C, T, H, W = x.shape
    h, w = H // p, W // p
    x = x.reshape(B, C, T, h, p, w, p).permute(0, 2, 3, 5, 1, 4, 6)
    return x.reshape(B, T * h * w, C * p * p), (T, h, w)


def unpatchify(x: Tensor, p: int, thw: tuple[int, int, int], channels: int = 3) -> Tensor:
    """Inverse of :func:`patchify`: (B, T*h*w, C*p*p) -> (B, C, T, h*p, w*p)."""
    B = x.shape[0]
    T, h, w = thw
    x = x.reshape(B, T, h, w, channels, p, p).permute(0, 4, 1, 2, 5, 3, 6)
    return x.reshape(B, channels, T, h * p, w * p)


def init_linear(m: nn.Linear, std: float = 0.02) -> None:
    nn.init.trunc_normal_(m.weight, std=std)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def count_flops_per_token(width: int, layers: int, seq: int, mlp_ratio: float = 4.0) -> float:
    """Multiply-adds x2 per token for ``layers`` blocks at sequence length ``seq``."""
    d = width
    per_block = 2 * (3 * d * d + d * d + 2 * mlp_ratio * d * d) + 2 * 2 * seq * d
    return layers * per_block


__all__ = ["attention_mask", "Attention", "Block", "ViT", "patchify", "unpatchify", "MASK_TYPES"]
