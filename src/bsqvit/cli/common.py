"""What every command shares: input/output checks, the model options, ``--threads``, the
default models (tokenizer, prior, generator) and the error policy.

Error policy: bad input (unreadable/missing files, missing model, bad token files, unknown
preset, an output that would overwrite an input, a missing output directory) raises one of
:data:`EXPECTED_ERRORS`; :func:`bsqvit.cli.main` prints it as exactly one line
``bsqvit: error: ...`` on stderr (:func:`error_message`) and exits with status 2, without a
traceback. Every output is written atomically (no partial files), and inputs are never
overwritten.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterable

from .. import pretrained
from ..codec.prior import TokenPrior, default_prior
from ..config import ConfigError
from ..extras import MissingDependency
from ..generate.model import MaskedTokenModel
from ..io import InputError, VideoWriter, is_video_path, one_line
from ..io.image import MAX_PIXELS
from ..models import COMPILE_MODES, load_tokenizer
from ..models.batching import MAX_BATCH, image_folder, output_names
from ..models.io import ModelLoadError

PROG = "bsqvit"
NO_DEFAULT_MODEL = pretrained.NO_DEFAULT_MODEL
NO_DEFAULT_GEN = "no --gen given and no embedded default generator is installed"
EXPECTED_ERRORS = (InputError, ModelLoadError, ConfigError, MissingDependency, ValueError, OSError, KeyError)


def error_message(e: BaseException) -> str:
    """The one-line message printed for an expected error."""
    if isinstance(e, KeyError) and e.args:
        msg = str(e.args[0])
    elif isinstance(e, OSError) and e.strerror and e.filename:
        msg = f"{e.filename}: {e.strerror}"
    else:
        msg = str(e) or type(e).__name__
    return one_line(msg)


# ---- inputs and outputs ---------------------------------------------------------------------------
def check_input(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if not p.is_file():
        raise InputError(f"{p}: not a regular file")
    return p


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), force: bool | None = None) -> Path:
    """Refuse an output in a missing directory, a directory, or one that is (a link to) an input;
    with ``force=False``, also an existing file (``--force`` replaces it, atomically)."""
    out = Path(path)
    if not out.parent.is_dir():
        raise InputError(f"{out}: output directory {out.parent} does not exist")
    if out.is_dir():
        raise InputError(f"{out}: is a directory")
    for inp in inputs:
        inp = Path(inp)
        same = False
        if out.exists() and inp.exists():
            same = os.path.samefile(out, inp)
        elif out.resolve() == inp.resolve():
            same = True
        if same:
            raise InputError(f"{out}: refusing to overwrite the input {inp}")
    if force is False and (out.exists() or out.is_symlink()):
        raise InputError(f"{out}: exists; refusing to overwrite it (use --force)")
    return out


def check_output_dir(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), force: bool = False) -> Path:
    """An output folder: in an existing directory, not a file, not holding an input, and not an
    existing non-empty folder unless ``force`` (whose files are then replaced one by one, atomically)."""
    out = Path(out)
    if not out.parent.is_dir():
        raise InputError(f"{out}: output directory {out.parent} does not exist")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    for inp in inputs:
        if out.resolve() == Path(inp).resolve() or out.resolve() in Path(inp).resolve().parents:
            raise InputError(f"{out}: refusing to write into a folder that holds the input {inp}")
    if not force and out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out}: exists and is not empty; refusing to overwrite it (use --force)")
    return out


def add_folder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=8, metavar="B",
                   help="IN a folder: same-size images per forward pass (default 8)")


def folder_job(args, suffix: str, model_inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """IN a folder of images, OUT a folder: (images, output paths, created or --force'd), refused
    before any work when OUT is a file, holds IN, is not empty without --force, or two images would
    share an output name. OUT may not lie inside IN (its files would be read as inputs next time)."""
    src = Path(args.input)
    check_range("--batch", args.batch, MAX_BATCH)
    if Path(args.output).suffix.lower() == suffix:
        raise InputError(f"{args.input} is a folder: OUT must be a folder too, not a {suffix} file")
    out = check_output_dir(args.output, [src, *model_inputs], force=args.force)
    if src.resolve() in out.resolve().parents:
        raise InputError(f"{out}: inside the input folder {src}; choose an output folder outside it")
    files = image_folder(src)
    names = output_names(files, src, suffix)
    return files, [out / n for n in names]


@contextlib.contextmanager
def all_or_nothing(out: Path, outs: Iterable[Path]):
    """Make OUT and the subfolders ``outs`` need; yield a list for the caller to append each file
    it has written to. On any error those files, and the folders made here, are removed again, so
    a folder job that fails half-way (a truncated image) leaves no partial output."""
    dirs = sorted({out, *(o.parent for o in outs)}, key=lambda d: len(d.parts))
    made = [d for d in dirs if not d.exists()]
    for d in made:
        d.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for f in written:
            f.unlink(missing_ok=True)
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def check_kinds(inp: Path, out: Path, video: bool) -> None:
    """An image input needs an image output, a video input a video output."""
    if video and not is_video_path(out):
        raise InputError(f"{out}: input {inp.name} is a video; the output needs a video suffix (.mp4)")
    if not video and is_video_path(out):
        raise InputError(f"{out}: input {inp.name} is an image; the output needs an image suffix (.png)")


def check_range(name: str, v: int | None, hi: int) -> None:
    """An optional integer option must lie in 1..hi."""
    if v is not None and not (1 <= v <= hi):
        raise InputError(f"{name} must be in 1..{hi}, got {v}")


def print_json(d: dict) -> None:
    print(json.dumps(d, indent=2, sort_keys=True, default=str))


# ---- shared options -------------------------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="DIR", help="model directory (save_pretrained format) or Hub id")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast for encoder/decoder")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    add_device_arg(p)
    add_compile_arg(p)


def add_compile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", default=None, metavar="MODE", choices=COMPILE_MODES,
                   help="torch.compile the encoder and decoder (" + ", ".join(COMPILE_MODES) + "; on CUDA "
                        "reduce-overhead replays CUDA graphs); pays off over many inputs of one size")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:N]",
                   help="where the networks run (default auto: CUDA when available); .bsq bits do not depend on it")


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without CUDA is an input error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
        if ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
            raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return name
    raise InputError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")


def add_input_args(p: argparse.ArgumentParser) -> None:
    """Bounds on what is read from an input image or video."""
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="video: only the first N frames")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, metavar="N",
                   help=f"refuse images and video frames of more than N pixels, from the header "
                        f"(default {MAX_PIXELS:,} = {MAX_PIXELS / 1e6:g} MP)")


def add_video_out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--crf", type=int, default=18, help="H.264 CRF of video outputs (default 18)")
    p.add_argument("--lossless", action="store_true", help="lossless RGB video output (libx264rgb CRF 0)")


def video_writer(out: Path, fps: float, args) -> VideoWriter:
    return VideoWriter(out, fps, crf=args.crf, lossless=args.lossless)


def setup_torch(args) -> None:
    import torch

    if getattr(args, "max_frames", None) is not None and args.max_frames < 1:
        raise InputError(f"--max-frames must be >= 1, got {args.max_frames}")
    if getattr(args, "max_pixels", None) is not None and args.max_pixels < 1:
        raise InputError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if getattr(args, "device", None) is not None:
        args.device = resolve_device(args.device)


# ---- models: tokenizer, prior, generator ------------------------------------------------------------
def default_model_dir(video: bool = False) -> Path:
    """The embedded default tokenizer (verified against its manifest), or an :class:`InputError`;
    ``video``: the video tokenizer where one ships."""
    return pretrained.default_model_dir(video)


def check_compile(mode: str | None, device: str) -> None:
    """``--compile`` on the CPU needs a C++ compiler (inductor writes C++); fail before any work."""
    if mode is not None and not str(device).startswith("cuda") and not any(
            shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
        raise InputError("--compile on the CPU needs a C++ compiler (g++ or clang++) on PATH")


def resolve_model(path_or_none: str | os.PathLike | None, device: str = "cpu", video: bool = False,
                  tokenizer_id: str | None = None, compile: str | None = None):
    """The model for ``--model``: a directory written by ``save_pretrained`` (or a Hub id);
    ``None`` is an embedded default (:mod:`bsqvit.pretrained`): the one a file was made with
    (``tokenizer_id``), else the video tokenizer for videos (``video``), else the image
    tokenizer. Moved to ``device``; ``compile``: ``--compile``'s mode (None: eager)."""
    check_compile(compile, device)
    if path_or_none is None:
        path_or_none = (pretrained.default_tokenizer_for(tokenizer_id) if tokenizer_id else None) or \
            default_model_dir(video)
    model = load_tokenizer(str(path_or_none)).to(device).eval()
    return model.compile_inference(compile) if compile is not None else model


def model_files(path_or_none) -> list[Path]:
    """Files of a local model directory (inputs that an output must never replace)."""
    if path_or_none is None or not Path(path_or_none).is_dir():
        return []
    return [p for p in Path(path_or_none).iterdir() if p.is_file()]


def resolve_prior(arg: str | None, model=None):
    """``--prior``: a directory written by ``save_pretrained``; ``none`` for raw tokens; absent:
    the embedded default prior when it was trained for ``model`` (else raw)."""
    if arg is not None and str(arg).lower() == "none":
        return None
    if arg is None:
        return default_prior(model)
    prior = TokenPrior.from_pretrained(str(arg))
    prior.eval()
    return prior


def has_default_prior() -> bool:
    return pretrained.available("prior")


def prior_files(arg) -> list[Path]:
    if arg is None or str(arg).lower() == "none":
        return []
    return model_files(arg)


def resolve_gen(path_or_none, device: str = "cpu"):
    """``--gen``: a directory written by ``save_pretrained`` (the embedded default when omitted)."""
    if path_or_none is None:
        d = pretrained.default_dir("gen")
        if d is None:
            raise InputError(NO_DEFAULT_GEN)
        path_or_none = d
    return MaskedTokenModel.from_pretrained(str(path_or_none)).to(device).eval()


def check_pair(model, gen) -> None:
    """The generator must have been trained on this tokenizer's tokens (tokenizer-hash check)."""
    h = gen.config.tokenizer_hash
    if h is not None and h != model.weights_hash():
        raise InputError("the generator was trained for another tokenizer (tokenizer hash mismatch); "
                         "pass the --model it was trained with")
