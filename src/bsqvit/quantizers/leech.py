"""Spherical Leech quantization (Λ24-SQ): the 196,560 minimal vectors of the Leech lattice.

The codebook is fixed: the kissing configuration of the Leech lattice in 24 dimensions,
normalised to the unit sphere (log2(196560) = 17.58 bits per token). It is built here from the
extended Golay code G24 (``golay.py``). With the lattice scaled so that minimal vectors have
squared norm 32, they are exactly:

* **shape 1** ``(±4, ±4, 0^22)``: 276 pairs x 4 signs = 1,104 vectors;
* **shape 2** ``(±2^8, 0^16)`` on an octad, an even number of minus signs: 759 x 128 = 97,152;
* **shape 3** ``(∓3, ±1^23)``: ``x = (-1)^c ⊙ (1 - 4 e_i)`` for a Golay codeword ``c`` and a
  position ``i`` (entry ``-3 (-1)^{c_i}`` at ``i``, ``(-1)^{c_j}`` elsewhere): 4,096 x 24 = 98,304.

**Index order** (``index = offset(shape) + sub``; see ``docs/LEECH.md``):

* shape 1, offset 0: ``sub = 4 p + 2 [x_a < 0] + [x_b < 0]``, ``p`` the rank of the pair
  ``a < b`` in lexicographic order (:func:`golay.pairs`);
* shape 2, offset 1,104: ``sub = 128 o + t``, ``o`` the octad's rank in lexicographic order of
  its sorted coordinates ``π_0 < ... < π_7`` (:func:`golay.octads`), ``t = sum_{k<7}
  [x_{π_k} < 0] 2^(6-k)``; the sign at ``π_7`` is the one that makes the minus count even;
* shape 3, offset 98,256: ``sub = 24 k + i``, ``k`` the Golay codeword (:func:`golay.codewords`:
  its first 12 coordinates are the bits of ``k``, most significant first), ``i`` the position
  of the ±3.

**Nearest code** (:func:`nearest`): the index of the code with the largest inner product with
``z``; ties go to the smallest index. Instead of all 196,560 inner products it maximises in
closed form over each shape's groups (276 pairs; 759 octads with a parity fix; 4,096 codewords
with the best place for the 3), then enumerates the members of the winning group (4, 128 or 24
codes) to apply the tie rule. Scores are computed in float64 so that they are exact for float32
inputs (the terms are float32 values times 1..4, see ``docs/LEECH.md``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import golay
from .base import Quantizer, QuantizerOutput

DIM = 24
SQUARED_NORM = 32  # of the unnormalised minimal vectors
SHAPE_SIZES = (1104, 97152, 98304)
SHAPE_OFFSETS = (0, 1104, 98256)
CODEBOOK_SIZE = sum(SHAPE_SIZES)  # 196,560
KISSING_INNER_PRODUCTS = {32: 1, 16: 4600, 8: 47104, 0: 93150, -8: 47104, -16: 4600, -32: 1}
_OFF2, _OFF3 = SHAPE_OFFSETS[1], SHAPE_OFFSETS[2]
_SIGN4 = ((1, 1), (1, -1), (-1, 1), (-1, -1))  # shape-1 signs of (x_a, x_b) by sub % 4


# ---- tables (cached per device) -------------------------------------------------------------
class _Tables:
    def __init__(self, device: torch.device):
        golay.check_golay()
        f64 = {"dtype": torch.float64, "device": device}
        words = golay.codewords().to(torch.int64)
        self.pairs = golay.pairs().to(device)
        self.octads = golay.octads().to(device)
        self.codewords = words.to(device)  # (4096, 24) 0/1
        self.sign4 = torch.tensor(_SIGN4, **f64)
        member = torch.zeros(DIM, golay.NUM_OCTADS, **f64)
        member[self.octads.t(), torch.arange(golay.NUM_OCTADS, device=device)] = 1
        self.octad_member = member  # (24, 759)
        self.octad_bits = _octad_sign_bits(torch.arange(128, device=device))  # (128, 8) 0/1
        self.octad_signs = (1 - 2 * self.octad_bits).to(torch.float64)
        self.word_signs = (1 - 2 * words).t().to(**f64).contiguous()  # (24, 4096): (-1)^c
        nib = torch.arange(16)
        self.nibble_signs = (2 * ((nib[:, None] >> torch.arange(3, -1, -1)) & 1) - 1).to(**f64)  # (16, 4)
        self.word_right = (words[:, 12:] << torch.arange(11, -1, -1)).sum(-1).to(device)  # (4096,)


@functools.cache
def _tables(device: torch.device) -> _Tables:
    return _Tables(device)


def _octad_sign_bits(t: Tensor) -> Tensor:
    """Shape-2 minus-sign bits (..., 8) of in-octad sign index ``t`` (0..127): 7 bits, MSB
    first, then the parity bit that makes the count even."""
    bits = (t.unsqueeze(-1) >> torch.arange(6, -1, -1, device=t.device)) & 1
    return torch.cat([bits, bits.sum(-1, keepdim=True) % 2], dim=-1)


# ---- index <-> (shape, sub-index) <-> vector ------------------------------------------------
def split_index(indices: Tensor) -> tuple[Tensor, Tensor]:
    """Codebook indices -> (shape in {1, 2, 3}, index within the shape)."""
    idx = indices.to(torch.int64)
    shape = 1 + (idx >= _OFF2).to(torch.int64) + (idx >= _OFF3).to(torch.int64)
    offsets = torch.tensor(SHAPE_OFFSETS, dtype=torch.int64, device=idx.device)
    return shape, idx - offsets[shape - 1]


def join_index(shape: Tensor, sub: Tensor) -> Tensor:
    """Inverse of :func:`split_index`."""
    offsets = torch.tensor(SHAPE_OFFSETS, dtype=torch.int64, device=sub.device)
    return offsets[shape.to(torch.int64) - 1] + sub.to(torch.int64)


def index_to_lattice(indices: Tensor) -> Tensor:
    """Codebook indices (...) -> integer lattice vectors (..., 24), squared norm 32."""
    flat = indices.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= CODEBOOK_SIZE):
        raise ValueError(f"Leech indices must lie in [0, {CODEBOOK_SIZE})")
    T = _tables(flat.device)
    out = torch.zeros(flat.shape[0], DIM, dtype=torch.int64, device=flat.device)
    shape, sub = split_index(flat)
    m = shape == 1
    if m.any():
        s = sub[m]
        signs = 4 * (1 - 2 * torch.stack([(s >> 1) & 1, s & 1], dim=-1))
        out[m] = torch.zeros_like(out[m]).scatter_(1, T.pairs[s // 4], signs)
    m = shape == 2
    if m.any():
        s = sub[m]
        signs = 2 * (1 - 2 * _octad_sign_bits(s % 128))
        out[m] = torch.zeros_like(out[m]).scatter_(1, T.octads[s // 128], signs)
    m = shape == 3
    if m.any():
        s = sub[m]
        v = 1 - 2 * T.codewords[s // 24]
        v[torch.arange(v.shape[0], device=v.device), s % 24] *= -3
        out[m] = v
    return out.view(*indices.shape, DIM)


def index_to_vector(indices: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Codebook indices (...) -> unit-norm code vectors (..., 24)."""
    return index_to_lattice(indices).to(dtype) / math.sqrt(SQUARED_NORM)


