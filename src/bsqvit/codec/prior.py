"""Priors over BSQ tokens: the probability models that the range coder turns into bits.

A token of ``L`` bits is factorised into ``G = L / g`` groups of ``g`` bits (channel 0 = most
significant bit first, as in :mod:`bsqvit.quantizers`): group ``k`` holds bits ``k*g .. k*g+g-1``
and is predicted by a ``2^g``-way softmax conditioned on the transformer's output at the
token's position *and on the groups 0..k-1 of the same token*. ``g = L`` is one softmax over the
whole codebook (only for small L), ``g = 1`` is bit by bit.

Two kinds (``PriorConfig.kind``):

* ``ar`` -- a causal transformer over the tokens of a tile in raster order. Decoding is stepwise
  with a key/value cache (:meth:`TokenPrior.ar_init` / :meth:`TokenPrior.ar_step`).
* ``parallel`` -- a bidirectional transformer conditioned on the tokens already decoded. A fixed,
  deterministic schedule assigns every position to one of ``S`` passes (:func:`pass_map`); pass
  ``s`` predicts all of its positions at once from the tokens of passes ``< s``. Only decoded and
  current positions enter the transformer (:meth:`TokenPrior.parallel_features`).

Large token grids are cut into tiles of at most ``PriorConfig.tile`` tokens (:func:`tile_layout`),
coded independently (in lockstep batches); positions are learned row + column embeddings.

Video (``PriorConfig.video``): every frame is conditioned on the previous frame's tokens (the
previous frame block of a block-causal tokenizer with 1-frame blocks): their embeddings, passed
through a 3x3 convolution, are added to the input at every position of the same tile. The first
frame (and images) use a learned "no previous frame" vector instead.

Priors are saved like models: ``save_pretrained(dir)`` writes ``config.json`` +
``model.safetensors``, ``TokenPrior.from_pretrained(dir)`` reads them (strict config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError
from ..nn import Block, PretrainedModule, init_gpt, use_flat_block_names
from ..pretrained import default_prior_dir
from ..quantizers.base import join_groups, split_groups  # noqa: F401  (re-exported)

PRIOR_KINDS = ("ar", "parallel")
SCHEDULES = ("quadtree", "random")


@dataclass
class PriorConfig:
    """Architecture of a token prior (see the module docstring)."""

    kind: str = "ar"  # ar | parallel
    bits: int = 18  # L: bits per token of the tokenizer
    group_bits: int = 9  # g: bits per group (divides L)
    width: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    tile: list[int] = field(default_factory=lambda: [32, 32])  # largest tile (tokens): rows, cols
    passes: int = 9  # parallel: number of passes S
    schedule: str = "quadtree"  # parallel: quadtree (S odd) | random (fixed hash order, cosine sizes)
    video: bool = False  # condition every frame on the previous frame's tokens
    # nested-bits tokenizers: the rates L' (bits kept per token, multiples of group_bits, the last
    # = bits) this prior codes. At rate L' the tokens are L'-bit values (the first L' bits), only
    # their L'/g groups are embedded and coded, and a learned rate vector joins every position.
    rates: list[int] | None = None
    tokenizer_hash: str | None = None  # the tokenizer the prior was trained for (informational)
    # video priors: the encoder's temporal copy threshold (codec/temporal.py) the prior was trained
    # for; ``compress`` uses it unless told otherwise (0: plain tokens)
    temporal_copy: float = 0.0

    def __post_init__(self):
        if self.kind not in PRIOR_KINDS:
            raise ConfigError(f"prior kind must be one of {PRIOR_KINDS}, got {self.kind!r}")
        if not (1 <= self.bits <= 63):
            raise ConfigError(f"prior bits must be in 1..63, got {self.bits}")
        if self.group_bits < 1 or self.bits % self.group_bits or self.group_bits > 16:
            raise ConfigError(f"group_bits {self.group_bits} must divide bits {self.bits} and be <= 16")
        if isinstance(self.tile, int):
            self.tile = [self.tile, self.tile]
        self.tile = list(self.tile)
        if len(self.tile) != 2 or min(self.tile) < 1 or max(self.tile) > 1024:
            raise ConfigError(f"tile must be [rows, cols] in 1..1024, got {self.tile}")
        if self.width % self.heads:
            raise ConfigError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.rates is not None:
            self.rates = [int(r) for r in self.rates]
            if (not self.rates or self.rates != sorted(set(self.rates)) or self.rates[-1] != self.bits
                    or any(r < 1 or r % self.group_bits for r in self.rates)):
                raise ConfigError(f"prior rates must be increasing multiples of group_bits {self.group_bits} "
                                  f"ending at bits {self.bits}, got {self.rates}")
        self.temporal_copy = float(self.temporal_copy)
        if not (0.0 <= self.temporal_copy <= 4.0) or (self.temporal_copy and not (self.video and self.kind == "ar")):
            raise ConfigError(f"temporal_copy must be in [0, 4] and needs kind ar with video: true, "
                              f"got {self.temporal_copy}")
        if not (1 <= self.passes <= 64):
            raise ConfigError(f"passes must be in 1..64, got {self.passes}")
        if self.kind == "parallel" and self.schedule == "quadtree" and self.passes % 2 == 0:
            raise ConfigError(f"the quadtree schedule needs an odd number of passes (1 + 2 per level), got {self.passes}")

    @property
    def groups(self) -> int:
        return self.bits // self.group_bits

    def rate_index(self, bits: int | None) -> int | None:
        """Index of rate ``bits`` in ``rates`` (None: a fixed-rate prior at its full rate)."""
        if self.rates is None:
            if bits is not None and bits != self.bits:
                raise ValueError(f"this prior codes {self.bits}-bit tokens only, not {bits}")
            return None
        bits = self.bits if bits is None else bits
        if bits not in self.rates:
            raise ValueError(f"this prior codes the rates {self.rates}, not {bits} bits per token")
        return self.rates.index(bits)

    def at_rate(self, bits: int) -> "PriorConfig":
        """The fixed-rate shape of this prior at rate ``bits``: ``bits``-bit tokens, their groups."""
        return PriorConfig(**{**self.__dict__, "bits": bits, "rates": None})


# ---- tiles and schedules ---------------------------------------------------------------------------
def split_even(n: int, most: int) -> list[int]:
    """Split ``n`` into ``ceil(n / most)`` parts as equal as possible (larger parts first)."""
    k = -(-n // most)
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def tile_layout(h: int, w: int, tile: tuple[int, int] | list[int]) -> list[tuple[int, int, int, int]]:
    """Tiles ``(row0, col0, rows, cols)`` covering an ``h x w`` token grid, raster order."""
    out, r0 = [], 0
    for th in split_even(h, tile[0]):
        c0 = 0
        for tw in split_even(w, tile[1]):
            out.append((r0, c0, th, tw))
            c0 += tw
        r0 += th
    return out


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)).astype(np.uint64)
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)).astype(np.uint64)
    return x ^ (x >> np.uint64(31))


def pass_map(rows: int, cols: int, passes: int, schedule: str) -> np.ndarray:
    """Pass index (int64, ``0 .. passes-1``) of every position of a ``rows x cols`` tile.

    The pass of a position depends only on its (row, col) inside the tile, never on the tile
    size, the data or a random generator, so encoder and decoder agree by construction.

    * ``quadtree``, ``S = 1 + 2K``: pass 0 is the lattice of stride ``2^K``; then for strides
      ``s = 2^(K-1) .. 1`` the centres (odd, odd multiples of ``s``), then the edge midpoints
      (one odd, one even multiple). ``S = 3`` is (even, even), (odd, odd), the rest.
    * ``random``: a fixed integer hash of (row, col) orders the positions; pass sizes follow
      MaskGIT's cosine schedule (few tokens first, many at the end).
    """
    r = np.arange(rows, dtype=np.int64)[:, None].repeat(cols, 1)
    c = np.arange(cols, dtype=np.int64)[None, :].repeat(rows, 0)
    if passes == 1:
        return np.zeros((rows, cols), np.int64)
    if schedule == "quadtree":
        K = (passes - 1) // 2
        out = np.zeros((rows, cols), np.int64)
        done = (r % (1 << K) == 0) & (c % (1 << K) == 0)
        for level, j in enumerate(range(K - 1, -1, -1)):
            s = 1 << j
            on = (r % s == 0) & (c % s == 0) & ~done
            centre = on & ((r // s) % 2 == 1) & ((c // s) % 2 == 1)
            out[centre] = 1 + 2 * level
            out[on & ~centre] = 2 + 2 * level
            done |= on
        return out
    if schedule == "random":
        key = (r.astype(np.uint64) << np.uint64(32)) | c.astype(np.uint64)
        u = (_splitmix64(key) >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # [0, 1)
        # cumulative fraction decoded after pass s: 1 - cos(pi/2 * (s+1)/S)  (MaskGIT's schedule)
        cum = [1 - math.cos(math.pi / 2 * (s + 1) / passes) for s in range(passes)]
        cum[-1] = 1.0
        return np.searchsorted(np.asarray(cum), u, side="right").astype(np.int64).clip(0, passes - 1)
    raise ValueError(f"unknown schedule {schedule!r}")


# ---- the network ----------------------------------------------------------------------------------
class GroupHead(nn.Module):
    """Logits of group k from the position's feature and the groups 0..k-1 of the same token."""

    def __init__(self, dim: int, k: int, group_bits: int):
        super().__init__()
        n = 1 << group_bits
        self.prev = nn.ModuleList(nn.Embedding(n, dim) for _ in range(k))
        self.ln = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, n)

    def forward(self, h: Tensor, prev_groups: Tensor | None) -> Tensor:
        if len(self.prev):
            for j, emb in enumerate(self.prev):
                h = h + emb(prev_groups[..., j])
        return self.fc2(F.gelu(self.fc1(self.ln(h))))


