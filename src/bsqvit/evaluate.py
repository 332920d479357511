"""Tokenizer evaluation (``bsqvit eval``): reconstruction metrics, token statistics, reports.

Protocols (stated in every output):

* ``resize="lanczos"`` (the paper's; also ``bilinear``/``bicubic``): the short side is resized to
  ``resolution`` with Pillow's antialiased filter, then the centre ``resolution``² crop is taken;
* ``resize="none"``: original resolution; the model pads to a multiple of its patch size and crops
  back; items of different sizes are never batched together.

Video (``video=True``): clips of ``frames`` (default: the model's ``num_frames``) consecutive
frames from the start of every video file / frame folder (``clips_per_video`` consecutive clips);
PSNR / SSIM / MS-SSIM / LPIPS are computed per frame and averaged over the clip; rFVD (I3D) when
its weights are found.

Metrics are computed on 8-bit values (reconstructions rounded as when saved to PNG). PSNR is per
item on [0, 255], then averaged over items. rFID is the Fréchet distance between the features of
the reconstructions and of the originals over the evaluated set (or cached reference statistics,
``fid_ref``); with the offline SqueezeNet-Caffe stand-in it is labelled "FID-like, not comparable to
published numbers". Few items bias FID upwards; N is always reported.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .io import InputError, atomic_path, from_uint8, load_image, to_uint8
from .metrics.lpips import build_lpips

__all__ = ["EvalConfig", "evaluate", "format_markdown", "write_json", "compute_reference_stats",
           "RESIZE_CHOICES", "LPIPS_CHOICES", "FID_CHOICES", "default_weight_dirs"]

RESIZE_CHOICES = ("lanczos", "bilinear", "bicubic", "none")
LPIPS_CHOICES = ("auto", "vgg", "alex", "squeeze", "squeeze-caffe", "none")
FID_CHOICES = ("auto", "inception", "squeeze-caffe", "none")
STAND_IN = "not comparable to published numbers"
SMALL_N_NOTE = "FID from few items is biased upwards (published rFID uses 50,000 images)"
MAX_TABLE_ROWS = 50


@dataclass
class EvalConfig:
    data: str
    video: bool = False
    resolution: int | None = None  # None: the model's training size (resize protocols only)
    resize: str = "lanczos"
    limit: int | None = None
    batch: int = 1
    amp: bool = False
    device: str = "cpu"
    lpips: str = "auto"
    fid: str = "auto"
    fid_ref: str | None = None
    fid_method: str = "sqrtm"  # sqrtm (pytorch-fid) | symmetric (TF-GAN formulation, faster)
    inception_weights: str | None = None
    i3d_weights: str | None = None
    weights_dir: str | None = None
    frames: int | None = None
    clips_per_video: int = 1
    report: str | None = None
    report_items: int = 4
    progress: bool = True


def default_weight_dirs(extra: str | os.PathLike | None = None) -> list[str]:
    """Directories searched for metric weights besides the loaders' own ``$BSQVIT_WEIGHTS_DIR``
    and torch-hub cache: ``extra`` (``--weights-dir``) when given."""
    return [str(extra)] if extra else []


# ---- data ---------------------------------------------------------------------------------------
def _check_config(cfg: EvalConfig) -> None:
    if cfg.resize not in RESIZE_CHOICES:
        raise InputError(f"--resize must be one of {', '.join(RESIZE_CHOICES)}, got {cfg.resize!r}")
    if cfg.resize == "none" and cfg.resolution is not None:
        raise InputError("--resolution applies to the resize protocols; drop it or use --resize lanczos|bilinear")
    if cfg.resolution is not None and cfg.resolution < 1:
        raise InputError(f"--resolution must be >= 1, got {cfg.resolution}")
    if cfg.batch < 1:
        raise InputError(f"--batch must be >= 1, got {cfg.batch}")
    if cfg.limit is not None and cfg.limit < 1:
        raise InputError(f"--limit must be >= 1, got {cfg.limit}")
    if cfg.frames is not None and cfg.frames < 1:
        raise InputError(f"--frames must be >= 1, got {cfg.frames}")
    if cfg.clips_per_video < 1:
        raise InputError(f"--clips-per-video must be >= 1, got {cfg.clips_per_video}")
    if cfg.lpips not in LPIPS_CHOICES:
        raise InputError(f"--lpips must be one of {', '.join(LPIPS_CHOICES)}, got {cfg.lpips!r}")
    if cfg.fid not in FID_CHOICES:
        raise InputError(f"--fid must be one of {', '.join(FID_CHOICES)}, got {cfg.fid!r}")
    if cfg.fid_method not in ("sqrtm", "symmetric"):
        raise InputError(f"--fid-method must be sqrtm or symmetric, got {cfg.fid_method!r}")
    if not Path(cfg.data).exists():
        raise InputError(f"{cfg.data}: no such file or directory")


def list_images(data: str | os.PathLike) -> tuple[Path, list[Path]]:
    """(root, sorted image files) for a file or a folder (searched recursively)."""
    from .data.images import find_images

    p = Path(data)
    if p.is_file():
        return p.parent, [p]
    files = [Path(f) for f in find_images(str(p))]
    if not files:
        raise InputError(f"{p}: no images found")
    return p, files


def _pil_from_tensor(x: torch.Tensor):
    from PIL import Image

    return Image.fromarray(to_uint8(x))


def load_eval_image(path: Path, resolution: int | None, resize: str) -> torch.Tensor:
    """(3, H, W) in [-1, 1] under the protocol (``resize="none"``: the file as is)."""
    x = load_image(path)
    if resize == "none":
        return x
    from .data.transforms import eval_transform

    return eval_transform(resolution, resample=resize)(_pil_from_tensor(x))


def _source_frames(src, n: int) -> tuple[list[np.ndarray], float]:
    """First ``n`` frames (uint8 HWC) of a video file or frame folder, and its frame rate."""
    if src.is_folder:
        frames = [to_uint8(load_image(f)) for f in src.frames[:n]]  # io's RGB policy, InputError
        if len({a.shape for a in frames}) > 1:
            raise InputError(f"{src.path}: frames of different sizes")
        return frames, 25.0
    from .io import iter_video_frames, video_info

    frames = list(iter_video_frames(src.path, max_frames=n))
    return frames, float(video_info(src.path)["fps"])


@dataclass
class _Item:
    name: str
    x: torch.Tensor  # (3, H, W) or (3, T, H, W) in [-1, 1]
    fps: float = 0.0
    start: int = 0


def _iter_images(cfg: EvalConfig, resolution: int | None) -> tuple[int, Iterator[_Item]]:
    root, files = list_images(cfg.data)
    if cfg.limit:
        files = files[: cfg.limit]

    def gen():
        for f in files:
            name = str(f.relative_to(root)) if root in f.parents else f.name
            yield _Item(name, load_eval_image(f, resolution, cfg.resize))

    return len(files), gen()


def _iter_clips(cfg: EvalConfig, T: int, resolution: int | None, skipped: list) -> tuple[int, Iterator[_Item]]:
    from .data.video import find_videos

    p = Path(cfg.data)
    sources = find_videos(str(p))
    if not sources:
        raise InputError(f"{p}: no videos or frame folders found")
    total = len(sources) * cfg.clips_per_video
    if cfg.limit:
        total = min(total, cfg.limit)
    root = p if p.is_dir() else p.parent

    def gen():
        count = 0
        for src in sources:
            sp = Path(src.path)
            name = str(sp.relative_to(root)) if root in sp.parents else sp.name
            frames, fps = _source_frames(src, T * cfg.clips_per_video)
            n_clips = len(frames) // T
            if n_clips == 0:
                skipped.append({"name": name, "reason": f"{len(frames)} frames < {T}"})
                continue
            for k in range(n_clips):
                if cfg.limit and count >= cfg.limit:
                    return
                clip = np.stack(frames[k * T:(k + 1) * T])
                if cfg.resize == "none":
                    x = from_uint8(clip)
                else:
                    from PIL import Image

                    from .data.transforms import eval_transform

                    x = eval_transform(resolution, resample=cfg.resize).apply_frames([Image.fromarray(f) for f in clip])
                count += 1
                yield _Item(name if n_clips == 1 else f"{name}#clip{k}", x, fps, k * T)

    return total, gen()


def _batches(items: Iterator[_Item], batch: int) -> Iterator[list[_Item]]:
    """Consecutive items of the same shape, at most ``batch`` at a time."""
    buf: list[_Item] = []
    for it in items:
        if buf and (len(buf) == batch or it.x.shape != buf[0].x.shape):
            yield buf
            buf = []
        buf.append(it)
    if buf:
        yield buf


# ---- model --------------------------------------------------------------------------------------
def _encode_decode(model, x: torch.Tensor, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B,3,H,W) or clips (B,3,T,H,W) -> (indices, reconstruction in [-1, 1], same shape).

    Image models code clips frame by frame; video models code clips in pieces of at most
    ``num_frames`` frames."""
    H, W = x.shape[-2:]
    if x.dim() == 4:
        idx = model.encode(x, amp=amp)
        return idx, model.decode(idx, size=(H, W), amp=amp)
    B, C, T = x.shape[:3]
    if model.config.num_frames == 1:
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)
        idx = model.encode(frames, amp=amp)
        rec = model.decode(idx, size=(H, W), amp=amp)
        return idx.reshape(B, T, *idx.shape[1:]), rec.reshape(B, T, C, H, W).transpose(1, 2)
    n = model.config.num_frames
    idxs, recs = [], []
    for s in range(0, T, n):
        idx = model.encode(x[:, :, s:s + n], amp=amp)
        idxs.append(idx)
        recs.append(model.decode(idx, size=(H, W), amp=amp))
    return torch.cat(idxs, 1), torch.cat(recs, 2)


