"""Exact integer arithmetic for the token priors: the operations of ``docs/FORMAT.md`` section 4.

Every function here maps integers to integers, and its result is a pure function of its inputs:
no floating-point rounding can reach it. That is what makes a ``.bsq`` file decode to the same
tokens on every CPU, GPU, BLAS, thread count and PyTorch version.

Fixed point: an activation ``a`` stands for the real number ``a / 2^FA``. Weights are rounded to
at most 16-bit integers with a power-of-two scale per output row (:func:`quantize_rows`).

**Representation.** At run time the integers are held in float64 tensors ("exact floats"), which
lets the matrix products run on BLAS without conversions. This is exact because every value,
every product and every partial sum stays an integer of magnitude below 2^53, which float64
represents exactly; then each IEEE operation -- addition, multiplication (fused or not), in any
order, blocked or not -- returns the exact integer result. The other operations used are exact
too: scaling by a power of two (exponent change only), ``floor``, ``max``, comparisons, and
``floor(n / d)`` for integers ``|n| < 2^53``, ``0 < d < 2^53`` (when ``n / d`` is not an integer
it lies at least ``1/d`` from one, farther than the rounding error ``|n/d| 2^-53 < 1/d``, so
rounding cannot cross an integer). Each function states its bound; :func:`matmul` asserts the
caller's bound (``K * max|a| * max|b|``), so a model whose sizes could break it is refused
instead of decoded wrongly. Where a bound would exceed 2^53 (LayerNorm's sum of squares) the
computation switches to int64.

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


def _gelu_fine() -> list[int]:
    """The interpolated GELU of :func:`gelu` at every FA-fixed-point input of [-8, 8) (a cache of
    the same integers: table entry + round_shift(slope * fraction, 4))."""
    G, n = gelu_table(), 1 << GELU_STEP_BITS
    return [G[i] + ((G[i + 1] - G[i]) * f + n // 2 >> GELU_STEP_BITS) for i in range(2 * GELU_HALF) for f in range(n)]


_TABLES: dict = {}


def table(name: str, device) -> Tensor:
    """The exp or (fine) GELU table as an exact-float tensor on ``device`` (cached)."""
    key = (name, str(device))
    if key not in _TABLES:
        values = {"exp": exp_table, "gelu": _gelu_fine}[name]()
        _TABLES[key] = torch.tensor(values, dtype=torch.float64, device=device)
    return _TABLES[key]


# ---- quantization of the float weights (exact: scaling by powers of two, round half to even) ----------
E_MAX = 36  # largest row exponent (a zero or tiny row): keeps accumulator + 2^(e-1) below 2^53


def row_exponents(w: Tensor, bits: int = W_BITS) -> Tensor:
    """Per row of ``w`` (..., K): ``e = min(bits - E, 36)`` where ``max|row| = f * 2^E``, ``0.5 <= f < 1``
    (so ``max|row| * 2^e < 2^bits``); a zero row has ``E = 0`` (``frexp(0)``), so ``e = bits``."""
    m = w.detach().to(torch.float64).abs().amax(-1)
    _, E = torch.frexp(m)  # frexp(0) = (0, 0)
    e = (bits - E.to(torch.int64)).clamp(max=E_MAX)
    if bool((e < 0).any()):
        raise ValueError("prior weights outside the integer range (|w| >= 2^15)")
    return e


def quantize_rows(w: Tensor, bits: int = W_BITS) -> tuple[Tensor, Tensor]:
    """(q, e): ``q = round(w * 2^e)`` (exact floats) with the exponent ``e`` (int64) of each row."""
    e = row_exponents(w, bits)
    return torch.round(torch.ldexp(w.detach().to(torch.float64), e.unsqueeze(-1).to(torch.float64))), e


def quantize_fixed(x: Tensor, frac: int = FA) -> Tensor:
    """``round(x * 2^frac)`` clamped to the activation range (embeddings, biases), as exact floats."""
    q = torch.round(torch.ldexp(x.detach().to(torch.float64), torch.tensor(float(frac), dtype=torch.float64)))
    return q.clamp(-ACT_MAX, ACT_MAX)


# ---- integer primitives --------------------------------------------------------------------------------
def round_shift(a: Tensor, s: Tensor | int) -> Tensor:
    """``floor((a + 2^(s-1)) / 2^s)``: division by ``2^s`` rounding halves up (``s >= 0``; exact
    floats need ``|a| + 2^(s-1) < 2^53``). ``s``: an int or a tensor broadcasting against ``a``."""
    if a.is_floating_point():
        s = torch.as_tensor(s, dtype=torch.float64, device=a.device)
        return torch.floor((a + torch.floor(torch.ldexp(torch.ones_like(s), s - 1))) * torch.ldexp(torch.ones_like(s), -s))
    if isinstance(s, int):
        return a if s == 0 else (a + (1 << (s - 1))) >> s
    return (a + ((torch.ones_like(s) << s) >> 1)) >> s


def div_round(a: Tensor, b: Tensor) -> Tensor:
    """``floor((2a + b) / 2b)`` for ``b > 0``: the quotient rounded half up (exact floats need
    ``|2a + b| < 2^53``)."""
    if a.is_floating_point():
        return torch.floor((2 * a + b) / (2 * b))
    return torch.div(2 * a + b, 2 * b, rounding_mode="floor")


def clamp_act(a: Tensor) -> Tensor:
    return a.clamp(-ACT_MAX, ACT_MAX)


def matmul(a: Tensor, b: Tensor, bound: int, add: Tensor | None = None) -> Tensor:
    """Exact integer ``add + a @ b`` on float64 BLAS (``addmm``/``baddbmm`` when ``add`` is given);
    ``bound`` >= ``|add| + K * max|a| * max|b|`` (asserted < 2^53). ``a``: (..., N, K), ``b``: (..., K, M)."""
    if bound >= EXACT:
        raise ValueError(f"integer matmul bound 2^{bound.bit_length() - 1} is not below 2^53")
    if add is None:
        return torch.matmul(a, b)
    if b.ndim == 2:
        return torch.addmm(add, a.reshape(-1, a.shape[-1]), b).view(*a.shape[:-1], b.shape[-1])
    out = torch.baddbmm(add, a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
    return out.view(*a.shape[:-1], b.shape[-1])


def isqrt(v: Tensor) -> Tensor:
    """``floor(sqrt(v))`` of non-negative int64 ``v < 2^62``, exactly.

    The float64 estimate is within 1 of the answer (``v`` converts with relative error <= 2^-53 and
    sqrt is correctly rounded); one integer correction on each side makes it exact.
    """
    r = torch.sqrt(v.to(torch.float64)).floor().to(torch.int64)
    r = torch.where(r * r > v, r - 1, r)
    return torch.where((r + 1) * (r + 1) <= v, r + 1, r)


def _pow2(e: Tensor) -> tuple[Tensor, Tensor]:
    """(2^(e-1) rounded down to an integer, 2^-e) as float64, for ``round_shift`` by ``e``."""
    one = torch.ones_like(e, dtype=torch.float64)
    return torch.floor(torch.ldexp(one, (e - 1).double())), torch.ldexp(one, (-e).double())


class IntLinear:
    """``y = clamp(round_shift(x @ q.T, e) + b)``: a float ``nn.Linear`` in integers (see
    :func:`quantize_rows`). Exact: ``|x @ q.T| <= K * ACT_MAX * 2^15``, asserted below 2^53 - 2^35."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None):
        """``weight`` (O, K) and ``bias`` (O,) of a float linear map (an ``nn.Linear``'s, or a
        convolution's weight flattened to rows)."""
        q, e = quantize_rows(weight)
        self.qt = q.t().contiguous()  # (K, O)
        self.half, self.inv = _pow2(e)
        self.b = quantize_fixed(bias) if bias is not None else torch.zeros_like(self.half)
        self.bound = q.shape[1] * ACT_MAX * (1 << W_BITS)
        if self.bound + (1 << (E_MAX - 1)) >= EXACT:
            raise ValueError(f"a layer with {q.shape[1]} inputs is too wide for exact integer arithmetic")

    def __call__(self, x: Tensor) -> Tensor:
        y = matmul(x, self.qt, self.bound + (1 << (E_MAX - 1)), add=self.half)  # x @ q.T + 2^(e-1)
        y *= self.inv
        return y.floor_().add_(self.b).clamp_(-ACT_MAX, ACT_MAX)


