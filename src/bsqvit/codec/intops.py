"""Exact integer arithmetic for the token priors: the operations of ``docs/FORMAT.md`` section 4.

Every function here maps integer tensors (int64) to integer tensors, and its result is a pure
function of its inputs: no floating-point rounding can reach it. That is what makes a ``.bsq``
file decode to the same tokens on every CPU, GPU, BLAS, thread count and PyTorch version.

Fixed point: an activation ``a`` stands for the real number ``a / 2^FA``. Weights are rounded to
at most 16-bit integers with a power-of-two scale per output row (:func:`quantize_rows`).

Matrix products run on float64 BLAS (:func:`matmul`) yet are exact. Proof: every operand is an
integer of magnitude below 2^53 and so exactly representable; every product and every partial
sum of a dot product is an integer whose magnitude is at most ``sum_k |a_k| |b_k|``; when that
bound is below 2^53 every intermediate value is an exactly representable integer, so each
floating-point addition and multiplication (fused or not, in any order, blocked or not) is
exact and the result is the true integer dot product. Callers state the bound (``bound`` =
``K * max|a| * max|b|``) and :func:`matmul` asserts it, so a model whose sizes could break it is
refused instead of decoded wrongly.

Non-linearities use tables of integers defined by exact decimal arithmetic (Python's
:mod:`decimal`, which is specified to the last digit on every platform): ``exp`` for the
softmaxes, GELU for the MLPs.
"""

from __future__ import annotations

import decimal
from functools import lru_cache

import torch
from torch import Tensor

FA = 12  # fractional bits of activations
ACT_MAX = (1 << 23) - 1  # activations are clamped to [-ACT_MAX, ACT_MAX]
W_BITS = 15  # weights: |q| <= 2^15
EXP_FRAC = 8  # the exp table is indexed in steps of 2^-8 (nats)
EXP_ONE_BITS = 16  # EXP[0] = 2^16
EXP_LEN = 3072  # EXP[i] for i >= EXP_LEN is taken as EXP[EXP_LEN - 1] = 0
GELU_STEP_BITS = 4  # the GELU table is sampled every 2^-(FA - 4) = 2^-8 and interpolated linearly
GELU_HALF = 2048  # table entries on each side of 0: the table covers [-8, 8]
LN_EXTRA = 7  # extra fractional bits of the LayerNorm standard deviation
EXACT = 1 << 53
MASKED = -(1 << 40)  # attention score of a masked key

_PI = decimal.Decimal("3.14159265358979323846264338327950288419716939937510582097494459")


def _ctx() -> decimal.Context:
    return decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)


def _round(x: decimal.Decimal) -> int:
    return int(x.to_integral_value(rounding=decimal.ROUND_HALF_EVEN))


@lru_cache(maxsize=None)
def exp_table() -> tuple[int, ...]:
    """``EXP[i] = round(2^16 * exp(-i / 256))`` for ``i < EXP_LEN`` (round half to even)."""
    c = _ctx()
    one = decimal.Decimal(1 << EXP_ONE_BITS)
    return tuple(_round(c.multiply(one, c.exp(decimal.Decimal(-i) / (1 << EXP_FRAC)))) for i in range(EXP_LEN))


def _erf(z: decimal.Decimal, c: decimal.Context) -> decimal.Decimal:
    """erf by its Taylor series (converges for all z; |z| <= 6 here, 60 digits carry it)."""
    total, term, n = decimal.Decimal(0), z, 0  # term = (-1)^n z^(2n+1) / n!
    z2 = c.multiply(z, z)
    while True:
        add = c.divide(term, 2 * n + 1)
        total = c.add(total, add)
        if abs(add) < decimal.Decimal("1e-45"):
            break
        n += 1
        term = c.divide(c.multiply(-term, z2), n)
    return c.multiply(total, c.divide(2, c.sqrt(_PI)))


@lru_cache(maxsize=None)
def gelu_table() -> tuple[int, ...]:
    """``GELU[j] = round(2^FA * gelu(x_j))``, ``x_j = (j - 2048) / 256``, ``j = 0 .. 4096``.

    ``gelu(x) = x / 2 * (1 + erf(x / sqrt 2))`` (the exact GELU); negative ``x`` from
    ``gelu(-x) = gelu(x) - x``, so both halves come from one series evaluation.
    """
    c = _ctx()
    sqrt2 = c.sqrt(decimal.Decimal(2))
    scale = decimal.Decimal(1 << FA)
    pos = []
    for j in range(GELU_HALF + 1):
        x = decimal.Decimal(j) / (1 << (FA - GELU_STEP_BITS))
        pos.append(c.multiply(c.multiply(x, decimal.Decimal("0.5")), c.add(1, _erf(c.divide(x, sqrt2), c))))
    neg = [c.subtract(pos[j], decimal.Decimal(j) / (1 << (FA - GELU_STEP_BITS))) for j in range(GELU_HALF, 0, -1)]
    return tuple(_round(c.multiply(v, scale)) for v in neg + pos)