# ---- metric networks ----------------------------------------------------------------------------
def _build_fid(cfg: EvalConfig, dirs: list[str]):
    from .metrics.fid import build_fid_features
    from .nets.backbones import WeightsNotFound

    if cfg.fid == "none":
        return None, {"status": "not computed (--fid none)"}
    try:
        fx = build_fid_features(cfg.fid, cfg.inception_weights, dirs)
    except WeightsNotFound as e:
        if cfg.fid != "auto":
            raise
        return None, {"status": "unavailable (no InceptionV3 or SqueezeNet-Caffe weights found)", "error": str(e)}
    info = {"features": fx.name, "label": fx.label, "comparable_to_published": fx.comparable_to_published,
            "stand_in": not fx.comparable_to_published}
    if cfg.fid == "auto" and not fx.comparable_to_published:
        info["note_weights"] = "auto: the FID InceptionV3 weights (pt_inception-2015-12-05-6726825d.pth) were not found"
    return fx, info


def _build_i3d(cfg: EvalConfig, dirs: list[str]):
    from .metrics.fvd import I3DFeatures
    from .nets.backbones import WeightsNotFound

    try:
        return I3DFeatures(cfg.i3d_weights, dirs), None
    except WeightsNotFound:
        if cfg.i3d_weights is not None:
            raise
        return None, "unavailable (no I3D weights)"


