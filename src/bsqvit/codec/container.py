"""The ``.bsq`` container: a small binary header and a chunked, CRC-protected payload.

Layout (little-endian; ``docs/FORMAT.md`` is the specification)::

    magic        4  b"\\x89BSQ"
    major        1  format major version (this module: 2)
    minor        1  format minor version (this module: 0)
    body_len     2  length of the header body
    body         body_len bytes: HEADER_STRUCT fields, then ext_len (u16) + ext (zlib, flat JSON)
    header_crc   4  CRC32 of everything above
    chunks       n_chunks x { payload_len u32, payload_crc u32, tokens_crc u32, payload }

``payload_crc`` is the CRC32 of the chunk's index (u32) followed by its payload, started from
``header_crc`` instead of 0: it ties every chunk to its file's header (and through the header's
token digest, to its content) and detects corruption, truncation, reordering and splicing
*before* anything is decoded. ``tokens_crc`` is the CRC32 of the chunk's decoded tokens (int64,
little-endian) and the header holds the first 16 bytes of the SHA-256 of all tokens: both are
checked after decoding.

Every size a header declares is checked against :class:`Limits` and against the bytes actually
present before anything is allocated; every error is a :class:`BSQFormatError` (an
:class:`~bsqvit.io.InputError`) with a one-line message.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import BSQFormatError
from .extension import check_ext, parse_ext

MAGIC = b"\x89BSQ"
MAJOR, MINOR = 2, 0
MINOR_SKIP_MAP = 1  # the minor version of files with skip maps (flag bit 1)

CODERS = {"raw": 0, "ar": 1, "parallel": 2}
MEDIA = {"image": 0, "video": 1}
PAD_MODES = {"replicate": 0, "reflect": 1, "constant": 2}
SCHEDULE_IDS = {"none": 0, "quadtree": 1, "random": 2}
ARITHMETIC_IDS = {"none": 0, "int-fx12": 1}
FLAG_VIDEO_COND = 1
FLAG_SKIP_MAP = 2  # minor 1: frames after the first code a skip map (docs/FORMAT.md section 5.5)

# tokenizer id, prior id, tokens digest, media, coder, bits, group bits, patch, chunk_frames, H, W,
# T, fps, pad bottom, pad right, pad mode, tile h, tile w, passes, schedule, arithmetic, prob bits,
# flags, frames per chunk, n_chunks
HEADER_STRUCT = struct.Struct("<16s16s16sBBBBHHIIIdHHBHHBBBBBHI")
CHUNK_STRUCT = struct.Struct("<III")
PREFIX = struct.Struct("<4sBBH")
ID_BYTES = 16


@dataclass
class Limits:
    """A reader's bounds on the pixels and the work a file may ask for, checked on the header
    before anything it declares is allocated or decoded. The defaults keep the worst well-formed
    file to seconds on one CPU thread (benchmarks/results/fuzz.md): ``max_pixels`` bounds a frame
    (a tokenizer's decode grows with the square of a frame's tokens: the tiny test tokenizer
    decodes 1024 x 512 in about 3 s); ``max_tokens`` bounds the entropy decoding (a payload's length
    bounds nothing: 4 bytes of range coder can hold 2^15 tokens, which the tiny test priors decode
    in 1-2 s) and, with ``max_pixels``, the tokenizer's work on all frames. ``bsqvit decompress
    --max-pixels / --max-tokens`` raise them (up to :data:`FORMAT_LIMITS`); the API takes any
    ``Limits``. Files a program writes and reads back itself (``rd``, ``demo``) use the format's."""

    max_side: int = 16384  # pixels, H and W
    max_pixels: int = 1 << 19  # per frame (524,288 px: 1024 x 512; a 768 x 512 Kodak image fits)
    max_frames: int = 1 << 20
    max_tokens: int = 1 << 15  # over the whole file (32,768: a Kodak image is 6,144 at patch 8)
    max_ext: int = 1 << 14  # bytes of decompressed extension JSON


