"""Fuzz the ``.bsq`` reader: mutated and forged files through every read path, each input classified.

    python benchmarks/fuzz_codec.py --inputs 100000 --seed 0 --json fuzz.json [--pixels 0.25] [--save DIR]

Seeds: the golden files of tests/data/codec and small files made here with its tiny models (raw, ar
and parallel; images and videos of several sizes and chunkings, pairs of identical geometry; a tiny
VQ tokenizer whose 300 codes are not a power of two). Mutations: ``fuzz_mutators.py``. Every input
goes through ``read_container``, ``info`` (a temporary file), ``decode_tokens`` with the prior its
coder needs and, for a fraction ``--pixels`` of the inputs, ``decompress`` with the seed's tokenizer.

Classes: ok (decoded), clean (an ``InputError``: ``BSQFormatError`` or another documented input
error), crash (any other exception), hang (over 10 s for all paths of the input together; a path
is also stopped at 60 s), over_limit (the input raised the process's peak resident set by more
than :func:`mem_bound`), undetected (decoded to other tokens than the ones the file's checks
bind, to pixels of another size, or accepted by a path although an earlier one refused it).

Memory: the kernel's peak-RSS counter is reset before each input (``/proc/self/clear_refs``) and
read after it (``VmHWM``), after ``malloc_trim`` returned freed heap: it sees every allocation that
is used (numpy, torch, Python), unlike ``tracemalloc`` (numpy and Python only), which is the
fallback where ``/proc`` cannot be written.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_mutators import MUTATORS, Parts, seal, split  # noqa: E402

from bsqvit import BSQViT  # noqa: E402
from bsqvit.codec import (  # noqa: E402
    CodecOptions,
    Header,
    Limits,
    TokenPrior,
    compress,
    decode_tokens,
    decompress,
    info,
)
from bsqvit.codec.coding import raw_size  # noqa: E402
from bsqvit.codec.container import read_container, tokens_crc, tokens_digest, unpack_header  # noqa: E402
from bsqvit.io import InputError, from_uint8  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "codec"
HANG_S, STOP_S = 10.0, 60.0
BAD = ("crash", "hang", "over_limit", "undetected")


@dataclass
class Seed:
    name: str
    data: bytes
    parts: Parts
    header: Header
    tokens: np.ndarray
    prior: object
    model: object
    limits: Limits
    pixels: tuple


@dataclass
class Models:
    tokenizer: BSQViT
    vq: BSQViT
    priors: dict  # coder -> TokenPrior


def vq_tokenizer() -> BSQViT:
    """A tiny seeded VQ tokenizer: 300 codes in 9-bit raw fields (tokens 300..511 have no code)."""
    torch.manual_seed(7)
    return BSQViT(dict(image_size=[8, 8], patch_size=4, width=16, layers=1, heads=2, head_dim=16,
                       quantizer=dict(type="vq", dim=4, codebook_size=300))).eval()


def load_models() -> Models:
    vq = DATA / "fuzz" / "vq-tokenizer"
    return Models(BSQViT.from_pretrained(DATA / "tokenizer").eval(),
                  BSQViT.from_pretrained(vq).eval() if vq.is_dir() else vq_tokenizer(),
                  {"ar": TokenPrior.from_pretrained(DATA / "prior-ar").eval(),
                   "parallel": TokenPrior.from_pretrained(DATA / "prior-par").eval()})


# (name, model, coder, frames, height, width, frames per chunk, content)
GENERATED = [
    ("raw-1x1", "tokenizer", "raw", 1, 1, 1, 1, 1), ("raw-8x8", "tokenizer", "raw", 1, 8, 8, 1, 2),
    ("raw-17x5", "tokenizer", "raw", 1, 5, 17, 1, 3), ("raw-64x48", "tokenizer", "raw", 1, 48, 64, 1, 4),
    ("raw-twin", "tokenizer", "raw", 1, 22, 30, 1, 5), ("ar-16x12", "tokenizer", "ar", 1, 12, 16, 1, 6),
    ("ar-twin", "tokenizer", "ar", 1, 22, 30, 1, 7), ("par-7x13", "tokenizer", "parallel", 1, 13, 7, 1, 8),
    ("par-20x20", "tokenizer", "parallel", 1, 20, 20, 1, 9), ("vraw-fpc1", "tokenizer", "raw", 5, 16, 22, 1, 10),
    ("vraw-fpc3", "tokenizer", "raw", 5, 16, 22, 3, 11), ("vraw-fpc8", "tokenizer", "raw", 3, 8, 8, 8, 12),
    ("vraw-twin", "tokenizer", "raw", 5, 16, 22, 2, 13), ("vpar-fpc1", "tokenizer", "parallel", 3, 12, 12, 1, 14),
    ("vpar-twin", "tokenizer", "parallel", 5, 16, 22, 2, 15), ("vq-12x12", "vq", "raw", 1, 12, 12, 1, 16),
    ("vq-video", "vq", "raw", 3, 8, 8, 2, 17),
]


def make_seed(name: str, data: bytes, models: Models, limits: Limits, model=None) -> Seed | None:
    """A seed from a valid file (None if it does not decode with the current code)."""
    h, _ = unpack_header(data, limits)
    prior = models.priors.get(h.coder)
    try:
        _, tokens = decode_tokens(data, prior, limits)
    except InputError as e:
        print(f"seed {name} skipped: {e}", file=sys.stderr)
        return None
    shape = (3, h.height, h.width) if h.media == "image" else (3, h.frames, h.height, h.width)
    return Seed(name, data, split(data), h, tokens, prior, model or models.tokenizer, limits, shape)


def make_seeds(models: Models, limits: Limits) -> list[Seed]:
    seeds = [make_seed(f.stem, f.read_bytes(), models, limits) for f in sorted(DATA.glob("*.bsq"))]
    for name, mname, coder, T, H, W, fpc, content in GENERATED:
        g = np.random.default_rng(content)
        px = g.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
        x = from_uint8(px[0] if T == 1 else px)
        model = getattr(models, mname)
        res = compress(x, model, models.priors.get(coder), fps=12.5,
                       options=CodecOptions(tile_batch=3, frames_per_chunk=fpc))
        seeds.append(make_seed(name, res.data, models, limits, model))
    return [s for s in seeds if s is not None]


# ---- measuring one input ------------------------------------------------------------------------------
class Stop(BaseException):
    """Raised by the alarm: a path ran past STOP_S (a BaseException: no ``except Exception`` eats it)."""


class MemProbe:
    """Peak memory an input adds: the kernel's peak RSS reset per input, or tracemalloc's peak."""

    def __init__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.proc = True
        except OSError:
            import tracemalloc

            self.proc, self._tm = False, tracemalloc
            tracemalloc.start()
        try:
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except OSError:
            self._trim = lambda _: 0

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        return 0

    def start(self) -> None:
        self._trim(0)
        if self.proc:
            Path("/proc/self/clear_refs").write_text("5")
            self.base = self._status("VmRSS:")
        else:
            self._tm.reset_peak()
            self.base = self._tm.get_traced_memory()[0]

    def peak(self) -> int:
        return max(0, (self._status("VmHWM:") if self.proc else self._tm.get_traced_memory()[1]) - self.base)


def mem_bound(limits: Limits) -> int:
    """What one input may add to the peak: 64 MiB of slack (interpreter, copies of a small file,
    the tiny models' fixed activations) + 1 KiB per token of ``max_tokens`` (int64 copies of the
    tokens, the prior's activations) + 64 bytes per pixel of ``max_pixels`` (a float32 RGB frame and
    the tokenizer's activations)."""
    return (64 << 20) + 1024 * limits.max_tokens + 64 * limits.max_pixels


def attempt(fn):
    """(status, result, detail, seconds) of one path."""
    t0 = time.perf_counter()
    alarm = threading.current_thread() is threading.main_thread()  # signals reach the main thread only
    if alarm:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, STOP_S)
    try:
        out, status, detail = fn(), "ok", ""
    except InputError as e:
        out, status, detail = None, "clean", str(e)
    except Stop:
        out, status, detail = None, "hang", f"stopped after {STOP_S:.0f} s"
    except Exception as e:  # noqa: BLE001 - a crash is what we are looking for
        tb = e.__traceback__
        while tb.tb_next:
            tb = tb.tb_next
        where = f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"
        out, status, detail = None, "crash", f"{type(e).__name__}: {str(e)[:200]} ({where})"
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    return status, out, detail, time.perf_counter() - t0


