"""Entropy coding of token frames: raw bit fields, or a prior + constriction's range coder.

Determinism, the rules (``docs/FORMAT.md`` specifies the bytes):

1. **One code path.** :func:`code_frame_ar` and :func:`code_frame_parallel` are run by the
   encoder *and* the decoder; they differ only in the :class:`SymbolCoder` they are given (one
   encodes the known symbol, the other decodes it).
2. **Integer arithmetic.** The prior is evaluated by its integer twin
   (:class:`~bsqvit.codec.intprior.IntPrior`): the frequencies the coder receives are exact
   integers computed from the weights and the tokens already coded, whatever the machine, thread
   count, tile batch or device. Tile batches and threads are therefore run-time choices, not
   format fields.
3. **Detection.** Every chunk stores the CRC32 of its tokens and the header a digest of all of
   them; a decoder given other weights reports an error instead of producing garbage.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import constriction
import numpy as np
import torch

from .intprior import IntPrior
from .prior import join_groups, pass_map, split_groups, tile_layout

DEFAULT_PROB_BITS = 16
# tiles evaluated together (speed and memory only): ar steps are bound by per-call overheads, so
# many tiles per call; parallel passes by memory traffic, so few (their score matrices stay in cache)
DEFAULT_TILE_BATCH = {"ar": 32, "parallel": 8}


class DecodeError(ValueError):
    """The range decoder met data its model cannot have produced."""


# ---- raw L-bit fields ----------------------------------------------------------------------------
def pack_raw(tokens: np.ndarray, bits: int) -> bytes:
    """Tokens (any shape, raster order) -> big-endian bit fields of ``bits`` bits, zero-padded to a byte."""
    t = np.ascontiguousarray(tokens, dtype=np.uint64).reshape(-1)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    b = ((t[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(b.reshape(-1)).tobytes()


def raw_size(n_tokens: int, bits: int) -> int:
    return (n_tokens * bits + 7) // 8


def unpack_raw(data: bytes, n_tokens: int, bits: int) -> np.ndarray:
    if len(data) != raw_size(n_tokens, bits):
        raise DecodeError(f"raw chunk has {len(data)} bytes, expected {raw_size(n_tokens, bits)}")
    b = np.unpackbits(np.frombuffer(data, np.uint8))
    if b[n_tokens * bits :].any():
        raise DecodeError("raw chunk has non-zero padding bits")
    b = b[: n_tokens * bits].reshape(n_tokens, bits).astype(np.uint64)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    return (b << shifts).sum(1).astype(np.int64)


@dataclass
class CodingStats:
    symbols: int = 0
    ideal_bits: float = 0.0  # -sum log2 p under the prior's integer softmax (before frequency rounding)
    model_bits: float = 0.0  # -sum log2 p under the integer frequencies the coder used

    def add(self, other: "CodingStats") -> None:
        self.symbols += other.symbols
        self.ideal_bits += other.ideal_bits
        self.model_bits += other.model_bits


@dataclass
class SymbolCoder:
    """Encodes (``data is None``) or decodes categorical symbols with a range coder."""

    prob_bits: int = DEFAULT_PROB_BITS
    data: np.ndarray | None = None
    stats: CodingStats = field(default_factory=CodingStats)

    def __post_init__(self):
        self._family = constriction.stream.model.Categorical(perfect=False)
        if self.data is None:
            self._coder = constriction.stream.queue.RangeEncoder()
            self.encoding = True
        else:
            self._coder = constriction.stream.queue.RangeDecoder(self.data)
            self.encoding = False

    def code(self, freqs: torch.Tensor, weights: torch.Tensor, symbols: np.ndarray | None) -> np.ndarray:
        """Code one symbol per row of the integer ``freqs`` (M, K) (summing to ``2^prob_bits``);
        ``weights`` are the exp weights they came from (statistics only). Returns the symbols."""
        f = freqs.cpu().numpy()
        probs = f.astype(np.float64)  # integers below 2^24: exact
        if self.encoding:
            sym = np.ascontiguousarray(symbols, dtype=np.int32)
            self._coder.encode(sym, self._family, probs)
        else:
            try:
                sym = self._coder.decode(self._family, probs)
            except Exception as e:  # constriction: AssertionError "invalid for the employed entropy model"
                raise DecodeError(f"range decoding failed ({type(e).__name__})") from None
        sym = np.asarray(sym, dtype=np.int64)
        rows = np.arange(len(sym))
        w = weights.cpu().numpy()
        self.stats.symbols += len(sym)
        self.stats.ideal_bits += float(-np.log2(np.maximum(w[rows, sym] / w.sum(1), 2.0 ** -60)).sum())
        self.stats.model_bits += float(-np.log2(f[rows, sym] / float(1 << self.prob_bits)).sum())
        return sym

    def finish(self) -> bytes:
        if not self.encoding:
            raise RuntimeError("finish() is for encoders")
        return np.ascontiguousarray(self._coder.get_compressed(), dtype="<u4").tobytes()

    def exhausted(self) -> bool:
        return bool(self._coder.maybe_exhausted())


def decoder_for(payload: bytes | memoryview, prob_bits: int) -> SymbolCoder:
    if len(payload) % 4:
        raise DecodeError(f"range-coded chunk of {len(payload)} bytes is not a whole number of 32-bit words")
    words = np.frombuffer(bytes(payload), dtype="<u4").astype(np.uint32)
    return SymbolCoder(prob_bits=prob_bits, data=words)


@contextlib.contextmanager
def prior_threads(n: int | None):
    """Run the prior under ``torch.inference_mode`` with ``n`` torch threads (None: unchanged).
    The integer arithmetic gives the same results with any thread count; this only sets speed."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(old)


