"""``bsqvit rd``: rate-distortion points of our codec and of classical codecs, BD-rates, report.

Protocol (stated in every output):

* **rate**: ``bpp = 8 x file bytes / pixels`` (``x frames`` for video), whole files: our ``.bsq``
  files with their header, the baselines' complete JPEG/WebP/AVIF/JPEG2000/MP4 files.
* **distortion**: on 8-bit RGB at the original size: PSNR-RGB (per image, then the mean; videos:
  mean over frames), MS-SSIM in dB (``-10 log10(1 - x)``, images of at least 161 px a side),
  and LPIPS's SqueezeNet-Caffe **stand-in** (uncalibrated; not comparable to published LPIPS).
* **our points**: every ``--model`` gives one point without a prior (raw L-bit tokens) and one
  per ``--prior`` (same tokens, so same distortion; the round trip is checked to be exact).
* **baselines**: quality sweeps through Pillow (JPEG, WebP, AVIF, JPEG2000) or PyAV
  (libx264, libx265, libsvtav1 CRF sweeps, ``preset medium`` / default speed, yuv420p).
* **BD-rate** (PSNR-based, percent; negative = fewer bits than the baseline at equal PSNR): with
  at least 4 points on our curve, the ``bjontegaard`` package (Akima, non-matching points);
  otherwise the rate difference at equal PSNR, the baseline's curve interpolated linearly in
  log-rate at each of our points' PSNR (then averaged). The ``method`` field says which.
  ``delta_psnr_at_equal_rate``: our PSNR minus the baseline's at our bpp (log-rate interpolation).
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..io import InputError, to_rgb
from ..metrics.lpips import build_lpips

IMAGE_SWEEPS = {
    "jpeg": [1, 3, 5, 10, 15, 20, 30, 40, 50, 60, 75, 90],
    "webp": [0, 2, 5, 10, 20, 30, 40, 50, 60, 75, 90],
    "avif": [0, 5, 10, 20, 30, 40, 50, 60, 70, 80],
    "jpeg2000": [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.2],  # target bpp -> compression ratio 24 / bpp
}
VIDEO_SWEEPS = {
    "h264": ("libx264", [20, 26, 32, 38, 44, 50]),
    "h265": ("libx265", [20, 26, 32, 38, 44, 50]),
    "av1": ("libsvtav1", [25, 35, 45, 52, 58, 63]),
}
PROTOCOL = ("bpp = 8 x whole-file bytes / (pixels x frames); PSNR-RGB on 8-bit RGB at the original size (mean "
            "over images, per-frame mean for video); MS-SSIM in dB = -10 log10(1 - MS-SSIM); LPIPS: SqueezeNet-Caffe "
            "stand-in (not comparable to published LPIPS); BD-rate on PSNR, negative = fewer bits")


# ---- encoders ----------------------------------------------------------------------------------------
def pillow_codecs() -> list[str]:
    from PIL import features

    out = ["jpeg"]
    if features.check("webp"):
        out.append("webp")
    if features.check("avif"):
        out.append("avif")
    if features.check("jpg_2000"):
        out.append("jpeg2000")
    return out


def encode_image(a: np.ndarray, codec: str, q) -> tuple[int, np.ndarray]:
    """uint8 (H, W, 3) -> (bytes, decoded uint8 (H, W, 3)) with a Pillow codec at setting ``q``."""
    from PIL import Image

    img = Image.fromarray(a)
    buf = io.BytesIO()
    if codec == "jpeg":
        img.save(buf, format="JPEG", quality=int(q))
    elif codec == "webp":
        img.save(buf, format="WEBP", quality=int(q), method=4)
    elif codec == "avif":
        img.save(buf, format="AVIF", quality=int(q))
    elif codec == "jpeg2000":
        img.save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[24.0 / float(q)], irreversible=True)
    else:
        raise InputError(f"unknown image codec {codec!r}")
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        dec = np.array(to_rgb(im))
    return len(data), dec


def video_codecs() -> list[str]:
    import av

    names = set(av.codecs_available)
    return [k for k, (enc, _) in VIDEO_SWEEPS.items() if enc in names]


def encode_video(frames: np.ndarray, fps: float, codec: str, crf: int, tmpdir: Path) -> tuple[int, np.ndarray]:
    from ..io import VideoWriter, iter_video_frames

    enc = VIDEO_SWEEPS[codec][0]
    path = tmpdir / f"{codec}_{crf}.mp4"
    opts = {} if enc in ("libx264", "libx265") else {"crf": str(crf)}
    with VideoWriter(path, fps, codec=enc, crf=crf if enc in ("libx264", "libx265") else None, options=opts) as w:
        w.write(frames)
    n = path.stat().st_size
    T, H, W = frames.shape[:3]
    dec = np.stack([f[:H, :W] for f in iter_video_frames(path)])
    path.unlink()
    if dec.shape != frames.shape:
        raise RuntimeError(f"{codec}: decoded {dec.shape}, expected {frames.shape}")
    return n, dec


# ---- metrics -----------------------------------------------------------------------------------------------
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
        from ..io import from_uint8
        from ..metrics.pixel import ms_ssim, ms_ssim_db, psnr

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


# ---- BD-rate ---------------------------------------------------------------------------------------------
def _curve(points: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    pts = sorted((p["bpp"], p["psnr"]) for p in points if p["bpp"] > 0 and math.isfinite(p["psnr"]))
    return np.array([a for a, _ in pts]), np.array([b for _, b in pts])


def interp_rate_at_psnr(base_rate: np.ndarray, base_psnr: np.ndarray, psnr: float) -> float | None:
    """The baseline's rate at ``psnr``: linear in log-rate between its neighbouring points."""
    order = np.argsort(base_psnr)
    q, r = base_psnr[order], np.log(base_rate[order])
    keep = np.concatenate([[True], np.diff(q) > 0])  # strictly increasing PSNR
    q, r = q[keep], r[keep]
    if len(q) < 2 or psnr < q[0] or psnr > q[-1]:
        return None
    return float(np.exp(np.interp(psnr, q, r)))


