"""The tokenizer's ViT trunk: patches, positional embeddings, :class:`bsqvit.nn.Block` stacks, and attention masks."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..nn.transformer import Block

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

    def position_embedding(self, num_frames: int, grid: tuple[int, int], start: int = 0) -> Tensor:
        """(num_frames*h*w, D) embeddings of frames ``start .. start+num_frames-1`` (a streamed
        block starts past 0)."""
        pe = self.spatial_embedding(grid)
        if self.temporal_embed is None:
            if num_frames != 1 or start != 0:
                raise ValueError("this model was built for images (num_frames=1); got a video")
            return pe
        if start + num_frames > self.num_frames:
            raise ValueError(f"{start + num_frames} frames exceed the model's maximum of {self.num_frames}")
        temporal = self.temporal_embed[start : start + num_frames]
        return pe.repeat(num_frames, 1) + temporal.repeat_interleave(pe.shape[0], 0)

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


__all__ = ["attention_mask", "ViT", "patchify", "unpatchify", "MASK_TYPES"]
