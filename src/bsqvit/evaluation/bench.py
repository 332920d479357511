"""Throughput benchmark (``bsqvit bench``): encode, decode and both, against a plain GEMM.

For a batch of B random items (images (B,3,R,R) or clips (B,3,T,R,R)) it times ``model.encode``,
``model.decode`` and encode+decode separately (warm-up calls, then the median of ``repeats``
timed calls; a call shorter than ``min_time`` is repeated inside one timing so that tiny models are
measured above the timer's resolution). It reports items/s and frames/s, the forward FLOPs per
item from :meth:`BSQViT.flops` (2 x multiply-adds, attention included), the achieved FLOP/s, and
the FLOP/s of a plain matrix product of comparable size measured in the same run and process:
``(tokens x width) @ (width x 4 width)`` (the MLP's first layer for the whole batch, as
``F.linear``), same dtype, same threads. ``achieved / GEMM`` is how close the tokenizer gets to what this machine does on
its most favourable kernel.

``dtype="bf16"`` runs the tokenizer under bfloat16 autocast (``amp=True``) and the GEMM on
bfloat16 tensors.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["bench", "format_bench", "time_call", "gemm_flops_per_s"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, min_time: float = 0.05,
              device: torch.device | str = "cpu") -> dict:
    """Median seconds per call of ``fn`` over ``repeats`` timings (each of ``inner`` calls)."""
    device = torch.device(device)
    for _ in range(max(0, warmup)):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    inner = max(1, min(1000, math.ceil(min_time / first))) if first > 0 else 1
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        times.append((time.perf_counter() - t0) / inner)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "inner": inner,
            "repeats": len(times)}


def gemm_flops_per_s(m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 5, warmup: int = 1,
                     device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """FLOP/s of ``(m x k) @ (k x n)`` in ``dtype`` (2mkn FLOPs per product).

    Computed as ``F.linear(a, w)`` with ``w`` stored (n, k), i.e. with the kernel and weight layout
    of the model's ``nn.Linear`` layers (on CPUs without native bf16, ``torch.mm`` with a (k, n)
    bf16 operand takes a much slower path)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g).to(device=device, dtype=dtype)
    w = torch.randn(n, k, generator=g).to(device=device, dtype=dtype)
    t = time_call(lambda: F.linear(a, w), repeats, warmup, device=device)
    flops = 2.0 * m * k * n
    return {"shape": [m, k, n], "dtype": str(dtype).removeprefix("torch."), "flops": flops,
            "seconds": t["median_s"], "flops_per_s": flops / t["median_s"], "timing": t}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _check_args(cfg, resolution: int | None, batch: int, dtype: str, frames: int | None, repeats: int,
                warmup: int) -> tuple[int, int]:
    """(resolution, frames per clip) of the run; ValueError on a setting the model cannot take."""
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"--dtype must be fp32 or bf16, got {dtype!r}")
    if batch < 1 or repeats < 1 or warmup < 0:
        raise ValueError("--batch and --repeats must be >= 1, --warmup >= 0")
    R = resolution or int(cfg.image_size[0])
    if R < 1:
        raise ValueError(f"--resolution must be >= 1, got {R}")
    T = frames if frames is not None else int(cfg.num_frames)
    if T < 1:
        raise ValueError(f"--frames must be >= 1, got {T}")
    if cfg.num_frames == 1 and T != 1:
        raise ValueError(f"this is an image model (num_frames = 1); --frames {T} needs a video model")
    if T > cfg.num_frames:
        raise ValueError(f"--frames {T} exceeds the model's maximum of {cfg.num_frames}")
    return R, T


def _stage(t: dict, flops_per_item: float, batch: int, T: int, gemm: dict) -> dict:
    """One stage's row: throughput and achieved FLOP/s from its timing ``t``."""
    s = t["median_s"]
    achieved = flops_per_item * batch / s
    return {
        "seconds_per_batch": s,
        "items_per_s": batch / s,
        "frames_per_s": batch * T / s,
        "flops_per_item": flops_per_item,
        "achieved_flops_per_s": achieved,
        "fraction_of_gemm": achieved / gemm["flops_per_s"],
        "timing": t,
    }


