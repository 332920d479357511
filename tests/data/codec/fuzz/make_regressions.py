"""Regenerate the fuzzing regression inputs of this folder (tests/test_fuzz.py reads them).

    python tests/data/codec/fuzz/make_regressions.py

* ``vq-tokenizer/``: a tiny seeded VQ tokenizer, 300 codes in 9-bit raw fields;
* ``vq-token-outside-codebook.bsq``: a well-formed raw file of it holding token 511, which has no
  code (found by the campaign: ``decompress`` crashed with IndexError in the embedding lookup);
* ``ext-nested-5000.bsq``: image-raw.bsq with a 5000-deep JSON extension, CRCs valid (finding a);
* ``splice-twin-image.bsq``: image-raw.bsq's header with the chunk of another 30 x 22 image, the
  chunk CRC recomputed for this header (finding b);
* ``bomb-raw-8192x8192-header.bsq``: the header (and first payload bytes) of a valid raw
  8192 x 8192 file (finding d);
* ``bomb-ar-65536-tokens.bsq``: 126 bytes, well-formed, an ``ar`` file whose 4-byte payload holds
  256 x 256 zero tokens at patch 1 (found by the campaign's limit probes: within the 2.0 limits,
  2^28 tokens, a file this size could ask for hours of prior decoding).
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3] / "benchmarks"))

from fuzz_codec import Limits, forged, load_models, make_seeds, vq_tokenizer  # noqa: E402
from fuzz_mutators import head_bytes, seal, split  # noqa: E402

from bsqvit.codec import CodecOptions, compress, encode_tokens  # noqa: E402
from bsqvit.codec.container import chunk_crc  # noqa: E402
from bsqvit.io import from_uint8  # noqa: E402

GOLDEN_RAW = HERE.parent / "image-raw.bsq"


def nested_ext(depth: int) -> bytes:
    """image-raw.bsq with the extension ``{"a":[[...]]}`` (``depth`` brackets), every CRC valid."""
    p = split(GOLDEN_RAW.read_bytes())
    text = '{"a":' + "[" * depth + "]" * depth + "}"
    p.ext = zlib.compress(text.encode(), 9)
    return seal(p)


def spliced(other: bytes) -> bytes:
    """image-raw.bsq's header + the chunk of ``other`` (same geometry), its CRC made valid for this header."""
    mine, theirs = GOLDEN_RAW.read_bytes(), split(other)
    head = mine[: len(head_bytes(split(mine))) + 4]
    crc = struct.unpack_from("<I", head, len(head) - 4)[0]
    payload, tcrc = theirs.chunks[0]
    return head + struct.pack("<III", len(payload), chunk_crc(0, payload, crc), tcrc) + payload


def main() -> None:
    torch.set_num_threads(1)
    vq = vq_tokenizer()
    vq.save_pretrained(HERE / "vq-tokenizer")
    (HERE / "vq-tokenizer" / "README.md").unlink(missing_ok=True)
    models = load_models()
    seeds = {s.name: s for s in make_seeds(models, Limits())}
    s = seeds["vq-12x12"]
    tokens = s.tokens.copy()
    tokens[0, 1, 2] = 511
    files = {"vq-token-outside-codebook.bsq": encode_tokens(tokens, s.header)[0],
             "ext-nested-5000.bsq": nested_ext(5000)}
    px = np.random.default_rng(99).integers(0, 256, (22, 30, 3), dtype=np.uint8)
    other = compress(from_uint8(px), models.tokenizer, None, options=CodecOptions()).data
    files["splice-twin-image.bsq"] = spliced(other)
    bomb = forged(seeds["raw-8x8"], 8192, 8192, 1, 1)
    files["bomb-raw-8192x8192-header.bsq"] = bomb[:200]
    files["bomb-ar-65536-tokens.bsq"] = forged(seeds["ar-16x12"], 256, 256, 1, 1, bytes(4), patch=1)
    for name, data in files.items():
        (HERE / name).write_bytes(data)
    print(json.dumps({k: len(v) for k, v in files.items()}, indent=2))


if __name__ == "__main__":
    main()
