"""The masked token model (MaskGIT-style) over BSQ token grids.

A token of ``L`` bits is split into ``G = L / g`` groups of ``g`` bits (group 0 = the most
significant bits, as in :mod:`bsqvit.quantizers`). The model is a bidirectional transformer over
``[class] + h*w`` positions:

* input of a visible position: the sum of its ``G`` group embeddings (``embed="groups"``), or a
  linear projection of its ``±1`` code (``embed="code"``); a masked position gets a learned
  ``[MASK]`` vector; learned row + column position embeddings are added;
* the class token is a learned embedding per class, plus one "null" class used for condition
  dropout in training and for the unconditional branch of classifier-free guidance
  (``num_classes = 0``: an unconditional model, the null class only);
* output: ``G`` independent sub-token heads, ``2^g``-way each (for example 2 x 512 for L = 18,
  g = 9), so the vocabulary of ``2^L`` codes is never materialised.

Saved like the tokenizer: ``save_pretrained(dir)`` -> ``config.json`` + ``model.safetensors``;
``MaskedTokenModel.from_pretrained(dir)`` reads them with a strict config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

from ..config import ConfigError
from ..nn import Block, PretrainedModule, init_gpt
from ..quantizers.base import join_groups, split_groups  # noqa: F401  (re-exported)

EMBEDDINGS = ("groups", "code")


@dataclass
class GenConfig:
    """Architecture of a masked token model (see the module docstring)."""

    bits: int = 18  # L: bits per token of the tokenizer
    group_bits: int = 9  # g: bits per sub-token head (divides L, at most 16)
    codebook_size: int | None = None  # codes below 2^L (e.g. 196,560 for Λ24-SQ); None: all 2^L
    grid: list[int] = field(default_factory=lambda: [8, 8])  # token rows, cols
    width: int = 256
    layers: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    embed: str = "groups"  # groups | code
    num_classes: int = 0  # 0: unconditional
    class_ids: list[str] = field(default_factory=list)  # e.g. ImageNet wnids, index = class
    class_names: list[str] = field(default_factory=list)  # human-readable names, same order
    image_size: list[int] = field(default_factory=lambda: [64, 64])  # pixels the tokens decode to
    tokenizer_hash: str | None = None  # the tokenizer the model was trained for

    def __post_init__(self):
        if not (1 <= self.bits <= 62):
            raise ConfigError(f"bits must be in 1..62, got {self.bits}")
        if self.group_bits < 1 or self.group_bits > 16 or self.bits % self.group_bits:
            raise ConfigError(f"group_bits {self.group_bits} must divide bits {self.bits} and be <= 16")
        if self.codebook_size is not None and not (1 << (self.bits - 1) < self.codebook_size <= 1 << self.bits):
            raise ConfigError(f"codebook_size {self.codebook_size} needs {self.bits} bits exactly")
        for name in ("grid", "image_size"):
            v = getattr(self, name)
            if isinstance(v, int):
                v = [v, v]
            if len(v) != 2 or min(v) < 1:
                raise ConfigError(f"{name} must be [rows, cols] >= 1, got {v}")
            setattr(self, name, list(v))
        if self.width % self.heads:
            raise ConfigError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.embed not in EMBEDDINGS:
            raise ConfigError(f"embed must be one of {EMBEDDINGS}, got {self.embed!r}")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {self.num_classes}")
        for name in ("class_ids", "class_names"):
            v = getattr(self, name)
            if v and len(v) != self.num_classes:
                raise ConfigError(f"{name} has {len(v)} entries for {self.num_classes} classes")

    @property
    def groups(self) -> int:
        return self.bits // self.group_bits

    @property
    def seq_len(self) -> int:
        return self.grid[0] * self.grid[1]


class MaskedTokenModel(
    PretrainedModule,
    tags=["bsq", "maskgit", "image-generation"],
):
    """Bidirectional transformer predicting the groups of masked tokens (see the module docstring)."""

    config_class = GenConfig
    _HASH_IGNORED = ("class_names",)  # display names: renaming a class does not change the weights

    def __init__(self, config: GenConfig | dict | None = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        D, n = c.width, 1 << c.group_bits
        if c.embed == "groups":
            self.tok_emb = nn.ModuleList(nn.Embedding(n, D) for _ in range(c.groups))
        else:
            self.code_proj = nn.Linear(c.bits, D)
        self.mask_emb = nn.Parameter(torch.zeros(D))
        self.class_emb = nn.Embedding(c.num_classes + 1, D)  # last row: the null class
        self.row_emb = nn.Embedding(c.grid[0], D)
        self.col_emb = nn.Embedding(c.grid[1], D)
        self.blocks = nn.ModuleList(Block(D, c.heads, c.mlp_ratio) for _ in range(c.layers))
        self.ln_f = nn.LayerNorm(D)
        self.heads_out = nn.ModuleList(nn.Linear(D, n) for _ in range(c.groups))
        self._init()

    def _init(self):
        init_gpt(self, self.blocks, self.config.layers, extra=(self.mask_emb,))

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    # ---- forward ----------------------------------------------------------------------------------
    def embed_tokens(self, tokens: Tensor) -> Tensor:
        c = self.config
        if c.embed == "groups":
            g = split_groups(tokens, c.bits, c.group_bits)
            out = self.tok_emb[0](g[..., 0])
            for k in range(1, c.groups):
                out = out + self.tok_emb[k](g[..., k])
            return out
        shifts = torch.arange(c.bits - 1, -1, -1, device=tokens.device, dtype=torch.int64)
        code = ((tokens.unsqueeze(-1) >> shifts) & 1).to(self.code_proj.weight.dtype) * 2 - 1
        return self.code_proj(code)

    def forward(self, tokens: Tensor, mask: Tensor, labels: Tensor | None = None) -> list[Tensor]:
        """Logits of every group at every position.

        ``tokens``: int64 (B, h, w) (values under the mask are ignored); ``mask``: bool (B, h, w),
        True = masked; ``labels``: int64 (B,) with ``num_classes`` (or -1) for the null class, or
        None (all null). Any ``h <= grid[0]``, ``w <= grid[1]`` (the top-left part of the position
        table). Returns ``G`` tensors (B, h*w, 2^g).
        """
        c = self.config
        B, h, w = tokens.shape
        if h > c.grid[0] or w > c.grid[1]:
            raise ValueError(f"token grid {h}x{w} exceeds the model's {c.grid[0]}x{c.grid[1]}")
        if mask.shape != tokens.shape:
            raise ValueError(f"mask {tuple(mask.shape)} does not match tokens {tuple(tokens.shape)}")
        x = self.embed_tokens(tokens.clamp(0, (1 << c.bits) - 1))
        x = torch.where(mask.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        dev = tokens.device
        rows = torch.arange(h, device=dev).repeat_interleave(w)
        cols = torch.arange(w, device=dev).repeat(h)
        x = x.reshape(B, h * w, -1) + self.row_emb(rows) + self.col_emb(cols)
        if labels is None:
            labels = torch.full((B,), self.null_class, dtype=torch.int64, device=dev)
        labels = torch.where(labels < 0, torch.full_like(labels, self.null_class), labels)
        if int(labels.max()) > self.null_class:
            raise ValueError(f"class label {int(labels.max())} out of range for {c.num_classes} classes")
        x = torch.cat([self.class_emb(labels).unsqueeze(1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.ln_f(x[:, 1:])
        return [head(x) for head in self.heads_out]


def masked_token_loss(model: MaskedTokenModel, tokens: Tensor, labels: Tensor | None, gen: torch.Generator,
                      cond_dropout: float = 0.2) -> tuple[Tensor, dict]:
    """MaskGIT training loss on a batch of token grids (B, h, w).

    Per item: a masking ratio ``r = cos(pi/2 * u)``, ``u ~ U(0, 1)`` (the cosine schedule), and
    ``max(1, ceil(r * h * w))`` positions chosen uniformly are masked; with probability
    ``cond_dropout`` the label is replaced by the null class. The loss is the cross-entropy of
    the true groups at the masked positions, summed over groups, averaged over masked
    positions (nats per token). ``gen`` (a CPU generator) makes the masks reproducible.
    """
    c = model.config
    B, h, w = tokens.shape
    N = h * w
    u = torch.rand(B, generator=gen)
    n_mask = torch.clamp(torch.ceil(torch.cos(math.pi / 2 * u) * N), 1, N).long()
    scores = torch.rand(B, N, generator=gen)
    ranks = scores.argsort(1).argsort(1)
    mask = (ranks < n_mask[:, None]).view(B, h, w).to(tokens.device)
    if labels is not None:
        drop = torch.rand(B, generator=gen) < cond_dropout
        labels = torch.where(drop.to(labels.device), torch.full_like(labels, model.null_class), labels)
    logits = model(tokens, mask, labels)
    target = split_groups(tokens, c.bits, c.group_bits).view(B, N, c.groups)
    m = mask.view(B, N)
    loss = 0.0
    correct = torch.ones(int(m.sum()), dtype=torch.bool, device=tokens.device)
    for k, lg in enumerate(logits):
        sel, tk = lg[m].float(), target[..., k][m]
        loss = loss + torch.nn.functional.cross_entropy(sel, tk)
        correct &= sel.argmax(-1) == tk
    return loss, {"mask_ratio": float(n_mask.float().mean() / N), "token_acc": float(correct.float().mean())}