@torch.no_grad()
def bench(model, resolution: int | None = None, batch: int = 1, dtype: str = "fp32", frames: int | None = None,
          repeats: int = 5, warmup: int = 1, device: str = "cpu", seed: int = 0, model_name: str = "",
          compile: str | None = None) -> dict:
    """Benchmark ``model``; returns a dict (see :func:`format_bench`). ``compile``: a mode of
    :meth:`~bsqvit.models.Tokenizer.compile_inference` (the first encode and decode, which
    compile, are timed as ``compile_s`` and not counted)."""
    cfg = model.config
    R, T = _check_args(cfg, resolution, batch, dtype, frames, repeats, warmup)
    dev = torch.device(device)
    model = model.to(dev).eval()
    if compile is not None:
        model.compile_inference(compile)
    amp = dtype == "bf16"
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 3, R, R) if cfg.num_frames == 1 else (batch, 3, T, R, R)
    x = (torch.rand(shape, generator=g) * 2 - 1).to(dev)
    t0 = time.perf_counter()
    idx = model.encode(x, amp=amp)
    model.decode(idx, size=(R, R), amp=amp)
    _sync(dev)
    first_s = time.perf_counter() - t0

    t_enc = time_call(lambda: model.encode(x, amp=amp), repeats, warmup, device=dev)
    t_dec = time_call(lambda: model.decode(idx, size=(R, R), amp=amp), repeats, warmup, device=dev)
    t_both = time_call(lambda: model.decode(model.encode(x, amp=amp), size=(R, R), amp=amp), repeats, warmup,
                       device=dev)
    fl = model.flops(R, R, T)
    p = cfg.patch_size
    tokens = batch * T * math.ceil(R / p) * math.ceil(R / p)
    D = cfg.width
    gemm = gemm_flops_per_s(tokens, D, 4 * D, torch.bfloat16 if amp else torch.float32, repeats, warmup, dev, seed)
    stages = {name: _stage(t, f, batch, T, gemm) for name, t, f in (
        ("encode", t_enc, fl["encode"]), ("decode", t_dec, fl["decode"]), ("encode+decode", t_both, fl["total"]))}
    return {
        "model": model_name,
        "parameters": model.num_parameters(),
        "config": {"image_size": list(cfg.image_size), "patch_size": p, "width": D, "layers": cfg.layers,
                   "decoder_width": cfg.dec_width, "decoder_layers": cfg.decoder_layers or cfg.layers,
                   "num_frames": cfg.num_frames, "bits": float(model.bits_per_token)},
        "resolution": R,
        "frames": T,
        "batch": batch,
        "tokens_per_batch": tokens,
        "dtype": dtype,
        "amp": amp,
        "compile": compile,
        "compile_s" if compile is not None else "first_call_s": first_s,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "warmup": warmup,
        "repeats": repeats,
        "stages": stages,
        "gemm": gemm,
    }


def _si(v: float, unit: str = "") -> str:
    for p, s in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= p:
            return f"{v / p:.3g} {s}{unit}"
    return f"{v:.3g} {unit}"


def format_bench(r: dict) -> str:
    """Markdown table of a :func:`bench` result."""
    c = r["config"]
    what = f"{r['resolution']}x{r['resolution']}" + (f"x{r['frames']} frames" if c["num_frames"] > 1 else "")
    unit = "clips/s" if c["num_frames"] > 1 else "images/s"
    lines = [
        f"## bsqvit bench: {r['model'] or 'model'} ({r['parameters']:,} parameters), {what}, batch {r['batch']}, "
        f"{r['dtype']}{' (autocast)' if r['amp'] else ''}"
        + (f", torch.compile {r['compile']} ({r['compile_s']:.1f} s to compile)" if r.get("compile") else ""),
        "",
        f"{r['device_name']} ({r['device']}), {r['threads']} threads, torch {r['torch']}; median of {r['repeats']} "
        f"after {r['warmup']} warm-up call(s).",
        "",
        f"| stage | ms / batch | {unit} | frames/s | GFLOP / item | achieved FLOP/s | of GEMM |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in r["stages"].items():
        lines.append(f"| {name} | {1e3 * s['seconds_per_batch']:.2f} | {s['items_per_s']:.3g} | {s['frames_per_s']:.3g} | "
                     f"{s['flops_per_item'] / 1e9:.3g} | {_si(s['achieved_flops_per_s'], 'FLOP/s')} | "
                     f"{100 * s['fraction_of_gemm']:.1f}% |")
    gm = r["gemm"]
    m, k, n = gm["shape"]
    lines += ["", f"GEMM reference: ({m} x {k}) @ ({k} x {n}) {gm['dtype']}: {_si(gm['flops_per_s'], 'FLOP/s')} "
                  f"({1e3 * gm['seconds']:.3f} ms per product)."]
    return "\n".join(lines)
