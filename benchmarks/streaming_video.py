"""Per-frame time and peak memory of video encode + decode: streaming (KV cache) vs whole clips.

    python benchmarks/streaming_video.py --frames 8 32 128 --repeats 3

Each (mode, frame count) runs in a fresh process (``--one MODE T`` is that child), so its peak
resident memory is its own: the child builds a random-init model (preset ``small-video`` by default,
block-causal, num_frames=8, 64x64), makes the input video, warms up on one clip, returns freed heap
pages (``malloc_trim``), resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), records
VmRSS, runs encode + decode once and reports
VmHWM - VmRSS-before as the peak memory (MiB) of the computation (the input video and the model
are allocated before; the decoded pixels are kept in full by whole-clip modes, as their callers
get them, and dropped block by block by streaming modes, as a video writer would). Time is the
best of ``--repeats`` runs, divided by the frame count, for encode and decode separately, as CPU
time of the process (``time.process_time``; with ``--threads 1`` this is the compute time, robust to
other jobs on a shared machine) and as wall time. Streaming modes also report the size of the
preallocated key/value caches (encoder + decoder, MiB), the memory that could grow with the stream.

Modes:
  clip       today's path (models/frames.py): whole clips of num_frames frames, one after another
  stream     StreamingEncoder/Decoder, window=None: exact, same tokens as ``clip``
  stream-w   StreamingEncoder/Decoder, sliding window of num_frames blocks (no clip seams)
  whole      one whole-clip pass over all T frames, on the same preset with num_frames=T_max
             (the only way to attend over all frames at once; cost grows with T)
  stream-all streaming with that num_frames=T_max model and no window: exact whole-clip tokens,
             cache over every past frame (grows with T)
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import re
import subprocess
import sys
import time

import torch

from bsqvit import BSQViT
from bsqvit.models.frames import decode_frames, encode_frames
from bsqvit.models.streaming import StreamingDecoder, StreamingEncoder

MODES = ("clip", "stream", "stream-w", "whole", "stream-all")


def proc_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read())[1])


def reset_peak() -> None:
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:  # hand freed heap pages back, so that the warm-up's garbage does not hide a peak
        ctypes.CDLL(libc).malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def build(args, mode: str) -> BSQViT:
    torch.manual_seed(0)
    over = {"num_frames": max(args.frames)} if mode in ("whole", "stream-all") else {}
    return BSQViT.from_preset(args.preset, **over).eval()


def cache_mib(streamer) -> float:
    """Bytes of the streamer's preallocated key/value cache (all layers), in MiB."""
    c = streamer.trunk.cache
    return 0.0 if c is None else c.numel() * c.element_size() / 2**20


def run_once(model, mode: str, x: torch.Tensor) -> dict:
    """Encode then decode video x (3, T, H, W): wall and CPU seconds of each, the tokens, and the
    largest key/value cache (MiB, encoder + decoder) of streaming modes."""
    T, size = x.shape[1], tuple(x.shape[-2:])
    n = model.config.num_frames
    clocks = [(time.perf_counter(), time.process_time())]
    cache = 0.0
    if mode in ("clip", "whole"):
        idx = torch.cat([encode_frames(model, x[:, s : s + n]) for s in range(0, T, n)])
        clocks.append((time.perf_counter(), time.process_time()))
        pix = [decode_frames(model, idx[s : s + n], size) for s in range(0, T, n)]
        clocks.append((time.perf_counter(), time.process_time()))
        del pix
        tokens = idx.numel()
    else:
        window = n // model.config.mask_block_size if mode == "stream-w" else None
        enc = StreamingEncoder(model, window=window)
        blocks, enc_cache, dec_cache = [], 0.0, 0.0
        for f in range(T):  # frames arrive one at a time
            blocks += enc.push(x[None, :, f : f + 1])
            enc_cache = max(enc_cache, cache_mib(enc))
        blocks += enc.flush()
        clocks.append((time.perf_counter(), time.process_time()))
        dec = StreamingDecoder(model, size=size, window=window)
        for b in blocks:
            for _pix in dec.push(b):
                pass  # a writer would consume the block here
            dec_cache = max(dec_cache, cache_mib(dec))
        for _pix in dec.flush():
            pass
        clocks.append((time.perf_counter(), time.process_time()))
        tokens, cache = sum(b.numel() for b in blocks), enc_cache + dec_cache
    (w0, c0), (w1, c1), (w2, c2) = clocks
    return {"enc_wall": w1 - w0, "dec_wall": w2 - w1, "enc_cpu": c1 - c0, "dec_cpu": c2 - c1,
            "tokens": tokens, "cache_mib": cache}


def child(args, mode: str, T: int) -> dict:
    torch.set_num_threads(args.threads)
    model = build(args, mode)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, T, args.size, args.size, generator=g) * 2 - 1
    run_once(model, mode, x[:, : min(T, model.config.num_frames, 8)])  # warm-up
    reset_peak()
    before = proc_kib("VmRSS")
    first = run_once(model, mode, x)
    peak_mib = (proc_kib("VmHWM") - before) / 1024
    runs = [first] + [run_once(model, mode, x) for _ in range(args.repeats - 1)]
    best = {k: min(r[k] for r in runs) for k in ("enc_wall", "dec_wall", "enc_cpu", "dec_cpu")}
    return {"mode": mode, "frames": T, "num_frames": model.config.num_frames, "tokens": first["tokens"],
            **{f"{k}_ms_per_frame": 1e3 * v / T for k, v in best.items()},
            "peak_mib": peak_mib, "cache_mib": first["cache_mib"], "threads": args.threads, "repeats": args.repeats}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small-video")
    p.add_argument("--size", type=int, default=64, help="frame height = width")
    p.add_argument("--frames", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the rows here (JSON lines)")
    p.add_argument("--one", nargs=2, metavar=("MODE", "T"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(child(args, args.one[0], int(args.one[1]))))
        return 0
    with open("/proc/loadavg") as f:
        print(f"# load average at start: {' '.join(f.read().split()[:3])}; threads={args.threads}")
    print("| mode | frames | encode ms/frame CPU (wall) | decode ms/frame CPU (wall) | peak RSS MiB | KV cache MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for mode in args.modes:
        for T in args.frames:
            cmd = [sys.executable, __file__, "--one", mode, str(T), "--preset", args.preset, "--size", str(args.size),
                   "--repeats", str(args.repeats), "--threads", str(args.threads), "--frames", *map(str, args.frames)]
            out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=os.environ)
            if out.returncode:
                print(f"| {mode} | {T} | failed: {out.stderr.strip().splitlines()[-1]} | | | |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"| {mode} | {T} | {r['enc_cpu_ms_per_frame']:.1f} ({r['enc_wall_ms_per_frame']:.1f}) "
                  f"| {r['dec_cpu_ms_per_frame']:.1f} ({r['dec_wall_ms_per_frame']:.1f}) | {r['peak_mib']:.1f} "
                  f"| {r['cache_mib']:.2f} |", flush=True)
    with open("/proc/loadavg") as f:
        print(f"# load average at end: {' '.join(f.read().split()[:3])}")
    if args.json:
        with open(args.json, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
