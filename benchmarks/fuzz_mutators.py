"""Mutations of ``.bsq`` files for ``fuzz_codec.py``: the file's parts, resealing, and the mutators.

A mutator takes ``(rng, seed, pool)`` (a ``random.Random``, the seed file, all seeds) and returns
``(data, binds)``: the mutated bytes and what the file's checks still bind if it decodes,

* ``"all"``: the header is the seed's (or differs only in what does not change decoding):
  tokens and pixel size must be the seed's;
* ``"tokens"``: a header rewritten *and resealed* (CRCs recomputed: a well-formed forgery) that
  keeps the seed's token digest: the decoded token sequence must be the seed's (the digest binds
  it, geometry may differ);
* ``"none"``: a forgery with its own digest: any clean outcome is right.
"""

from __future__ import annotations

import copy
import json
import struct
import zlib
from dataclasses import dataclass, replace

import numpy as np

from bsqvit.codec.container import (
    CHUNK_STRUCT,
    HEADER_STRUCT,
    MAGIC,
    PAD_MODES,
    PREFIX,
    Header,
    Limits,
    chunk_crc,
    pack_header,
)

NAMES = ("tokenizer_id prior_id digest media coder bits group_bits patch chunk_frames height width frames fps "
         "pad_bottom pad_right pad_mode tile_h tile_w passes schedule arithmetic prob_bits flags frames_per_chunk "
         "n_chunks").split()
KINDS = dict(zip(NAMES, [c for c in HEADER_STRUCT.format.lstrip("<").replace("16s", "s")]))
MAXIMA = {"B": 0xFF, "H": 0xFFFF, "I": 0xFFFFFFFF}
PADS = list(PAD_MODES)
WRITE_LIMITS = Limits(max_pixels=1 << 28, max_tokens=1 << 28)  # what a writer may declare


@dataclass
class Parts:
    """A ``.bsq`` file taken apart: version, header fields, compressed extension, chunks."""

    major: int
    minor: int
    fields: dict
    ext: bytes
    chunks: list  # [(payload bytes, tokens_crc)]


def split(data: bytes) -> Parts:
    """Take a well-formed file apart (no checks: seeds only)."""
    _, major, minor, body_len = PREFIX.unpack_from(data, 0)
    fields = dict(zip(NAMES, HEADER_STRUCT.unpack_from(data, PREFIX.size)))
    off = PREFIX.size + HEADER_STRUCT.size
    (n,) = struct.unpack_from("<H", data, off)
    ext = data[off + 2 : off + 2 + n]
    off, chunks = PREFIX.size + body_len + 4, []
    while off + CHUNK_STRUCT.size <= len(data):
        n, _, tcrc = CHUNK_STRUCT.unpack_from(data, off)
        off += CHUNK_STRUCT.size
        chunks.append((data[off : off + n], tcrc))
        off += n
    return Parts(major, minor, fields, ext, chunks)


def head_bytes(p: Parts) -> bytes:
    body = HEADER_STRUCT.pack(*(p.fields[k] for k in NAMES)) + struct.pack("<H", len(p.ext)) + p.ext
    return PREFIX.pack(MAGIC, p.major, p.minor, len(body)) + body


def seal(p: Parts) -> bytes:
    """The file of ``p`` with every CRC recomputed: the header's, then each chunk's, seeded with it."""
    head = head_bytes(p)
    crc = zlib.crc32(head)
    out = [head, struct.pack("<I", crc)]
    for i, (payload, tcrc) in enumerate(p.chunks):
        out += [CHUNK_STRUCT.pack(len(payload), chunk_crc(i, payload, crc), tcrc), payload]
    return b"".join(out)


def chunk_records(data: bytes, p: Parts) -> list[bytes]:
    """The chunk records (fields + payload) of a well-formed file, byte for byte."""
    off, out = len(head_bytes(p)) + 4, []
    for payload, _ in p.chunks:
        out.append(data[off : off + CHUNK_STRUCT.size + len(payload)])
        off += CHUNK_STRUCT.size + len(payload)
    return out


# ---- raw corruption (no CRC recomputed) -------------------------------------------------------------
def m_truncate(rng, seed, pool):
    d = seed.data
    n = rng.choice([rng.randrange(len(d)), rng.randrange(max(1, len(d) - 16), len(d)), rng.randrange(0, 120)])
    return d[: min(n, len(d) - 1)], "all"