class IntLayerNorm:
    """LayerNorm over the last dimension in integers: ``mu = div_round(sum x, D)``,
    ``var = floor(sum (x - mu)^2 / D)`` (int64: the sum can pass 2^53),
    ``std = isqrt((var + eps) << 14)``, ``n = div_round((x - mu) << 19, std)``,
    ``y = clamp(round_shift(n * g, eg) + b)``."""

    def __init__(self, ln: torch.nn.LayerNorm):
        g, eg = quantize_rows(ln.weight.view(1, -1))
        self.g, self.eg = g[0], int(eg[0])
        self.half, self.inv = (float(t) for t in _pow2(eg[0]))
        self.b = quantize_fixed(ln.bias)
        self.eps = int(round(ln.eps * (1 << (2 * FA))))
        if ln.weight.shape[0] > 2048:
            raise ValueError("LayerNorm wider than 2048 is outside the integer range")

    def __call__(self, x: Tensor) -> Tensor:
        D = x.shape[-1]
        xc = x - div_round(x.sum(-1, keepdim=True), torch.tensor(float(D)))  # |x - mu| <= 2^24
        xi = xc.to(torch.int64)
        var = (xi * xi).sum(-1, keepdim=True) // D
        std = isqrt((var + self.eps) << (2 * LN_EXTRA)).to(torch.float64)  # std * 2^(FA + LN_EXTRA) < 2^31
        n = div_round(xc.mul_(float(1 << (FA + LN_EXTRA))), std)  # |n| <= sqrt(D) 2^FA: n * g < 2^34
        n *= self.g
        n += self.half
        n *= self.inv
        return n.floor_().add_(self.b).clamp_(-ACT_MAX, ACT_MAX)


