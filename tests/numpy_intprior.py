"""The int-fx12 arithmetic and the integer prior network of docs/FORMAT.md section 4, in NumPy.

Part of the independent decoder (tests/numpy_decoder.py): no torch, no bsqvit.
"""

from __future__ import annotations

import copy
import decimal
import functools
import hashlib
import json
import math
from pathlib import Path

import numpy as np


class FormatError(ValueError):
    """A file or a prior this decoder refuses."""


def require(ok: bool, msg: str) -> None:
    if not ok:
        raise FormatError(msg)


# ---- 4. int-fx12: constants, tables, primitives ------------------------------------------------------
FA, ACT_MAX, W_BITS, EXP_LEN, LN_EPS, E_MAX, EXACT = 12, (1 << 23) - 1, 15, 3072, 168, 36, 1 << 53
PI = decimal.Decimal("3.14159265358979323846264338327950288419716939937510582097494459230781640628620899")


def rne(x: decimal.Decimal) -> int:
    return int(x.to_integral_value(rounding=decimal.ROUND_HALF_EVEN))


@functools.lru_cache(maxsize=None)
def exp_table() -> np.ndarray:
    """EXP[i] = rne(2^16 exp(-i / 256)), i < 3072 (section 4.5)."""
    with decimal.localcontext() as c:
        c.prec = 50
        return np.array([rne((decimal.Decimal(-i) / 256).exp() * 65536) for i in range(EXP_LEN)], np.int64)


@functools.lru_cache(maxsize=None)
def gelu_table() -> np.ndarray:
    """GELU[j] = rne(4096 gelu((j - 2048) / 256)); erf(z) = 2/sqrt(pi) exp(-z^2) sum_n (2z^2)^n z / (2n+1)!!."""
    with decimal.localcontext() as c:
        c.prec = 60
        two_over_sqrt_pi, sqrt2 = 2 / PI.sqrt(), decimal.Decimal(2).sqrt()
        pos = []
        for j in range(2049):
            x = decimal.Decimal(j) / 256
            z = x / sqrt2
            term, total, n = z, z, 0  # positive terms: no cancellation
            while term > decimal.Decimal("1e-50"):
                n += 1
                term = term * 2 * z * z / (2 * n + 1)
                total += term
            erf = two_over_sqrt_pi * (-z * z).exp() * total
            pos.append(x / 2 * (1 + erf))
        neg = [pos[j] - decimal.Decimal(j) / 256 for j in range(2048, 0, -1)]  # gelu(-x) = gelu(x) - x
        return np.array([rne(v * 4096) for v in neg + pos], np.int64)