class TokenPrior(
    PretrainedModule,
    tags=["bsq", "token-prior", "compression"],
):
    """A probability model over BSQ token grids (see the module docstring)."""

    config_class = PriorConfig

    def __init__(self, config: PriorConfig | dict | None = None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        D, n = c.width, 1 << c.group_bits
        self.tok_emb = nn.ModuleList(nn.Embedding(n, D) for _ in range(c.groups))
        self.row_emb = nn.Embedding(c.tile[0], D)
        self.col_emb = nn.Embedding(c.tile[1], D)
        self.start = nn.Parameter(torch.zeros(D))  # ar: input of the first position; parallel: [MASK]
        if c.rates is not None:
            self.rate_emb = nn.Embedding(len(c.rates), D)
        if c.video:
            self.prev_conv = nn.Conv2d(D, D, 3, padding=1)
            self.no_prev = nn.Parameter(torch.zeros(D))
        self.blocks = nn.ModuleList(Block(D, c.heads, c.mlp_ratio) for _ in range(c.layers))
        use_flat_block_names(self)  # the prior's files name them blocks.{l}.qkv / proj / fc1 / fc2
        self.ln_f = nn.LayerNorm(D)
        self.heads = nn.ModuleList(GroupHead(D, k, c.group_bits) for k in range(c.groups))
        self._init()

    def _init(self):
        init_gpt(self, self.blocks, self.config.layers, extra=(self.start,))

    def config_dict(self) -> dict:
        """config.json (and the weights hash): ``rates`` appears only for nested priors and
        ``temporal_copy`` only when set, so the files and ids of earlier priors are unchanged."""
        d = super().config_dict()
        if d.get("rates") is None:
            d.pop("rates", None)
        if not d.get("temporal_copy"):
            d.pop("temporal_copy", None)
        return d

    # ---- shared pieces --------------------------------------------------------------------------
    def embed_tokens(self, tokens: Tensor, bits: int | None = None) -> Tensor:
        """int64 tokens (...) -> (..., D): the sum of the group embeddings. ``bits``: the rate
        of ``bits``-bit tokens (nested priors): only their ``bits / g`` groups are embedded."""
        c = self.config
        L = c.bits if bits is None else bits
        g = split_groups(tokens, L, c.group_bits)
        out = self.tok_emb[0](g[..., 0])
        for k in range(1, L // c.group_bits):
            out = out + self.tok_emb[k](g[..., k])
        return out

    def positions(self, rows: Tensor, cols: Tensor, bits: int | None = None) -> Tensor:
        """Position embeddings, plus the rate vector of a nested prior at rate ``bits``."""
        out = self.row_emb(rows) + self.col_emb(cols)
        r = self.config.rate_index(bits)
        return out if r is None else out + self.rate_emb.weight[r]

    def grid_positions(self, h: int, w: int, bits: int | None = None) -> Tensor:
        """(h*w, D) position embeddings of an h x w tile in raster order."""
        dev = self.row_emb.weight.device
        r = torch.arange(h, device=dev).repeat_interleave(w)
        c = torch.arange(w, device=dev).repeat(h)
        return self.positions(r, c, bits)

    def condition(self, prev: Tensor | None, valid: Tensor | None, batch: int, h: int, w: int,
                  bits: int | None = None) -> Tensor | None:
        """Video conditioning (B, h*w, D) from the previous frame's tile tokens (B, h, w), or None.

        ``valid`` (B, h, w) bool marks real positions of padded tiles: padding embeds to zero, which
        is what the convolution's own zero padding sees at a tile's border. ``prev=None``: no
        previous frame (first frame, images) -> the learned ``no_prev`` vector.
        """
        if not self.config.video:
            return None
        D = self.config.width
        if prev is None:
            return self.no_prev.view(1, 1, D).expand(batch, h * w, D)
        e = self.embed_tokens(prev, bits)  # (B, h, w, D)
        if valid is not None:
            e = e * valid.unsqueeze(-1).to(e.dtype)
        cond = self.prev_conv(e.permute(0, 3, 1, 2))  # (B, D, h, w)
        return cond.flatten(2).transpose(1, 2)

    def group_logits(self, h: Tensor, k: int, prev_groups: Tensor | None) -> Tensor:
        """Logits (..., 2^g) of group ``k`` from features ``h`` (..., D) and groups (..., k)."""
        return self.heads[k](h, prev_groups)

    def all_group_logits(self, h: Tensor, tokens: Tensor, bits: int | None = None) -> list[Tensor]:
        """Teacher-forced logits of every group of ``bits``-bit tokens (training)."""
        c = self.config
        L = c.bits if bits is None else bits
        g = split_groups(tokens, L, c.group_bits)
        return [self.heads[k](h, g[..., :k] if k else None) for k in range(L // c.group_bits)]

    # ---- training forward -----------------------------------------------------------------------
    def forward(self, tokens: Tensor, prev: Tensor | None = None, pass_index: int | None = None,
                bits: int | None = None) -> Tensor:
        """Teacher-forced negative log2-likelihood (bits) of the positions a coder would code.

        ``tokens``: full tiles (B, h, w); ``prev``: previous-frame tokens (B, h, w) or None.
        ``bits``: the rate of a nested prior (tokens and prev are then ``bits``-bit values).
        ``ar``: every position, causal over the raster order -> (B, h*w).
        ``parallel``: the positions of pass ``pass_index`` of the schedule, given the tokens of
        the earlier passes -> (B, M) (see :meth:`parallel_features`).
        """
        B, h, w = tokens.shape
        c = self.config
        flat = tokens.reshape(B, h * w)
        c.rate_index(bits)  # checks the rate
        cond = self.condition(prev, None, B, h, w, bits)
        if c.kind == "ar":
            emb = self.embed_tokens(flat[:, :-1], bits)
            x = torch.cat([self.start.view(1, 1, -1).expand(B, 1, -1), emb], 1) + self.grid_positions(h, w, bits).unsqueeze(0)
            if cond is not None:
                x = x + cond
            for blk in self.blocks:
                x = blk(x, causal=True)
            feats, targets = self.ln_f(x), flat
        else:
            if pass_index is None:
                raise ValueError("the parallel prior needs `pass_index`")
            pm = torch.from_numpy(pass_map(h, w, c.passes, c.schedule)).reshape(-1).to(tokens.device)
            seq = torch.nonzero(pm <= pass_index).squeeze(1)  # positions in the input, raster order
            rows, cols = seq // w, seq % w
            vis = (pm[seq] < pass_index).unsqueeze(0).expand(B, -1)
            cond_s = cond[:, seq] if cond is not None else None
            feats = self.parallel_features(flat[:, seq], rows.expand(B, -1), cols.expand(B, -1), vis, None, cond_s,
                                           bits)
            tgt = pm[seq] == pass_index
            feats, targets = feats[:, tgt], flat[:, seq[tgt]]
        logits = self.all_group_logits(feats, targets, bits)
        g = split_groups(targets, c.bits if bits is None else bits, c.group_bits)
        nll = sum(F.cross_entropy(lg.reshape(-1, lg.shape[-1]), g[..., k].reshape(-1), reduction="none")
                  for k, lg in enumerate(logits))
        return nll.view(B, -1) / math.log(2)

    # ---- stepwise decoding (ar) -----------------------------------------------------------------
    def ar_init(self, shapes: list[tuple[int, int]], prev: Tensor | None) -> dict:
        """State for lockstep decoding of a batch of tiles of the given (rows, cols).

        ``prev``: (B, th, tw) previous-frame tokens padded to the prior's tile (or None).
        """
        c = self.config
        B, dev = len(shapes), self.start.device
        th, tw = c.tile
        N = max(r * q for r, q in shapes)
        cache = torch.zeros(c.layers, 2, B, c.heads, N, c.width // c.heads, device=dev)
        valid = None
        if prev is not None:
            valid = torch.zeros(B, th, tw, dtype=torch.bool, device=dev)
            for b, (r, q) in enumerate(shapes):
                valid[b, :r, :q] = True
        cond = self.condition(prev, valid, B, th, tw)  # (B, th*tw, D) in the padded layout
        return {"shapes": shapes, "cache": cache, "cond": cond, "N": N}

    def ar_step(self, state: dict, t: int, prev_tokens: Tensor) -> Tensor:
        """Feature (B, D) of position ``t`` of every tile, given the tokens at ``t-1`` (B,).

        Tiles shorter than ``t`` compute on placeholders (position 0, whatever token is given);
        their outputs are ignored by the caller.
        """
        c = self.config
        shapes = state["shapes"]
        B, dev = len(shapes), self.start.device
        rc = [divmod(t, q) if t < r * q else (0, 0) for r, q in shapes]
        rows = torch.tensor([a for a, _ in rc], device=dev)
        cols = torch.tensor([b for _, b in rc], device=dev)
        if t == 0:
            x = self.start.view(1, -1).expand(B, -1)
        else:
            x = self.embed_tokens(prev_tokens)
        x = x + self.positions(rows, cols)
        if state["cond"] is not None:  # (B, th*tw, D) in the padded tile layout
            x = x + state["cond"][torch.arange(B, device=dev), rows * c.tile[1] + cols]
        x = x.unsqueeze(1)
        for i, blk in enumerate(self.blocks):
            x = blk.step(x, state["cache"][i], t)
        return self.ln_f(x[:, 0])

    # ---- one pass (parallel) ----------------------------------------------------------------------
    def parallel_features(self, tokens: Tensor, rows: Tensor, cols: Tensor, visible: Tensor,
                          valid: Tensor | None, cond: Tensor | None, bits: int | None = None) -> Tensor:
        """Features (B, n, D) of a pass: a bidirectional transformer over the sequence of the
        positions decoded so far (``visible``: their tokens are embedded) and the positions of the
        current pass (``visible`` False: the mask vector). All inputs are (B, n) except ``cond``
        (B, n, D). ``valid`` (B, n) marks real entries of padded sequences (None: all real);
        padding is never attended to. Only these positions enter the transformer, so a pass
        costs in proportion to the tokens decoded so far (about 2 full passes in all for the
        quadtree schedule).
        """
        emb = self.embed_tokens(tokens, bits)
        x = torch.where(visible.unsqueeze(-1), emb, self.start.view(1, 1, -1)) + self.positions(rows, cols, bits)
        if cond is not None:
            x = x + cond
        mask = None
        if valid is not None and not bool(valid.all()):
            mask = valid[:, None, None, :]
        for blk in self.blocks:
            x = blk(x, mask=mask)
        return self.ln_f(x)


def default_prior(model=None) -> TokenPrior | None:
    """The embedded token prior (eval mode, :mod:`bsqvit.pretrained`) trained for ``model`` (by
    ``weights_hash()``: the image prior for the image tokenizer, the video prior for the video
    tokenizer); None when none ships for it. ``model=None``: the image prior."""
    d = default_prior_dir(None if model is None else model.weights_hash())
    return None if d is None else TokenPrior.from_pretrained(str(d)).eval()