def _on_alarm(signum, frame):
    raise Stop()


def run_paths(data: bytes, seed: Seed, models: Models, limits: Limits, pixels: bool, tmp: Path) -> dict:
    """Every read path on ``data``: {path: (status, result, detail, seconds)}."""
    res = {"read_container": attempt(lambda: read_container(data, limits)[0])}
    tmp.write_bytes(data)
    res["info"] = attempt(lambda: info(tmp, limits))
    head = res["read_container"][1]
    prior = models.priors.get(head.coder) if head is not None else seed.prior
    res["decode_tokens"] = attempt(lambda: decode_tokens(data, prior, limits)[1])
    if pixels:
        res["decompress"] = attempt(lambda: tuple(decompress(data, seed.model, prior, limits).shape))
    return res


def verdict(res: dict, binds: str, seed: Seed, seconds: float, peak: int, bound: int) -> tuple[str, str]:
    """The input's class and a one-line reason."""
    for status in ("crash", "hang"):
        hit = [f"{p}: {r[2]}" for p, r in res.items() if r[0] == status]
        if hit:
            return status, hit[0]
    if seconds > HANG_S:
        return "hang", f"{seconds:.1f} s over all paths"
    if peak > bound:
        return "over_limit", f"peak +{peak >> 20} MiB > {bound >> 20} MiB"
    order = [p for p in ("read_container", "decode_tokens", "decompress") if p in res]
    for a, b in zip(order, order[1:]):
        if res[a][0] != "ok" and res[b][0] == "ok":
            return "undetected", f"{b} accepted what {a} refused ({res[a][2]})"
    if res["info"][0] != res["read_container"][0]:
        return "undetected", f"info {res['info'][0]} but read_container {res['read_container'][0]}"
    tokens = res["decode_tokens"][1]
    if tokens is not None and binds != "none" and not np.array_equal(tokens.reshape(-1), seed.tokens.reshape(-1)):
        return "undetected", "decoded to other tokens"
    shape = res.get("decompress", (None, None))[1]
    if shape is not None and binds == "all" and shape != seed.pixels:
        return "undetected", f"pixels {shape}, expected {seed.pixels}"
    return ("ok", "") if tokens is not None else ("clean", res["decode_tokens"][2])


