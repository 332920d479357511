"""The integer inference engine of a :class:`~bsqvit.codec.prior.TokenPrior`.

The float prior is what training optimises; :class:`IntPrior` is what the coder runs. It derives
integer parameters from the float weights by exact rules (scaling by powers of two, round half
to even: :mod:`.intops`) and evaluates the same network -- embeddings, pre-LN transformer blocks,
group heads -- in exact integer arithmetic, ending in the integer frequencies the range coder
uses. The frequencies are a pure function of (weights, tokens already decoded): the same on every
machine, thread count, tile batch and device. ``docs/FORMAT.md`` specifies every step; the
independent NumPy decoder in ``tests/numpy_decoder.py`` re-implements it from that text.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from . import intops as I
from .prior import split_groups

ARITHMETIC = "int-fx12"  # the name of this arithmetic in the header (docs/FORMAT.md section 4)


class _IntBlock:
    def __init__(self, blk, heads: int):
        self.heads = heads
        self.ln1, self.ln2 = I.IntLayerNorm(blk.ln1), I.IntLayerNorm(blk.ln2)
        self.qkv, self.proj = _linear(blk.attn.qkv), _linear(blk.attn.proj)
        self.fc1, self.fc2 = _linear(blk.mlp.fc), _linear(blk.mlp.proj)
        D = blk.attn.qkv.in_features
        self.hd = D // heads
        if self.hd > 64:
            raise ValueError(f"head dimension {self.hd} > 64 is outside the integer range")
        self.scale = I.inv_sqrt_q16(self.hd)

    def _qkv(self, x: Tensor):
        B, N, D = x.shape
        return self.qkv(self.ln1(x)).view(B, N, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4).unbind(0)

    def _out(self, x: Tensor, y: Tensor) -> Tensor:
        B, N, D = x.shape
        x = I.clamp_act(x + self.proj(y.transpose(1, 2).reshape(B, N, D)))
        return I.clamp_act(x + self.fc2(I.gelu(self.fc1(self.ln2(x)))))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        q, k, v = self._qkv(x)
        return self._out(x, I.attention(q, k, v, self.scale, mask))

    def step(self, x: Tensor, cache: Tensor, t: int) -> Tensor:
        q, k, v = self._qkv(x)
        cache[0, :, :, t : t + 1] = k
        cache[1, :, :, t : t + 1] = v
        return self._out(x, I.attention(q, cache[0, :, :, : t + 1], cache[1, :, :, : t + 1], self.scale, None))


class _IntHead:
    def __init__(self, head):
        self.prev = [I.quantize_fixed(e.weight) for e in head.prev]
        self.ln, self.fc1, self.fc2 = I.IntLayerNorm(head.ln), _linear(head.fc1), _linear(head.fc2)

    def __call__(self, h: Tensor, prev_groups: Tensor | None) -> Tensor:
        for j, emb in enumerate(self.prev):
            h = I.clamp_act(h + emb[prev_groups[..., j]])
        return self.fc2(I.gelu(self.fc1(self.ln(h))))


class IntPrior:
    """Integer twin of a :class:`TokenPrior` with the interface the coder uses."""

    def __init__(self, prior):
        c = self.config = prior.config
        if c.tile[0] * c.tile[1] > 8192:
            raise ValueError(f"tile {c.tile} has more than 8192 tokens: outside the integer range")
        self.device = prior.start.device
        self.tok_emb = [I.quantize_fixed(e.weight) for e in prior.tok_emb]
        self.row_emb, self.col_emb = I.quantize_fixed(prior.row_emb.weight), I.quantize_fixed(prior.col_emb.weight)
        self.start = I.quantize_fixed(prior.start)
        # nested priors: one rate vector per rate, added to every position (default: the full rate)
        self.rate_emb = I.quantize_fixed(prior.rate_emb.weight) if c.rates is not None else None
        self.rate = self.rate_emb[-1] if self.rate_emb is not None else None
        if c.video:
            w = prior.prev_conv.weight  # (D, D, 3, 3) -> rows over (in channel, ky, kx), as unfold lays them
            self.conv = I.IntLinear(w.reshape(w.shape[0], -1), prior.prev_conv.bias)
            self.no_prev = I.quantize_fixed(prior.no_prev)
        self.blocks = [_IntBlock(b, c.heads) for b in prior.blocks]
        self.ln_f = I.IntLayerNorm(prior.ln_f)
        self.heads = [_IntHead(h) for h in prior.heads]

    # ---- shared pieces ------------------------------------------------------------------------------
    def embed_tokens(self, tokens: Tensor) -> Tensor:
        c = self.config
        g = split_groups(tokens, c.bits, c.group_bits)
        out = self.tok_emb[0][g[..., 0]]
        for k in range(1, c.groups):
            out = out + self.tok_emb[k][g[..., k]]
        return I.clamp_act(out)

    def positions(self, rows: Tensor, cols: Tensor) -> Tensor:
        out = self.row_emb[rows] + self.col_emb[cols]
        return out if self.rate is None else out + self.rate

    def at_rate(self, bits: int) -> "IntPrior":
        """This engine coding ``bits``-bit tokens (a rate of a nested prior; the full rate is itself)."""
        c = self.config
        r = c.rate_index(bits)
        if r is None or bits == c.bits:
            return self
        view = copy.copy(self)
        view.config = c.at_rate(bits)
        view.rate = self.rate_emb[r]
        return view

    def condition(self, prev: Tensor | None, valid: Tensor | None, batch: int, h: int, w: int) -> Tensor | None:
        """Video conditioning (B, h*w, D): the 3x3 convolution of the previous frame's embeddings."""
        if not self.config.video:
            return None
        D = self.config.width
        if prev is None:
            return self.no_prev.view(1, 1, D).expand(batch, h * w, D)
        e = self.embed_tokens(prev.to(self.device))  # (B, h, w, D)
        if valid is not None:
            e = e * valid.to(self.device).unsqueeze(-1)
        # im2col rows ordered (channel, ky, kx) like the conv weights
        cols = torch.nn.functional.unfold(e.permute(0, 3, 1, 2), 3, padding=1)  # exact: a copy of values
        return self.conv(cols.transpose(1, 2))

    def group_logits(self, h: Tensor, k: int, prev_groups: Tensor | None) -> Tensor:
        return self.heads[k](h, prev_groups)

    def group_frequencies(self, h: Tensor, k: int, prev_groups: Tensor | None, prob_bits: int):
        return I.frequencies(self.group_logits(h, k, prev_groups), prob_bits)

    # ---- ar -----------------------------------------------------------------------------------------
    def ar_init(self, shapes: list[tuple[int, int]], prev: Tensor | None) -> dict:
        c = self.config
        B, th, tw = len(shapes), c.tile[0], c.tile[1]
        N = max(r * q for r, q in shapes)
        cache = torch.zeros(c.layers, 2, B, c.heads, N, c.width // c.heads, dtype=torch.float64, device=self.device)
        valid = None
        if prev is not None:
            valid = torch.zeros(B, th, tw, dtype=torch.bool)
            for b, (r, q) in enumerate(shapes):
                valid[b, :r, :q] = True
        return {"shapes": shapes, "cache": cache, "cond": self.condition(prev, valid, B, th, tw), "N": N}

    def ar_step(self, state: dict, t: int, prev_tokens: Tensor) -> Tensor:
        c = self.config
        shapes = state["shapes"]
        B, dev = len(shapes), self.device
        rc = [divmod(t, q) if t < r * q else (0, 0) for r, q in shapes]
        rows = torch.tensor([a for a, _ in rc], device=dev)
        cols = torch.tensor([b for _, b in rc], device=dev)
        x = self.start.view(1, -1).expand(B, -1) if t == 0 else self.embed_tokens(prev_tokens.to(dev))
        x = x + self.positions(rows, cols)
        if state["cond"] is not None:
            x = x + state["cond"][torch.arange(B, device=dev), rows * c.tile[1] + cols]
        x = I.clamp_act(x).unsqueeze(1)
        for i, blk in enumerate(self.blocks):
            x = blk.step(x, state["cache"][i], t)
        return self.ln_f(x[:, 0])

    # ---- parallel -----------------------------------------------------------------------------------
    def parallel_features(self, tokens: Tensor, rows: Tensor, cols: Tensor, visible: Tensor,
                          valid: Tensor | None, cond: Tensor | None) -> Tensor:
        dev = self.device
        tokens, rows, cols, visible = (t.to(dev) for t in (tokens, rows, cols, visible))
        x = torch.where(visible.unsqueeze(-1), self.embed_tokens(tokens), self.start.view(1, 1, -1))
        x = x + self.positions(rows, cols)
        if cond is not None:
            x = x + cond
        x = I.clamp_act(x)
        mask = None
        if valid is not None and not bool(valid.all()):
            mask = valid.to(dev)[:, None, None, :]
        for blk in self.blocks:
            x = blk.forward(x, mask)
        return self.ln_f(x)


def _linear(m: torch.nn.Linear) -> I.IntLinear:
    return I.IntLinear(m.weight, m.bias)