def as_engine(prior):
    """The integer engine of a :class:`TokenPrior` (built once and kept on the prior)."""
    if hasattr(prior, "group_frequencies"):  # already an engine (IntPrior, or a benchmark's float one)
        return prior
    key = (prior.weights_hash(), str(prior.start.device))
    cached = getattr(prior, "_int_engine", None)
    if cached is None or cached[0] != key:
        cached = (key, IntPrior(prior))
        prior._int_engine = cached
    return cached[1]


# ---- frames through a prior --------------------------------------------------------------------------
# The symbol order of a frame is canonical (docs/FORMAT.md section 5) and does not depend on how
# many tiles are evaluated together: ``ar`` codes, for each raster step t, for each group k, the
# tiles that have a position t, in tile order; ``parallel`` codes, for each pass s, for each group
# k, the positions of pass s, tile-major then raster. ``tile_batch`` tiles share one transformer
# call; the batches of a step are all evaluated before its symbols are coded.
def _tile_batches(h: int, w: int, tile, batch: int):
    layout = tile_layout(h, w, tile)
    return [layout[i : i + batch] for i in range(0, len(layout), batch)]


def _pad_tiles(grid: np.ndarray | None, tiles, tile) -> torch.Tensor | None:
    """(h, w) tokens -> (B, th, tw) int64 tiles, zero-padded; None stays None."""
    if grid is None:
        return None
    out = torch.zeros(len(tiles), tile[0], tile[1], dtype=torch.int64)
    for b, (r0, c0, r, q) in enumerate(tiles):
        out[b, :r, :q] = torch.from_numpy(np.ascontiguousarray(grid[r0 : r0 + r, c0 : c0 + q]))
    return out


def _code_groups(prior, coder: SymbolCoder, feats: torch.Tensor, want: np.ndarray | None) -> torch.Tensor:
    """Code the groups of one token per row of ``feats`` (M, D), group by group; returns the tokens (M,)."""
    c = prior.config
    groups = torch.zeros(feats.shape[0], c.groups, dtype=torch.int64)
    for k in range(c.groups):
        f, e = prior.group_frequencies(feats, k, groups[:, :k].to(feats.device) if k else None, coder.prob_bits)
        groups[:, k] = torch.from_numpy(coder.code(f, e, None if want is None else want[:, k]))
    return join_groups(groups, c.bits, c.group_bits)


# ---- skip maps (docs/FORMAT.md section 5.5) -------------------------------------------------------------
SKIP_CONTEXTS = 8  # left, up, and the previous frame's flag at the same position
SKIP_RESCALE = 1 << 10  # counts are halved (rounding up) when a context's total passes this