@dataclass
class Report:
    counts: dict = field(default_factory=lambda: dict.fromkeys(("ok", "clean", *BAD), 0))
    by_mutator: dict = field(default_factory=dict)
    paths: dict = field(default_factory=dict)
    slowest: dict = field(default_factory=lambda: {"seconds": 0.0})
    peak: dict = field(default_factory=lambda: {"bytes": 0})
    findings: list = field(default_factory=list)

    def add(self, kind, reason, mutator, seed, res, seconds, peak, data, save) -> None:
        self.counts[kind] += 1
        self.by_mutator.setdefault(mutator, dict.fromkeys(self.counts, 0))[kind] += 1
        for p, r in res.items():
            self.paths.setdefault(p, {}).setdefault(r[0], 0)
            self.paths[p][r[0]] += 1
        where = {"mutator": mutator, "seed": seed.name, "class": kind}
        if seconds > self.slowest["seconds"]:
            self.slowest = {"seconds": round(seconds, 3), **where, "paths": {p: round(r[3], 3) for p, r in res.items()}}
        if peak > self.peak["bytes"]:
            self.peak = {"bytes": peak, "MiB": round(peak / 2**20, 1), **where}
        if kind in BAD:
            name = f"{kind}-{mutator}-{seed.name}-{len(self.findings)}.bsq"
            if save:
                Path(save).mkdir(parents=True, exist_ok=True)
                (Path(save) / name).write_bytes(data)
            if len(self.findings) < 200:
                self.findings.append({**where, "reason": reason[:300], "file": name})


