"""``bsqvit rd``: rate-distortion points of our codec and of classical codecs, BD-rates, report.

Protocol (stated in every output):

* **rate**: ``bpp = 8 x file bytes / pixels`` (``x frames`` for video), whole files: our ``.bsq``
  files with their header, the baselines' complete JPEG/WebP/AVIF/JPEG2000/MP4 files.
* **distortion**: on 8-bit RGB at the original size: PSNR-RGB (per image, then the mean; videos:
  mean over frames), MS-SSIM in dB (``-10 log10(1 - x)``, images of at least 161 px a side),
  and LPIPS's SqueezeNet-Caffe **stand-in** (uncalibrated; not comparable to published LPIPS).
* **our points**: every ``--model`` gives one point without a prior (raw L-bit tokens) and one
  per ``--prior`` (same tokens, so same distortion; the round trip is checked to be exact).
* **baselines**: quality sweeps (:mod:`bsqvit.evaluation.baselines`).
* **BD-rate** on PSNR, and the PSNR difference at equal rate (:mod:`bsqvit.evaluation.bdrate`).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..codec.api import (CodecOptions, base_header, decode_tokens, decompress, encode_tokens, summarize, to_file_tokens,
                         token_bits, tokenize)
from ..codec.container import FORMAT_LIMITS
from ..codec.prior import TokenPrior
from ..codec.temporal import check_threshold, copy_video, video_latents
from ..data.images import find_images
from ..data.video_sources import find_videos
from ..io import InputError, from_uint8, iter_video_frames, load_image, to_uint8, video_info
from ..io.video import DEFAULT_FPS
from ..metrics.lpips import build_lpips
from ..metrics.pixel import ms_ssim, ms_ssim_db, psnr
from ..models import load_tokenizer
from ..models.frames import stream_decode_frames, stream_encode_frames
from ..models.streaming import NotStreamableError, check_streamable
from .baselines import IMAGE_SWEEPS, VIDEO_SWEEPS, encode_image, encode_video, pillow_codecs, video_codecs
from .bdrate import bd_rate
from .rd_report import markdown, write_outputs

__all__ = ["run_rd", "Metrics", "PROTOCOL"]

PROTOCOL = ("bpp = 8 x whole-file bytes / (pixels x frames); PSNR-RGB on 8-bit RGB at the original size (mean "
            "over images, per-frame mean for video); MS-SSIM in dB = -10 log10(1 - MS-SSIM); LPIPS: SqueezeNet-Caffe "
            "stand-in (not comparable to published LPIPS); BD-rate on PSNR, negative = fewer bits")


class Metrics:
    def __init__(self, lpips: bool):
        """``lpips``: compute the SqueezeNet LPIPS stand-in; its weights are found through
        ``$BSQVIT_WEIGHTS_DIR`` or the torch-hub cache (see :mod:`bsqvit.nets.backbones`)."""
        self.lp = None
        if lpips:
            try:
                self.lp, _ = build_lpips("squeeze-caffe")
            except (FileNotFoundError, OSError) as e:
                raise InputError(f"LPIPS stand-in unavailable ({e}); set BSQVIT_WEIGHTS_DIR or use --no-lpips") from None

    @torch.no_grad()
    def __call__(self, ref: np.ndarray, rec: np.ndarray) -> dict:
        """uint8 (H, W, 3) or (T, H, W, 3) pairs -> psnr, ms_ssim_db, lpips (means over frames)."""
        if ref.ndim == 3:
            ref, rec = ref[None], rec[None]
        x = from_uint8(ref).movedim(0, 1)  # (T, 3, H, W)
        y = from_uint8(rec).movedim(0, 1)
        out = {"psnr": float(psnr(y, x).clamp(max=100).mean())}
        ms = ms_ssim(y, x)
        out["ms_ssim"] = None if ms is None else float(ms.mean())
        out["ms_ssim_db"] = None if ms is None else float(np.mean([ms_ssim_db(float(v)) for v in ms]))
        if self.lp is not None:
            out["lpips"] = float(torch.cat([self.lp(y[i : i + 8], x[i : i + 8]).reshape(-1)
                                            for i in range(0, len(x), 8)]).mean())
        else:
            out["lpips"] = None
        return out


# ---- inputs ------------------------------------------------------------------------------------------------
def _choose_codecs(video: bool, codecs: list[str] | None) -> list[str]:
    available = video_codecs() if video else pillow_codecs()
    if codecs:
        unknown = [c for c in codecs if c not in available]
        if unknown:
            raise InputError(f"codecs not available here: {', '.join(unknown)} (available: {', '.join(available)})")
        available = codecs
    return available


def _prior_name(p: str) -> str:
    return Path(p).name if Path(p).name not in ("prior", "") else Path(p).parent.name + "/" + Path(p).name


def _load_items(data: str, video: bool, limit: int | None, max_frames: int):
    """(name, uint8 (H, W, 3) or (T, H, W, 3), fps) of every image or video in ``data``."""
    root = Path(data)
    if not root.exists():
        raise InputError(f"{root}: no such file or directory")
    if not video:
        files = find_images(str(root))[: limit or None]
        if not files:
            raise InputError(f"{root}: no images")
        for f in files:
            yield Path(f).name, to_uint8(load_image(f)), 0.0
        return
    sources = find_videos(str(root))[: limit or None]
    if not sources:
        raise InputError(f"{root}: no videos (video files or folders of frame images)")
    for src in sources:
        if src.is_folder:
            frames = _folder_frames(src.frames[:max_frames])
            name, fps = Path(src.path).name, DEFAULT_FPS
        else:
            frames = np.stack(list(iter_video_frames(src.path, max_frames=max_frames)))
            name, fps = Path(src.path).name, video_info(src.path)["fps"]
        yield name, frames, fps


def _folder_frames(files: list[str]) -> np.ndarray:
    """uint8 (T, H, W, 3) of a folder of frame images (a frame folder is a video, as in training)."""
    frames = [to_uint8(load_image(f)) for f in files]
    if any(f.shape != frames[0].shape for f in frames):
        raise InputError(f"{Path(files[0]).parent}: frame sizes differ within the folder")
    return np.stack(frames)


# ---- points per item ---------------------------------------------------------------------------------------
def _baseline_points(per: dict, name: str, ref: np.ndarray, fps: float, codecs: list[str], video: bool,
                     metrics: Metrics, tmpdir: Path) -> None:
    """Every baseline codec at every setting of its sweep on one item -> ``per[codec@setting]``."""
    pixels = int(np.prod(ref.shape[:-1]))  # H*W, or T*H*W
    for codec in codecs:
        sweep = VIDEO_SWEEPS[codec][1] if video else IMAGE_SWEEPS[codec]
        for q in sweep:
            n, rec = encode_video(ref, fps, codec, q, tmpdir) if video else encode_image(ref, codec, q)
            per.setdefault(f"{codec}@{q}", []).append({"item": name, "codec": codec, "setting": q,
                                                       "bpp": 8 * n / pixels, **metrics(ref, rec)})


def _code_raw(model, tokens: np.ndarray, header, ref: np.ndarray, metrics: Metrics) -> dict:
    """Raw tokens through the whole decoder once (entropy decoding + the tokenizer's decode)."""
    t0 = time.perf_counter()
    blob, info = encode_tokens(tokens, header, None)
    t1 = time.perf_counter()
    y = decompress(blob, model, limits=FORMAT_LIMITS)  # our own file: the format's bounds
    t_pix = time.perf_counter() - t1
    m = metrics(ref, to_uint8(y))
    exact = bool(torch.equal(torch.from_numpy(tokens), torch.from_numpy(decode_tokens(blob, limits=FORMAT_LIMITS)[1])))
    return {"blob": blob, "info": info, "t_encode": t1 - t0, "t_decode": t_pix, "exact": exact, "metrics": m}


def _code_with_prior(prior, tokens: np.ndarray, header) -> dict:
    """The same tokens range-coded with ``prior``; decoded back to tokens (same tokens -> same pixels)."""
    t0 = time.perf_counter()
    blob, info = encode_tokens(tokens, header, prior)
    t1 = time.perf_counter()
    _, back = decode_tokens(blob, prior, limits=FORMAT_LIMITS)
    t2 = time.perf_counter()
    return {"blob": blob, "info": info, "t_encode": t1 - t0, "t_decode": t2 - t1, "exact": bool(np.array_equal(back, tokens))}


def _rates_of(model, rates: list[int] | None) -> list[int | None]:
    """The rates to code ``model`` at: the requested ones it has (all of its nested levels by
    default), or [None] (all bits) for a fixed-rate model."""
    levels = list(getattr(model, "nested_bits", None) or [])
    if not levels:
        return [None]
    return [r for r in levels if rates is None or r in rates] or [levels[-1]]


def _our_points(per: dict, name: str, ref: np.ndarray, x: torch.Tensor, fps: float, mname: str, model,
                priors: list[tuple], video: bool, metrics: Metrics, rates: list[int] | None = None,
                copy: float = 0.0) -> None:
    """One model on one item: raw tokens and every prior of its bit depth -> ``per[label]``, at
    every rate of a nested-bits model (one curve from one model).

    The encoder runs once per model: a token at rate L' is the full token with its dropped bits
    cleared (``quantizer.keep_bits``, what ``encode(bits=L')`` returns), and every coder codes the
    same tokens (same pixels), so a prior's point takes the raw point's distortion and
    pixel-decoding time. Block-causal video models also go through the per-frame streaming path
    once, at the highest rate coded (:func:`_stream_frames`), on the plain tokens. ``copy``: videos,
    the encoder's temporal copy threshold (:mod:`bsqvit.codec.temporal`), applied per rate to the
    latents of that one encoder run; the copy decision is causal, so it streams as the tokens do."""
    levels = _rates_of(model, rates)
    t0 = time.perf_counter()
    latents = video_latents(model, x.to(model.device)) if video and copy else None
    full = tokenize(model, x) if latents is None else copy_video(latents, model.quantizer.dim, None, 0.0).cpu().numpy()
    t_tok = time.perf_counter() - t0
    top = levels[-1]
    stream = _stream_frames(model, x, _at_rate(model, full, top), top) if video and _streams(model) else {}
    for bits in levels:
        tokens = (copy_video(latents, model.quantizer.dim, bits, copy).cpu().numpy() if latents is not None
                  else _at_rate(model, full, bits))
        label = mname if bits is None else f"{mname}@{bits}"
        _code_rate(per, name, ref, fps, label, model, priors, video, metrics, tokens, bits, t_tok,
                   stream if bits == top else {})


def _at_rate(model, tokens: np.ndarray, bits: int | None) -> np.ndarray:
    """Full-width tokens -> the tokens of rate ``bits`` (dropped bits cleared); None: unchanged."""
    return tokens if bits is None else model.quantizer.keep_bits(torch.from_numpy(tokens), bits).numpy()


def _streams(model) -> bool:
    """Video models that stream frame by frame (block-causal ViTs)."""
    if model.config.num_frames == 1:
        return False
    try:
        check_streamable(model)
        return True
    except NotStreamableError:
        return False


def _stream_frames(model, x: torch.Tensor, tokens: np.ndarray, bits: int | None) -> dict:
    """The per-frame streaming path (key/value cache, one frame pushed at a time): its tokens must
    be the clip path's (the same file), and its encode/decode seconds per frame are reported."""
    T, size = x.shape[1], tuple(x.shape[-2:])
    x = x.to(model.device)
    t0 = time.perf_counter()
    idx = torch.cat([i.cpu() for i in stream_encode_frames(model, (x[:, f : f + 1] for f in range(T)), bits=bits)])
    t1 = time.perf_counter()
    for _ in stream_decode_frames(model, (idx[f : f + 1].to(model.device) for f in range(T)), size, bits=bits):
        pass
    t2 = time.perf_counter()
    exact = bool(np.array_equal(idx.numpy(), tokens))
    if not exact:
        raise RuntimeError("the per-frame streaming tokens differ from the clip path's")
    return {"stream_exact": exact, "stream_encode_s_per_frame": (t1 - t0) / T, "stream_decode_s_per_frame": (t2 - t1) / T}


def _code_rate(per: dict, name: str, ref: np.ndarray, fps: float, mname: str, model, priors: list[tuple],
               video: bool, metrics: Metrics, tokens: np.ndarray, bits: int | None, t_tok: float,
               stream: dict | None = None) -> None:
    media = "video" if video else "image"
    H, W = ref.shape[-3:-1]
    T = ref.shape[0] if video else 1
    L = token_bits(model) if bits is None else bits
    tokens = to_file_tokens(tokens, model, L)
    raw = None
    for pname, prior in [(None, None), *priors]:
        if prior is not None and (prior.config.bits != token_bits(model) or L not in (prior.config.rates or [L])):
            continue
        header = base_header(model, media, H, W, T, fps or 25.0, prior, CodecOptions(), bits=bits)
        if prior is None:
            raw = c = _code_raw(model, tokens, header, ref, metrics)
            t_decompress = c["t_decode"]
        else:
            c = _code_with_prior(prior, tokens, header)
            t_decompress = c["t_decode"] + raw["t_decode"]
        st = summarize(c["blob"], header, c["info"], 0.0)
        codec = "bsq-raw" if prior is None else f"bsq-{prior.config.kind}"
        label = f"bsq-raw[{mname}]" if prior is None else f"{codec}[{mname}+{pname}]"
        per.setdefault(label, []).append({
            "item": name, "codec": codec, "model": mname, "prior": pname, "bits": L,
            "setting": mname if prior is None else f"{mname}+{pname}", "bpp": st["bpp"],
            "bits_per_token": st["bits_per_token"], "ideal_bits_per_token": st["ideal_bits_per_token"],
            "coder_overhead": st["coder_overhead"], "seconds_compress": t_tok + c["t_encode"],
            "seconds_decompress": t_decompress, "exact": c["exact"], **(stream or {}), **raw["metrics"]})
        if not c["exact"]:
            raise RuntimeError(f"{name}: {label} round trip is not exact")


# ---- summary -----------------------------------------------------------------------------------------------
def _mean(vals):
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _aggregate(per_item: list[dict], keys=("bpp", "psnr", "ms_ssim", "ms_ssim_db", "lpips", "bits_per_token",
                                           "ideal_bits_per_token", "coder_overhead", "seconds_compress",
                                           "seconds_decompress", "stream_encode_s_per_frame",
                                           "stream_decode_s_per_frame")) -> dict:
    return {k: _mean(p.get(k) for p in per_item) for k in keys if any(k in p for p in per_item)}


def _mean_points(per: dict[str, list[dict]]) -> list[dict]:
    """One point per series: the means over its items."""
    points = []
    for label, lst in per.items():
        first = lst[0]
        pt = {"label": label, "codec": first["codec"], "setting": first["setting"], "n": len(lst), **_aggregate(lst)}
        if "exact" in first:
            pt["exact_round_trip"] = all(p["exact"] for p in lst)
        if "stream_exact" in first:
            pt["stream_exact"] = all(p.get("stream_exact") for p in lst)
        points.append(pt)
    return points


def _bd_rates(points: list[dict]) -> dict:
    """BD-rate of each of our curves (raw; each prior kind + prior) against each baseline codec."""
    baselines: dict[str, list[dict]] = {}
    ours: dict[str, list[dict]] = {}
    for p in points:
        if not p["codec"].startswith("bsq-"):
            baselines.setdefault(p["codec"], []).append(p)
    for p in points:
        if p["codec"].startswith("bsq-"):
            key = p["codec"] if p["codec"] == "bsq-raw" else f"{p['codec']}[{p['setting'].split('+', 1)[-1]}]"
            ours.setdefault(key, []).append(p)
    return {o: {b: bd_rate(op, bp) for b, bp in baselines.items()} for o, op in ours.items()}


# ---- the run -----------------------------------------------------------------------------------------------
def _measure(data: str, models: list[tuple], priors: list[tuple], video: bool, limit: int | None, max_frames: int,
             codecs: list[str], metrics: Metrics, progress: bool = False,
             rates: list[int] | None = None, copy: float = 0.0) -> tuple[dict[str, list[dict]], list[str]]:
    """(series label -> per-item points, item names) of every baseline and model on every item."""
    per: dict[str, list[dict]] = {}
    items = []
    bar = tqdm(desc=f"rate-distortion ({', '.join(codecs)})", unit=" item", disable=not progress, leave=False)
    with tempfile.TemporaryDirectory() as td, bar:
        for name, ref, fps in _load_items(data, video, limit, max_frames):
            bar.set_postfix_str(name)
            items.append(name)
            _baseline_points(per, name, ref, fps, codecs, video, metrics, Path(td))
            x = from_uint8(ref)
            for mname, model in models:
                _our_points(per, name, ref, x, fps, mname, model, priors, video, metrics, rates, copy)
            bar.update()
    return per, items


def run_rd(data: str, models: list[str], priors: list[str], video: bool = False, limit: int | None = None,
           max_frames: int = 16, codecs: list[str] | None = None, lpips: bool = True, json_out=None, md_out=None,
           plot_out=None, progress: bool = False, extra: dict[str, list[dict]] | None = None,
           device: str = "cpu", rates: list[int] | None = None, temporal_copy: float | None = None) -> dict:
    """The report (see the module docstring). ``extra``: per-item points of our codec measured
    elsewhere (label -> list of dicts as the ones built here), added as series of their own.
    ``rates``: the rates (bits kept per token) at which nested-bits models are coded (default:
    all of their levels), each a point of the model's curve. ``temporal_copy``: videos, the
    encoder's copy threshold for every coder of the run (None: the first video prior's own, else 0)."""
    available = _choose_codecs(video, codecs)
    metrics = Metrics(lpips)
    loaded_models = [(Path(m).name or str(m), load_tokenizer(m).to(device).eval()) for m in models]
    loaded_priors = [(_prior_name(p), TokenPrior.from_pretrained(p).eval()) for p in priors]
    copy = 0.0 if not video else check_threshold(temporal_copy) if temporal_copy is not None else next(
        (p.config.temporal_copy for _, p in loaded_priors if p.config.video), 0.0)
    t_start = time.time()
    per, items = _measure(data, loaded_models, loaded_priors, video, limit, max_frames, available, metrics, progress,
                          rates, copy)
    for label, lst in (extra or {}).items():
        per[label] = list(lst)
    points = _mean_points(per)
    report = {
        "protocol": PROTOCOL, "data": str(data), "video": video, "items": items, "max_frames": max_frames if video else None,
        "lpips": metrics.lp.label if metrics.lp is not None else None, "temporal_copy": copy, "points": points,
        "per_item": [q for lst in per.values() for q in lst], "bd_rate": _bd_rates(points), "seconds": time.time() - t_start,
    }
    report["markdown"] = markdown(report)
    write_outputs(report, json_out, md_out, plot_out)
    return report