# What the format itself allows (``pack_header``: writers are not bound by a reader's defaults).
FORMAT_LIMITS = Limits(max_pixels=1 << 28, max_tokens=1 << 28)
# A range-coded group costs at most prob_bits (<= 24) + 1 bits, a token at most 63 such groups:
# <= 197 bytes; a chunk adds 12 bytes of fields and at most 8 of coder flush, and there are no
# more chunks than tokens. 256 bytes per token bounds every well-formed file.
MAX_BYTES_PER_TOKEN = 256
MAX_HEADER_BYTES = PREFIX.size + HEADER_STRUCT.size + 2 + 0xFFFF + 4


def max_file_bytes(limits: Limits) -> int:
    """No well-formed ``.bsq`` file within ``limits`` is longer than this."""
    return MAX_HEADER_BYTES + MAX_BYTES_PER_TOKEN * limits.max_tokens


@dataclass
class Header:
    """Everything needed to decode a ``.bsq`` file (besides the weights named by the ids)."""

    media: str  # image | video
    coder: str  # raw | ar | parallel
    tokenizer_id: str  # hex, first 16 bytes of BSQViT.weights_hash()
    bits: int  # L, bits per token
    patch_size: int
    height: int
    width: int
    frames: int  # 1 for images
    fps: float  # 0 for images
    pad_bottom: int
    pad_right: int
    pad_mode: str
    chunk_frames: int  # frames per tokenizer forward (decode uses the same chunking)
    frames_per_chunk: int  # frames per payload chunk
    n_chunks: int
    prior_id: str | None = None  # hex, first 16 bytes of TokenPrior.weights_hash()
    group_bits: int = 0
    tile: tuple[int, int] = (0, 0)
    passes: int = 0
    schedule: str = "none"
    arithmetic: str = "none"  # the prior's arithmetic (docs/FORMAT.md section 4)
    prob_bits: int = 0
    video_cond: bool = False
    skip_map: bool = False  # video frames f > 0 code a map of the tokens equal to frame f - 1 first
    tokens_digest: str = ""  # hex, first 16 bytes of the SHA-256 of all tokens (int64 little-endian)
    ext: dict = field(default_factory=dict)
    version: tuple[int, int] = (MAJOR, MINOR)

    # ---- derived sizes ---------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        p = self.patch_size
        return -(-self.height // p), -(-self.width // p)

    @property
    def tokens_per_frame(self) -> int:
        h, w = self.grid
        return h * w

    @property
    def pixels(self) -> int:
        return self.height * self.width * self.frames

    def chunk_frame_counts(self) -> list[int]:
        F = self.frames_per_chunk
        return [min(F, self.frames - s) for s in range(0, self.frames, F)]

    def to_json(self) -> dict:
        d = asdict(self)
        d["version"] = f"{self.version[0]}.{self.version[1]}"
        d["tile"] = list(self.tile)
        d["grid"] = list(self.grid)
        return d


def id_bytes(hex_digest: str | None) -> bytes:
    if not hex_digest:
        return bytes(ID_BYTES)
    b = bytes.fromhex(hex_digest)[:ID_BYTES]
    if len(b) != ID_BYTES:
        raise ValueError(f"weights hash too short: {hex_digest!r}")
    return b


def short_id(hex_digest: str) -> str:
    return id_bytes(hex_digest).hex()


def _inv(table: dict, value: int, what: str) -> str:
    for k, v in table.items():
        if v == value:
            return k
    raise BSQFormatError(f"unknown {what} code {value}")


def check_header(h: Header, limits: Limits) -> None:
    """Semantic checks of a header (sizes, consistency); raises :class:`BSQFormatError`."""
    def bad(msg):
        raise BSQFormatError(f"bad header: {msg}")

    if h.media not in MEDIA or h.coder not in CODERS or h.pad_mode not in PAD_MODES or h.arithmetic not in ARITHMETIC_IDS:
        bad("unknown media, coder or pad mode")
    if not (1 <= h.bits <= 63):
        bad(f"bits per token {h.bits} not in 1..63")
    if not (1 <= h.patch_size <= 1024):
        bad(f"patch size {h.patch_size}")
    if not (1 <= h.height <= limits.max_side and 1 <= h.width <= limits.max_side):
        bad(f"size {h.width}x{h.height} outside 1..{limits.max_side}")
    if h.height * h.width > limits.max_pixels:
        bad(f"{h.width}x{h.height} exceeds the limit of {limits.max_pixels} pixels per frame "
            "(decompress --max-pixels raises it)")
    if not (1 <= h.frames <= limits.max_frames):
        bad(f"frame count {h.frames} outside 1..{limits.max_frames}")
    if h.media == "image" and (h.frames != 1 or h.fps != 0.0):
        bad("an image has 1 frame and fps 0")
    if h.media == "video" and not (math.isfinite(h.fps) and 0 < h.fps < 1000):
        bad(f"fps {h.fps}")
    gh, gw = h.grid
    if (h.pad_bottom, h.pad_right) != (gh * h.patch_size - h.height, gw * h.patch_size - h.width):
        bad(f"padding {h.pad_bottom},{h.pad_right} does not match {h.width}x{h.height} / patch {h.patch_size}")
    if h.tokens_per_frame * h.frames > limits.max_tokens:
        bad(f"{h.frames} frame(s) of {gh}x{gw} tokens exceed the limit of {limits.max_tokens} tokens "
            "(decompress --max-tokens raises it)")
    if not (1 <= h.chunk_frames <= 4096) or not (1 <= h.frames_per_chunk <= 4096):
        bad("frames per chunk")
    if h.n_chunks != len(h.chunk_frame_counts()):
        bad(f"{h.n_chunks} chunks for {h.frames} frames of {h.frames_per_chunk}")
    if h.coder == "raw":
        if (h.prior_id or h.group_bits or h.passes or h.schedule != "none" or h.tile != (0, 0)
                or h.arithmetic != "none" or h.prob_bits or h.video_cond or h.skip_map):
            bad("raw coding with prior fields")
    else:
        if not h.prior_id:
            bad("prior coding without a prior id")
        if h.group_bits < 1 or h.bits % h.group_bits or h.group_bits > 16:
            bad(f"group bits {h.group_bits}")
        if not (1 <= h.tile[0] <= 1024 and 1 <= h.tile[1] <= 1024):
            bad(f"tile {h.tile}")
        if h.arithmetic not in ARITHMETIC_IDS or h.arithmetic == "none":
            bad(f"prior arithmetic {h.arithmetic!r}")
        if h.skip_map and (h.coder != "ar" or not h.video_cond or h.media != "video"):
            bad("skip maps need an ar prior with video conditioning, on a video")
        if h.tile[0] * h.tile[1] > 8192:
            bad(f"tile {h.tile} has more than 8192 tokens")
        if not (8 <= h.prob_bits <= 24):
            bad("probability bits")
        if h.prob_bits < h.group_bits + 2:
            bad("probability bits too small for the alphabet")
        if h.coder == "parallel" and (h.schedule not in ("quadtree", "random") or not (1 <= h.passes <= 64)
                                      or h.schedule == "quadtree" and h.passes % 2 == 0):
            bad("parallel schedule")
        if h.coder == "ar" and (h.passes or h.schedule != "none"):
            bad("ar coding with a schedule")


def _digest_bytes(hex_digest: str) -> bytes:
    b = bytes.fromhex(hex_digest) if hex_digest else b""
    if len(b) != ID_BYTES:
        raise ValueError(f"tokens digest must be {ID_BYTES} bytes")
    return b


def pack_header(h: Header, limits: Limits | None = None) -> bytes:
    check_header(h, limits or FORMAT_LIMITS)
    check_ext(h.ext)
    raw = json.dumps(h.ext, sort_keys=True, separators=(",", ":")).encode() if h.ext else b""
    if len(raw) > Limits().max_ext:  # what every reader accepts
        raise ValueError(f"header extension of {len(raw)} bytes is over {Limits().max_ext}")
    ext = zlib.compress(raw, 9) if raw else b""
    flags = (FLAG_VIDEO_COND if h.video_cond else 0) | (FLAG_SKIP_MAP if h.skip_map else 0)
    body = HEADER_STRUCT.pack(
        id_bytes(h.tokenizer_id), id_bytes(h.prior_id), _digest_bytes(h.tokens_digest), MEDIA[h.media],
        CODERS[h.coder], h.bits, h.group_bits, h.patch_size, h.chunk_frames, h.height, h.width, h.frames,
        float(h.fps), h.pad_bottom, h.pad_right, PAD_MODES[h.pad_mode], h.tile[0], h.tile[1], h.passes,
        SCHEDULE_IDS[h.schedule], ARITHMETIC_IDS[h.arithmetic], h.prob_bits, flags, h.frames_per_chunk, h.n_chunks,
    ) + struct.pack("<H", len(ext)) + ext
    head = PREFIX.pack(MAGIC, MAJOR, MINOR_SKIP_MAP if h.skip_map else MINOR, len(body)) + body
    return head + struct.pack("<I", zlib.crc32(head))


def _check_prefix(data: memoryview) -> tuple[int, int, int]:
    if len(data) < PREFIX.size:
        if bytes(data[:4]) != MAGIC[: len(data[:4])]:
            raise BSQFormatError("not a .bsq file (bad magic)")
        raise BSQFormatError("truncated .bsq file (no header)")
    magic, major, minor, body_len = PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise BSQFormatError("not a .bsq file (bad magic)")
    if major == 1:
        raise BSQFormatError("this is a version 1.0 .bsq file, whose float prior does not decode portably; "
                             f"this decoder reads version {MAJOR}.x: compress the source again")
    if major != MAJOR:
        raise BSQFormatError(f"unsupported .bsq format version {major}.{minor} (this decoder reads {MAJOR}.x)")
    return major, minor, body_len


def unpack_header(data: bytes | memoryview, limits: Limits | None = None) -> tuple[Header, int]:
    """Parse and check the header at the start of ``data``; returns it and the offset of the chunks."""
    limits = limits or Limits()
    data = memoryview(data)
    major, minor, body_len = _check_prefix(data)
    end = PREFIX.size + body_len
    if body_len < HEADER_STRUCT.size + 2 or body_len > HEADER_STRUCT.size + 2 + 0xFFFF:
        raise BSQFormatError(f"bad header length {body_len}")
    if len(data) < end + 4:
        raise BSQFormatError("truncated .bsq file (header)")
    (crc,) = struct.unpack_from("<I", data, end)
    if zlib.crc32(data[:end]) != crc:
        raise BSQFormatError("corrupt .bsq header (CRC mismatch)")
    f = HEADER_STRUCT.unpack_from(data, PREFIX.size)
    (tok_id, prior_id, digest, media, coder, bits, gbits, patch, chunk_frames, H, W, T, fps, pb, pr, pad_mode,
     th, tw, passes, sched, arith, prob_bits, flags, fpc, n_chunks) = f
    off = PREFIX.size + HEADER_STRUCT.size
    (ext_len,) = struct.unpack_from("<H", data, off)
    if off + 2 + ext_len != end:
        raise BSQFormatError("bad header extension length")
    ext = parse_ext(bytes(data[off + 2 : end]), limits.max_ext) if ext_len else {}
    if flags & ~(FLAG_VIDEO_COND | FLAG_SKIP_MAP):
        raise BSQFormatError(f"unknown header flags {flags:#x}")
    h = Header(
        media=_inv(MEDIA, media, "media"), coder=_inv(CODERS, coder, "coder"), tokenizer_id=tok_id.hex(),
        bits=bits, patch_size=patch, height=H, width=W, frames=T, fps=fps, pad_bottom=pb, pad_right=pr,
        pad_mode=_inv(PAD_MODES, pad_mode, "pad mode"), chunk_frames=chunk_frames, frames_per_chunk=fpc,
        n_chunks=n_chunks, prior_id=prior_id.hex() if any(prior_id) else None, group_bits=gbits, tile=(th, tw),
        passes=passes, schedule=_inv(SCHEDULE_IDS, sched, "schedule"),
        arithmetic=_inv(ARITHMETIC_IDS, arith, "prior arithmetic"), prob_bits=prob_bits,
        video_cond=bool(flags & FLAG_VIDEO_COND), skip_map=bool(flags & FLAG_SKIP_MAP), tokens_digest=digest.hex(), ext=ext, version=(major, minor),
    )
    check_header(h, limits)
    return h, end + 4


def header_crc(data: bytes | memoryview, chunks_offset: int) -> int:
    """The header's CRC32 (the 4 bytes before the first chunk)."""
    return struct.unpack_from("<I", data, chunks_offset - 4)[0]


def chunk_crc(index: int, payload: bytes, seed: int) -> int:
    """CRC32 of (index u32, payload), started from ``seed`` (the header's CRC32)."""
    return zlib.crc32(payload, zlib.crc32(struct.pack("<I", index), seed))


def tokens_crc(tokens) -> int:
    return zlib.crc32(np.ascontiguousarray(tokens, dtype="<i8").tobytes())


def tokens_digest(tokens) -> str:
    """Hex of the first 16 bytes of the SHA-256 of all tokens (int64 little-endian, raster order)."""
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype="<i8").tobytes()).digest()[:ID_BYTES].hex()


