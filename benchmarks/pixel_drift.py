"""How far the pixels decoded from the same tokens move between execution settings.

    python benchmarks/pixel_drift.py [--model DIR] [--data ../shared/data/kodak] [--limit N] [--json OUT]

Tokens are the data of a ``.bsq`` file and are bit-exact everywhere; the pixels come from the
float tokenizer's decoder, whose last bits depend on the thread count, the BLAS, the instruction
set and the device. For each image this decodes the same tokens under 1 and 2 threads, under
the AVX2 kernels instead of this CPU's best (a subprocess with ``ATEN_CPU_CAPABILITY=avx2`` and
``ONEDNN_MAX_CPU_ISA=AVX2``, what an older CPU runs), and on CUDA when present, and reports the
largest difference before rounding (in [-1, 1] units) and in 8-bit pixels, and the share of
8-bit values that differ.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bsqvit import BSQViT
from bsqvit.io import load_image, to_uint8


def decode(model, tokens, size, threads: int, device: str = "cpu") -> torch.Tensor:
    torch.set_num_threads(threads)
    with torch.inference_mode():
        m = model.to(device)
        return m.decode(tokens.to(device), size=size)[0].float().cpu()


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    ua, ub = to_uint8(a).astype(np.int16), to_uint8(b).astype(np.int16)
    return {"max_abs_float": float((a - b).abs().max()), "max_abs_uint8": int(np.abs(ua - ub).max()),
            "share_uint8_differs": float((ua != ub).mean())}


def decode_avx2(args, files, tokens) -> list[torch.Tensor]:
    """Decode ``tokens`` in a subprocess held to AVX2 kernels; returns the pixels."""
    with tempfile.TemporaryDirectory() as d:
        np.savez(Path(d) / "tokens.npz", *[t.numpy() for t in tokens])
        env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
        subprocess.run([sys.executable, __file__, "--model", args.model, "--data", args.data, "--limit",
                        str(args.limit), "--decode-only", d], env=env, check=True)
        out = np.load(Path(d) / "pixels.npz")
        return [torch.from_numpy(out[f"arr_{i}"]) for i in range(len(files))]


def decode_only(args, model, files) -> None:
    tok = np.load(Path(args.decode_only) / "tokens.npz")
    px = [decode(model, torch.from_numpy(tok[f"arr_{i}"]), load_image(f).shape[-2:], 1).numpy()
          for i, f in enumerate(files)]
    np.savez(Path(args.decode_only) / "pixels.npz", *px)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="src/bsqvit/assets/default/tokenizer")
    ap.add_argument("--data", default="../shared/data/kodak")
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--json", default=None)
    ap.add_argument("--decode-only", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    model = BSQViT.from_pretrained(args.model).eval()
    files = sorted(Path(args.data).glob("*.png"))[: args.limit]
    if args.decode_only:
        return decode_only(args, model, files)
    with torch.inference_mode():
        tokens = [model.encode(load_image(f)[None]) for f in files]
    avx2 = decode_avx2(args, files, tokens)
    rows = []
    for f, tok, other in zip(files, tokens, avx2):
        x = load_image(f)
        ref = decode(model, tok, x.shape[-2:], 1)
        row = {"image": f.name, "threads_1_vs_2": compare(ref, decode(model, tok, x.shape[-2:], 2)),
               "native_vs_avx2": compare(ref, other)}
        if torch.cuda.is_available():
            row["cpu_vs_cuda"] = compare(ref, decode(model, tok, x.shape[-2:], 1, "cuda"))
            model.cpu()
        rows.append(row)
        print(json.dumps(row), flush=True)
    worst = {k: {m: max(r[k][m] for r in rows) for m in rows[0][k]} for k in rows[0] if k != "image"}
    print(json.dumps({"worst": worst}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "worst": worst}, indent=2) + "\n")


if __name__ == "__main__":
    main()