# ---- protocol -----------------------------------------------------------------------------------
def data_protocol(cfg: EvalConfig, resolution: int | None) -> str:
    """The input side of the protocol (what reference statistics depend on)."""
    if cfg.resize == "none":
        return "original resolution (no resize)"
    return f"short side resized to {resolution} px ({cfg.resize}, Pillow antialiased), centre crop {resolution}x{resolution}"


def protocol_string(cfg: EvalConfig, model, resolution: int | None, T: int | None) -> str:
    s = data_protocol(cfg, resolution)
    if cfg.resize == "none":
        s += f"; the model pads to a multiple of {model.patch_size} px ({model.config.pad_mode}) and crops back"
    if T is not None:
        s += f"; clips of {T} consecutive frames from frame 0 ({cfg.clips_per_video} per video), metrics per frame averaged"
    s += "; metrics on 8-bit values, PSNR per item on [0, 255] averaged over items"
    if cfg.amp:
        s += "; bf16 autocast"
    return s


# ---- main ---------------------------------------------------------------------------------------
def _mean(vals) -> float | None:
    v = [a for a in vals if a is not None]
    return float(np.mean(v)) if v else None


def _finite(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@torch.no_grad()
def evaluate(model, cfg: EvalConfig, model_path: str | None = None) -> dict:
    """Evaluate ``model`` on ``cfg.data``; returns the result dict (see :func:`write_json`)."""
    from .metrics import pixel
    from .metrics.fid import FeatureStats, Stats, load_stats, save_stats
    from .metrics.tokens import TokenStats, raw_bpp

    _check_config(cfg)
    device = torch.device(cfg.device)
    model = model.to(device).eval()
    resolution = None if cfg.resize == "none" else (cfg.resolution or int(model.config.image_size[0]))
    T = None
    skipped: list = []
    if cfg.video:
        T = cfg.frames or int(model.config.num_frames)
        if T == 1 and cfg.frames is None:
            T = 16  # an image model on video: 16-frame clips coded frame by frame
        total, items = _iter_clips(cfg, T, resolution, skipped)
    else:
        if cfg.frames is not None:
            raise InputError("--frames applies to --video evaluation")
        total, items = _iter_images(cfg, resolution)

    dirs = default_weight_dirs(cfg.weights_dir)
    lp, lpips_info = build_lpips(cfg.lpips, dirs)
    fx, fid_info = _build_fid(cfg, dirs)
    i3d, fvd_status = _build_i3d(cfg, dirs) if cfg.video else (None, "not applicable (images)")
    ref_stats: Stats | None = None
    if cfg.fid_ref and fx is not None and Path(cfg.fid_ref).is_file():
        ref_stats = load_stats(cfg.fid_ref)
        if ref_stats.feature and ref_stats.feature != fx.name:
            raise InputError(f"{cfg.fid_ref}: statistics of {ref_stats.feature!r} features, this run uses {fx.name!r}")
    for m in (lp, fx, i3d):
        if m is not None:
            m.to(device)

    q = model.quantizer
    binary = hasattr(q, "group_size")
    g = getattr(q, "group_size", None)
    tstats = TokenStats(q.bits, binary=binary, group_size=g if g and g > 1 else None, codebook_size=q.codebook_size)
    f_orig = FeatureStats(fx.name) if fx is not None else None
    f_rec = FeatureStats(fx.name) if fx is not None else None
    v_orig, v_rec = (FeatureStats("i3d"), FeatureStats("i3d")) if i3d is not None else (None, None)
    per_item: list[dict] = []
    shown: list[tuple] = []
    bits = float(model.bits_per_token)

    from tqdm import tqdm

    bar = tqdm(total=total, desc="eval", unit="clip" if cfg.video else "img", disable=not cfg.progress,
               file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()
    t_model = 0.0
    try:
        for batch in _batches(items, cfg.batch):
            x = torch.stack([it.x for it in batch]).to(device)
            tm = time.perf_counter()
            idx, rec = _encode_decode(model, x, cfg.amp)
            t_model += time.perf_counter() - tm
            rec = rec.float()
            ps = pixel.per_frame(pixel.psnr, rec, x)
            ss = pixel.per_frame(pixel.ssim, rec, x)
            ms = pixel.per_frame(pixel.ms_ssim, rec, x)
            lv = lp(rec, x) if lp is not None else None
            if fx is not None:
                xa, ra = (pixel.frames_as_batch(x), pixel.frames_as_batch(rec)) if x.dim() == 5 else (x, rec)
                f_orig.update(fx(xa))
                f_rec.update(fx(ra))
            if i3d is not None and x.shape[2] >= 9:
                v_orig.update(i3d(x))
                v_rec.update(i3d(rec))
            tstats.update(idx)
            for j, it in enumerate(batch):
                H, W = it.x.shape[-2:]
                frames = it.x.shape[1] if it.x.dim() == 4 else 1
                n_tok = int(idx[j].numel())
                rec_item = {
                    "name": it.name,
                    "width": int(W),
                    "height": int(H),
                    **({"frames": int(frames), "start": it.start} if cfg.video else {}),
                    "psnr": float(ps[j]),
                    "ssim": float(ss[j]),
                    "ms_ssim": None if ms is None else float(ms[j]),
                    "lpips": None if lv is None else float(lv[j]),
                    "tokens": n_tok,
                    "bpp": bits * n_tok / (frames * H * W),
                }
                per_item.append(rec_item)
                if len(shown) < cfg.report_items and cfg.report:
                    shown.append((it, to_uint8(it.x.cpu()), to_uint8(rec[j].cpu()), rec_item["psnr"]))
            bar.update(len(batch))
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    if not per_item:
        raise InputError(f"{cfg.data}: nothing to evaluate" + (f" (skipped: {skipped})" if skipped else ""))

    n = len(per_item)
    # ---- dataset-level scores
    fid: dict = dict(fid_info)
    if fx is not None:
        fid.update(n=n if not cfg.video else f_orig.n, note=SMALL_N_NOTE)
        if cfg.video:
            fid["unit"] = "frames"
        ref_created = False
        if cfg.fid_ref and ref_stats is None and f_orig.n >= 2:
            ref_stats = f_orig.stats(data=str(cfg.data), data_protocol=data_protocol(cfg, resolution),
                                     unit="frames" if cfg.video else "images")
            save_stats(cfg.fid_ref, ref_stats)
            ref_created = True
        if f_rec.n < 2:
            fid.update(value=None, status="needs at least 2 items")
        else:
            ref = ref_stats if ref_stats is not None else f_orig.stats()
            fid["value"] = ref.distance(f_rec.stats(), method=cfg.fid_method)
            fid["method"] = cfg.fid_method
            fid["reference"] = str(cfg.fid_ref) if cfg.fid_ref else "originals of the evaluated set"
            fid["reference_n"] = int(ref.n)
            if cfg.fid_ref:
                fid["reference_created"] = ref_created
                rp = ref.meta.get("data_protocol") if ref.meta else None
                if rp and rp != data_protocol(cfg, resolution):
                    fid["reference_protocol"] = rp
                    print(f"bsqvit: warning: {cfg.fid_ref} was computed under another protocol: {rp}", file=sys.stderr)
    else:
        fid.setdefault("value", None)
    if cfg.video:
        if i3d is None:
            fvd = {"value": None, "status": fvd_status}
        elif v_orig.n < 2:
            fvd = {"value": None, "status": f"needs at least 2 clips of >= 9 frames (have {v_orig.n})"}
        else:
            fvd = {"value": frechet_distance_of(v_orig, v_rec, cfg.fid_method), "method": cfg.fid_method,
                   "n": v_orig.n, "label": i3d.label,
                   "features": i3d.name, "comparable_to_published": True, "stand_in": False,
                   "note": "few clips bias FVD upwards; published rFVD uses the UCF-101 protocol"}
    else:
        fvd = {"value": None, "status": fvd_status}

    tok = tstats.summary()
    tok["bits_per_token"] = bits
    tok["raw_bpp"] = raw_bpp(bits, model.patch_size)
    tok["bpp_mean"] = _mean(r["bpp"] for r in per_item)
    means = {
        "psnr": _mean(r["psnr"] for r in per_item),
        "ssim": _mean(r["ssim"] for r in per_item),
        "ms_ssim": _mean(r["ms_ssim"] for r in per_item),
        "ms_ssim_n": sum(r["ms_ssim"] is not None for r in per_item),
        "lpips": _mean(r["lpips"] for r in per_item),
    }
    means["ms_ssim_db"] = pixel.ms_ssim_db(means["ms_ssim"]) if means["ms_ssim"] is not None else None
    labels = {
        "lpips": lpips_info.get("label", lpips_info.get("status")),
        "rfid": fid.get("label", fid.get("status")),
    }
    if cfg.video:
        labels["rfvd"] = fvd.get("label", fvd.get("status"))
    stand_ins = [k for k, info in (("lpips", lpips_info), ("rfid", fid)) if info.get("stand_in")]
    from .version import __version__

    result = {
        "bsqvit_version": __version__,
        "kind": "video" if cfg.video else "image",
        "model": {
            "path": model_path,
            "hash": model.weights_hash(),
            "parameters": model.num_parameters(),
            "bits_per_token": bits,
            "patch_size": model.patch_size,
            "image_size": list(model.config.image_size),
            "num_frames": int(model.config.num_frames),
            "quantizer": getattr(model.config.quantizer, "type", None),
        },
        "data": str(cfg.data),
        "protocol": protocol_string(cfg, model, resolution, T),
        "protocol_args": {"resize": cfg.resize, "resolution": resolution, "frames": T,
                          "clips_per_video": cfg.clips_per_video if cfg.video else None, "limit": cfg.limit},
        "n": n,
        "skipped": skipped,
        "means": means,
        "lpips": lpips_info,
        "fid": fid,
        "fvd": fvd,
        "tokens": tok,
        "labels": labels,
        "stand_ins": stand_ins,
        "stand_in_note": STAND_IN if stand_ins else None,
        "per_item": per_item,
        "timing": {"seconds": seconds, "model_seconds": t_model, "items_per_second": n / seconds if seconds else None},
        "settings": {"batch": cfg.batch, "amp": cfg.amp, "device": str(device), "threads": torch.get_num_threads()},
    }
    if cfg.report:
        result["report"] = write_report(shown, cfg.report, video=cfg.video)
    return result


def frechet_distance_of(a, b, method: str = "sqrtm") -> float:
    from .metrics.fid import frechet_distance

    return frechet_distance(a.mean, a.cov, b.mean, b.cov, method=method)


# ---- outputs ------------------------------------------------------------------------------------
def write_report(shown: list, out_dir: str | os.PathLike, video: bool) -> dict:
    """PNG grid (images) or, per clip, a side-by-side MP4 and a frame-strip PNG. Returns the paths."""
    from .report import frame_strip, image_grid, side_by_side_video

    d = Path(out_dir)
    if not d.is_dir():
        if not d.parent.is_dir():
            raise InputError(f"{d}: parent directory {d.parent} does not exist")
        d.mkdir()
    files: dict = {}
    if not video:
        rows = [(it.name, a, b, f"{p:.2f} dB") for it, a, b, p in shown]
        path = d / "report.png"
        image_grid(rows, path)
        files["grid"] = str(path)
        return files
    files["videos"], files["strips"] = [], []
    for it, a, b, _ in shown:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in it.name)
        mp4, png = d / f"{safe}_side_by_side.mp4", d / f"{safe}_frames.png"
        side_by_side_video(a, b, mp4, it.fps or 25.0)
        frame_strip(it.name, a, b, png)
        files["videos"].append(str(mp4))
        files["strips"].append(str(png))
    return files


def _clean(o):
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        o = o.item()
    return _finite(o)


def write_json(result: dict, path: str | os.PathLike) -> None:
    """Strict JSON (non-finite numbers, e.g. the PSNR of a perfect reconstruction, become null)."""
    import json

    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(_clean(result), indent=2, allow_nan=False) + "\n")