def code_skip_map(coder: SymbolCoder, h: int, w: int, skip: np.ndarray | None,
                  prev_skip: np.ndarray | None) -> np.ndarray:
    """Encode (``skip`` given) or decode the (h, w) bool map of the tokens that equal the previous
    frame's, in raster order, with an adaptive binary model in integer arithmetic: context
    ``left + 2 up + 4 prev_skip`` (0 outside the grid; ``prev_skip`` None: all 0), counts starting
    at (1, 1), ``f1 = clamp(n1 * 2^P // (n0 + n1), 1, 2^P - 1)``, ``f0 = 2^P - f1``."""
    P = 1 << coder.prob_bits
    counts = np.ones((SKIP_CONTEXTS, 2), np.int64)
    out = np.zeros((h, w), bool)
    ps = np.zeros((h, w), bool) if prev_skip is None else prev_skip
    for r in range(h):
        for c in range(w):
            ctx = int(c > 0 and out[r, c - 1]) + 2 * int(r > 0 and out[r - 1, c]) + 4 * int(ps[r, c])
            n0, n1 = counts[ctx]
            f1 = min(max(int(n1) * P // int(n0 + n1), 1), P - 1)
            f = torch.tensor([[P - f1, f1]], dtype=torch.int64)
            bit = int(coder.code(f, f, None if skip is None else np.array([int(skip[r, c])]))[0])
            out[r, c] = bool(bit)
            counts[ctx, bit] += 1
            if counts[ctx].sum() > SKIP_RESCALE:
                counts[ctx] = (counts[ctx] + 1) // 2
    return out


def code_frame_ar(prior, coder: SymbolCoder, h: int, w: int, tokens: np.ndarray | None,
                  prev: np.ndarray | None, tile_batch: int, skip: np.ndarray | None = None) -> np.ndarray:
    """Encode (``tokens`` given) or decode one (h, w) frame with an ``ar`` prior; returns the tokens.

    All tiles advance in lockstep, one raster position per step (a tile that is done computes on
    placeholders whose outputs are never coded). ``skip`` (h, w) bool: positions whose token is
    the previous frame's, known to the decoder from the skip map and not coded.
    """
    c = prior.config
    batches = _tile_batches(h, w, c.tile, tile_batch)
    tiles = [t for batch in batches for t in batch]
    states = [prior.ar_init([(r, q) for _, _, r, q in batch], _pad_tiles(prev, batch, c.tile)) for batch in batches]
    known = None
    if tokens is not None:
        known = [split_groups(torch.from_numpy(np.ascontiguousarray(tokens[r0 : r0 + r, c0 : c0 + q])).reshape(-1),
                              c.bits, c.group_bits).numpy() for r0, c0, r, q in tiles]
    out = np.zeros((h, w), np.int64)
    inp = torch.zeros(len(tiles), dtype=torch.int64)
    offsets = np.cumsum([0] + [len(b) for b in batches])
    for t in range(max(r * q for _, _, r, q in tiles)):
        live = [i for i, st in enumerate(states) if t < st["N"]]  # batches with a tile still running
        feats = torch.cat([prior.ar_step(states[i], t, inp[offsets[i] : offsets[i + 1]]) for i in live])
        rows = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in live])  # tiles behind `feats`
        active = [j for j, b in enumerate(rows.tolist()) if t < tiles[b][2] * tiles[b][3]]
        idx = rows[active]
        if skip is None:
            coded, tok = list(range(len(active))), torch.zeros(len(active), dtype=torch.int64)
        else:  # skipped positions take the previous frame's token and code nothing
            pos = [(tiles[b][0] + t // tiles[b][3], tiles[b][1] + t % tiles[b][3]) for b in idx.tolist()]
            coded = [i for i, rc in enumerate(pos) if not skip[rc]]
            tok = torch.from_numpy(np.array([prev[rc] for rc in pos], np.int64))
        if coded:
            want = None if known is None else np.stack([known[int(idx[i])][t] for i in coded])
            tok[coded] = _code_groups(prior, coder, feats[[active[i] for i in coded]], want)
        inp = torch.zeros(len(tiles), dtype=torch.int64)
        inp[idx] = tok
        for i, b in enumerate(idx.tolist()):
            r0, c0, _, q = tiles[b]
            out[r0 + t // q, c0 + t % q] = int(tok[i])
    return out


def _pass_inputs(tiles, pms, dec, s):
    """Padded inputs of pass ``s`` for a batch of tiles: tokens, rows, cols, visible, valid, target."""
    seqs = [np.nonzero(pm <= s)[0] for pm in pms]
    B, n = len(tiles), max(len(q) for q in seqs)
    tok, rows, cols = (torch.zeros(B, n, dtype=torch.int64) for _ in range(3))
    vis, valid, tgt = (torch.zeros(B, n, dtype=torch.bool) for _ in range(3))
    for b, ((_, _, r, q), seq) in enumerate(zip(tiles, seqs)):
        m = len(seq)
        tok[b, :m] = torch.from_numpy(dec[b][seq])
        rows[b, :m] = torch.from_numpy(seq // q)
        cols[b, :m] = torch.from_numpy(seq % q)
        vis[b, :m] = torch.from_numpy(pms[b][seq] < s)
        tgt[b, :m] = torch.from_numpy(pms[b][seq] == s)
        valid[b, :m] = True
    return seqs, tok, rows, cols, vis, valid, tgt


def code_frame_parallel(prior, coder: SymbolCoder, h: int, w: int, tokens: np.ndarray | None,
                        prev: np.ndarray | None, tile_batch: int) -> np.ndarray:
    """Encode or decode one (h, w) frame with a ``parallel`` prior, pass by pass (fixed schedule).

    Pass ``s`` runs the transformer on the positions of passes ``<= s`` of every tile (padded to
    the longest tile of its batch, padding masked out), then codes the positions of pass ``s``.
    """
    c = prior.config
    th, tw = c.tile
    batches = _tile_batches(h, w, c.tile, tile_batch)
    tiles = [t for batch in batches for t in batch]
    conds = []
    for batch in batches:
        cond = None
        if c.video:
            valid_grid = torch.zeros(len(batch), th, tw, dtype=torch.bool)
            for b, (_, _, r, q) in enumerate(batch):
                valid_grid[b, :r, :q] = True
            cond = prior.condition(_pad_tiles(prev, batch, c.tile), valid_grid, len(batch), th, tw)
        conds.append(cond)
    pms = [pass_map(r, q, c.passes, c.schedule).reshape(-1) for _, _, r, q in tiles]
    dec = [np.zeros(r * q, np.int64) for _, _, r, q in tiles]  # tokens decoded so far, per tile
    truth = None
    if tokens is not None:
        truth = [np.ascontiguousarray(tokens[r0 : r0 + r, c0 : c0 + q]).reshape(-1) for r0, c0, r, q in tiles]
    offsets = np.cumsum([0] + [len(b) for b in batches])
    for s in range(c.passes):
        if not any((pm == s).any() for pm in pms):
            continue
        feats, targets = [], []  # targets: (tile, positions) in coding order
        for i, batch in enumerate(batches):
            live = [j for j in range(offsets[i], offsets[i + 1]) if (pms[j] == s).any()]  # tiles with targets
            if not live:
                continue
            seqs, tok, rows, cols, vis, valid, tgt = _pass_inputs([tiles[j] for j in live], [pms[j] for j in live],
                                                                  [dec[j] for j in live], s)
            cond = None
            if conds[i] is not None:
                dev = conds[i].device
                sel = torch.tensor(live, device=dev) - int(offsets[i])
                cond = conds[i][sel[:, None], (rows * tw + cols).to(dev)]
            feat = prior.parallel_features(tok, rows, cols, vis, None if bool(valid.all()) else valid, cond)
            bi, ii = torch.nonzero(tgt, as_tuple=True)  # tile-major, raster order
            feats.append(feat[bi.to(feat.device), ii.to(feat.device)])
            targets += [(j, seq[pms[j][seq] == s]) for j, seq in zip(live, seqs)]
        want = None
        if truth is not None:
            want = split_groups(torch.from_numpy(np.concatenate([truth[b][idx] for b, idx in targets])),
                                c.bits, c.group_bits).numpy()
        coded = _code_groups(prior, coder, torch.cat(feats), want).numpy()
        start = 0
        for b, idx in targets:
            dec[b][idx] = coded[start : start + len(idx)]
            start += len(idx)
    out = np.zeros((h, w), np.int64)
    for b, (r0, c0, r, q) in enumerate(tiles):
        out[r0 : r0 + r, c0 : c0 + q] = dec[b].reshape(r, q)
    return out


def code_frame(prior, coder: SymbolCoder, h: int, w: int, tokens, prev, tile_batch: int | None = None,
               skip_map: bool = False, prev_skip: np.ndarray | None = None) -> np.ndarray:
    """Encode (``tokens`` given) or decode one (h, w) frame with a prior (float or integer: the
    integer engine runs either way). ``tile_batch`` tiles are evaluated together (speed only; None:
    :data:`DEFAULT_TILE_BATCH` of the prior's kind). ``skip_map`` (``ar``, frames with a ``prev``):
    first the map of the tokens equal to ``prev`` (:func:`code_skip_map`, in the context of
    ``prev_skip``, the previous frame's map), then only the other tokens."""
    engine = as_engine(prior)
    kind = engine.config.kind
    tile_batch = tile_batch or DEFAULT_TILE_BATCH[kind]
    if skip_map and prev is not None:
        if kind != "ar":
            raise ValueError("skip maps need an ar prior")
        skip = code_skip_map(coder, h, w, None if tokens is None else tokens == prev, prev_skip)
        return code_frame_ar(engine, coder, h, w, tokens, prev, tile_batch, skip)
    fn = code_frame_ar if kind == "ar" else code_frame_parallel
    return fn(engine, coder, h, w, tokens, prev, tile_batch)

