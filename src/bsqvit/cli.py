"""The ``bsqvit`` command line: a thin layer over the Python API.

Adding a command: write ``add_<name>(subparsers)`` that creates its sub-parser and sets
``func=cmd_<name>``, write ``cmd_<name>(args) -> int`` that calls the library, and append
the ``add_`` function to ``COMMANDS``. Shared options: :func:`add_model_args`; shared checks:
:func:`check_input`, :func:`check_output`; the model: :func:`resolve_model`.

Error policy: bad input (unreadable/missing files, missing model, bad token files, unknown
preset, an output that would overwrite an input, a missing output directory) prints exactly
one line ``bsqvit: error: ...`` on stderr and exits with status 2, without a traceback.
Every output is written atomically (no partial files), and inputs are never overwritten.

Token files (``tokenize`` / ``detokenize``) are ``.npz`` archives with
``indices`` (int64, (h, w) for an image or (T, h, w) for a video), ``height``, ``width``
(pixels of the original), ``frames`` (T; 0 for an image), ``fps`` (0.0 for an image),
``bits`` (bits per token, L), ``patch_size``, ``model_hash`` (``BSQViT.weights_hash()``)
and ``version`` (1).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .config import ConfigError
from .io import (
    InputError,
    VideoWriter,
    atomic_path,
    from_uint8,
    is_video_path,
    iter_video_frames,
    load_image,
    one_line,
    save_image,
    to_uint8,
    video_info,
)
from .models.frames import chunks, decode_frames, encode_frames, video_chunk  # noqa: F401 (API of the commands)
from .models.io import ModelLoadError

PROG = "bsqvit"
TOKEN_FORMAT_VERSION = 1
NO_DEFAULT_MODEL = "no --model given and no embedded default model is installed"


# ---- shared helpers -----------------------------------------------------------------------------
def default_model_dir() -> Path:
    """The embedded default tokenizer (verified against its manifest), or an :class:`InputError`."""
    from .pretrained import default_dir

    d = default_dir("tokenizer")
    if d is None:
        raise InputError(NO_DEFAULT_MODEL)
    return d


def resolve_model(path_or_none: str | os.PathLike | None):
    """The model for ``--model``: a directory written by ``save_pretrained`` (or a Hub id);
    ``None`` is the embedded default (:mod:`bsqvit.pretrained`)."""
    from .models import BSQViT

    if path_or_none is None:
        path_or_none = default_model_dir()
    model = BSQViT.from_pretrained(str(path_or_none))
    model.eval()
    return model


def model_files(path_or_none) -> list[Path]:
    """Files of a local model directory (inputs that an output must never replace)."""
    if path_or_none is None or not Path(path_or_none).is_dir():
        return []
    return [p for p in Path(path_or_none).iterdir() if p.is_file()]


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


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="DIR", help="model directory (save_pretrained format) or Hub id")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast for encoder/decoder")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")


def setup_torch(args) -> None:
    import torch

    if getattr(args, "max_frames", None) is not None and args.max_frames < 1:
        raise InputError(f"--max-frames must be >= 1, got {args.max_frames}")
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def psnr_from_sse(sse: float, count: int) -> float:
    mse = sse / max(count, 1)
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def summary(src, dst, kind: str, psnr: float, bits: float, tokens: int, pixels: int, seconds: float) -> str:
    return (
        f"{src} -> {dst}: {kind}, PSNR {psnr:.2f} dB, {bits * tokens / pixels:.4f} bpp raw "
        f"({bits:g} bits x {tokens} tokens / {pixels} px), {seconds:.2f} s"
    )


def _check_kinds(inp: Path, out: Path, video: bool) -> None:
    if video and not is_video_path(out):
        raise InputError(f"{out}: input {inp.name} is a video; the output needs a video suffix (.mp4)")
    if not video and is_video_path(out):
        raise InputError(f"{out}: input {inp.name} is an image; the output needs an image suffix (.png)")


def add_video_out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--crf", type=int, default=18, help="H.264 CRF of video outputs (default 18)")
    p.add_argument("--lossless", action="store_true", help="lossless RGB video output (libx264rgb CRF 0)")


def _video_writer(out: Path, fps: float, args) -> VideoWriter:
    return VideoWriter(out, fps, crf=args.crf, lossless=args.lossless)


# ---- reconstruct ----------------------------------------------------------------------------------
def add_reconstruct(sub) -> None:
    p = sub.add_parser("reconstruct", help="encode and decode an image or video", description=(
        "Tokenize IN and decode the tokens back to OUT. Images -> image file (format by suffix); "
        "videos -> MP4, in chunks of the model's num_frames frames."))
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    add_model_args(p)
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="video: only the first N frames")
    add_video_out_args(p)
    p.set_defaults(func=cmd_reconstruct)


def cmd_reconstruct(args) -> int:
    inp, video = check_input(args.input), is_video_path(args.input)
    out = check_output(args.output, [inp, *model_files(args.model)])
    _check_kinds(inp, out, video)
    setup_torch(args)
    model = resolve_model(args.model)
    bits = float(model.bits_per_token)
    t0 = time.perf_counter()
    if not video:
        x = load_image(inp)
        H, W = x.shape[-2:]
        idx = model.encode(x[None], amp=args.amp)
        rec = model.decode(idx, size=(H, W), amp=args.amp)[0]
        rec8 = to_uint8(rec).astype(np.float64)
        ref = ((x.double().clamp(-1, 1) + 1) * 127.5).movedim(0, -1).numpy()
        sse, count = float(((rec8 - ref) ** 2).sum()), rec8.size
        save_image(rec, out)
        tokens, pixels, kind = idx[0].numel(), H * W, f"image {W}x{H}"
    else:
        info = video_info(inp)
        n = video_chunk(model)
        sse, count, tokens, T = 0.0, 0, 0, 0
        H, W = info["height"], info["width"]
        with _video_writer(out, info["fps"], args) as writer:
            for frames in chunks(iter_video_frames(inp, max_frames=args.max_frames), n):
                x = from_uint8(frames)
                idx = encode_frames(model, x, amp=args.amp)
                rec8 = to_uint8(decode_frames(model, idx, (H, W), amp=args.amp))
                sse += float(((rec8.astype(np.float64) - frames) ** 2).sum())
                count += rec8.size
                tokens += idx.numel()
                T += frames.shape[0]
                writer.write(rec8)
        pixels, kind = T * H * W, f"video {T}x{W}x{H} @ {info['fps']:g} fps"
    print(summary(inp, out, kind, psnr_from_sse(sse, count), bits, tokens, pixels, time.perf_counter() - t0))
    return 0


# ---- tokenize / detokenize ------------------------------------------------------------------------
def add_tokenize(sub) -> None:
    p = sub.add_parser("tokenize", help="image or video -> token indices (.npz)", description=(
        "Write the token indices of IN to OUT.npz (keys: indices, height, width, frames, fps, bits, "
        "patch_size, model_hash, version)."))
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT.npz")
    add_model_args(p)
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="video: only the first N frames")
    p.set_defaults(func=cmd_tokenize)


def cmd_tokenize(args) -> int:
    inp, video = check_input(args.input), is_video_path(args.input)
    out = check_output(args.output, [inp, *model_files(args.model)])
    if is_video_path(out):
        raise InputError(f"{out}: token files are .npz archives")
    setup_torch(args)
    model = resolve_model(args.model)
    t0 = time.perf_counter()
    if not video:
        x = load_image(inp)
        H, W = x.shape[-2:]
        indices = model.encode(x[None], amp=args.amp)[0]
        frames, fps = 0, 0.0
    else:
        info = video_info(inp)
        H, W, fps = info["height"], info["width"], info["fps"]
        parts = [encode_frames(model, from_uint8(f), amp=args.amp)
                 for f in chunks(iter_video_frames(inp, max_frames=args.max_frames), video_chunk(model))]
        indices = np.concatenate([p.numpy() for p in parts]) if parts else None
        if indices is None:
            raise InputError(f"{inp}: no frames selected")
        frames = indices.shape[0]
    indices = np.asarray(indices, dtype=np.int64)
    record = dict(
        indices=indices,
        height=np.int64(H),
        width=np.int64(W),
        frames=np.int64(frames),
        fps=np.float64(fps),
        bits=np.float64(model.bits_per_token),
        patch_size=np.int64(model.patch_size),
        model_hash=np.str_(model.weights_hash()),
        version=np.int64(TOKEN_FORMAT_VERSION),
    )
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **record)
    shape = "x".join(str(s) for s in indices.shape)
    print(f"{inp} -> {out}: {shape} tokens, {float(model.bits_per_token):g} bits each, "
          f"{float(model.bits_per_token) * indices.size / (max(frames, 1) * H * W):.4f} bpp raw, "
          f"{time.perf_counter() - t0:.2f} s")
    return 0


TOKEN_KEYS = ("indices", "height", "width", "frames", "fps", "bits", "patch_size", "model_hash")


def load_tokens(path: Path) -> dict:
    """Read and check the structure of a token file (not yet against a model)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a token file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, pickle refusals, truncated files, ...
        raise InputError(f"{path}: not a token file ({type(e).__name__}: {one_line(e)})") from None
    missing = [k for k in TOKEN_KEYS if k not in data]
    if missing:
        raise InputError(f"{path}: token file lacks {', '.join(missing)}")
    idx = data["indices"]
    if idx.dtype.kind not in "iu" or idx.ndim not in (2, 3) or idx.size == 0:
        raise InputError(f"{path}: indices must be a non-empty integer array (h,w) or (T,h,w), got {idx.dtype} {idx.shape}")
    try:
        out = {
            "indices": idx.astype(np.int64),
            "height": int(data["height"]),
            "width": int(data["width"]),
            "frames": int(data["frames"]),
            "fps": float(data["fps"]),
            "bits": float(data["bits"]),
            "patch_size": int(data["patch_size"]),
            "model_hash": str(data["model_hash"]),
        }
    except (TypeError, ValueError) as e:
        raise InputError(f"{path}: malformed token file ({one_line(e)})") from None
    p, (h, w) = out["patch_size"], idx.shape[-2:]
    if p < 1 or not (0 < out["height"] <= h * p and out["height"] > (h - 1) * p) or not (
        0 < out["width"] <= w * p and out["width"] > (w - 1) * p
    ):
        raise InputError(f"{path}: token grid {h}x{w} (patch {p}) does not match the size {out['width']}x{out['height']}")
    expected_frames = idx.shape[0] if idx.ndim == 3 else 0
    if out["frames"] != expected_frames:
        raise InputError(f"{path}: frames={out['frames']} but indices have shape {idx.shape}")
    if idx.ndim == 3 and not (0 < out["fps"] < 1000):
        raise InputError(f"{path}: bad fps {out['fps']}")
    return out