def _f(v, fmt: str) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, fmt)


def format_markdown(r: dict) -> str:
    """A Markdown summary: per-item table (up to 50 rows) with the means, then dataset-level scores."""
    video = r["kind"] == "video"
    unit = ("clip" if video else "image") + ("" if r["n"] == 1 else "s")
    lines = [f"## bsqvit eval: {r['data']} ({r['n']} {unit})", "", f"Protocol: {r['protocol']}.", ""]
    lp_col = "LPIPS" + ("*" if r["lpips"].get("stand_in") else "")
    lines += [f"| {'clip' if video else 'image'} | PSNR (dB) | SSIM | MS-SSIM | {lp_col} | bpp |",
              "|---|---:|---:|---:|---:|---:|"]
    for it in r["per_item"][:MAX_TABLE_ROWS]:
        lines.append(f"| {it['name']} | {_f(it['psnr'], '.2f')} | {_f(it['ssim'], '.4f')} | {_f(it['ms_ssim'], '.4f')} | "
                     f"{_f(it['lpips'], '.4f')} | {_f(it['bpp'], '.4f')} |")
    if len(r["per_item"]) > MAX_TABLE_ROWS:
        lines.append(f"| ... {len(r['per_item']) - MAX_TABLE_ROWS} more in the JSON | | | | | |")
    m = r["means"]
    lines.append(f"| **mean** | **{_f(m['psnr'], '.2f')}** | **{_f(m['ssim'], '.4f')}** | **{_f(m['ms_ssim'], '.4f')}** | "
                 f"**{_f(m['lpips'], '.4f')}** | **{_f(r['tokens']['bpp_mean'], '.4f')}** |")
    lines += ["", "| dataset score | value | note |", "|---|---:|---|"]
    fid = r["fid"]
    fname = "rFID" if fid.get("comparable_to_published") else "rFID-like"
    if fid.get("value") is not None:
        note = f"{fid['label']}; n = {fid['n']}{' frames' if video else ''}, reference: {fid.get('reference')}; {fid['note']}"
        lines.append(f"| {fname} | {fid['value']:.3f} | {note} |")
    else:
        lines.append(f"| rFID | n/a | {fid.get('status', 'not computed')} |")
    if video:
        fvd = r["fvd"]
        if fvd.get("value") is not None:
            lines.append(f"| rFVD | {fvd['value']:.3f} | {fvd['label']}; n = {fvd['n']} clips; {fvd['note']} |")
        else:
            lines.append(f"| rFVD | n/a | {fvd.get('status')} |")
    if m["ms_ssim"] is not None:
        lines.append(f"| MS-SSIM (dB) | {_f(m['ms_ssim_db'], '.3f')} | -10 log10(1 - MS-SSIM) of the mean; "
                     f"{m['ms_ssim_n']} of {r['n']} items large enough (>= 161 px) |")
    else:
        lines.append("| MS-SSIM | n/a | items smaller than 161 px on a side |")
    t = r["tokens"]
    lines.append(f"| code usage | {100 * t['code_usage']:.4g}% | {t['used_codes']:,} of {t['codebook_size']:,} codes seen in "
                 f"{t['tokens']:,} tokens ({100 * t['code_usage_of_possible']:.4g}% of the possible) |")
    if "bit_usage" in t:
        bu = t["bit_usage"]
        lines.append(f"| per-bit usage | {min(bu):.3f}-{max(bu):.3f} | fraction of tokens with bit = 1, min-max over {len(bu)} bits |")
    ent = f"{t['entropy_bits']:.3f}"
    note = "empirical entropy of the token indices (bounded by log2 of the token count)"
    if "group_entropy_bits" in t:
        note += f"; per group: {' + '.join(f'{v:.2f}' for v in t['group_entropy_bits'])} = {t['group_entropy_sum']:.2f}"
    if "bit_entropy_sum" in t:
        note += f"; sum of per-bit entropies {t['bit_entropy_sum']:.2f}"
    lines.append(f"| entropy (bits/token) | {ent} | {note} |")
    lines.append(f"| raw bpp | {t['raw_bpp']:.4f} | L / p^2 = {t['bits_per_token']:g} / {r['model']['patch_size']}^2 "
                 f"(no entropy coding) |")
    lines.append("")
    lp = r["lpips"]
    lines.append(f"LPIPS: {lp.get('label') or lp.get('status')}" + (f" ({lp['note']})" if lp.get("note") else ""))
    if r["stand_ins"]:
        lines.append(f"*Stand-in scores ({', '.join(r['stand_ins'])}) are computed on offline SqueezeNet-Caffe "
                     f"features: {STAND_IN}.")
    if r.get("skipped"):
        lines.append(f"Skipped: {', '.join(s['name'] + ' (' + s['reason'] + ')' for s in r['skipped'])}.")
    tm = r["timing"]
    lines.append(f"Time: {tm['seconds']:.1f} s ({tm['model_seconds']:.1f} s in the tokenizer), "
                 f"{r['settings']['threads']} threads, {r['settings']['device']}.")
    return "\n".join(lines)