def pack_chunks(chunks: list[tuple[bytes, int]], seed: int) -> bytes:
    """``[(payload, tokens_crc), ...]`` -> bytes; ``seed``: the header's CRC32."""
    out = []
    for i, (payload, tcrc) in enumerate(chunks):
        out.append(CHUNK_STRUCT.pack(len(payload), chunk_crc(i, payload, seed), tcrc))
        out.append(payload)
    return b"".join(out)


def write_container(h: Header, chunks: list[tuple[bytes, int]]) -> bytes:
    if len(chunks) != h.n_chunks:
        raise ValueError(f"{len(chunks)} chunks, header says {h.n_chunks}")
    head = pack_header(h)
    return head + pack_chunks(chunks, header_crc(head, len(head)))


def _check_payload_size(h: Header, i: int, n: int, frames: int) -> None:
    """Before any chunk is decoded: a raw payload has exactly the bytes of its tokens' fields; a
    range-coded one is whole 32-bit words (its length bounds nothing else: see :class:`Limits`)."""
    if h.coder == "raw":
        want = (frames * h.tokens_per_frame * h.bits + 7) // 8
        if n != want:
            raise BSQFormatError(f"corrupt .bsq file (raw chunk {i} has {n} bytes, its {frames} frame(s) need {want})")
    elif n % 4:
        raise BSQFormatError(f"corrupt .bsq file (range-coded chunk {i} of {n} bytes is not whole 32-bit words)")


