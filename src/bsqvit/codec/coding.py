"""Entropy coding of token frames: raw bit fields, or a prior + constriction's range coder.

Determinism (the trap: a transformer's probabilities computed in one batched pass and step by
step differ in the last bits, and arithmetic decoding then derails). The rules here:

1. **One code path.** :func:`code_frame_ar` and :func:`code_frame_parallel` are run by the
   encoder *and* the decoder; they differ only in the :class:`SymbolCoder` they are given (one
   encodes the known symbol, the other decodes it). The encoder therefore evaluates the prior
   with exactly the decoder's steps, batch shapes and inputs.
2. **Integer probabilities.** Logits (fp32) become integer frequencies summing to
   ``2^prob_bits`` (:func:`quantize_logits`: float64 softmax in NumPy, floor, at least 1 per
   symbol, the remainder to the most probable symbol); the coder receives these integers.
3. **Pinned numerics.** The prior runs in fp32 with ``torch.set_num_threads(prior_threads)`` (a
   header field, 1 by default) whatever the caller's thread count (:func:`pinned_threads`), in
   tile batches of a fixed size (``tile_batch``, also in the header).
4. **Detection.** Every chunk stores the CRC32 of its tokens; a decoder that drifted (other
   weights, another platform's arithmetic) reports an error instead of producing garbage.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

from .prior import join_groups, pass_map, split_groups, tile_layout

DEFAULT_PROB_BITS = 16
DEFAULT_PRIOR_THREADS = 1
DEFAULT_TILE_BATCH = 16


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


# ---- probabilities -------------------------------------------------------------------------------
def quantize_logits(logits: torch.Tensor, prob_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """fp32 logits (M, K) -> (integer frequencies (M, K) summing to 2^prob_bits, float64 probabilities).

    Every symbol gets at least 1; the remainder of the floor goes to the first most probable
    symbol. Pure NumPy float64 on a fixed array: the same input gives the same integers.
    """
    lg = logits.detach().to("cpu", torch.float32).numpy().astype(np.float64)
    M, K = lg.shape
    lg = lg - lg.max(axis=1, keepdims=True)
    e = np.exp(lg)
    p = e / e.sum(axis=1, keepdims=True)
    total = 1 << prob_bits
    f = np.floor(p * float(total - K)).astype(np.int64) + 1
    rem = total - f.sum(axis=1)
    f[np.arange(M), np.argmax(f, axis=1)] += rem
    return f, p


@dataclass
class CodingStats:
    symbols: int = 0
    ideal_bits: float = 0.0  # -sum log2 p under the prior's float probabilities
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
        import constriction

        self._family = constriction.stream.model.Categorical(perfect=False)
        if self.data is None:
            self._coder = constriction.stream.queue.RangeEncoder()
            self.encoding = True
        else:
            self._coder = constriction.stream.queue.RangeDecoder(self.data)
            self.encoding = False

    def code(self, logits: torch.Tensor, symbols: np.ndarray | None) -> np.ndarray:
        """Code one symbol per row of ``logits`` (M, K); returns the symbols (int64, (M,))."""
        f, p = quantize_logits(logits, self.prob_bits)
        probs = f.astype(np.float64)
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
        self.stats.symbols += len(sym)
        self.stats.ideal_bits += float(-np.log2(np.maximum(p[rows, sym], 1e-300)).sum())
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
def pinned_threads(n: int):
    """Run the prior with exactly ``n`` torch threads (restored afterwards), no autograd."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(old)


# ---- frames through a prior --------------------------------------------------------------------------
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