def attention_scale(hd: int) -> int:
    return (math.isqrt((1 << 34) // hd) + 1) // 2  # rne(2^16 / sqrt(hd)), section 4.5


def round_shift(a, s):
    s = np.asarray(s, np.int64)
    return (a + ((np.int64(1) << s) >> 1)) >> s


def div_round(a, b):
    return (2 * a + b) // (2 * b)


def clamp(a):
    return np.clip(a, -ACT_MAX, ACT_MAX)


def imatmul(a, b, bound: int) -> np.ndarray:
    """Exact integer a @ b through binary64 (section 4.4)."""
    require(bound < EXACT, "a product of this prior is not exact in binary64")
    return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)


def isqrt(v: np.ndarray) -> np.ndarray:
    r = np.floor(np.sqrt(v.astype(np.float64))).astype(np.int64)
    while True:
        better = np.where(r * r > v, r - 1, np.where((r + 1) * (r + 1) <= v, r + 1, r))
        if np.array_equal(better, r):
            return r
        r = better


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = w.astype(np.float64)
    m = np.abs(w).max(-1)
    e = np.minimum(W_BITS - np.frexp(m)[1], E_MAX).astype(np.int64)  # frexp(0) = (0, 0)
    require(bool((e >= 0).all()), "prior weights outside the integer range")
    return np.round(np.ldexp(w, e[:, None].astype(np.int32))).astype(np.int64), e


def fixed(x: np.ndarray) -> np.ndarray:
    return clamp(np.round(np.ldexp(x.astype(np.float64), FA))).astype(np.int64)


class Linear:
    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        q, self.e = quantize_rows(weight.reshape(weight.shape[0], -1))
        self.qt, self.b = np.ascontiguousarray(q.T), fixed(bias)
        self.bound = q.shape[1] * ACT_MAX << W_BITS
        require(self.bound + (1 << (E_MAX - 1)) < EXACT, "a layer of this prior is too wide")  # section 4.9

    def __call__(self, x):
        return clamp(round_shift(imatmul(x, self.qt, self.bound), self.e) + self.b)


class LayerNorm:
    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        require(weight.shape[0] <= 2048, "LayerNorm too wide")
        g, e = quantize_rows(weight[None])
        self.g, self.e, self.b = g[0], e[0], fixed(bias)

    def __call__(self, x):
        D = x.shape[-1]
        c = x - div_round(x.sum(-1, keepdims=True), D)
        var = (c * c).sum(-1, keepdims=True) // D
        n = div_round(c << 19, isqrt((var + LN_EPS) << 14))
        return clamp(round_shift(n * self.g, self.e) + self.b)


def gelu(x, G):
    xc = np.clip(x, -32768, 32767)
    i, r = (xc >> 4) + 2048, xc & 15
    y = G[i] + round_shift((G[i + 1] - G[i]) * r, 4)
    return np.where(x >= 32768, x, np.where(x < -32768, 0, y))


def attention(q, k, v, scale: int, EXP) -> np.ndarray:
    q = round_shift(q * scale, 16)  # queries scaled first: |q| stays <= ACT_MAX
    s = round_shift(imatmul(q, k.T, q.shape[-1] * ACT_MAX * ACT_MAX), 2 * FA - 8)
    w = EXP[np.minimum(s.max(-1, keepdims=True) - s, EXP_LEN - 1)]
    return div_round(imatmul(w, v, len(k) * ACT_MAX << 16), w.sum(-1, keepdims=True))


def frequencies(logits: np.ndarray, prob_bits: int, EXP) -> np.ndarray:
    """Section 4.8: integer frequencies (M, K) summing to 2^prob_bits per row."""
    K, total = logits.shape[-1], 1 << prob_bits
    e = EXP[np.minimum(round_shift(logits.max(-1, keepdims=True) - logits, FA - 8), EXP_LEN - 1)]
    f = 1 + e * (total - K) // e.sum(-1, keepdims=True)
    f[np.arange(len(f)), f.argmax(-1)] += total - f.sum(-1)
    return f


# ---- 4. the prior ------------------------------------------------------------------------------------
CONFIG_DEFAULTS = dict(kind="ar", bits=18, group_bits=9, width=256, layers=4, heads=4, mlp_ratio=4.0, tile=[32, 32],
                       passes=9, schedule="quadtree", video=False, tokenizer_hash=None)


class Prior:
    """The integer network of a prior directory (config.json + model.safetensors)."""

    def __init__(self, path):
        from safetensors.numpy import load_file

        path = Path(path)
        c = {**CONFIG_DEFAULTS, **json.loads((path / "config.json").read_text())}
        c["tile"] = [c["tile"]] * 2 if isinstance(c["tile"], int) else list(c["tile"])
        sd = load_file(str(path / "model.safetensors"))
        self.config, self.id = c, weights_id(c, sd)
        self.G, self.g, self.D, self.nh = c["bits"] // c["group_bits"], c["group_bits"], c["width"], c["heads"]
        self.hd = self.D // self.nh
        require(self.hd <= 64 and c["tile"][0] * c["tile"][1] <= 8192, "prior outside the integer range")
        self.scale, self.EXP, self.GELU = attention_scale(self.hd), exp_table(), gelu_table()
        lin = lambda n: Linear(sd[n + ".weight"], sd[n + ".bias"])  # noqa: E731
        ln = lambda n: LayerNorm(sd[n + ".weight"], sd[n + ".bias"])  # noqa: E731
        self.tok_emb = [fixed(sd[f"tok_emb.{k}.weight"]) for k in range(self.G)]
        self.row, self.col, self.start = fixed(sd["row_emb.weight"]), fixed(sd["col_emb.weight"]), fixed(sd["start"])
        # sections 3.5 and 4.7: a nested prior adds the vector of the file's rate to every position (default: the full rate)
        self.rates = c.get("rates")
        self.rate_emb = fixed(sd["rate_emb.weight"]) if self.rates else None
        self.rate = self.rate_emb[-1] if self.rates else 0
        if c["video"]:
            self.conv, self.no_prev = lin("prev_conv"), fixed(sd["no_prev"])
        self.blocks = [{n: (ln if n.startswith("ln") else lin)(f"blocks.{i}.{n}")
                        for n in ("ln1", "qkv", "proj", "ln2", "fc1", "fc2")} for i in range(c["layers"])]
        self.ln_f = ln("ln_f")
        self.heads = [dict(prev=[fixed(sd[f"heads.{k}.prev.{j}.weight"]) for j in range(k)], ln=ln(f"heads.{k}.ln"),
                           fc1=lin(f"heads.{k}.fc1"), fc2=lin(f"heads.{k}.fc2")) for k in range(self.G)]

    def at_rate(self, bits: int) -> "Prior":
        """Section 3.5: the prior coding ``bits``-bit tokens (their first bits / g groups)."""
        require(bits == self.config["bits"] or bits in (self.rates or []), "the prior does not code this rate")
        view = copy.copy(self)
        view.G = bits // self.g
        view.rate = self.rate_emb[self.rates.index(bits)] if self.rates else 0
        return view

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        g = self.g
        return clamp(sum(self.tok_emb[k][(tokens >> (g * (self.G - 1 - k))) & ((1 << g) - 1)] for k in range(self.G)))

    def condition(self, prev: np.ndarray | None, r: int, q: int) -> np.ndarray | None:
        """Cond (r*q, D) of a tile from the previous frame's tokens of the tile (section 4.7)."""
        if not self.config["video"]:
            return None
        if prev is None:
            return np.broadcast_to(self.no_prev, (r * q, self.D))
        e = np.pad(self.embed(prev), ((1, 1), (1, 1), (0, 0)))
        cols = np.stack([e[ky : ky + r, kx : kx + q] for ky in range(3) for kx in range(3)], -1)  # (r, q, D, 9)
        return self.conv(cols.reshape(r * q, 9 * self.D))

    def block(self, p: dict, x: np.ndarray, cache: np.ndarray | None = None, t: int = 0) -> np.ndarray:
        """A pre-LN block over rows x (N, D); with a cache (2, NH, len, hd), the rows are positions t.. (causal)."""
        N = len(x)
        q, k, v = p["qkv"](p["ln1"](x)).reshape(N, 3, self.nh, self.hd).transpose(1, 2, 0, 3)
        if cache is not None:
            cache[0, :, t : t + N], cache[1, :, t : t + N] = k, v
            k, v = cache[0, :, : t + N], cache[1, :, : t + N]
        y = np.concatenate([attention(q[i], k[i], v[i], self.scale, self.EXP) for i in range(self.nh)], -1)
        x = clamp(x + p["proj"](y))
        return clamp(x + p["fc2"](gelu(p["fc1"](p["ln2"](x)), self.GELU)))

    def logits(self, k: int, h: np.ndarray, groups: np.ndarray) -> np.ndarray:
        head = self.heads[k]
        for j, emb in enumerate(head["prev"]):
            h = clamp(h + emb[groups[:, j]])
        return head["fc2"](gelu(head["fc1"](head["ln"](h)), self.GELU))


def weights_id(config: dict, sd: dict) -> str:
    """Section 2.10: the first 16 bytes of the prior's weights hash, in hex."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in sorted(sd):
        h.update(name.encode() + str(tuple(sd[name].shape)).encode() + sd[name].astype("<f4").tobytes())
    return h.hexdigest()[:32]