def add_detokenize(sub) -> None:
    p = sub.add_parser("detokenize", help="token indices (.npz) -> image or video",
                       description="Decode a token file written by `bsqvit tokenize` with the same model.")
    p.add_argument("input", metavar="IN.npz")
    p.add_argument("output", metavar="OUT")
    add_model_args(p)
    p.add_argument("--force", action="store_true", help="decode even if the model hash differs (warning only)")
    add_video_out_args(p)
    p.set_defaults(func=cmd_detokenize)


def cmd_detokenize(args) -> int:
    inp = check_input(args.input)
    out = check_output(args.output, [inp, *model_files(args.model)])
    tok = load_tokens(inp)
    idx_np = tok["indices"]
    video = idx_np.ndim == 3
    _check_kinds(inp, out, video)
    setup_torch(args)
    model = resolve_model(args.model)
    if tok["patch_size"] != model.patch_size or abs(tok["bits"] - float(model.bits_per_token)) > 1e-9:
        raise InputError(f"{inp}: tokens are for patch {tok['patch_size']} / {tok['bits']:g} bits, the model has "
                         f"patch {model.patch_size} / {float(model.bits_per_token):g} bits")
    if idx_np.min() < 0 or idx_np.max() >= model.quantizer.codebook_size:
        raise InputError(f"{inp}: indices outside [0, {model.quantizer.codebook_size})")
    if tok["model_hash"] != model.weights_hash():
        msg = f"{inp}: tokens were made by a different model (hash {tok['model_hash'][:12]}...)"
        if not args.force:
            raise InputError(msg + "; use --force to decode anyway")
        print(f"{PROG}: warning: {msg}", file=sys.stderr)
    import torch

    t0 = time.perf_counter()
    H, W = tok["height"], tok["width"]
    idx = torch.from_numpy(idx_np)
    if not video:
        rec = model.decode(idx[None], size=(H, W), amp=args.amp)[0]
        save_image(rec, out)
        kind = f"image {W}x{H}"
    else:
        n = video_chunk(model)
        with _video_writer(out, tok["fps"], args) as writer:
            for s in range(0, idx.shape[0], n):
                writer.write(to_uint8(decode_frames(model, idx[s:s + n], (H, W), amp=args.amp)))
        kind = f"video {idx.shape[0]}x{W}x{H} @ {tok['fps']:g} fps"
    print(f"{inp} -> {out}: {kind}, {time.perf_counter() - t0:.2f} s")
    return 0