def m_bitflip(rng, seed, pool):
    d = bytearray(seed.data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        i = rng.randrange(len(d))
        d[i] ^= 1 << rng.randrange(8)
    return bytes(d), "all"


def m_byterun(rng, seed, pool):
    d = bytearray(seed.data)
    i, n = rng.randrange(len(d)), rng.choice([2, 4, 8, 32, 256])
    fill = rng.randbytes(n) if rng.random() < 0.5 else bytes([rng.choice([0, 0xFF, rng.randrange(256)])]) * n
    d[i : i + n] = fill[: len(d) - i]
    return bytes(d), "all"


def m_insdel(rng, seed, pool):
    d, i = seed.data, rng.randrange(len(seed.data))
    if rng.random() < 0.5:
        return d[:i] + rng.randbytes(rng.choice([1, 3, 4, 12, 100])) + d[i:], "all"
    return d[:i] + d[i + rng.choice([1, 4, 12, 50]) :], "all"


def m_lying_length(rng, seed, pool):
    """body_len, ext_len or a chunk's payload_len set to another value; resealed or not."""
    p, d = seed.parts, bytearray(seed.data)
    value = rng.choice([0, 1, 0xFFFF, 0xFFFFFFFF, rng.randrange(1 << 32), rng.randrange(512), len(d), len(d) + 1])
    where = rng.choice(["body", "ext", "chunk"])
    if where == "chunk" and p.chunks:
        off = len(head_bytes(p)) + 4
        for payload, _ in p.chunks[: rng.randrange(len(p.chunks))]:
            off += CHUNK_STRUCT.size + len(payload)
        struct.pack_into("<I", d, off, value)
        return bytes(d), "all"
    off = 6 if where == "body" else PREFIX.size + HEADER_STRUCT.size  # both u16
    struct.pack_into("<H", d, off, value & 0xFFFF)
    if rng.random() < 0.5:  # recompute the header CRC over the lying header
        end = len(head_bytes(p))
        struct.pack_into("<I", d, end, zlib.crc32(bytes(d[:end])))
    return bytes(d), "all"


# ---- chunks: splicing, dropping, duplicating, reordering ------------------------------------------------
def _same_geometry(a, b) -> bool:
    keys = ("coder", "bits", "patch", "height", "width", "frames", "frames_per_chunk")
    return a is not b and all(a.parts.fields[k] == b.parts.fields[k] for k in keys)


def m_splice(rng, seed, pool):
    """Chunks of another file (preferably one of identical geometry) in this file; CRC fields
    copied as they are, or recomputed for this header (the token digest must still catch it)."""
    twins = [s for s in pool if _same_geometry(seed, s)]
    other = rng.choice(twins) if twins and rng.random() < 0.7 else rng.choice(pool)
    p = seed.parts
    mine, theirs = list(p.chunks), other.parts.chunks
    for i in range(len(mine)):
        if i < len(theirs) and (rng.random() < 0.5 or i == len(mine) - 1):
            mine[i] = theirs[i]
    if rng.random() < 0.5:
        return seal(replace(p, chunks=mine)), "all"
    recs, theirs_recs = chunk_records(seed.data, p), chunk_records(other.data, other.parts)
    recs = [theirs_recs[i] if i < len(theirs_recs) and mine[i] is theirs[i] else r for i, r in enumerate(recs)]
    return seed.data[: len(head_bytes(p)) + 4] + b"".join(recs), "all"


def m_chunks(rng, seed, pool):
    """Missing, duplicated or reordered chunks; as they are, resealed, or with n_chunks rewritten."""
    recs = list(zip(chunk_records(seed.data, seed.parts), seed.parts.chunks))
    op = rng.choice(["drop", "dup", "swap", "reverse", "extra"])
    i = rng.randrange(len(recs))
    if op == "drop":
        del recs[i]
    elif op == "dup":
        recs.insert(i, recs[i])
    elif op == "swap":  # with itself when there is one chunk
        j = rng.randrange(len(recs))
        recs[i], recs[j] = recs[j], recs[i]
    elif op == "reverse":
        recs.reverse()
    else:
        recs.append((CHUNK_STRUCT.pack(0, 0, 0), (b"", 0)))
    how = rng.choice(["asis", "reseal", "count"])
    if how == "asis":
        return seed.data[: len(head_bytes(seed.parts)) + 4] + b"".join(r for r, _ in recs), "all"
    p = replace(seed.parts, chunks=[c for _, c in recs], fields=dict(seed.parts.fields))
    if how == "count":
        p.fields["n_chunks"] = len(recs)
        return seal(p), "tokens"
    return seal(p), "all"


# ---- header fields, resealed ------------------------------------------------------------------------------
def field_value(rng, name, old):
    kind = KINDS[name]
    if kind == "s":
        return rng.choice([bytes(16), rng.randbytes(16), old[:15] + bytes([old[15] ^ 1])])
    if kind == "d":
        return rng.choice([0.0, -1.0, 12.5, 1e-300, 1e308, 999.9, 1000.0, float("nan"), float("inf"), old + 1])
    hi = MAXIMA[kind]
    v = rng.choice([0, 1, 2, 3, hi, hi - 1, old + 1, old - 1, 2 * old, old // 2, rng.randrange(65), rng.randrange(hi)])
    return min(hi, max(0, v))


def fix_up(f: dict, rng) -> None:
    """Make sizes consistent (padding, chunk count), so that a header reaches the checks after them."""
    if f["patch"] and rng.random() < 0.8:
        f["pad_bottom"] = min(0xFFFF, -f["height"] % f["patch"])
        f["pad_right"] = min(0xFFFF, -f["width"] % f["patch"])
    if f["frames_per_chunk"] and rng.random() < 0.8:
        f["n_chunks"] = -(-f["frames"] // f["frames_per_chunk"])


def small_size(rng, limit_pixels: int) -> tuple[int, int]:
    """Sizes for consistent rewrites: small mostly, rarely up to (and past) the per-frame limit."""
    r = rng.random()
    side = rng.randrange(1, 65) if r < 0.97 else rng.randrange(1, 1 << rng.randrange(8, 15))
    other = rng.randrange(1, 65) if r < 0.995 else max(1, limit_pixels // side + rng.choice([0, 1]))
    return (side, other) if rng.random() < 0.5 else (other, side)


def m_header(rng, seed, pool):
    """1-3 header fields rewritten (random or boundary values, sizes made consistent or not), resealed."""
    f = dict(seed.parts.fields)
    for name in rng.sample(NAMES, rng.choice([1, 1, 2, 3])):
        if name in ("height", "width") and rng.random() < 0.6:
            f["height"], f["width"] = small_size(rng, seed.limits.max_pixels)
        else:
            f[name] = field_value(rng, name, f[name])
    if rng.random() < 0.6:
        fix_up(f, rng)
    binds = "tokens" if f["digest"] == seed.parts.fields["digest"] else "none"
    return seal(replace(seed.parts, fields=f)), binds


def m_version(rng, seed, pool):
    p = replace(seed.parts, major=rng.choice([0, 1, 2, 2, 3, 255]), minor=rng.choice([0, 1, 7, 255]))
    return seal(p), "all"


def ext_text(rng) -> bytes:
    """Extension JSON: nested 1..5000 deep, too large, too many keys, non-scalar, not an object, invalid."""
    d = int(2 ** rng.uniform(0, 12.3))
    opts = [
        lambda: '{"a":' + "[" * d + "]" * d + "}", lambda: "[" * d + "]" * d, lambda: '{"a":' * d + "1" + "}" * d,
        lambda: json.dumps({"k": "x" * rng.choice([200, 300, 20000, 1 << 20])}),
        lambda: json.dumps({f"k{i}": i for i in range(rng.choice([10, 64, 65, 2000]))}),
        lambda: json.dumps({"a": [1, 2], "b": {"c": 1}}), lambda: rng.choice(["1", '"s"', "null", "[]", "{}"]),
        lambda: rng.choice(["{", "NaN", '{"a":1e999}', '{"a":NaN}', '{"a":"\\ud800"}', '{"a":' + "9" * 5000 + "}"]),
        lambda: '{"a":' + str(1 << 70) + "}", lambda: json.dumps({"note": "ok", "n": 3, "f": 0.5, "t": True}),
    ]
    return rng.choice(opts)().encode()


def m_ext(rng, seed, pool):
    """A new extension with valid CRCs: compressed JSON, a zlib bomb, raw bytes or a lying zlib stream."""
    r = rng.random()
    if r < 0.8:
        blob = zlib.compress(ext_text(rng), 9)
    elif r < 0.9:
        blob = zlib.compress(b" " * rng.choice([1 << 15, 1 << 24]), 9)  # decompresses past max_ext
    else:
        blob = rng.randbytes(rng.randrange(1, 64)) if rng.random() < 0.5 else zlib.compress(b'{"a":1}')[:-3]
    return seal(replace(seed.parts, ext=blob[:0xFFFF])), "all"


# ---- well-formed forgeries ----------------------------------------------------------------------------------
def random_header(rng, seed) -> Header:
    """A header valid by construction with random field values (the seed's weights and tokenizer
    fields half of the time, so that some reach the decoders)."""
    b = seed.header
    keep = lambda: rng.random() < 0.5  # noqa: E731
    media, coder = rng.choice(["image", "video"]), rng.choice(["raw", "ar", "parallel"])
    T = 1 if media == "image" else rng.choice([1, 2, 3, 5, 9, 17])
    H, W = (min(v, WRITE_LIMITS.max_side) for v in small_size(rng, seed.limits.max_pixels))
    patch = b.patch_size if keep() else rng.randrange(1, 17)
    fpc = rng.randrange(1, 9)
    h = Header(media=media, coder=coder, tokenizer_id=b.tokenizer_id if keep() else rng.randbytes(16).hex(),
               bits=b.bits if keep() else rng.randrange(1, 64), patch_size=patch, height=H, width=W, frames=T,
               fps=0.0 if media == "image" else rng.choice([12.5, 0.001, 999.0, rng.uniform(0.01, 999)]),
               pad_bottom=-H % patch, pad_right=-W % patch, pad_mode=b.pad_mode if keep() else rng.choice(PADS),
               chunk_frames=b.chunk_frames if keep() else rng.randrange(1, 9), frames_per_chunk=fpc,
               n_chunks=-(-T // fpc))
    if coder == "raw":
        return h
    if seed.prior is not None and seed.header.coder == coder and keep():
        for k in ("bits", "prior_id", "group_bits", "tile", "passes", "schedule", "arithmetic", "video_cond"):
            setattr(h, k, getattr(b, k))
        h.prob_bits = rng.randrange(max(8, h.group_bits + 2), 25) if rng.random() < 0.3 else b.prob_bits
        return h
    h.prior_id = rng.randbytes(16).hex()
    h.group_bits = rng.choice([g for g in range(1, 17) if h.bits % g == 0])
    h.tile = (rng.randrange(1, 17), rng.randrange(1, 17))
    if coder == "parallel":
        h.schedule = rng.choice(["quadtree", "random"])
        h.passes = rng.randrange(1, 65, 2 if h.schedule == "quadtree" else 1)  # quadtree: odd counts only
    h.arithmetic, h.video_cond = "int-fx12", keep()
    h.prob_bits = rng.randrange(max(8, h.group_bits + 2), 25)
    return h


def m_generated(rng, seed, pool):
    """A generated well-formed file: a random valid header; random tokens encoded by the codec when
    it can (raw, or the seed's prior when the header is that prior's), else random payloads."""
    from bsqvit.codec import encode_tokens

    h = random_header(rng, seed)
    n = h.frames * h.tokens_per_frame
    prior = seed.prior if h.coder != "raw" and h.prior_id == seed.header.prior_id else None
    if n <= 4096 and (h.coder == "raw" or prior is not None and n <= 256):
        g = np.random.default_rng(rng.randrange(1 << 32))
        tokens = g.integers(0, 1 << h.bits, (h.frames, *h.grid), dtype=np.uint64).astype(np.int64)
        return encode_tokens(tokens, h, prior)[0], "none"
    h.tokens_digest = rng.randbytes(16).hex()
    p = split(pack_header(h, WRITE_LIMITS) + bytes(4))
    size = rng.randrange(0, 48)
    p.chunks = [(rng.randbytes(size), rng.randrange(1 << 32)) for _ in range(min(h.n_chunks, 64))]
    return seal(p), "none"


def forged_tokens(rng, seed) -> np.ndarray:
    """The seed's tokens, some replaced by arbitrary L-bit values (beyond a codebook, sometimes)."""
    t = seed.tokens.copy()
    flat = t.reshape(-1)
    top = 1 << seed.header.bits
    for _ in range(rng.choice([1, 2, 5])):
        flat[rng.randrange(flat.size)] = rng.choice([0, top - 1, rng.randrange(top)])
    return t


def m_forge_tokens(rng, seed, pool):
    """A well-formed file of other tokens, encoded by the codec itself (every check passes)."""
    from bsqvit.codec import CodecOptions, encode_tokens

    h = copy.deepcopy(seed.header)
    opts = CodecOptions(tile_batch=rng.choice([1, 3, 32]))
    data, _ = encode_tokens(forged_tokens(rng, seed), h, seed.prior, opts)
    return data, "none"


MUTATORS = {  # name: (mutator, weight)
    "truncate": (m_truncate, 8), "bitflip": (m_bitflip, 14), "byterun": (m_byterun, 6), "insdel": (m_insdel, 6),
    "lying_length": (m_lying_length, 6), "splice": (m_splice, 10), "chunks": (m_chunks, 10),
    "header": (m_header, 20), "version": (m_version, 2), "ext": (m_ext, 8), "generated": (m_generated, 6),
    "forge_tokens": (m_forge_tokens, 4),
}
