"""Compression with BSQ tokens: priors over tokens, range coding and the ``.bsq`` container.

* :mod:`.prior` -- :class:`TokenPrior` (autoregressive with a KV cache, or parallel multi-pass
  with a fixed schedule; optional conditioning on the previous frame's tokens);
* :mod:`.coding` -- raw L-bit fields, integer probabilities, constriction's range coder, and
  the single encode/decode code path that keeps both sides bit-identical;
* :mod:`.container` -- the ``.bsq`` format (header, chunks, CRCs, limits);
* :mod:`.api` -- :func:`compress` / :func:`decompress` on tensors; :mod:`.files` -- ``*_file`` and ``info`` on files;
* :mod:`.train_prior` -- ``bsqvit train-prior``; :mod:`.rd` -- ``bsqvit rd``.

The format and the determinism design are described in ``docs/CODEC.md``.
"""

from .api import CodecOptions, CompressResult, compress, decode_tokens, decompress, encode_tokens
from .files import compress_file, compress_images, decompress_file, info
from .container import BSQFormatError, Header, Limits
from .prior import PriorConfig, TokenPrior, pass_map, tile_layout

__all__ = [
    "BSQFormatError",
    "CodecOptions",
    "CompressResult",
    "Header",
    "Limits",
    "PriorConfig",
    "TokenPrior",
    "compress",
    "compress_file",
    "compress_images",
    "decode_tokens",
    "decompress",
    "decompress_file",
    "encode_tokens",
    "info",
    "pass_map",
    "tile_layout",
]