# ---- models ---------------------------------------------------------------------------------------
def add_presets(sub) -> None:
    p = sub.add_parser("presets", help="list the named architectures")
    p.set_defaults(func=cmd_presets)


def cmd_presets(args) -> int:
    import torch

    from .models import BSQViT, get_preset, preset_names

    print(f"{'name':<22} {'params':>12}  {'image':>9}  patch  frames  quantizer")
    for name in preset_names():
        cfg = get_preset(name)
        with torch.device("meta"):  # count parameters without allocating or initialising them
            n = BSQViT(cfg).num_parameters()
        q = cfg.quantizer
        print(f"{name:<22} {n:>12,}  {cfg.image_size[0]:>4}x{cfg.image_size[1]:<4}  {cfg.patch_size:>5}  "
              f"{cfg.num_frames:>6}  {q.type} L={q.dim}")
    return 0


def add_init_model(sub) -> None:
    p = sub.add_parser("init-model", help="save a randomly initialised model (for tests and benchmarks)")
    p.add_argument("--preset", required=True, help="preset name (see `bsqvit presets`)")
    p.add_argument("output", metavar="OUT_DIR")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_init_model)


def cmd_init_model(args) -> int:
    import shutil
    import tempfile

    import torch

    from .models import BSQViT, get_preset

    out = Path(args.output)
    if not out.parent.is_dir():
        raise InputError(f"{out}: output directory {out.parent} does not exist")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not an empty directory; refusing to overwrite")
    cfg = get_preset(args.preset)  # KeyError for unknown names
    torch.manual_seed(args.seed)
    model = BSQViT(cfg)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp)
        umask = os.umask(0)
        os.umask(umask)
        for f in [tmp, *tmp.iterdir()]:
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"{out}: preset {args.preset}, {model.num_parameters():,} parameters, seed {args.seed}")
    return 0