def check_input(data, binds, seed, models, limits, pixels, tmp, probe) -> tuple:
    probe.start()
    t0 = time.perf_counter()
    res = run_paths(data, seed, models, limits, pixels, tmp)
    seconds, peak = time.perf_counter() - t0, probe.peak()
    kind, reason = verdict(res, binds, seed, seconds, peak, mem_bound(limits))
    return kind, reason, res, seconds, peak


def run(n: int, seed: int = 0, pixels: float = 0.25, limits: Limits | None = None, save: str | None = None,
        progress: int = 0, probes: bool = False, mutators: list[str] | None = None, models: Models | None = None,
        seeds: list[Seed] | None = None) -> dict:
    """Fuzz ``n`` inputs (seeded; after the limit probes if ``probes``) on one torch thread;
    returns the report."""
    limits = limits or Limits()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models = models or load_models()
        seeds = seeds or make_seeds(models, limits)
        names = mutators or list(MUTATORS)
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d) / "input.bsq"
            for s in seeds:  # warm-up: lazy imports and caches do not count as an input's memory
                run_paths(s.data, s, models, limits, True, tmp)
            extra = limit_probes(models, seeds, limits) if probes else []
            inputs = _inputs(n, random.Random(seed), seeds, names, pixels, extra)
            report, wall = _campaign(inputs, models, limits, tmp, save, progress)
    finally:
        torch.set_num_threads(threads)
    total = sum(report.counts.values())
    return {"inputs": total, "seed": seed, "pixels_fraction": pixels, "seconds": round(wall, 1),
            "inputs_per_s": round(total / wall, 1), "limits": vars(limits), "mem_bound_bytes": mem_bound(limits),
            "hang_s": HANG_S, "seeds": [s.name for s in seeds], "counts": report.counts,
            "by_mutator": report.by_mutator, "paths": report.paths, "slowest": report.slowest,
            "peak_memory": report.peak, "findings": report.findings}


def _campaign(inputs, models, limits, tmp, save, progress) -> tuple[Report, float]:
    report, probe, t0 = Report(), MemProbe(), time.perf_counter()
    for i, (name, data, binds, s, px) in enumerate(inputs):
        kind, reason, res, seconds, peak = check_input(data, binds, s, models, limits, px, tmp, probe)
        report.add(kind, reason, name, s, res, seconds, peak, data, save)
        if progress and (i + 1) % progress == 0:
            print(f"{i + 1} inputs, {time.perf_counter() - t0:.0f} s, {report.counts}", file=sys.stderr, flush=True)
    return report, time.perf_counter() - t0


def _inputs(n, rng, seeds, names, pixels, extra):
    """(mutator, data, binds, seed, decompress?) for the limit probes, then ``n`` mutations."""
    yield from extra
    weights = [MUTATORS[k][1] for k in names]
    for _ in range(n):
        s = rng.choice(seeds)
        name = rng.choices(names, weights)[0]
        data, binds = MUTATORS[name][0](rng, s, seeds)
        yield name, data, binds, s, rng.random() < pixels


