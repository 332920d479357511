"""A second, independent decoder of .bsq files (format 2.0), written from docs/FORMAT.md.

Only NumPy, the standard library, safetensors.numpy and constriction: no torch, no bsqvit.

    header, tokens = decode_file(data, prior_dir)           # tokens: (T, h, w) int64
    decode_file(data, prior_dir, on_freqs=rows.append)      # also hands over every frequency matrix

Section numbers below refer to docs/FORMAT.md; the integer arithmetic and the prior network
(section 4) are in tests/numpy_intprior.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
import numpy as np
from numpy_intprior import FormatError, Prior, clamp, frequencies, require

# ---- 2. the container ---------------------------------------------------------------------------------
MAGIC, MAJOR = b"\x89BSQ", 2
PREFIX = struct.Struct("<4sBBH")
FIELDS = [  # (name, struct code) of the 96-byte field block at offset 8 (section 2.1)
    ("tokenizer_id", "16s"), ("prior_id", "16s"), ("tokens_digest", "16s"), ("media", "B"), ("coder", "B"),
    ("bits", "B"), ("group_bits", "B"), ("patch_size", "H"), ("chunk_frames", "H"), ("height", "I"),
    ("width", "I"), ("frames", "I"), ("fps", "d"), ("pad_bottom", "H"), ("pad_right", "H"), ("pad_mode", "B"),
    ("tile_h", "H"), ("tile_w", "H"), ("passes", "B"), ("schedule", "B"), ("arithmetic", "B"),
    ("prob_bits", "B"), ("flags", "B"), ("frames_per_chunk", "H"), ("n_chunks", "I"),
]
BODY = struct.Struct("<" + "".join(code for _, code in FIELDS))
ENUMS = {"media": ("image", "video"), "coder": ("raw", "ar", "parallel"),
         "pad_mode": ("replicate", "reflect", "constant"), "schedule": ("none", "quadtree", "random"),
         "arithmetic": ("none", "int-fx12")}
LIMITS = dict(max_side=16384, max_pixels=1 << 19, max_frames=1 << 20, max_tokens=1 << 15, max_ext=1 << 14)  # 2.7


def parse_header(data: bytes) -> tuple[dict, int]:
    """The header as a dict (enumerations as names) and the offset of the first chunk."""
    require(len(data) >= PREFIX.size and data[:4] == MAGIC, "bad magic or truncated")
    _, major, minor, body_len = PREFIX.unpack_from(data)
    require(major != 1, "version 1.x file: compress the source again")
    require(major == MAJOR, f"unsupported version {major}.{minor}")
    require(BODY.size + 2 <= body_len and len(data) >= 8 + body_len + 4, "bad header length or truncated")
    crc = struct.unpack_from("<I", data, 8 + body_len)[0]
    require(zlib.crc32(data[: 8 + body_len]) == crc, "header CRC mismatch")
    h = dict(zip((name for name, _ in FIELDS), BODY.unpack_from(data, 8)))
    ext_len = struct.unpack_from("<H", data, 8 + BODY.size)[0]
    require(body_len == BODY.size + 2 + ext_len, "bad extension length")
    h["ext"] = parse_ext(data[8 + BODY.size + 2 : 8 + body_len]) if ext_len else {}
    require(h["flags"] & ~3 == 0, "unknown flags")
    for key, names in ENUMS.items():
        require(h[key] < len(names), f"unknown {key} code")
        h[key] = names[h[key]]
    h.update(version=(major, minor), header_crc=crc, video_cond=bool(h["flags"] & 1), skip_map=bool(h["flags"] & 2))
    h["grid"] = (-(-h["height"] // h["patch_size"]), -(-h["width"] // h["patch_size"])) if h["patch_size"] else (0, 0)
    check_header(h)
    return h, 8 + body_len + 4


def parse_ext(blob: bytes) -> dict:
    z = zlib.decompressobj()
    try:
        raw = z.decompress(blob, LIMITS["max_ext"])
        require(z.eof and not z.unconsumed_tail and not z.unused_data, "extension too large or truncated")
        ext = json.loads(raw)
    except (zlib.error, ValueError) as e:
        raise FormatError(f"bad extension ({e})") from None
    require(isinstance(ext, dict) and len(ext) <= 64, "extension is not a small object")
    for k, v in ext.items():
        scalar = isinstance(v, (type(None), bool, float)) or isinstance(v, int) and abs(v) < 1 << 64
        require(len(k) <= 256 and (scalar or isinstance(v, str) and len(v) <= 256), "extension is not flat")
    return ext


def check_header(h: dict) -> None:
    """The semantic rules of section 2.1 and the limits of section 2.7."""
    p, (gh, gw), prior = h["patch_size"], h["grid"], h["coder"] != "raw"
    require(1 <= h["bits"] <= 63 and 1 <= p <= 1024, "bits or patch size")
    require(1 <= h["height"] <= LIMITS["max_side"] and 1 <= h["width"] <= LIMITS["max_side"], "size")
    require(h["height"] * h["width"] <= LIMITS["max_pixels"] and 1 <= h["frames"] <= LIMITS["max_frames"], "size")
    if h["media"] == "image":
        require(h["frames"] == 1 and h["fps"] == 0.0, "an image has one frame and fps 0")
    else:
        require(math.isfinite(h["fps"]) and 0 < h["fps"] < 1000, "fps")
    require((h["pad_bottom"], h["pad_right"]) == (gh * p - h["height"], gw * p - h["width"]), "padding")
    require(gh * gw * h["frames"] <= LIMITS["max_tokens"], "too many tokens")
    require(1 <= h["chunk_frames"] <= 4096 and 1 <= h["frames_per_chunk"] <= 4096, "frames per chunk")
    require(h["n_chunks"] == -(-h["frames"] // h["frames_per_chunk"]), "chunk count")
    fields = (any(h["prior_id"]), h["group_bits"], h["tile_h"], h["tile_w"], h["passes"], h["prob_bits"], h["flags"])
    if not prior:
        require(not any(fields) and h["schedule"] == "none" and h["arithmetic"] == "none", "raw with prior fields")
        return
    g = h["group_bits"]
    require(any(h["prior_id"]) and h["arithmetic"] == "int-fx12", "prior id or arithmetic")
    require(1 <= g <= 16 and h["bits"] % g == 0, "group bits")
    require(1 <= h["tile_h"] <= 1024 and 1 <= h["tile_w"] <= 1024 and h["tile_h"] * h["tile_w"] <= 8192, "tile")
    require(8 <= h["prob_bits"] <= 24 and h["prob_bits"] >= g + 2, "probability bits")
    require(not h["flags"] & 2 or (h["coder"] == "ar" and h["flags"] & 1 and h["media"] == "video"), "skip maps")
    if h["coder"] == "parallel":
        require(h["schedule"] != "none" and 1 <= h["passes"] <= 64, "parallel schedule")
    else:
        require(h["schedule"] == "none" and h["passes"] == 0, "ar with a schedule")


def read_chunks(data: bytes, off: int, h: dict) -> list[tuple[bytes, int]]:
    """[(payload, tokens_crc)] of every chunk, each checked against its CRC and size (section 2.4)."""
    out, (gh, gw), F = [], h["grid"], h["frames_per_chunk"]
    for i in range(h["n_chunks"]):
        require(len(data) - off >= 12, "truncated chunk header")
        n, crc, tcrc = struct.unpack_from("<III", data, off)
        payload = data[off + 12 : off + 12 + n]
        require(len(payload) == n, "truncated chunk")
        require(zlib.crc32(payload, zlib.crc32(struct.pack("<I", i), h["header_crc"])) == crc, f"chunk {i} CRC")
        if h["coder"] == "raw":
            require(n == -(-min(F, h["frames"] - i * F) * gh * gw * h["bits"] // 8), "raw payload size")
        else:
            require(n % 4 == 0, "range-coded payload is not whole 32-bit words")
        out.append((payload, tcrc))
        off += 12 + n
    require(off == len(data), "bytes after the last chunk")
    return out


def unpack_raw(payload: bytes, n: int, L: int) -> np.ndarray:
    """n tokens from L-bit big-endian fields (section 3.4)."""
    bits = np.unpackbits(np.frombuffer(payload, np.uint8))
    require(not bits[n * L :].any(), "non-zero padding bits")
    weights = np.uint64(1) << np.arange(L - 1, -1, -1, dtype=np.uint64)
    return (bits[: n * L].reshape(n, L).astype(np.uint64) * weights).sum(1).astype(np.int64)


# ---- 5. symbol order ---------------------------------------------------------------------------------
def split(n: int, most: int) -> list[int]:
    k = -(-n // most)
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def tiles_of(h: int, w: int, tile) -> list[tuple[int, int, int, int]]:
    """(row0, col0, rows, cols) of every tile, raster order of bands (section 5.1)."""
    rows, cols = split(h, tile[0]), split(w, tile[1])
    return [(sum(rows[:a]), sum(cols[:b]), r, q) for a, r in enumerate(rows) for b, q in enumerate(cols)]


def passes_of(r: int, q: int, S: int, schedule: str) -> np.ndarray:
    """Pass of every position of an r x q tile, raster order (section 5.3)."""
    i, j = (a.ravel() for a in np.meshgrid(np.arange(r), np.arange(q), indexing="ij"))
    if S == 1:
        return np.zeros(r * q, np.int64)
    if schedule == "quadtree":
        K = (S - 1) // 2
        v = sum(((i % (1 << b) == 0) & (j % (1 << b) == 0)).astype(np.int64) for b in range(1, K + 1))
        level, centre = K - 1 - v, ((i >> v) & (j >> v) & 1) == 1
        return np.where(v == K, 0, np.where(centre, 1 + 2 * level, 2 + 2 * level))
    with np.errstate(over="ignore"):
        z = (i.astype(np.uint64) << np.uint64(32)) | j.astype(np.uint64)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    cum = np.array([1 - math.cos(math.pi / 2 * (s + 1) / S) for s in range(S - 1)] + [1.0])
    return np.minimum((u[:, None] >= cum[None, :]).sum(1), S - 1)


class ChunkDecoder:
    """Decodes the frames of one chunk with a prior and a range decoder (sections 5 and 6)."""

    def __init__(self, prior: Prior, words: np.ndarray, prob_bits: int, on_freqs=None):
        import constriction

        self.prior, self.P, self.on_freqs = prior, prob_bits, on_freqs
        self.coder = constriction.stream.queue.RangeDecoder(words)
        self.family = constriction.stream.model.Categorical(perfect=False)

    def tokens(self, feats: np.ndarray) -> np.ndarray:
        """Decode one token per feature row, group by group (section 4.8)."""
        pr = self.prior
        groups = np.zeros((len(feats), pr.G), np.int64)
        for k in range(pr.G):
            f = frequencies(pr.logits(k, feats, groups), self.P, pr.EXP)
            if self.on_freqs is not None:
                self.on_freqs(f)
            groups[:, k] = self.coder.decode(self.family, f.astype(np.float64))
        return sum(groups[:, k] << (pr.g * (pr.G - 1 - k)) for k in range(pr.G))

    def skip_map(self, h: int, w: int, prev_skip: np.ndarray | None) -> np.ndarray:
        """Section 5.5: the frame's map of tokens equal to the previous frame's."""
        P = 1 << self.P
        counts, out = [[1, 1] for _ in range(8)], np.zeros((h, w), bool)
        for r in range(h):
            for c in range(w):
                ctx = int(c > 0 and out[r, c - 1]) + 2 * int(r > 0 and out[r - 1, c])
                ctx += 4 * int(prev_skip is not None and prev_skip[r, c])
                n0, n1 = counts[ctx]
                f1 = min(max(n1 * P // (n0 + n1), 1), P - 1)
                f = np.array([[P - f1, f1]], np.int64)
                if self.on_freqs is not None:
                    self.on_freqs(f)
                bit = int(self.coder.decode(self.family, f.astype(np.float64))[0])
                out[r, c] = bit == 1
                counts[ctx][bit] += 1
                if sum(counts[ctx]) > 1024:
                    counts[ctx] = [(n0 + 1) // 2 for n0 in counts[ctx]]
        return out

    def ar(self, h: int, w: int, prev: np.ndarray | None, skip: np.ndarray | None = None) -> np.ndarray:
        pr = self.prior
        tiles = tiles_of(h, w, pr.config["tile"])
        conds = [pr.condition(None if prev is None else prev[a : a + r, b : b + q], r, q) for a, b, r, q in tiles]
        caches = [np.zeros((len(pr.blocks), 2, pr.nh, r * q, pr.hd), np.int64) for _, _, r, q in tiles]
        out, last = np.zeros((h, w), np.int64), [0] * len(tiles)
        for t in range(max(r * q for _, _, r, q in tiles)):
            live = [n for n, (_, _, r, q) in enumerate(tiles) if t < r * q]
            feats = []
            for n in live:
                a, b, r, q = tiles[n]
                x = pr.start if t == 0 else pr.embed(np.int64(last[n]))
                x = x + pr.row[t // q] + pr.col[t % q] + pr.rate + (0 if conds[n] is None else conds[n][t])
                x = clamp(x)[None]
                for blk, cache in zip(pr.blocks, caches[n]):
                    x = pr.block(blk, x, cache, t)
                feats.append(pr.ln_f(x)[0])
            at = [(tiles[n][0] + t // tiles[n][3], tiles[n][1] + t % tiles[n][3]) for n in live]
            coded = [i for i, rc in enumerate(at) if skip is None or not skip[rc]]
            toks = [prev[rc] if skip is not None else 0 for rc in at]
            if coded:
                for i, tok in zip(coded, self.tokens(np.stack([feats[i] for i in coded]))):
                    toks[i] = tok
            for n, rc, tok in zip(live, at, toks):
                out[rc] = last[n] = tok
        return out

    def parallel(self, h: int, w: int, prev: np.ndarray | None) -> np.ndarray:
        pr, c = self.prior, self.prior.config
        tiles = tiles_of(h, w, c["tile"])
        conds = [pr.condition(None if prev is None else prev[a : a + r, b : b + q], r, q) for a, b, r, q in tiles]
        pms = [passes_of(r, q, c["passes"], c["schedule"]) for _, _, r, q in tiles]
        dec = [np.zeros(r * q, np.int64) for _, _, r, q in tiles]
        for s in range(c["passes"]):
            feats, targets = [], []
            for n, (_, _, r, q) in enumerate(tiles):
                if not (pms[n] == s).any():
                    continue
                seq = np.nonzero(pms[n] <= s)[0]
                base = np.where((pms[n][seq] < s)[:, None], pr.embed(dec[n][seq]), pr.start)
                x = clamp(base + pr.row[seq // q] + pr.col[seq % q] + pr.rate
                          + (0 if conds[n] is None else conds[n][seq]))
                for blk in pr.blocks:
                    x = pr.block(blk, x)
                feats.append(pr.ln_f(x)[pms[n][seq] == s])
                targets.append((n, seq[pms[n][seq] == s]))
            if feats:
                toks, start = self.tokens(np.concatenate(feats)), 0
                for n, idx in targets:
                    dec[n][idx] = toks[start : start + len(idx)]
                    start += len(idx)
        out = np.zeros((h, w), np.int64)
        for (a, b, r, q), d in zip(tiles, dec):
            out[a : a + r, b : b + q] = d.reshape(r, q)
        return out


# ---- the whole file --------------------------------------------------------------------------------------
def check_prior(h: dict, prior: Prior) -> None:
    c = prior.config
    require(prior.id == h["prior_id"].hex(), "the file was made with other prior weights")
    same = (c["kind"] == h["coder"] and h["bits"] in [c["bits"], *(c.get("rates") or [])]
            and c["group_bits"] == h["group_bits"]
            and tuple(c["tile"]) == (h["tile_h"], h["tile_w"]) and bool(c["video"]) == h["video_cond"])
    if c["kind"] == "parallel":
        same = same and c["passes"] == h["passes"] and c["schedule"] == h["schedule"]
    require(same, "the prior's configuration differs from the file's")


def decode_file(data: bytes, prior=None, on_freqs=None) -> tuple[dict, np.ndarray]:
    """A whole .bsq file -> (header dict, tokens (T, h, w) int64). ``prior``: a :class:`Prior` or its
    directory (prior-coded files); ``on_freqs(f)`` is called with every frequency matrix, in order."""
    data = bytes(data)
    h, off = parse_header(data)
    chunks = read_chunks(data, off, h)
    gh, gw = h["grid"]
    if h["coder"] != "raw":
        require(prior is not None, "a prior-coded file needs its prior")
        prior = prior if isinstance(prior, Prior) else Prior(prior)
        check_prior(h, prior)
        prior = prior.at_rate(h["bits"])
    frames, last, before, F = [], None, None, h["frames_per_chunk"]
    for i, (payload, tcrc) in enumerate(chunks):
        n = min(F, h["frames"] - i * F)
        if h["coder"] == "raw":
            block = unpack_raw(payload, n * gh * gw, h["bits"]).reshape(n, gh, gw)
        else:
            dec = ChunkDecoder(prior, np.frombuffer(payload, "<u4").astype(np.uint32), h["prob_bits"], on_freqs)
            step = dec.ar if h["coder"] == "ar" else dec.parallel
            block = []
            for _ in range(n):
                if h["skip_map"] and last is not None:  # section 5.5
                    skip = dec.skip_map(gh, gw, None if before is None else last == before)
                    frame = dec.ar(gh, gw, last, skip)
                else:
                    frame = step(gh, gw, last if h["video_cond"] else None)
                before, last = last, frame
                block.append(frame)
            block = np.stack(block)
        require(zlib.crc32(block.astype("<i8").tobytes()) == tcrc, f"chunk {i}: tokens CRC mismatch")
        frames.append(block)
    tokens = np.concatenate(frames)
    require(hashlib.sha256(tokens.astype("<i8").tobytes()).digest()[:16] == h["tokens_digest"], "tokens digest")
    return h, tokens
