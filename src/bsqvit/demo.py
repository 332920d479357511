"""``bsqvit demo``: the main job on the embedded default models, offline.

1. Every image of ``--data`` (the five sample photos shipped in the package by default) is compressed to a real ``.bsq`` file with the
   embedded tokenizer and prior and decompressed to a PNG; one line per image with bpp, PSNR and
   the seconds of each direction.
2. The same images go through JPEG and WebP quality sweeps (:func:`bsqvit.evaluation.rd.run_rd`, which
   also takes our measured points), giving ``rd.json``, ``rd.md`` and ``rd.png``. The summary is
   honest about one rate point: each baseline's PSNR at our bpp and the bpp it needs for our
   PSNR, and no BD-rate (which needs a curve of ours).
3. The embedded generator draws a sample grid (``generated/grid.png``, a row per class, captioned).

Every phase says what it does; the rate-distortion sweep shows a progress bar.

Outputs go to ``--out`` (created; existing files there are replaced atomically). There is no
embedded video model yet (the 40 MB budget has room for one; not trained), so no clip is coded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .codec.container import FORMAT_LIMITS
from .codec.files import compress_file, decompress_file
from .codec.prior import default_prior
from .data.images import find_images
from .evaluation.bdrate import interp_rate_at_psnr, psnr_at_rate
from .evaluation.rd import Metrics, run_rd
from .generate.model import MaskedTokenModel
from .generate.train import generate_images
from .io import InputError, atomic_path, load_image, to_uint8
from .io.grid import captioned_tile
from .models import load_tokenizer
from .pretrained import default_dir, default_model_dir, sample_images


def run_demo(data: str | None, out: str | Path, limit: int | None = None, codecs=("jpeg", "webp"),
             gen_per_class: int = 4, lpips: bool = True, echo=print, device: str = "cpu",
             progress: bool = True) -> dict:
    """The demo (see the module docstring); ``data=None``: the sample photos shipped in the package."""
    data = str(data) if data is not None else str(sample_images())
    files = find_images(data)[:limit] if limit is not None else find_images(data)
    if not files:
        raise InputError(f"{data}: no images")
    out = Path(out)
    for d in (out, out / "bsq", out / "decoded"):
        d.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    model = load_tokenizer(str(default_model_dir())).to(device).eval()
    prior = default_prior(model)
    if prior is None:
        raise InputError("no embedded prior matching the embedded tokenizer is installed")
    try:
        metrics = Metrics(lpips)
    except InputError as e:  # the stand-in's weights are optional: say so and go on without it
        echo(f"note: {e}; continuing without the LPIPS stand-in")
        lpips, metrics = False, Metrics(False)
    echo(f"1/3 compressing {len(files)} image(s) of {data} with the embedded tokenizer + prior "
         f"({device}), and decompressing them")
    per, mean = _code_images(files, model, prior, metrics, out, echo)
    echo(f"2/3 rate-distortion: {', '.join(codecs)} quality sweeps on the same images (PSNR, MS-SSIM)")
    report = run_rd(data, models=[], priors=[], limit=limit, codecs=list(codecs), lpips=lpips,
                    json_out=out / "rd.json", md_out=out / "rd.md", plot_out=out / "rd.png", progress=progress,
                    extra={f"bsq-{prior.config.kind}[embedded]": per})
    comparison = compare_at_equal_rate(report["points"], mean, codecs)
    for line in comparison["lines"]:
        echo(line)
    result = {"data": data, "items": len(per), "mean": mean, "comparison": comparison["baselines"],
              "bd_rate": report["bd_rate"], "per_item": per}
    gdir = default_dir("gen")
    if gdir is not None and gen_per_class > 0:
        echo(f"3/3 sampling {gen_per_class} image(s) per class with the embedded generator")
        result["generate_seconds"] = _sample_grid(gdir, model, out, gen_per_class, echo, device)
    result["seconds"] = time.time() - t_all
    with atomic_path(out / "demo.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
    echo(f"done in {result['seconds']:.0f} s. Outputs in {out}/: open rd.png first (our point on the JPEG/WebP "
         f"curves), then decoded/ beside the originals, generated/grid.png, and rd.md for the numbers.")
    return result


def _code_images(files, model, prior, metrics, out: Path, echo) -> tuple[list[dict], dict]:
    """Compress every file to ``out/bsq``, decompress to ``out/decoded``; a line per image."""
    per = []
    echo(f"{'image':<14}{'bpp':>8}{'PSNR':>8}{'MS-SSIM':>9}{'enc s':>8}{'dec s':>8}")
    for f in files:
        name = Path(f).stem
        bsq, png = out / "bsq" / f"{name}.bsq", out / "decoded" / f"{name}.png"
        t0 = time.perf_counter()
        st = compress_file(f, bsq, model, prior)
        t1 = time.perf_counter()
        decompress_file(bsq, png, model, prior, limits=FORMAT_LIMITS)  # our own files: the format's bounds
        t2 = time.perf_counter()
        m = metrics(to_uint8(load_image(f)), to_uint8(load_image(png)))
        per.append({"item": Path(f).name, "codec": f"bsq-{prior.config.kind}", "model": "embedded",
                    "prior": "embedded", "setting": "embedded", "bpp": st["bpp"], "bits_per_token": st["bits_per_token"],
                    "ideal_bits_per_token": st.get("ideal_bits_per_token"), "coder_overhead": st.get("coder_overhead"),
                    "seconds_compress": t1 - t0, "seconds_decompress": t2 - t1, "exact": True, **m})
        ms = m["ms_ssim"] if m["ms_ssim"] is not None else float("nan")
        echo(f"{name:<14}{st['bpp']:8.4f}{m['psnr']:8.2f}{ms:9.4f}{t1 - t0:8.2f}{t2 - t1:8.2f}")
    mean = {k: float(np.mean([p[k] for p in per])) for k in ("bpp", "psnr", "seconds_compress", "seconds_decompress")}
    echo(f"{'mean':<14}{mean['bpp']:8.4f}{mean['psnr']:8.2f}{'':9}{mean['seconds_compress']:8.2f}"
         f"{mean['seconds_decompress']:8.2f}")
    return per, mean


def compare_at_equal_rate(points: list[dict], ours: dict, codecs) -> dict:
    """Our one rate point against each baseline's sweep: the baseline's PSNR at our bpp and the
    bpp it needs for our PSNR (log-rate interpolation); no BD-rate, which needs a curve of ours."""
    lines = [f"ours (embedded model, one rate point): {ours['bpp']:.4f} bpp, {ours['psnr']:.2f} dB PSNR"]
    baselines = {}
    for codec in codecs:
        pts = sorted((p for p in points if p["codec"] == codec and p.get("psnr") is not None), key=lambda p: p["bpp"])
        if len(pts) < 2:
            lines.append(f"{codec}: no sweep measured")
            continue
        rate = np.array([p["bpp"] for p in pts])
        dist = np.array([p["psnr"] for p in pts])
        at_rate = psnr_at_rate(rate, dist, ours["bpp"])
        at_psnr = interp_rate_at_psnr(rate, dist, ours["psnr"])
        baselines[codec] = {"psnr_at_our_bpp": at_rate, "bpp_at_our_psnr": at_psnr,
                            "sweep_bpp": [float(rate[0]), float(rate[-1])]}
        if at_rate is not None:
            text = f"{codec} at {ours['bpp']:.4f} bpp: {at_rate:.2f} dB, so ours is {ours['psnr'] - at_rate:+.2f} dB"
        else:
            k = 0 if ours["bpp"] < rate[0] else len(rate) - 1  # the sweep's point nearest our rate
            text = (f"{codec}: its sweep spans {rate[0]:.3f}-{rate[-1]:.3f} bpp, not our rate; its "
                    f"{'lowest' if k == 0 else 'highest'} point is {rate[k]:.4f} bpp at {dist[k]:.2f} dB, so ours uses "
                    f"{100 * (ours['bpp'] / rate[k] - 1):+.1f} % rate for {ours['psnr'] - dist[k]:+.2f} dB")
        if at_psnr is not None:
            text += f"; {codec} needs {at_psnr:.4f} bpp for {ours['psnr']:.2f} dB ({100 * (ours['bpp'] / at_psnr - 1):+.1f} % rate for ours)"
        lines.append(text)
    lines.append("no BD-rate: it needs at least 4 rate points of ours, and the embedded model has one (rd.md)")
    return {"lines": lines, "baselines": baselines}


def _sample_grid(gdir: Path, model, out: Path, gen_per_class: int, echo, device: str = "cpu") -> float:
    """Draw ``gen_per_class`` samples per class with the embedded generator into
    ``out/generated/grid.png`` (a row per class, captioned with its name); returns the seconds taken."""
    gen = MaskedTokenModel.from_pretrained(str(gdir)).to(device).eval()
    t0 = time.perf_counter()
    c = gen.config
    C = max(1, c.num_classes)
    labels = torch.arange(C).repeat_interleave(gen_per_class) if c.num_classes else torch.full((gen_per_class,), -1)
    _, images = generate_images(gen, model, labels, seed=0, steps=12, guidance=2.0)
    names = list(c.class_names or c.class_ids) if c.num_classes else ["unconditional"]
    rows = [[(names[k] if j == 0 else "", _upscale(images[k * gen_per_class + j], 128)) for j in range(gen_per_class)]
            for k in range(C)]
    (out / "generated").mkdir(exist_ok=True)
    with atomic_path(out / "generated" / "grid.png") as tmp:
        Image.fromarray(captioned_tile(rows, fill=(255, 255, 255), text_fill=(0, 0, 0), uniform=True)).save(tmp)
    seconds = time.perf_counter() - t0
    echo(f"generated {len(images)} images ({C} classes x {gen_per_class}) -> {out / 'generated' / 'grid.png'} "
         f"({seconds:.1f} s)")
    return seconds


def _upscale(a: np.ndarray, side: int) -> np.ndarray:
    """Nearest-neighbour enlargement of a small sample to at least ``side`` pixels (room for its caption)."""
    k = max(1, -(-side // max(a.shape[:2])))
    return a.repeat(k, 0).repeat(k, 1)