# ---- entry point ----------------------------------------------------------------------------------
def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a tokenizer from a YAML config (torchrun for multi-GPU)",
                       description="Train BSQ-ViT. Multi-process: torchrun --nproc_per_node N -m bsqvit train ...")
    p.add_argument("config", help="YAML training config (see configs/)")
    p.add_argument("--output-dir", required=True, help="run directory: checkpoints/, model/, tb/, samples/, log.jsonl")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (schedule still uses `steps`)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. optim.lr=3e-4 data.batch_size=16")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from .train import load_train_config
    from .train.trainer import train

    cfg = load_train_config(check_input(args.config), args.overrides)
    logs = train(cfg, args.output_dir, resume=args.resume, max_steps=args.max_steps, progress=not args.no_progress)
    if logs:
        print(f"done: step {logs.get('step', '')} loss {logs.get('loss', float('nan')):.4f} -> {args.output_dir}/model")
    return 0


def add_ablate(sub) -> None:
    p = sub.add_parser("ablate-quantizers", help="train the same tokenizer with BSQ, LFQ, VQ and FSQ at matched bits")
    p.add_argument("config", help="YAML training config of the shared tokenizer")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--bits", type=int, default=None, help="bits per token for every quantizer (default: model.quantizer.dim)")
    p.add_argument("--quantizers", default="bsq,lfq,vq,fsq")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_ablate)


def cmd_ablate(args) -> int:
    from .train import load_train_config
    from .train.ablate import run_ablation

    cfg = load_train_config(check_input(args.config), args.overrides)
    run_ablation(cfg, args.output_dir, bits=args.bits, kinds=tuple(args.quantizers.split(",")), max_steps=args.max_steps)
    print(Path(args.output_dir, "ablation.md").read_text())
    return 0


