"""Λ24-SQ nearest-code search: the structured exact search (``leech.nearest``) vs brute force.

Timing and peak memory (each configuration in a fresh subprocess: peak RSS growth on CPU,
``torch.cuda.max_memory_allocated`` on CUDA) at the given token counts::

    python benchmarks/leech_search.py time --tokens 2048 32768 --threads 2
    python benchmarks/leech_search.py time --tokens 2048 32768 --device cuda

Methods: ``structured`` (``leech.nearest``, float32 group scores certified, float64 members),
``brute-f32`` (the reference: ``argmax(z @ E.T)`` in float32; ``--brute-chunk`` rows at a time,
0 = all at once as in the reference) and ``brute-f64`` (the exact reference used by the tests).

Equality run: ``N`` inputs in three families (Gaussian, near codewords, small integers and
half-integers with many exact ties), structured search vs brute force over all 196,560 codes
with the same tie rule (first maximum)::

    python benchmarks/leech_search.py equality --n 1000000 --threads 2

To keep 10^6 brute-force rows affordable on a CPU, the inputs lie on the grid 2^-10 Z with
|z_i| <= 8: every inner product with a code is then a multiple of 2^-10 below 2^8, so float32
brute force is exact (asserted), and the tie rule is the same as float64's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from bsqvit.quantizers import leech as L

CHILD = r"""
import json, resource, sys, time, torch
from bsqvit.quantizers import leech as L
method, tokens, device, threads, chunk, repeats = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(threads)
torch.manual_seed(0)
dev = torch.device(device)
z = torch.nn.functional.normalize(torch.randn(tokens, 24, device=dev), dim=-1)
if method == "structured":
    fn = lambda: L.nearest(z)
else:
    dt = torch.float32 if method == "brute-f32" else torch.float64
    fn = lambda: L.nearest_bruteforce(z, chunk_size=chunk or tokens, dtype=dt)
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
L.nearest(z[:4]); L.lattice_vectors(); sync()  # tables built outside the measurement
if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
else:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
times = []
for _ in range(repeats):
    t = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - t)
peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"method": method, "tokens": tokens, "device": device, "threads": threads, "chunk": chunk,
                  "seconds_min": min(times), "seconds_median": sorted(times)[len(times) // 2],
                  "peak_extra_mb": (peak - base) / 2**20}))
"""


def time_one(method: str, tokens: int, device: str, threads: int, chunk: int, repeats: int) -> dict:
    argv = [sys.executable, "-c", CHILD, method, str(tokens), device, str(threads), str(chunk), str(repeats)]
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return {"method": method, "tokens": tokens, "device": device, "error": r.stderr.strip().splitlines()[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, list[tuple[str, int]]]:
    """``n`` float32 inputs on the grid 2^-10 Z, |z_i| <= 8, in three families (40/30/30 %)."""
    g = torch.Generator().manual_seed(seed)
    n1, n2 = int(0.4 * n), int(0.3 * n)
    n3 = n - n1 - n2
    gauss = torch.randn(n1, 24, generator=g) * torch.rand(n1, 1, generator=g).mul(2).add(0.05)
    E = L.lattice_vectors().float() / 4  # squared norm 2
    idx = torch.randint(0, L.CODEBOOK_SIZE, (n2,), generator=g)
    sigma = torch.tensor([0.02, 0.1, 0.3, 0.6])[torch.randint(0, 4, (n2, 1), generator=g)]
    near = E[idx] + sigma * torch.randn(n2, 24, generator=g)
    k = n3 // 4
    ties = torch.cat([
        torch.randint(-2, 3, (k, 24), generator=g).float(),  # small integers
        torch.randint(-3, 4, (k, 24), generator=g).float() / 2,  # half-integers
        (torch.rand(k, 24, generator=g) < 0.15).float() * torch.randint(-1, 2, (k, 24), generator=g),  # sparse
        torch.randint(0, 2, (n3 - 3 * k, 24), generator=g).float() * 2 - 1,  # ±1: Golay-like, huge ties
    ])
    z = torch.cat([gauss, near, ties]).mul(1024).round().div(1024).clamp(-8, 8)
    return z, [("gaussian", n1), ("near codewords", n2), ("integer/half-integer ties", n3)]


def bruteforce_exact_f32(z: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """First maximum of ``z @ E.T`` in float32, exact for grid inputs (checked)."""
    assert (z * 1024 == (z * 1024).round()).all() and z.abs().max() <= 8  # |score| * 2^10 < 2^24
    Et = L.lattice_vectors().float().t().contiguous()
    out = torch.empty(z.shape[0], dtype=torch.int64)
    buf = torch.empty(chunk, Et.shape[1])
    for s in range(0, z.shape[0], chunk):
        zc = z[s : s + chunk]
        scores = torch.mm(zc, Et, out=buf[: zc.shape[0]])
        out[s : s + chunk] = scores.max(-1).indices  # the first maximum (as argmax)
    return out


def equality(n: int, seed: int) -> dict:
    z, families = inputs(n, seed)
    t = time.perf_counter()
    got = L.nearest(z)
    t_struct = time.perf_counter() - t
    t = time.perf_counter()
    want = bruteforce_exact_f32(z)
    t_brute = time.perf_counter() - t
    res, s = {"n": n, "seed": seed, "seconds_structured": t_struct, "seconds_brute_f32": t_brute}, 0
    for name, k in families:
        res[name] = {"n": k, "mismatches": int((got[s : s + k] != want[s : s + k]).sum())}
        s += k
    res["mismatches"] = int((got != want).sum())
    res["distinct_codes_hit"] = int(torch.unique(want).numel())
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("time")
    t.add_argument("--tokens", type=int, nargs="+", default=[2048, 32768])
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--methods", nargs="+", default=["structured", "brute-f32", "brute-f64"])
    t.add_argument("--brute-chunk", type=int, default=None, help="rows per brute-force step (0 = all; default: 1024 on CPU, 0 on CUDA)")
    t.add_argument("--repeats", type=int, default=3)
    e = sub.add_parser("equality")
    e.add_argument("--n", type=int, default=1_000_000)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.cmd == "equality":
        print(json.dumps(equality(args.n, args.seed), indent=1))
        return 0
    chunk = args.brute_chunk if args.brute_chunk is not None else (0 if args.device.startswith("cuda") else 1024)
    for tokens in args.tokens:
        for m in args.methods:
            c = chunk if m != "structured" else 0
            print(json.dumps(time_one(m, tokens, args.device, args.threads, c, args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
