"""The ``bsqvit`` command line: a thin layer over the Python API, and the top floor of the
package (nothing in :mod:`bsqvit` imports it).

Layout: :mod:`~bsqvit.cli.common` (shared checks, options, default models, error policy),
one module per command group: :mod:`~bsqvit.cli.model` (reconstruct, tokenize, detokenize,
presets, init-model), :mod:`~bsqvit.cli.train` (train, ablate-quantizers),
:mod:`~bsqvit.cli.evaluate` (eval, fid-stats, bench), :mod:`~bsqvit.cli.codec` (compress,
decompress, info, train-prior, rd), :mod:`~bsqvit.cli.generate` (train-gen, generate, eval-gen)
and :mod:`~bsqvit.cli.demo` (demo).

Adding a command: write ``add_<name>(subparsers)`` that creates its sub-parser and sets
``func=cmd_<name>``, write ``cmd_<name>(args) -> int`` that calls the library, and append
the ``add_`` function to ``COMMANDS``. Shared options: :func:`add_model_args`; shared checks:
:func:`check_input`, :func:`check_output`; the model: :func:`resolve_model`.

Error policy: bad input (unreadable/missing files, missing model, bad token files, unknown
preset, an output that would overwrite an input, a missing output directory) prints exactly
one line ``bsqvit: error: ...`` on stderr and exits with status 2, without a traceback.
Every output is written atomically (no partial files), and inputs are never overwritten.

Token files (``tokenize`` / ``detokenize``): :mod:`bsqvit.io.tokens`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from ..version import __version__
from .codec import CODEC_COMMANDS
from .common import (  # the shared helpers, importable from bsqvit.cli
    EXPECTED_ERRORS,
    NO_DEFAULT_MODEL,
    PROG,
    add_model_args,
    add_video_out_args,
    check_input,
    check_output,
    default_model_dir,
    error_message,
    model_files,
    resolve_model,
    resolve_prior,
    setup_torch,
)
from .demo import add_demo
from .evaluate import EVAL_COMMANDS
from .export import EXPORT_COMMANDS
from .generate import GEN_COMMANDS
from .model import MODEL_COMMANDS
from .serve import add_serve
from .train import TRAIN_COMMANDS

__all__ = [
    "COMMANDS", "EXPECTED_ERRORS", "NO_DEFAULT_MODEL", "PROG", "add_model_args", "add_video_out_args", "build_parser",
    "check_input", "check_output", "default_model_dir", "error_message", "main", "model_files", "resolve_model",
    "resolve_prior", "setup_torch",
]

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_demo,
    *MODEL_COMMANDS,
    *TRAIN_COMMANDS,
    *EVAL_COMMANDS,
    *CODEC_COMMANDS,
    *GEN_COMMANDS,
    *EXPORT_COMMANDS,
    add_serve,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="BSQ-ViT image/video tokenizer")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # key=value overrides may come before or after options (argparse stops a positional
        # list at the first option); anything else unknown is a usage error
        if extra:
            if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
                args.overrides = list(args.overrides or []) + extra
            else:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # --help, --version, usage errors (argparse prints its own message)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    import torch

    threads = torch.get_num_threads()
    try:
        return int(args.func(args) or 0)
    except EXPECTED_ERRORS as e:
        print(f"{PROG}: error: {error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        if torch.get_num_threads() != threads:  # --threads must not leak out of an in-process call
            torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