@lru_cache(maxsize=None)
def inv_sqrt_q16(n: int) -> int:
    """``round(2^16 / sqrt(n))``: the attention score scale for head dimension ``n``."""
    c = _ctx()
    return _round(c.divide(1 << 16, c.sqrt(decimal.Decimal(n))))


_TABLES: dict = {}


def table(name: str, device) -> Tensor:
    key = (name, str(device))
    if key not in _TABLES:
        values = exp_table() if name == "exp" else gelu_table()
        _TABLES[key] = torch.tensor(values, dtype=torch.int64, device=device)
    return _TABLES[key]


# ---- quantization of the float weights (exact: scaling by powers of two, round half to even) ----------
def row_exponents(w: Tensor, bits: int = W_BITS) -> Tensor:
    """Per row of ``w`` (..., K): the exponent ``e`` with ``max|row| * 2^e < 2^bits`` (0 for a zero row)."""
    m = w.detach().to(torch.float64).abs().amax(-1)
    _, E = torch.frexp(m)  # m = f * 2^E, 0.5 <= f < 1
    e = (bits - E.to(torch.int64)).where(m > 0, torch.zeros_like(E, dtype=torch.int64))
    if bool((e < 0).any()) or bool((e > 62 - FA).any()):
        raise ValueError("prior weights outside the integer range (|w| >= 2^15 or below 2^-35)")
    return e


def quantize_rows(w: Tensor, bits: int = W_BITS) -> tuple[Tensor, Tensor]:
    """(q, e): ``q = round(w * 2^e)`` (int64) with the exponent ``e`` of each row."""
    e = row_exponents(w, bits)
    q = torch.round(torch.ldexp(w.detach().to(torch.float64), e.unsqueeze(-1).to(torch.float64)))
    return q.to(torch.int64), e


def quantize_fixed(x: Tensor, frac: int = FA) -> Tensor:
    """``round(x * 2^frac)`` clamped to the activation range (embeddings, biases)."""
    q = torch.round(torch.ldexp(x.detach().to(torch.float64), torch.tensor(float(frac), dtype=torch.float64)))
    return q.clamp(-ACT_MAX, ACT_MAX).to(torch.int64)


# ---- integer primitives --------------------------------------------------------------------------------
def round_shift(a: Tensor, s: Tensor | int) -> Tensor:
    """``floor((a + 2^(s-1)) / 2^s)``: division by ``2^s`` rounding halves up (``s >= 0``)."""
    if isinstance(s, int):
        return a if s == 0 else (a + (1 << (s - 1))) >> s
    half = (torch.ones_like(s) << s) >> 1
    return (a + half) >> s


def div_round(a: Tensor, b: Tensor) -> Tensor:
    """``floor((2a + b) / 2b)`` for ``b > 0``: the quotient rounded half up."""
    return torch.div(2 * a + b, 2 * b, rounding_mode="floor")


def clamp_act(a: Tensor) -> Tensor:
    return a.clamp(-ACT_MAX, ACT_MAX)


def matmul(a: Tensor, b: Tensor, bound: int) -> Tensor:
    """Exact integer ``a @ b`` on float64 BLAS; ``bound`` >= K * max|a| * max|b| (asserted < 2^53)."""
    if bound >= EXACT:
        raise ValueError(f"integer matmul bound 2^{bound.bit_length() - 1} is not below 2^53")
    return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(torch.int64)


def isqrt(v: Tensor) -> Tensor:
    """``floor(sqrt(v))`` of non-negative int64 ``v < 2^62``, exactly (float estimate, integer fix-up)."""
    r = torch.sqrt(v.to(torch.float64)).floor().to(torch.int64)
    for _ in range(3):
        r = torch.where(r * r > v, r - 1, r)
        r = torch.where((r + 1) * (r + 1) <= v, r + 1, r)
    return r