def psnr_at_rate(base_rate: np.ndarray, base_psnr: np.ndarray, rate: float) -> float | None:
    """The baseline's PSNR at ``rate``: linear in log-rate between its neighbouring points."""
    order = np.argsort(base_rate)
    r, q = np.log(base_rate[order]), base_psnr[order]
    if len(r) < 2 or not (r[0] <= math.log(rate) <= r[-1]):
        return None
    return float(np.interp(math.log(rate), r, q))


def bd_rate(ours: list[dict], base: list[dict]) -> dict:
    """BD-rate of our curve against a baseline (percent; negative = ours needs fewer bits), plus
    ``delta_psnr_at_equal_rate``: our PSNR minus the baseline's at our rate (mean over our points)."""
    r1, d1 = _curve(base)
    r2, d2 = _curve(ours)
    dp = [q - b for rate, q in zip(r2, d2) if (b := psnr_at_rate(r1, d1, float(rate))) is not None]
    out = _bd_rate(r1, d1, r2, d2)
    out["delta_psnr_at_equal_rate"] = float(np.mean(dp)) if dp else None
    return out


def _bd_rate(r1, d1, r2, d2) -> dict:
    if len(r2) >= 4 and len(r1) >= 4:
        import warnings

        import bjontegaard as bd

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                v = float(bd.bd_rate(r1, d1, r2, d2, method="akima", require_matching_points=False))
            except Exception as e:  # non-monotone curves, no overlap
                return {"bd_rate": None, "method": "bjontegaard-akima", "note": f"failed: {type(e).__name__}: {e}"}
        return {"bd_rate": v, "method": "bjontegaard-akima"}
    diffs = []
    for rate, q in zip(r2, d2):
        base_rate = interp_rate_at_psnr(r1, d1, float(q))
        if base_rate is not None:
            diffs.append(100.0 * (rate / base_rate - 1.0))
    if not diffs:
        return {"bd_rate": None, "method": "log-rate interpolation at equal PSNR",
                "note": "our PSNR is outside the baseline's range"}
    return {"bd_rate": float(np.mean(diffs)), "method": "log-rate interpolation at equal PSNR", "points": len(diffs)}


# ---- the run -----------------------------------------------------------------------------------------------
def _mean(vals):
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _aggregate(per_item: list[dict], keys=("bpp", "psnr", "ms_ssim", "ms_ssim_db", "lpips", "bits_per_token",
                                           "ideal_bits_per_token", "coder_overhead", "seconds_compress",
                                           "seconds_decompress")) -> dict:
    return {k: _mean(p.get(k) for p in per_item) for k in keys if any(k in p for p in per_item)}


def _load_items(data: str, video: bool, limit: int | None, max_frames: int):
    from ..data.images import find_images
    from ..io import VIDEO_SUFFIXES, iter_video_frames, video_info

    root = Path(data)
    if not root.exists():
        raise InputError(f"{root}: no such file or directory")
    if not video:
        files = find_images(str(root))[: limit or None]
        if not files:
            raise InputError(f"{root}: no images")
        from ..io import load_image, to_uint8

        for f in files:
            yield Path(f).name, to_uint8(load_image(f)), 0.0
        return
    files = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    files = files[: limit or None]
    if not files:
        raise InputError(f"{root}: no videos")
    for f in files:
        frames = np.stack(list(iter_video_frames(f, max_frames=max_frames)))
        yield f.name, frames, video_info(f)["fps"]