def forged(seed: Seed, H: int, W: int, T: int, fpc: int, payload: bytes | None = None, **fields) -> bytes:
    """A well-formed file of ``seed``'s coder and weights (header ``fields`` overridden) claiming T
    frames of H x W zero tokens: raw payloads of exactly the right size, or ``payload`` in every
    chunk (4 zero bytes: a range coder's zero tokens); every CRC and the digest valid."""
    f = {**seed.parts.fields, **fields}
    p = f["patch"]
    gh, gw = -(-H // p), -(-W // p)
    zeros = np.zeros((T, gh, gw), np.int64)
    f.update(height=H, width=W, frames=T, frames_per_chunk=fpc, n_chunks=-(-T // fpc), pad_bottom=-H % p,
             pad_right=-W % p, media=int(T > 1 or f["media"]), digest=bytes.fromhex(tokens_digest(zeros)))
    f["fps"] = 12.5 if f["media"] else 0.0
    counts = [min(fpc, T - s) for s in range(0, T, fpc)]
    body = [payload if payload is not None else bytes(raw_size(n * gh * gw, f["bits"])) for n in counts]
    return seal(replace(seed.parts, fields=f, chunks=[(b, tokens_crc(zeros[:n])) for b, n in zip(body, counts)]))


def limit_probes(models: Models, seeds: list[Seed], limits: Limits) -> list:
    """Well-formed files at (and just past) the limits: the worst work and memory a file within
    them can ask for. (name, data, binds, seed, decompress?) like the mutated inputs."""
    by = {s.name: s for s in seeds}
    raw, ar, par = by["raw-8x8"], by["ar-16x12"], by["vpar-fpc1"]
    H = int((limits.max_pixels // 2) ** 0.5)
    W = limits.max_pixels // H
    vside = 4 * int((limits.max_tokens // 8) ** 0.5)  # 8 frames of vside x vside: max_tokens at patch 4
    out = [("probe:raw-at-max-pixels", forged(raw, H, W, 1, 1), raw, True),
           ("probe:raw-past-max-pixels", forged(raw, H, W + 4, 1, 1), raw, True),
           ("probe:raw-8192x8192", forged(raw, 8192, 8192, 1, 1), raw, True),
           ("probe:raw-video-at-max-tokens", forged(raw, vside, vside, 8, 8), raw, True),
           ("probe:raw-video-past-max-tokens", forged(raw, vside, vside, 9, 8), raw, True)]
    side = int(limits.max_tokens ** 0.5)
    out.append(("probe:raw-63-bit-at-max-tokens", forged(raw, side, side, 1, 1, patch=1, bits=63), raw, False))
    for s in (ar, par):  # a 4-byte range-coded payload claiming the most tokens the limits allow
        word = bytes(4)
        out += [(f"probe:{s.name}-{side}x{side}-patch1", forged(s, side, side, 1, 1, word, patch=1), s, False),
                (f"probe:{s.name}-1x{limits.max_tokens // 4}x4-patch1",
                 forged(s, 1, limits.max_tokens // 4, 4, 4, word, patch=1), s, False),
                (f"probe:{s.name}-{H}x{W}-patch4", forged(s, H, W, 1, 1, word, patch=4), s, True)]
    return [(name, data, "none", s, px) for name, data, s, px in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pixels", type=float, default=0.25, help="fraction of inputs also run through decompress")
    ap.add_argument("--no-probes", action="store_true", help="skip the files at the limits")
    ap.add_argument("--save", default=None, metavar="DIR", help="write every bad input here")
    ap.add_argument("--progress", type=int, default=5000, metavar="N")
    ap.add_argument("--json", default=None, metavar="OUT.json")
    args = ap.parse_args()
    rep = run(args.inputs, args.seed, args.pixels, save=args.save, progress=args.progress, probes=not args.no_probes)
    text = json.dumps(rep, indent=2, default=str)
    if args.json:
        Path(args.json).write_text(text + "\n")
    short = {k: rep[k] for k in ("inputs", "seconds", "inputs_per_s", "counts", "slowest", "peak_memory")}
    print(json.dumps(short, indent=2, default=str))
    sys.exit(1 if any(rep["counts"][k] for k in BAD) else 0)


if __name__ == "__main__":
    main()
