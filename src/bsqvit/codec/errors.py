"""The error of a malformed ``.bsq`` file (an :class:`~bsqvit.io.InputError`: one line, exit 2)."""

from __future__ import annotations

from ..io import InputError


class BSQFormatError(InputError):
    """A ``.bsq`` file is malformed, corrupt, truncated, or not decodable with the given weights."""