# ---- reference statistics -----------------------------------------------------------------------
@torch.no_grad()
def compute_reference_stats(cfg: EvalConfig, out: str | os.PathLike, model_image_size: int | None = None) -> dict:
    """Feature statistics of the (protocol-transformed) originals in ``cfg.data`` -> ``out`` (.npz).

    Without a model, the resize protocols need ``cfg.resolution`` (or ``model_image_size``)."""
    from .metrics.fid import FeatureStats, save_stats

    _check_config(cfg)
    if cfg.video:
        raise InputError("reference statistics are for images (rFID); video clips are compared with rFVD")
    if cfg.fid == "none":
        raise InputError("--fid none: nothing to compute")
    resolution = None if cfg.resize == "none" else (cfg.resolution or model_image_size)
    if cfg.resize != "none" and resolution is None:
        raise InputError("--resolution is required for the resize protocols")
    dirs = default_weight_dirs(cfg.weights_dir)
    fx, info = _build_fid(cfg, dirs)
    if fx is None:
        raise InputError(info["status"])
    device = torch.device(cfg.device)
    fx.to(device)
    total, items = _iter_images(cfg, resolution)
    fs = FeatureStats(fx.name)
    from tqdm import tqdm

    for batch in tqdm(_batches(items, cfg.batch), desc="features", disable=not cfg.progress, file=sys.stderr,
                      total=None):
        fs.update(fx(torch.stack([it.x for it in batch]).to(device)))
    if fs.n < 2:
        raise InputError(f"{cfg.data}: statistics need at least 2 images, found {fs.n}")

    proto = data_protocol(cfg, resolution)
    save_stats(out, fs.stats(data=str(cfg.data), data_protocol=proto, unit="images"))
    return {"n": fs.n, "feature": fx.name, "label": fx.label, "out": str(out), "protocol": proto,
            "comparable_to_published": fx.comparable_to_published, "data": str(cfg.data)}