@functools.lru_cache(maxsize=2)
def _lattice_vectors_cpu() -> Tensor:
    return index_to_lattice(torch.arange(CODEBOOK_SIZE))


def lattice_vectors(device: torch.device | str | None = None) -> Tensor:
    """(196560, 24) int64: the unnormalised minimal vectors in index order (squared norm 32)."""
    return _lattice_vectors_cpu().to(device or "cpu", copy=True)


def leech_codebook(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """(196560, 24) unit-norm codebook, row ``i`` = code ``i`` in the documented index order."""
    return (_lattice_vectors_cpu().to(torch.float64) / math.sqrt(SQUARED_NORM)).to(device=device or "cpu", dtype=dtype)


def negation_index(indices: Tensor) -> Tensor:
    """Index of the negated code: ``codebook[negation_index(i)] == -codebook[i]``."""
    shape, sub = split_index(indices)
    neg = torch.where(shape == 1, sub ^ 3, sub)
    neg = torch.where(shape == 2, (sub // 128) * 128 + ((sub % 128) ^ 127), neg)
    neg = torch.where(shape == 3, ((sub // 24) ^ (golay.NUM_CODEWORDS - 1)) * 24 + sub % 24, neg)
    return join_index(shape, neg)


# ---- exact nearest-code search ---------------------------------------------------------------
def _group_scores(x: Tensor, T: _Tables) -> tuple[Tensor, Tensor, Tensor]:
    """Best score within each group, for (n, 24) inputs, in ``x``'s dtype:

    * shape 1, pair ``{a, b}`` (n, 276): ``4 (|x_a| + |x_b|)``;
    * shape 2, octad O (n, 759): ``2 (sum_O |x| - 2 [odd # of x_i < 0 on O] min_O |x|)`` (the
      signs of x, with the smallest |x_i| flipped when the minus count is odd);
    * shape 3, codeword c (n, 4096): ``max_i <x, (-1)^c ⊙ (1 - 4 e_i)> = a(c) + 4 m(c)`` with
      ``a(c) = <x, (-1)^c>`` and ``m(c) = max_i (2 c_i - 1) x_i``. ``m`` is the max over the two
      halves of the coordinates, each a 4,096-entry table of its 12-bit sign patterns built by
      broadcasting three 16-entry nibble tables; the left half's pattern is ``k`` itself, the
      right half's is gathered.
    """
    n, dt = x.shape[0], x.dtype
    ax = x.abs()
    xt, axt = x.t().contiguous(), ax.t().contiguous()  # (24, n): gathers below copy whole rows
    s1 = 4 * (ax[:, T.pairs[:, 0]] + ax[:, T.pairs[:, 1]])
    member = T.octad_member.to(dt)
    odd = ((x < 0).to(dt) @ member) % 2
    low = torch.index_select(axt, 0, T.octads.view(-1)).view(-1, 8, n).amin(1).t()
    s2 = 2 * (ax @ member - 2 * odd * low)
    nib = (xt.view(6, 1, 4, n) * T.nibble_signs.to(dt)[:, :, None]).amax(2)  # (6, 16, n)
    half = torch.maximum(nib[0::3, :, None, None], nib[1::3, None, :, None])  # (2, 16, 16, 1, n)
    half = torch.maximum(half, nib[2::3, None, None]).view(2, 4096, n)
    m = torch.maximum(half[0], torch.index_select(half[1], 0, T.word_right))  # (4096, n)
    s3 = torch.addmm(m.t(), x, T.word_signs.to(dt), beta=4)
    return s1, s2, s3


def _members(x: Tensor, T: _Tables, g: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Per shape, the first best member of the chosen group: (indices (n, 3), scores (n, 3))."""
    xab = x.gather(1, T.pairs[g[0]])
    s1, t1 = (4 * (xab @ T.sign4.t())).max(-1)
    xo = x.gather(1, T.octads[g[1]])
    s2, t2 = (2 * (xo @ T.octad_signs.t())).max(-1)
    y = x * T.word_signs.t()[g[2]]  # (-1)^c ⊙ x
    s3, t3 = (y.sum(-1, keepdim=True) - 4 * y).max(-1)
    idx = torch.stack([4 * g[0] + t1, _OFF2 + 128 * g[1] + t2, _OFF3 + 24 * g[2] + t3], dim=-1)
    return idx, torch.stack([s1, s2, s3], dim=-1)


def _nearest_chunk(x: Tensor, T: _Tables) -> Tensor:
    """Exact search for float64 (n, 24) rows scaled to max |x_i| in [0.5, 1) (or zero).

    Group scores are first computed in float32. Their error is at most ``delta`` (rounding x,
    sums of <= 24 terms, one add: well below ``2^-17 (sum |x| + 4 max |x|)``); where one group per
    shape's second-best group is more than ``2 delta`` below the best float32 score of all shapes,
    that shape's float32 argmax is its unique exact best group or the shape cannot win or tie (a
    losing shape's pick does not matter: the final comparison is exact). Rows where a second
    group is that close are recomputed in float64, exactly. The members of the
    chosen groups and the comparison between shapes are always evaluated in float64.
    """
    ax = x.abs()
    delta = (ax.sum(-1, keepdim=True) + 4 * ax.amax(-1, keepdim=True)).float() * 2.0**-17
    tops = [s.topk(2, dim=-1) for s in _group_scores(x.float(), T)]
    best = torch.stack([t.values[:, 0] for t in tops], dim=-1).amax(-1)
    unsure = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for t in tops:  # a second group within 2 delta of the best of all shapes: not certain
        unsure |= t.values[:, 1] >= best - 2 * delta.squeeze(1)
    groups = [t.indices[:, 0] for t in tops]
    if unsure.any():
        exact = _group_scores(x[unsure], T)
        for k in range(3):
            groups[k][unsure] = exact[k].argmax(-1)  # argmax: the first maximum
    idx, score = _members(x, T, tuple(groups))
    return idx.gather(1, score.argmax(-1, keepdim=True)).squeeze(1)  # ties: the lower shape


@torch.no_grad()
def nearest(z: Tensor, chunk_size: int = 2048) -> Tensor:
    """Exact nearest Leech code: int64 indices (...) for ``z`` of shape (..., 24), any norm.

    The code with the largest inner product with ``z`` (equivalently the nearest on the sphere
    after normalising ``z``); ties go to the smallest index. Exact for float32 inputs and for
    float64 inputs whose scores float64 represents exactly (see ``docs/LEECH.md``). Runs on
    ``z``'s device, ``chunk_size`` tokens at a time (about 60 kB of work memory per token).
    Inputs must be finite.
    """
    if z.shape[-1] != DIM:
        raise ValueError(f"expected last dim {DIM}, got {tuple(z.shape)}")
    x = z.detach().reshape(-1, DIM).to(torch.float64)
    # scale each row by a power of two (exact) so that max |x_i| lies in [0.5, 1)
    x = torch.ldexp(x, -torch.frexp(x.abs().amax(-1, keepdim=True)).exponent)
    T = _tables(x.device)
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for s in range(0, x.shape[0], chunk_size):
        out[s : s + chunk_size] = _nearest_chunk(x[s : s + chunk_size], T)
    return out.view(z.shape[:-1])


@torch.no_grad()
def nearest_bruteforce(z: Tensor, chunk_size: int = 256, dtype: torch.dtype = torch.float64) -> Tensor:
    """Reference search: argmax of ``z @ E.T`` over all 196,560 codes (first maximum wins), in
    ``dtype`` (float64: exact for float32 inputs, the same tie rule as :func:`nearest`)."""
    x = z.detach().reshape(-1, DIM).to(dtype)
    E = _lattice_vectors_cpu().to(device=x.device, dtype=dtype)
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for s in range(0, x.shape[0], chunk_size):
        out[s : s + chunk_size] = (x[s : s + chunk_size] @ E.t()).argmax(-1)
    return out.view(z.shape[:-1])


# ---- the quantizer ---------------------------------------------------------------------------
def index_map(codebook: Tensor) -> Tensor:
    """Our index of every row of a Λ24 codebook given in another order and scale (e.g. the frozen
    ``embedding.weight`` of a reference checkpoint): ``ours = index_map(theirs_codebook)[theirs]``.

    Each row, normalised and scaled to squared norm 32, must round to an integer minimal vector
    (within 1e-4 per coordinate); rows are then matched exactly against :func:`lattice_vectors`
    (a sort of 2 x 196,560 integer rows). A row that is not a minimal vector, or two rows with
    the same code, raise ``ValueError``: the map is a bijection or nothing.
    """
    if tuple(codebook.shape) != (CODEBOOK_SIZE, DIM):
        raise ValueError(f"a Λ24 codebook is ({CODEBOOK_SIZE}, {DIM}), got {tuple(codebook.shape)}")
    x = F.normalize(codebook.detach().to("cpu", torch.float64), dim=-1) * math.sqrt(SQUARED_NORM)
    theirs = torch.round(x)
    off = (x - theirs).abs().amax(-1)
    bad = torch.nonzero((off > 1e-4) | ((theirs**2).sum(-1) != SQUARED_NORM))
    if len(bad):
        raise ValueError(f"codebook row {int(bad[0])} is not a Leech minimal vector")
    ours = _lattice_vectors_cpu().numpy().astype(np.int8)
    rows = np.concatenate([ours, theirs.numpy().astype(np.int8)])
    _, inverse = np.unique(rows, axis=0, return_inverse=True)  # equal rows -> equal ids
    inverse = inverse.reshape(-1)
    our_of_id = np.full(inverse.max() + 1, -1, np.int64)
    our_of_id[inverse[:CODEBOOK_SIZE]] = np.arange(CODEBOOK_SIZE)
    mapped = our_of_id[inverse[CODEBOOK_SIZE:]]
    if (mapped < 0).any():
        raise ValueError(f"codebook row {int(np.nonzero(mapped < 0)[0][0])} is not a Leech minimal vector")
    if len(np.unique(mapped)) != CODEBOOK_SIZE:
        raise ValueError("codebook rows repeat a Leech minimal vector: not the 196,560-vector codebook")
    return torch.from_numpy(mapped)


class LeechQuantizer(Quantizer):
    """Λ24-SQ: l2-normalise, snap to the nearest normalised Leech minimal vector (exact search),
    straight-through gradient. The codebook is fixed: no parameters, no buffers.

    Args:
        dim: must be 24.
        commitment_weight: beta of ``beta * ||u - sg(q)||^2`` (0 = off, as in the reference's
            ``codebook_weight: 0``); ``loss`` is this term only.
        chunk_size: tokens per step of the search (memory stays O(chunk_size)).
    """

    def __init__(self, dim: int = DIM, commitment_weight: float = 0.0, chunk_size: int = 1024):
        super().__init__()
        if dim != DIM:
            raise ValueError(f"the Leech quantizer has dim 24, got {dim}")
        self.dim = DIM
        self.codebook_size = CODEBOOK_SIZE
        self.commitment_weight = commitment_weight
        self.chunk_size = chunk_size
        # another implementation's index order (set when loading its checkpoint): not saved
        self.register_buffer("reference_map", None, persistent=False)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """int64 indices (...) -> unit-norm codes (..., 24)."""
        return index_to_vector(indices)

    def set_reference_order(self, codebook: Tensor) -> None:
        """Remember another implementation's index order from its codebook (rows in its order),
        for :meth:`from_reference_indices` / :meth:`to_reference_indices`."""
        self.reference_map = index_map(codebook).to(self._device())

    def _device(self) -> torch.device:
        return self.reference_map.device if self.reference_map is not None else torch.device("cpu")

    def _map(self) -> Tensor:
        if self.reference_map is None:
            raise ValueError("no reference index order: load the model with from_official (a Λ24 checkpoint)")
        return self.reference_map

    def from_reference_indices(self, indices: Tensor) -> Tensor:
        """The reference's token indices -> ours (same codes)."""
        return self._map().to(indices.device)[indices]

    def to_reference_indices(self, indices: Tensor) -> Tensor:
        """Our token indices -> the reference's (same codes)."""
        m = self._map()
        inverse = torch.empty_like(m)
        inverse[m] = torch.arange(len(m), device=m.device)
        return inverse.to(indices.device)[indices]

    def forward(self, z: Tensor) -> QuantizerOutput:
        if z.shape[-1] != self.dim:
            raise ValueError(f"expected last dim {self.dim}, got {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            u = F.normalize(z.float(), dim=-1)
            idx = nearest(u, chunk_size=self.chunk_size)
            q = index_to_vector(idx)
            zq = u + (q - u).detach()  # straight-through
            commit = ((u - q) ** 2).sum(-1).mean()
            loss = self.commitment_weight * commit
            counts = torch.bincount(idx.reshape(-1), minlength=self.codebook_size)
            probs = counts.float() / max(idx.numel(), 1)
            codebook_entropy = -torch.special.xlogy(probs, probs).sum()  # nats
        return QuantizerOutput(
            quantized=zq.to(z.dtype) if z.dtype != torch.float32 else zq,
            indices=idx,
            loss=loss,
            codebook_entropy=codebook_entropy.detach(),
            commit_loss=commit,
            used_codes=(counts > 0).sum().float(),
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, codebook_size={self.codebook_size}, commitment_weight={self.commitment_weight}"


__all__ = [
    "CODEBOOK_SIZE",
    "KISSING_INNER_PRODUCTS",
    "SHAPE_OFFSETS",
    "SHAPE_SIZES",
    "LeechQuantizer",
    "index_to_lattice",
    "index_map",
    "index_to_vector",
    "join_index",
    "lattice_vectors",
    "leech_codebook",
    "nearest",
    "nearest_bruteforce",
    "negation_index",
    "split_index",
]
