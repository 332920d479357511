"""``bsqvit demo``: the main job on the embedded default models, offline.

1. Every image of ``--data`` (the five sample photos shipped in the package by default) is compressed to real ``.bsq`` files with the
   embedded tokenizer and prior and decompressed to PNGs; one line per image and rate with bpp,
   PSNR and the seconds of each direction. A nested-bits default is coded at four of its rates
   (:func:`demo_rates`), so the demo draws a curve from the one model; a fixed-rate one at its rate.
2. The same images go through JPEG and WebP quality sweeps (:func:`bsqvit.evaluation.rd.run_rd`, which
   also takes our measured points), giving ``rd.json``, ``rd.md`` and ``rd.png``. The summary gives
   each baseline's PSNR at our bpp for every rate, and the BD-rate (``bjontegaard``) when our
   curve has at least 4 points; with fewer it says there is none.
3. The embedded generator draws a sample grid (``generated/grid.png``, a row per class, captioned).

Every phase says what it does; the rate-distortion sweep shows a progress bar.

Outputs go to ``--out`` (created; existing files there are replaced atomically). Videos are not
part of the demo: ``bsqvit compress clip.mp4 clip.bsq`` uses the embedded video default.
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

DEMO_RATES = 4  # rates a nested-bits default is coded at: a curve, and a BD-rate (bjontegaard needs 4)


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
    rates = demo_rates(model)
    at = "" if rates == [None] else f" at {', '.join(map(str, rates))} bits per token"
    echo(f"1/3 compressing {len(files)} image(s) of {data} with the embedded tokenizer + prior{at} "
         f"({device}), and decompressing them")
    per, means = _code_images(files, model, prior, metrics, out, echo, rates)
    echo(f"2/3 rate-distortion: {', '.join(codecs)} quality sweeps on the same images (PSNR, MS-SSIM)")
    report = run_rd(data, models=[], priors=[], limit=limit, codecs=list(codecs), lpips=lpips,
                    json_out=out / "rd.json", md_out=out / "rd.md", plot_out=out / "rd.png", progress=progress,
                    extra=per)
    comparison = compare_at_equal_rate(report["points"], means, codecs,
                                       report["bd_rate"].get(f"bsq-{prior.config.kind}[embedded]", {}))
    for line in comparison["lines"]:
        echo(line)
    mean = means[-1]
    result = {"data": data, "items": len(files), "rates": rates, "mean": mean, "means": means,
              "comparison": comparison["baselines"], "bd_rate": comparison["bd_rate"],
              "per_item": [q for lst in per.values() for q in lst]}
    gdir = default_dir("gen")
    if gdir is not None and gen_per_class > 0:
        echo(f"3/3 sampling {gen_per_class} image(s) per class with the embedded generator")
        result["generate_seconds"] = _sample_grid(gdir, model, out, gen_per_class, echo, device)
    result["seconds"] = time.time() - t_all
    with atomic_path(out / "demo.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
    echo(f"done in {result['seconds']:.0f} s. Outputs in {out}/: open rd.png first (our points on the JPEG/WebP "
         f"curves), then decoded/ beside the originals, generated/grid.png, and rd.md for the numbers.")
    return result


def demo_rates(model) -> list[int | None]:
    """The rates the demo codes at: four of a nested-bits model's levels, spread from the lowest
    to the full rate (enough for a BD-rate), or [None] (its one rate) for a fixed-rate model."""
    levels = list(model.nested_bits or [])
    if len(levels) < 2:
        return [None]
    picks = np.linspace(0, len(levels) - 1, min(DEMO_RATES, len(levels))).round().astype(int)
    return [levels[i] for i in sorted(set(picks.tolist()))]


def _code_images(files, model, prior, metrics, out: Path, echo, rates: list[int | None]) -> tuple[dict, list[dict]]:
    """Compress every file at every rate to ``out/bsq``, decompress to ``out/decoded``; a line per
    image and rate. -> (series label -> per-image points, as ``run_rd`` takes them; means per rate)."""
    per: dict[str, list[dict]] = {}
    kind = prior.config.kind
    echo(f"{'image':<14}{'bits':>5}{'bpp':>8}{'PSNR':>8}{'MS-SSIM':>9}{'enc s':>8}{'dec s':>8}")
    for f in files:
        name = Path(f).stem
        for bits in rates:
            stem = name if bits is None else f"{name}@{bits}"
            bsq, png = out / "bsq" / f"{stem}.bsq", out / "decoded" / f"{stem}.png"
            t0 = time.perf_counter()
            st = compress_file(f, bsq, model, prior, bits=bits)
            t1 = time.perf_counter()
            decompress_file(bsq, png, model, prior, limits=FORMAT_LIMITS)  # our own files: the format's bounds
            t2 = time.perf_counter()
            m = metrics(to_uint8(load_image(f)), to_uint8(load_image(png)))
            setting = "embedded" if bits is None else f"embedded@{bits}+embedded"  # rd's curve key: after the +
            per.setdefault(f"bsq-{kind}[embedded]" if bits is None else f"bsq-{kind}[embedded@{bits}]", []).append({
                "item": Path(f).name, "codec": f"bsq-{kind}", "model": "embedded", "prior": "embedded",
                "setting": setting, "bits": st["raw_bits_per_token"], "bpp": st["bpp"],
                "bits_per_token": st["bits_per_token"], "ideal_bits_per_token": st.get("ideal_bits_per_token"),
                "coder_overhead": st.get("coder_overhead"), "seconds_compress": t1 - t0,
                "seconds_decompress": t2 - t1, "exact": True, **m})
            ms = m["ms_ssim"] if m["ms_ssim"] is not None else float("nan")
            echo(f"{name:<14}{st['raw_bits_per_token']:5d}{st['bpp']:8.4f}{m['psnr']:8.2f}{ms:9.4f}{t1 - t0:8.2f}"
                 f"{t2 - t1:8.2f}")
    keys = ("bpp", "psnr", "seconds_compress", "seconds_decompress")
    means = [{"bits": lst[0]["bits"], **{k: float(np.mean([p[k] for p in lst])) for k in keys}} for lst in per.values()]
    for mean in means:
        echo(f"{'mean':<14}{mean['bits']:5d}{mean['bpp']:8.4f}{mean['psnr']:8.2f}{'':9}"
             f"{mean['seconds_compress']:8.2f}{mean['seconds_decompress']:8.2f}")
    return per, means


def compare_at_equal_rate(points: list[dict], means: list[dict], codecs, bd: dict) -> dict:
    """Our points (one per rate) against each baseline's sweep: the baseline's PSNR at our bpp and
    the bpp it needs for our PSNR (log-rate interpolation), and the BD-rate when our curve has at
    least 4 points (``bd``: :func:`bsqvit.evaluation.rd.run_rd`'s entry for our curve)."""
    lines, baselines = [], {}
    for ours in means:
        lines.append(f"ours at {ours['bits']} bits per token: {ours['bpp']:.4f} bpp, {ours['psnr']:.2f} dB PSNR")
        for codec in codecs:
            line, entry = _against(points, codec, ours)
            lines.append("  " + line)
            baselines.setdefault(codec, []).append(entry)
    bd_rate = {}
    if len(means) >= 4:
        for codec in codecs:
            r = bd.get(codec) or {}
            bd_rate[codec] = r.get("bd_rate")
            lines.append(f"BD-rate vs {codec}: {r['bd_rate']:+.1f} % ({r['method']})" if r.get("bd_rate") is not None
                         else f"BD-rate vs {codec}: undefined ({r.get('note') or 'the curves do not overlap'})")
    else:
        lines.append(f"no BD-rate: it needs at least 4 rate points of ours, and the embedded model has "
                     f"{len(means)} (rd.md)")
    return {"lines": lines, "baselines": baselines, "bd_rate": bd_rate}


def _against(points: list[dict], codec: str, ours: dict) -> tuple[str, dict]:
    """One baseline at one of our points: (the summary line, the figures)."""
    pts = sorted((p for p in points if p["codec"] == codec and p.get("psnr") is not None), key=lambda p: p["bpp"])
    if len(pts) < 2:
        return f"{codec}: no sweep measured", {"bits": ours["bits"], "psnr_at_our_bpp": None, "bpp_at_our_psnr": None}
    rate = np.array([p["bpp"] for p in pts])
    dist = np.array([p["psnr"] for p in pts])
    at_rate = psnr_at_rate(rate, dist, ours["bpp"])
    at_psnr = interp_rate_at_psnr(rate, dist, ours["psnr"])
    entry = {"bits": ours["bits"], "psnr_at_our_bpp": at_rate, "bpp_at_our_psnr": at_psnr,
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
    return text, entry


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