# ---- eval / fid-stats / bench (implementations: bsqvit.evaluate, bsqvit.bench) ------------------
def _eval_data_args(p: argparse.ArgumentParser) -> None:
    from .evaluate import FID_CHOICES, RESIZE_CHOICES

    p.add_argument("--resolution", type=int, default=None, metavar="R",
                   help="resize protocols: short side -> R, centre crop RxR (default: the model's training size)")
    p.add_argument("--resize", default="lanczos", choices=RESIZE_CHOICES,
                   help="lanczos (the paper's protocol, default), bilinear, bicubic, or none (original resolution)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N items (sorted by path)")
    p.add_argument("--batch", type=int, default=1, metavar="B", help="items per forward pass (same-size items only)")
    p.add_argument("--fid", default="auto", choices=FID_CHOICES,
                   help="rFID features: inception (real FID), squeeze-caffe (stand-in), auto (inception if found)")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="pt_inception-2015-12-05-6726825d.pth (default: weights dirs, torch hub cache)")
    p.add_argument("--weights-dir", default=None, metavar="DIR", help="extra directory searched for metric weights")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def add_eval(sub) -> None:
    from .evaluate import LPIPS_CHOICES

    p = sub.add_parser("eval", help="reconstruction metrics of a tokenizer on an image folder or videos", description=(
        "PSNR/SSIM/MS-SSIM/LPIPS per item, rFID(-like), rFVD, token statistics. Prints a Markdown table; "
        "--json writes every number; --report writes visual comparisons. Stand-in scores (offline "
        "SqueezeNet-Caffe networks) are labelled as not comparable to published numbers."))
    add_model_args(p)
    p.add_argument("--data", required=True, metavar="PATH", help="image file/folder, or (--video) video files / frame folders")
    p.add_argument("--video", action="store_true", help="evaluate video clips")
    p.add_argument("--frames", type=int, default=None, metavar="T",
                   help="video: frames per clip (default: the model's num_frames; 16 for an image model)")
    p.add_argument("--clips-per-video", type=int, default=1, metavar="K", help="video: consecutive clips per video")
    _eval_data_args(p)
    p.add_argument("--lpips", default="auto", choices=LPIPS_CHOICES,
                   help="LPIPS network; auto: vgg, else alex, else the squeeze-caffe stand-in")
    p.add_argument("--fid-ref", default=None, metavar="PATH.npz",
                   help="reference statistics for rFID: read if the file exists, else computed from the originals and saved")
    p.add_argument("--fid-method", default="sqrtm", choices=("sqrtm", "symmetric"),
                   help="Fréchet distance: sqrtm (pytorch-fid, default) or symmetric (same value, much faster on CPU)")
    p.add_argument("--i3d-weights", default=None, metavar="PATH", help="video: i3d_pretrained_400.pt for rFVD")
    p.add_argument("--json", default=None, metavar="OUT", help="write every number to OUT (JSON)")
    p.add_argument("--report", default=None, metavar="DIR", help="write a PNG grid (video: side-by-side MP4 + frame strip)")
    p.add_argument("--report-items", type=int, default=4, metavar="N", help="items shown in the report (default 4)")
    p.set_defaults(func=cmd_eval)


def _eval_config(args, **extra):
    from .evaluate import EvalConfig

    return EvalConfig(
        data=args.data, resolution=args.resolution, resize=args.resize, limit=args.limit, batch=args.batch,
        device=args.device, fid=args.fid, inception_weights=args.inception_weights, weights_dir=args.weights_dir,
        progress=not args.no_progress, **extra)


def cmd_eval(args) -> int:
    from .evaluate import evaluate, format_markdown, write_json

    inputs = [args.data, *model_files(args.model)]
    if args.json:
        check_output(args.json, inputs)
    if args.report and Path(args.report).exists() and not Path(args.report).is_dir():
        raise InputError(f"{args.report}: exists and is not a directory")
    if args.report and not Path(args.report).parent.is_dir():
        raise InputError(f"{args.report}: parent directory {Path(args.report).parent} does not exist")
    if args.fid_ref and Path(args.fid_ref).suffix != ".npz":
        raise InputError(f"{args.fid_ref}: reference statistics are .npz files")
    if args.fid_ref and not Path(args.fid_ref).exists():
        check_output(args.fid_ref, inputs)  # will be created: its directory must exist
    if not Path(args.data).exists():
        raise InputError(f"{args.data}: no such file or directory")
    setup_torch(args)
    model = resolve_model(args.model)
    cfg = _eval_config(args, video=args.video, amp=args.amp, lpips=args.lpips, fid_ref=args.fid_ref,
                       fid_method=args.fid_method,
                       i3d_weights=args.i3d_weights, frames=args.frames, clips_per_video=args.clips_per_video,
                       report=args.report, report_items=args.report_items)
    result = evaluate(model, cfg, model_path=str(args.model))
    if args.json:
        write_json(result, args.json)
    print(format_markdown(result))
    return 0


def add_fid_stats(sub) -> None:
    p = sub.add_parser("fid-stats", help="feature statistics of a reference image folder (.npz) for rFID",
                       description="Compute mu/sigma of the FID features of DATA under an eval protocol; "
                                   "use the file with `bsqvit eval --fid-ref`.")
    p.add_argument("data", metavar="DATA", help="image file or folder")
    p.add_argument("output", metavar="OUT.npz")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    _eval_data_args(p)
    p.set_defaults(func=cmd_fid_stats)


