"""``bsqvit demo``: the main job on the embedded default models, offline.

1. Every image of ``--data`` (Kodak by default) is compressed to a real ``.bsq`` file with the
   embedded tokenizer and prior and decompressed to a PNG; one line per image with bpp, PSNR and
   the seconds of each direction.
2. The same images go through JPEG and WebP quality sweeps (:func:`bsqvit.evaluation.rd.run_rd`, which
   also takes our measured points), giving ``rd.json``, ``rd.md`` (BD-rates) and ``rd.png``.
3. The embedded generator draws a sample grid (``generated/grid.png``, a row per class).

Outputs go to ``--out`` (created; existing files there are replaced atomically). There is no
embedded video model (the 25 MB budget holds one tokenizer), so no clip is coded; the card says so.
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
from .evaluation.rd import Metrics, run_rd
from .generate.model import MaskedTokenModel
from .generate.train import generate_images, image_grid
from .io import InputError, atomic_path, load_image, to_uint8
from .models import BSQViT
from .pretrained import default_dir, default_model_dir


def run_demo(data: str, out: str | Path, limit: int | None = None, codecs=("jpeg", "webp"), gen_per_class: int = 4,
             lpips: bool = True, echo=print) -> dict:
    files = find_images(data)
    if limit is not None:
        files = files[:limit]
    if not files:
        raise InputError(f"{data}: no images")
    out = Path(out)
    for d in (out, out / "bsq", out / "decoded"):
        d.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    model = BSQViT.from_pretrained(str(default_model_dir())).eval()
    prior = default_prior(model)
    if prior is None:
        raise InputError("no embedded prior matching the embedded tokenizer is installed")
    try:
        metrics = Metrics(lpips)
    except InputError as e:  # the stand-in's weights are optional: say so and go on without it
        echo(f"note: {e}; continuing without the LPIPS stand-in")
        lpips, metrics = False, Metrics(False)
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
        ref = to_uint8(load_image(f))
        rec = to_uint8(load_image(png))
        m = metrics(ref, rec)
        per.append({"item": Path(f).name, "codec": f"bsq-{prior.config.kind}", "model": "embedded",
                    "prior": "embedded", "setting": "embedded", "bpp": st["bpp"], "bits_per_token": st["bits_per_token"],
                    "ideal_bits_per_token": st.get("ideal_bits_per_token"), "coder_overhead": st.get("coder_overhead"),
                    "seconds_compress": t1 - t0, "seconds_decompress": t2 - t1, "exact": True, **m})
        echo(f"{name:<14}{st['bpp']:8.4f}{m['psnr']:8.2f}{m['ms_ssim'] if m['ms_ssim'] is not None else float('nan'):9.4f}{t1 - t0:8.2f}{t2 - t1:8.2f}")
    mean = {k: float(np.mean([p[k] for p in per])) for k in ("bpp", "psnr", "seconds_compress", "seconds_decompress")}
    echo(f"{'mean':<14}{mean['bpp']:8.4f}{mean['psnr']:8.2f}{'':9}{mean['seconds_compress']:8.2f}"
         f"{mean['seconds_decompress']:8.2f}")
    echo("rate-distortion against " + ", ".join(codecs) + " ...")
    report = run_rd(data, models=[], priors=[], limit=limit, codecs=list(codecs), lpips=lpips,
                    json_out=out / "rd.json", md_out=out / "rd.md", plot_out=out / "rd.png",
                    extra={f"bsq-{prior.config.kind}[embedded]": per})
    for base, r in next(iter(report["bd_rate"].values()), {}).items():
        v = r.get("bd_rate")
        echo(f"BD-rate vs {base}: {v:+.1f} % ({r.get('method')})" if v is not None else f"BD-rate vs {base}: n/a")
    result = {"items": len(per), "mean": mean, "bd_rate": report["bd_rate"], "per_item": per}
    gdir = default_dir("gen")
    if gdir is not None and gen_per_class > 0:
        result["generate_seconds"] = _sample_grid(gdir, model, out, gen_per_class, echo)
    result["seconds"] = time.time() - t_all
    with atomic_path(out / "demo.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
    echo(f"done in {result['seconds']:.0f} s -> {out} (bsq/, decoded/, rd.png, rd.md, rd.json, generated/grid.png)")
    return result


def _sample_grid(gdir: Path, model, out: Path, gen_per_class: int, echo) -> float:
    """Draw ``gen_per_class`` samples per class with the embedded generator into
    ``out/generated/grid.png``; returns the seconds taken."""
    gen = MaskedTokenModel.from_pretrained(str(gdir)).eval()
    t0 = time.perf_counter()
    C = max(1, gen.config.num_classes)
    labels = torch.arange(C).repeat_interleave(gen_per_class) if gen.config.num_classes else \
        torch.full((gen_per_class,), -1)
    _, images = generate_images(gen, model, labels, seed=0, steps=12, guidance=2.0)
    (out / "generated").mkdir(exist_ok=True)
    with atomic_path(out / "generated" / "grid.png") as tmp:
        Image.fromarray(image_grid(images, gen_per_class)).save(tmp)
    seconds = time.perf_counter() - t0
    echo(f"generated {len(images)} images ({C} classes x {gen_per_class}) -> {out / 'generated' / 'grid.png'} "
         f"({seconds:.1f} s)")
    return seconds