def read_container(data: bytes, limits: Limits | None = None) -> tuple[Header, list[tuple[memoryview, int]]]:
    """Parse a whole ``.bsq`` file: header, then every chunk, each CRC-checked.

    Raises :class:`BSQFormatError` for bad magic, version, CRCs, payload sizes, truncation or
    trailing bytes.
    """
    h, off = unpack_header(data, limits)
    mv = memoryview(data)
    seed = header_crc(mv, off)
    chunks = []
    frames = h.chunk_frame_counts()
    for i in range(h.n_chunks):
        if len(mv) - off < CHUNK_STRUCT.size:
            raise BSQFormatError(f"truncated .bsq file (chunk {i} of {h.n_chunks} missing)")
        n, crc, tcrc = CHUNK_STRUCT.unpack_from(mv, off)
        off += CHUNK_STRUCT.size
        if n > len(mv) - off:
            raise BSQFormatError(f"truncated .bsq file (chunk {i} declares {n} bytes, {len(mv) - off} left)")
        payload = mv[off : off + n]
        off += n
        if chunk_crc(i, payload, seed) != crc:
            raise BSQFormatError(f"corrupt .bsq file (chunk {i} CRC mismatch)")
        _check_payload_size(h, i, n, frames[i])
        chunks.append((payload, tcrc))
    if off != len(mv):
        raise BSQFormatError(f"corrupt .bsq file ({len(mv) - off} unexpected bytes after the last chunk)")
    return h, chunks
