"""MaskGIT sampling: iterative parallel decoding of a token grid.

Start with every unknown position masked. At step ``s = 0 .. S-1``:

1. the model predicts every group at every masked position; with classifier-free guidance
   the logits are ``l_u + w * (l_c - l_u)`` (conditional and null-class passes in one batch);
2. each group is sampled from ``softmax(l / temperature)``; the token's confidence is the sum of
   its groups' log-probabilities;
3. the cosine schedule says how many positions stay masked after the step,
   ``floor(N0 * cos(pi/2 * (s+1)/S))`` (at least one fewer than before, zero after the last
   step); the most confident predictions are kept, where confidence gets Gumbel noise scaled by
   ``choice_temperature * (1 - (s+1)/S)`` (annealed randomness, as in MaskGIT).

Known positions (inpainting) are never changed. Everything random comes from one
``torch.Generator`` seeded by the caller, so a seed gives the same tokens on every run.

Canvases larger than the model's grid (outpainting, large inpainting inputs) are filled window
by window (:func:`fill_canvas`): windows of the model's grid size with half-grid stride, in raster
order; each window with unknown positions is sampled with everything already known or
generated held fixed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .model import MaskedTokenModel, join_groups


def _gumbel(shape, gen: torch.Generator, device) -> Tensor:
    u = torch.rand(shape, generator=gen).clamp_(1e-20, 1.0 - 1e-7)
    return (-torch.log(-torch.log(u))).to(device)


@torch.no_grad()
def sample_tokens(model: MaskedTokenModel, labels: Tensor | None, *, steps: int = 12, guidance: float = 0.0,
                  temperature: float = 1.0, choice_temperature: float = 4.5, gen: torch.Generator | None = None,
                  tokens: Tensor | None = None, unknown: Tensor | None = None, n: int | None = None,
                  grid: tuple[int, int] | None = None) -> Tensor:
    """Sample token grids (B, h, w) int64.

    ``labels``: int64 (B,) class indices (``-1`` = unconditional), or None for unconditional.
    ``tokens`` / ``unknown``: a partially known grid and the positions to generate (inpainting);
    by default every position of a ``grid`` (the model's) is generated for ``n`` items.
    ``guidance`` ``w``: 0 = no guidance (conditional logits only), > 0 mixes in the null class.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    c = model.config
    dev = next(model.parameters()).device
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    if tokens is None:
        B = n if n is not None else (labels.shape[0] if labels is not None else 1)
        h, w = grid or tuple(c.grid)
        tokens = torch.zeros(B, h, w, dtype=torch.int64, device=dev)
        unknown = torch.ones(B, h, w, dtype=torch.bool, device=dev)
    else:
        tokens = tokens.to(dev, torch.int64).clone()
        unknown = (torch.ones_like(tokens, dtype=torch.bool) if unknown is None else unknown.to(dev).bool()).clone()
    B, h, w = tokens.shape
    N = h * w
    if labels is None:
        labels = torch.full((B,), -1, dtype=torch.int64)
    labels = labels.to(dev, torch.int64)
    if labels.shape != (B,):
        raise ValueError(f"labels {tuple(labels.shape)} do not match {B} items")
    null = torch.full_like(labels, -1)
    guided = guidance != 0 and c.num_classes > 0 and bool((labels >= 0).any())
    flat_tok, flat_unk = tokens.view(B, N), unknown.view(B, N)
    n0 = flat_unk.sum(1)  # unknown positions per item at the start
    for s in range(steps):
        if not bool(flat_unk.any()):
            break
        if guided:
            both = model(torch.cat([tokens, tokens]), torch.cat([unknown, unknown]), torch.cat([labels, null]))
            logits = [lc + guidance * (lc - lu) for lc, lu in (lg.float().chunk(2) for lg in both)]
        else:
            logits = [lg.float() for lg in model(tokens, unknown, labels)]
        groups, conf = [], torch.zeros(B, N, device=dev)
        prefix = torch.zeros(B, N, dtype=torch.int64, device=dev)
        for k, lg in enumerate(logits):
            logp = torch.log_softmax(_only_codes(lg, prefix, k, c) / temperature, dim=-1)
            g = torch.multinomial(logp.exp().view(B * N, -1).cpu(), 1, generator=gen).view(B, N).to(dev)
            groups.append(g)
            prefix = (prefix << c.group_bits) | g
            conf += logp.gather(-1, g.unsqueeze(-1)).squeeze(-1)
        sampled = join_groups(torch.stack(groups, -1), c.bits, c.group_bits)
        # how many stay masked after this step
        ratio = math.cos(math.pi / 2 * (s + 1) / steps)
        remaining = flat_unk.sum(1)
        keep_masked = torch.floor(n0.float() * ratio).long()
        keep_masked = torch.minimum(keep_masked, (remaining - 1).clamp(min=0))
        if s == steps - 1:
            keep_masked = torch.zeros_like(keep_masked)
        noise = choice_temperature * (1.0 - (s + 1) / steps)
        score = conf + noise * _gumbel((B, N), gen, dev)
        score = torch.where(flat_unk, score, torch.full_like(score, float("inf")))
        # the keep_masked lowest scores among unknown positions stay masked
        order = score.argsort(1)
        rank = order.argsort(1)
        still = rank < keep_masked[:, None]
        reveal = flat_unk & ~still
        flat_tok = torch.where(reveal, sampled, flat_tok)
        flat_unk = flat_unk & still
        tokens, unknown = flat_tok.view(B, h, w), flat_unk.view(B, h, w)
    return tokens


def _only_codes(logits: Tensor, prefix: Tensor, k: int, c) -> Tensor:
    """Group ``k``'s logits with the values that no code below ``codebook_size`` can continue set
    to -inf (groups are sampled most significant first, so every sampled token is a code)."""
    if c.codebook_size is None or c.codebook_size == 1 << c.bits:
        return logits
    rest = c.bits - (k + 1) * c.group_bits
    values = torch.arange(1 << c.group_bits, device=logits.device)
    lowest = ((prefix.unsqueeze(-1) << c.group_bits) | values) << rest  # the smallest token of each choice
    return logits.masked_fill(lowest >= c.codebook_size, float("-inf"))


def windows(size: int, win: int) -> list[int]:
    """Start offsets of windows of length ``win`` covering ``size`` with stride ``win // 2``."""
    if size <= win:
        return [0]
    stride = max(1, win // 2)
    starts = list(range(0, size - win + 1, stride))
    if starts[-1] != size - win:
        starts.append(size - win)
    return starts


@torch.no_grad()
def fill_canvas(model: MaskedTokenModel, tokens: Tensor, unknown: Tensor, labels: Tensor | None, **kw) -> Tensor:
    """Generate the unknown positions of grids (B, H, W) of any size, window by window."""
    gh, gw = model.config.grid
    B, H, W = tokens.shape
    tokens, unknown = tokens.clone(), unknown.clone().bool()
    for r in windows(H, gh):
        for q in windows(W, gw):
            sl = (slice(None), slice(r, r + gh), slice(q, q + gw))
            if not bool(unknown[sl].any()):
                continue
            tokens[sl] = sample_tokens(model, labels, tokens=tokens[sl], unknown=unknown[sl], **kw)
            unknown[sl] = False
    return tokens