def run_rd(data: str, models: list[str], priors: list[str], video: bool = False, limit: int | None = None,
           max_frames: int = 16, codecs: list[str] | None = None, lpips: bool = True, json_out=None, md_out=None,
           plot_out=None, progress: bool = False, extra: dict[str, list[dict]] | None = None) -> dict:
    """The report (see the module docstring). ``extra``: per-item points of our codec measured
    elsewhere (label -> list of dicts as the ones built here), added as series of their own."""
    import tempfile

    from ..models import BSQViT
    from .api import CodecOptions, base_header, decode_tokens, decompress, encode_tokens, summarize, token_bits, tokenize
    from .container import FORMAT_LIMITS
    from .prior import TokenPrior

    available = video_codecs() if video else pillow_codecs()
    if codecs:
        unknown = [c for c in codecs if c not in available]
        if unknown:
            raise InputError(f"codecs not available here: {', '.join(unknown)} (available: {', '.join(available)})")
        available = codecs
    metrics = Metrics(lpips)
    loaded_models = [(Path(m).name or str(m), BSQViT.from_pretrained(m).eval()) for m in models]
    loaded_priors = [(Path(p).name if Path(p).name not in ("prior", "") else Path(p).parent.name + "/" + Path(p).name,
                      TokenPrior.from_pretrained(p).eval()) for p in priors]
    per: dict[str, list[dict]] = {}  # series label -> per-item points (with "setting")
    items = []
    t_start = time.time()
    with tempfile.TemporaryDirectory() as td:
        tmpdir = Path(td)
        for name, ref, fps in _load_items(data, video, limit, max_frames):
            items.append(name)
            pixels = int(np.prod(ref.shape[:-1]))  # H*W, or T*H*W
            for codec in available:
                sweep = VIDEO_SWEEPS[codec][1] if video else IMAGE_SWEEPS[codec]
                for q in sweep:
                    n, rec = encode_video(ref, fps, codec, q, tmpdir) if video else encode_image(ref, codec, q)
                    per.setdefault(f"{codec}@{q}", []).append({"item": name, "codec": codec, "setting": q,
                                                               "bpp": 8 * n / pixels, **metrics(ref, rec)})
            from ..io import from_uint8, to_uint8

            x = from_uint8(ref)
            for mname, model in loaded_models:
                # the tokenizer runs once per model; every coder codes the same tokens (same pixels)
                t0 = time.perf_counter()
                tokens = tokenize(model, x)
                t_tok = time.perf_counter() - t0
                media = "video" if video else "image"
                H, W = ref.shape[-3:-1]
                T = ref.shape[0] if video else 1
                for pname, prior in [(None, None), *loaded_priors]:
                    if prior is not None and prior.config.bits != token_bits(model):
                        continue
                    header = base_header(model, media, H, W, T, fps or 25.0, prior, CodecOptions())
                    t0 = time.perf_counter()
                    blob, info = encode_tokens(tokens, header, prior)
                    t1 = time.perf_counter()
                    if prior is None:  # the whole decoder once: entropy decoding + the tokenizer's decode
                        y = decompress(blob, model, limits=FORMAT_LIMITS)  # our own file: the format's bounds
                        t_pix = time.perf_counter() - t1
                        rec = to_uint8(y)
                        m = metrics(ref, rec)
                        exact = bool(torch.equal(torch.from_numpy(tokens),
                                                 torch.from_numpy(decode_tokens(blob, limits=FORMAT_LIMITS)[1])))
                        t2 = t1 + t_pix
                    else:
                        _, back = decode_tokens(blob, prior, limits=FORMAT_LIMITS)
                        t2 = time.perf_counter()
                        exact = bool(np.array_equal(back, tokens))  # same tokens -> decode gives the same pixels
                    st = summarize(blob, header, info, 0.0)
                    codec = "bsq-raw" if prior is None else f"bsq-{prior.config.kind}"
                    label = f"bsq-raw[{mname}]" if prior is None else f"{codec}[{mname}+{pname}]"
                    per.setdefault(label, []).append({
                        "item": name, "codec": codec, "model": mname, "prior": pname,
                        "setting": mname if prior is None else f"{mname}+{pname}", "bpp": st["bpp"],
                        "bits_per_token": st["bits_per_token"], "ideal_bits_per_token": st["ideal_bits_per_token"],
                        "coder_overhead": st["coder_overhead"], "seconds_compress": t_tok + t1 - t0,
                        "seconds_decompress": (t2 - t1) + (t_pix if prior is not None else 0.0), "exact": exact, **m})
                    if not exact:
                        raise RuntimeError(f"{name}: {label} round trip is not exact")
    for label, lst in (extra or {}).items():
        per[label] = list(lst)
    # mean points per series
    points = []
    for label, lst in per.items():
        first = lst[0]
        pt = {"label": label, "codec": first["codec"], "setting": first["setting"], "n": len(lst), **_aggregate(lst)}
        if "exact" in first:
            pt["exact_round_trip"] = all(p["exact"] for p in lst)
        points.append(pt)
    baselines = {}
    for p in points:
        if not p["codec"].startswith("bsq-"):
            baselines.setdefault(p["codec"], []).append(p)
    ours: dict[str, list[dict]] = {}
    for p in points:
        if p["codec"].startswith("bsq-"):
            key = p["codec"] if p["codec"] == "bsq-raw" else f"{p['codec']}[{p['setting'].split('+', 1)[-1]}]"
            ours.setdefault(key, []).append(p)
    bd = {o: {b: bd_rate(op, bp) for b, bp in baselines.items()} for o, op in ours.items()}
    report = {
        "protocol": PROTOCOL, "data": str(data), "video": video, "items": items, "max_frames": max_frames if video else None,
        "lpips": metrics.lp.label if metrics.lp is not None else None, "points": points,
        "per_item": [q for lst in per.values() for q in lst], "bd_rate": bd, "seconds": time.time() - t_start,
    }
    report["markdown"] = markdown(report)
    from ..io import atomic_path

    if json_out:
        with atomic_path(json_out) as tmp:
            Path(tmp).write_text(json.dumps({k: v for k, v in report.items() if k != "markdown"}, indent=2) + "\n")
    if md_out:
        with atomic_path(md_out) as tmp:
            Path(tmp).write_text(report["markdown"] + "\n")
    if plot_out:
        plot(report, plot_out)
    return report


