"""Quantizer forward+backward time and peak memory: BSQ (group / factorised) vs LFQ (exact).

Each configuration runs in a fresh subprocess so that peak RSS (``ru_maxrss``) belongs to it
alone; the baseline RSS after building the inputs is subtracted.

    python benchmarks/quantizer_bench.py --tokens 2048 --bits 18 --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
from bsqvit.quantizers import BinarySphericalQuantizer, LookupFreeQuantizer
kind, bits, group, tokens, threads, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(threads)
torch.manual_seed(0)
q = (BinarySphericalQuantizer if kind == "bsq" else LookupFreeQuantizer)(bits, group_size=group).train()
z = torch.randn(tokens, bits, requires_grad=True)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(repeats):
    t = time.perf_counter()
    out = q(z)
    (out.loss + out.quantized.square().sum() * 0).backward()
    times.append(time.perf_counter() - t)
    z.grad = None
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"quantizer": kind, "bits": bits, "group_size": group, "tokens": tokens, "threads": threads,
                  "seconds_median": sorted(times)[len(times) // 2], "seconds_min": min(times),
                  "peak_extra_mb": (peak - base) / 1024}))
"""


def run(kind, bits, group, tokens, threads, repeats):
    r = subprocess.run([sys.executable, "-c", CHILD, kind, str(bits), str(group), str(tokens), str(threads), str(repeats)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return {"quantizer": kind, "bits": bits, "group_size": group, "error": r.stderr.strip().splitlines()[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--bits", type=int, default=18)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-exact", action="store_true", help="skip LFQ with the exact 2^L entropy")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    configs = [("bsq", a.bits, 1, a.repeats), ("bsq", a.bits, 2, a.repeats), ("bsq", a.bits, 9 if a.bits % 9 == 0 else 1, a.repeats)]
    if not a.skip_exact:
        configs.append(("lfq", a.bits, a.bits, 2))
    rows = [run(k, b, g, a.tokens, a.threads, r) for k, b, g, r in configs]
    print(f"| quantizer | L | entropy groups g | tokens | threads | fwd+bwd (s) | peak extra memory (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['quantizer'].upper()} | {r['bits']} | {r['group_size']} | - | - | failed: {r['error']} | - |")
        else:
            print(f"| {r['quantizer'].upper()} | {r['bits']} | {r['group_size']} | {r['tokens']} | {r['threads']} | "
                  f"{r['seconds_median']:.4f} | {r['peak_extra_mb']:.0f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