def gelu(x: Tensor) -> Tensor:
    """GELU of FA-fixed-point ``x``: ``x`` from 8 up, 0 below -8, and in between the table of
    :func:`gelu_table` (steps of 2^-8) interpolated linearly:
    ``G[i] + round_shift((G[i+1] - G[i]) * f, 4)`` with ``i = x >> 4`` (offset by 2048), ``f = x & 15``."""
    lo, hi = -(GELU_HALF << GELU_STEP_BITS), GELU_HALF << GELU_STEP_BITS
    i = x.clamp(lo, hi - 1).sub_(lo).to(torch.int64)
    y = torch.take(table("gelu", x.device), i)  # gelu(-8) rounds to 0: the clamp covers x < -8
    return torch.where(x >= hi, x, y)


def exp_weights(d: Tensor) -> Tensor:
    """``EXP[min(d, EXP_LEN - 1)]`` for ``d >= 0`` in steps of 2^-8 nats."""
    return torch.take(table("exp", d.device), d.clamp(0, EXP_LEN - 1).to(torch.int64))


def attention(q: Tensor, k: Tensor, v: Tensor, scale: int, mask: Tensor | None) -> Tensor:
    """Softmax attention of (..., Nq, hd) queries over (..., Nk, hd) keys/values, in integers.

    Queries are scaled first, ``q' = round_shift(q * scale, 16)`` with ``scale = round(2^16 / sqrt(hd))``;
    scores ``s = round_shift(q'.k, 2FA - 8)`` (8 fractional bits); weights ``EXP[max_j s - s]`` (0
    where ``mask`` is False); output ``div_round(sum_j w_j v_j, sum_j w_j)``. Bounds:
    ``|q.k| <= hd 2^46 < 2^53`` for ``hd <= 64``; ``|sum w v| <= Nk 2^16 ACT_MAX < 2^52`` for ``Nk <= 8192``.
    """
    hd, nk = q.shape[-1], k.shape[-2]
    q = round_shift(q * scale, 16)
    half = torch.full((1, 1, 1), float(1 << (2 * FA - EXP_FRAC - 1)), dtype=q.dtype, device=q.device)
    s = matmul(q, k.transpose(-1, -2), hd * ACT_MAX * ACT_MAX + (1 << 15), add=half)
    s.div_(1 << (2 * FA - EXP_FRAC), rounding_mode="floor")  # round_shift(q.k, 2FA - 8)
    if mask is not None:
        s.masked_fill_(~mask, MASKED)  # max - MASKED >= EXP_LEN - 1, whose EXP is 0: masked keys weigh 0
    d = torch.sub(s.amax(-1, keepdim=True), s, out=s).clamp_(0, EXP_LEN - 1)  # max - s, in place
    w = torch.take(table("exp", d.device), d.to(torch.int64))
    num = matmul(w, v, nk * (1 << EXP_ONE_BITS) * ACT_MAX)
    return div_round(num, w.sum(-1, keepdim=True))


def frequencies(logits: Tensor, prob_bits: int) -> tuple[Tensor, Tensor]:
    """FA-fixed-point logits (M, K) -> (frequencies (M, K) summing to ``2^prob_bits``, exp weights).

    ``e = EXP[round_shift(max - logit, FA - 8)]``; ``f = 1 + floor(e (2^P - K) / sum e)``; the
    remainder ``2^P - sum f`` goes to the first largest ``f``.
    """
    K = logits.shape[-1]
    e = exp_weights(round_shift(logits.amax(-1, keepdim=True) - logits, FA - EXP_FRAC)).to(torch.int64)
    total = 1 << prob_bits
    f = 1 + torch.div(e * (total - K), e.sum(-1, keepdim=True), rounding_mode="floor")
    rem = total - f.sum(-1)
    f[torch.arange(f.shape[0], device=f.device), f.argmax(-1)] += rem
    return f, e