def _f(v, nd=3):
    return "-" if v is None else f"{v:.{nd}f}"


def markdown(report: dict) -> str:
    lines = [f"Rate-distortion on `{report['data']}` ({len(report['items'])} {'videos' if report['video'] else 'images'}).",
             "", f"Protocol: {report['protocol']}.", "",
             "| codec | setting | bpp | PSNR (dB) | MS-SSIM (dB) | LPIPS* | bits/token |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for p in sorted(report["points"], key=lambda p: (p["codec"], p["bpp"])):
        lines.append(f"| {p['codec']} | {p['setting']} | {_f(p['bpp'], 4)} | {_f(p['psnr'], 2)} | "
                     f"{_f(p.get('ms_ssim_db'), 2)} | {_f(p.get('lpips'), 4)} | {_f(p.get('bits_per_token'), 3)} |")
    lines += ["", "BD-rate (PSNR, % bits; negative = ours smaller) and PSNR difference at our rate:", "",
              "| ours | baseline | BD-rate (%) | ΔPSNR at equal bpp (dB) | method |", "|---|---|---:|---:|---|"]
    for o, d in report["bd_rate"].items():
        for b, r in d.items():
            lines.append(f"| {o} | {b} | {_f(r['bd_rate'], 1)} | {_f(r.get('delta_psnr_at_equal_rate'), 2)} | "
                         f"{r['method']}{' (' + r['note'] + ')' if r.get('note') else ''} |")
    lines.append("")
    lines.append("*LPIPS column: " + (report["lpips"] or "not computed"))
    return "\n".join(lines)


def plot(report: dict, out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, ylabel in ((axes[0], "psnr", "PSNR-RGB (dB)"), (axes[1], "ms_ssim_db", "MS-SSIM (dB)")):
        series: dict[str, list[dict]] = {}
        for p in report["points"]:
            name = p["codec"] if not p["codec"].startswith("bsq-") else p["label"]
            series.setdefault(name, []).append(p)
        for name, pts in sorted(series.items()):
            pts = sorted((q for q in pts if q.get(key) is not None), key=lambda q: q["bpp"])
            if not pts:
                continue
            ours = name.startswith("bsq-")
            ax.plot([q["bpp"] for q in pts], [q[key] for q in pts], "*" if ours else ".-", markersize=12 if ours else 5,
                    label=name)
        ax.set_xlabel("bpp")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    title = f"{report['data']} ({len(report['items'])} {'videos' if report['video'] else 'images'})"
    fig.suptitle(title.replace("$", r"\$"), fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