def cmd_fid_stats(args) -> int:
    from .evaluate import compute_reference_stats

    if Path(args.output).suffix != ".npz":
        raise InputError(f"{args.output}: statistics are written as .npz")
    check_output(args.output, [args.data])
    if not Path(args.data).exists():
        raise InputError(f"{args.data}: no such file or directory")
    setup_torch(args)
    r = compute_reference_stats(_eval_config(args), args.output)
    note = "" if r["comparable_to_published"] else " (stand-in: not comparable to published numbers)"
    print(f"{args.data} -> {args.output}: {r['n']} images, {r['feature']}{note}; {r['protocol']}")
    return 0


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="encode/decode throughput, FLOPs and achieved FLOP/s vs a plain GEMM")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", default=None, metavar="DIR", help="model directory (save_pretrained format)")
    src.add_argument("--preset", default=None, metavar="NAME", help="randomly initialised preset (see `bsqvit presets`)")
    p.add_argument("--resolution", type=int, default=None, metavar="R", help="RxR inputs (default: the model's size)")
    p.add_argument("--batch", type=int, default=1, metavar="B")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="bf16 = bfloat16 autocast")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    p.add_argument("--frames", type=int, default=None, metavar="T", help="video models: frames per clip")
    p.add_argument("--repeats", type=int, default=5, metavar="K", help="timed repeats (median reported)")
    p.add_argument("--warmup", type=int, default=1, metavar="W", help="untimed warm-up calls")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the numbers to OUT (JSON)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    import json

    import torch

    from .bench import bench, format_bench

    if args.json:
        check_output(args.json, model_files(args.model))
    setup_torch(args)
    if args.preset:
        from .models import BSQViT

        torch.manual_seed(0)
        model, name = BSQViT.from_preset(args.preset), f"preset {args.preset} (random weights)"
    else:
        model, name = resolve_model(args.model), str(args.model)
    r = bench(model, resolution=args.resolution, batch=args.batch, dtype=args.dtype, frames=args.frames,
              repeats=args.repeats, warmup=args.warmup, device=args.device, model_name=name)
    if args.json:
        with atomic_path(args.json) as tmp:
            Path(tmp).write_text(json.dumps(r, indent=2) + "\n")
    print(format_bench(r))
    return 0


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job on the embedded models: Kodak compress/decompress, RD plot, samples",
                       description=(
                           "Compress and decompress every image of --data with the embedded tokenizer and prior "
                           "(real .bsq files), print bpp / PSNR / seconds per image, compare with JPEG and WebP "
                           "(rd.png, rd.md, rd.json) and draw a generated sample grid. Offline."))
    p.add_argument("--data", default="../shared/data/kodak", metavar="DIR", help="images (default: ../shared/data/kodak)")
    p.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (default: demo-out)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N images")
    p.add_argument("--no-lpips", action="store_true", help="skip the LPIPS stand-in")
    p.add_argument("--threads", type=int, default=None, metavar="N")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from .demo import run_demo

    if not Path(args.data).is_dir():
        raise InputError(f"{args.data}: not a directory (give --data DIR)")
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1, got {args.limit}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    setup_torch(args)
    run_demo(args.data, out, limit=args.limit, lpips=not args.no_lpips, echo=lambda m: print(m, flush=True))
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_demo,
    add_reconstruct,
    add_tokenize,
    add_detokenize,
    add_presets,
    add_init_model,
    add_train,
    add_ablate,
    add_eval,
    add_fid_stats,
    add_bench,
]

from .codec.cli import CODEC_COMMANDS  # noqa: E402  compress, decompress, info, train-prior, rd

from .generate.cli import GEN_COMMANDS  # noqa: E402  train-gen, generate, eval-gen

COMMANDS += CODEC_COMMANDS + GEN_COMMANDS

EXPECTED_ERRORS = (InputError, ModelLoadError, ConfigError, ValueError, OSError, KeyError)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog=PROG, description="BSQ-ViT image/video tokenizer")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def error_message(e: BaseException) -> str:
    if isinstance(e, KeyError) and e.args:
        msg = str(e.args[0])
    elif isinstance(e, OSError) and e.strerror and e.filename:
        msg = f"{e.filename}: {e.strerror}"
    else:
        msg = str(e) or type(e).__name__
    return one_line(msg)


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