def code_frame_ar(prior, coder: SymbolCoder, h: int, w: int, tokens: np.ndarray | None,
                  prev: np.ndarray | None, tile_batch: int) -> np.ndarray:
    """Encode (``tokens`` given) or decode one (h, w) frame with an ``ar`` prior; returns the tokens.

    Tiles of a batch advance in lockstep, one raster position per step; a tile that is done
    keeps computing on placeholders whose outputs are never coded.
    """
    c = prior.config
    G, gb, L = c.groups, c.group_bits, c.bits
    out = np.zeros((h, w), np.int64)
    for tiles in _tile_batches(h, w, c.tile, tile_batch):
        shapes = [(r, q) for _, _, r, q in tiles]
        B = len(tiles)
        state = prior.ar_init(shapes, _pad_tiles(prev, tiles, c.tile))
        known = None
        if tokens is not None:
            known = [split_groups(torch.from_numpy(np.ascontiguousarray(tokens[r0 : r0 + r, c0 : c0 + q])).reshape(-1),
                                  L, gb).numpy() for r0, c0, r, q in tiles]
        inp = torch.zeros(B, dtype=torch.int64)
        for t in range(state["N"]):
            feat = prior.ar_step(state, t, inp)
            active = [b for b, (r, q) in enumerate(shapes) if t < r * q]
            act = torch.tensor(active, dtype=torch.int64)
            fa = feat[act]
            groups = torch.zeros(len(active), G, dtype=torch.int64)
            for k in range(G):
                logits = prior.group_logits(fa, k, groups[:, :k] if k else None)
                want = None if known is None else np.array([known[b][t, k] for b in active], np.int64)
                groups[:, k] = torch.from_numpy(coder.code(logits, want))
            tok = join_groups(groups, L, gb)
            inp = torch.zeros(B, dtype=torch.int64)
            inp[act] = tok
            for i, b in enumerate(active):
                r0, c0, _, q = tiles[b]
                out[r0 + t // q, c0 + t % q] = int(tok[i])
    return out


def code_frame_parallel(prior, coder: SymbolCoder, h: int, w: int, tokens: np.ndarray | None,
                        prev: np.ndarray | None, tile_batch: int) -> np.ndarray:
    """Encode or decode one (h, w) frame with a ``parallel`` prior, pass by pass (fixed schedule).

    Pass ``s`` runs the transformer on the positions of passes ``<= s`` of every tile of the batch
    (padded to the longest tile, padding masked out), then codes the positions of pass ``s`` in
    tile-major, raster order, group by group.
    """
    c = prior.config
    G, gb, L = c.groups, c.group_bits, c.bits
    th, tw = c.tile
    out = np.zeros((h, w), np.int64)
    for tiles in _tile_batches(h, w, c.tile, tile_batch):
        B = len(tiles)
        cond_grid = None
        if c.video:
            valid_grid = torch.zeros(B, th, tw, dtype=torch.bool)
            for b, (_, _, r, q) in enumerate(tiles):
                valid_grid[b, :r, :q] = True
            cond_grid = prior.condition(_pad_tiles(prev, tiles, c.tile), valid_grid, B, th, tw)
        pms = [pass_map(r, q, c.passes, c.schedule).reshape(-1) for _, _, r, q in tiles]
        dec = [np.zeros(r * q, np.int64) for _, _, r, q in tiles]  # tokens decoded so far, per tile
        truth = None
        if tokens is not None:
            truth = [np.ascontiguousarray(tokens[r0 : r0 + r, c0 : c0 + q]).reshape(-1) for r0, c0, r, q in tiles]
        for s in range(c.passes):
            seqs = [np.nonzero(pm <= s)[0] for pm in pms]
            if not any((pm == s).any() for pm in pms):
                continue
            n = max(len(q) for q in seqs)
            tok = torch.zeros(B, n, dtype=torch.int64)
            rows = torch.zeros(B, n, dtype=torch.int64)
            cols = torch.zeros(B, n, dtype=torch.int64)
            vis = torch.zeros(B, n, dtype=torch.bool)
            valid = torch.zeros(B, n, dtype=torch.bool)
            tgt = torch.zeros(B, n, dtype=torch.bool)
            for b, ((_, _, r, q), seq) in enumerate(zip(tiles, seqs)):
                m = len(seq)
                tok[b, :m] = torch.from_numpy(dec[b][seq])
                rows[b, :m] = torch.from_numpy(seq // q)
                cols[b, :m] = torch.from_numpy(seq % q)
                vis[b, :m] = torch.from_numpy(pms[b][seq] < s)
                tgt[b, :m] = torch.from_numpy(pms[b][seq] == s)
                valid[b, :m] = True
            cond = None
            if cond_grid is not None:
                cond = cond_grid[torch.arange(B)[:, None], rows * tw + cols]
            feat = prior.parallel_features(tok, rows, cols, vis, None if bool(valid.all()) else valid, cond)
            bi, ii = torch.nonzero(tgt, as_tuple=True)  # tile-major, raster order
            fs = feat[bi, ii]
            want = None
            if truth is not None:
                want = split_groups(torch.from_numpy(np.concatenate(
                    [truth[b][seqs[b][pms[b][seqs[b]] == s]] for b in range(B)])), L, gb).numpy()
            groups = torch.zeros(len(bi), G, dtype=torch.int64)
            for k in range(G):
                logits = prior.group_logits(fs, k, groups[:, :k] if k else None)
                groups[:, k] = torch.from_numpy(coder.code(logits, None if want is None else want[:, k]))
            coded = join_groups(groups, L, gb).numpy()
            start = 0
            for b in range(B):
                idx = seqs[b][pms[b][seqs[b]] == s]
                dec[b][idx] = coded[start : start + len(idx)]
                start += len(idx)
        for b, (r0, c0, r, q) in enumerate(tiles):
            out[r0 : r0 + r, c0 : c0 + q] = dec[b].reshape(r, q)
    return out


def code_frame(prior, coder: SymbolCoder, h: int, w: int, tokens, prev, tile_batch: int) -> np.ndarray:
    fn = code_frame_ar if prior.config.kind == "ar" else code_frame_parallel
    return fn(prior, coder, h, w, tokens, prev, tile_batch)

