"""``bsqvit serve``: a local web demo of the tokenizer, the ``.bsq`` codec and the generator.

:func:`~bsqvit.serve.app.create_app` builds the Flask app (the ``serve`` extra); the numbers it
shows come from :mod:`bsqvit.serve.pipeline`, plain functions of the library API. See
``docs/SERVE.md``.
"""

from .app import create_app
from .pipeline import analyze, class_samples, encode_at_most, load_models, read_upload

__all__ = ["analyze", "class_samples", "create_app", "encode_at_most", "load_models", "read_upload"]