class IntLinear:
    """``y = round_shift(x @ q.T, e) + b``: a float ``nn.Linear`` as integers (see :func:`quantize_rows`)."""

    def __init__(self, linear: torch.nn.Linear):
        q, e = quantize_rows(linear.weight)
        self.qt = q.t().contiguous()  # (K, O)
        self.e = e
        self.b = quantize_fixed(linear.bias) if linear.bias is not None else torch.zeros_like(e)
        self.bound = q.shape[1] * ACT_MAX * (1 << W_BITS)
        if self.bound >= EXACT:
            raise ValueError(f"a layer with {q.shape[1]} inputs is too wide for exact integer arithmetic")

    def __call__(self, x: Tensor) -> Tensor:
        return clamp_act(round_shift(matmul(x, self.qt, self.bound), self.e) + self.b)


class IntLayerNorm:
    """LayerNorm over the last dimension in integers (mean, variance, integer square root)."""

    def __init__(self, ln: torch.nn.LayerNorm):
        self.g, self.eg = quantize_rows(ln.weight.view(1, -1))
        self.g, self.eg = self.g[0], int(self.eg[0])
        self.b = quantize_fixed(ln.bias)
        self.eps = int(round(ln.eps * (1 << (2 * FA))))
        if ln.weight.shape[0] > 2048:
            raise ValueError("LayerNorm wider than 2048 is outside the integer range")

    def __call__(self, x: Tensor) -> Tensor:
        D = x.shape[-1]
        mu = div_round(x.sum(-1, keepdim=True), torch.tensor(D))
        xc = x - mu
        var = (xc * xc).sum(-1, keepdim=True) // D
        std = isqrt((var + self.eps) << (2 * LN_EXTRA))  # std * 2^(FA + LN_EXTRA)
        n = div_round(xc << (FA + LN_EXTRA), std)
        return clamp_act(round_shift(n * self.g, self.eg) + self.b)


def gelu(x: Tensor) -> Tensor:
    """GELU of FA-fixed-point ``x``: table lookup with linear interpolation on [-8, 8)."""
    G = table("gelu", x.device)
    lo, hi = -(GELU_HALF << GELU_STEP_BITS), GELU_HALF << GELU_STEP_BITS
    xc = x.clamp(lo, hi - 1)
    i = (xc >> GELU_STEP_BITS) + GELU_HALF
    fr = xc & ((1 << GELU_STEP_BITS) - 1)
    y = G[i] + round_shift((G[i + 1] - G[i]) * fr, GELU_STEP_BITS)
    return torch.where(x >= hi, x, torch.where(x < lo, torch.zeros_like(x), y))


def exp_weights(d: Tensor) -> Tensor:
    """``EXP[min(d, EXP_LEN - 1)]`` for ``d >= 0`` in steps of 2^-8 nats."""
    return table("exp", d.device)[d.clamp(0, EXP_LEN - 1)]


def attention(q: Tensor, k: Tensor, v: Tensor, scale: int, mask: Tensor | None) -> Tensor:
    """Softmax attention of (..., Nq, hd) queries over (..., Nk, hd) keys/values, in integers.

    Scores: ``s = round_shift(round_shift(q.k, 2FA - 8) * scale, 16)`` (8 fractional bits,
    ``scale = round(2^16 / sqrt(hd))``); weights ``EXP[max_j s - s]`` (0 where ``mask`` is False);
    output ``div_round(sum_j w_j v_j, sum_j w_j)``.
    """
    hd, nk = q.shape[-1], k.shape[-2]
    s = matmul(q, k.transpose(-1, -2), hd * ACT_MAX * ACT_MAX)
    s = round_shift(round_shift(s, 2 * FA - EXP_FRAC) * scale, 16)
    if mask is not None:
        s = s.masked_fill(~mask, MASKED)
    w = exp_weights(s.amax(-1, keepdim=True) - s)
    if mask is not None:
        w = w.masked_fill(~mask, 0)
    num = matmul(w, v, nk * (1 << EXP_ONE_BITS) * ACT_MAX)
    return div_round(num, w.sum(-1, keepdim=True))


def frequencies(logits: Tensor, prob_bits: int) -> tuple[Tensor, Tensor]:
    """FA-fixed-point logits (M, K) -> (frequencies (M, K) summing to ``2^prob_bits``, exp weights).

    ``e = EXP[round_shift(max - logit, FA - 8)]``; ``f = 1 + floor(e (2^P - K) / sum e)``; the
    remainder ``2^P - sum f`` goes to the first largest ``f``.
    """
    K = logits.shape[-1]
    e = exp_weights(round_shift(logits.amax(-1, keepdim=True) - logits, FA - EXP_FRAC))
    total = 1 << prob_bits
    f = 1 + torch.div(e * (total - K), e.sum(-1, keepdim=True), rounding_mode="floor")
    rem = total - f.sum(-1)
    f[torch.arange(f.shape[0], device=f.device), f.argmax(-1)] += rem
    return f, e
