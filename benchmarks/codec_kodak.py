"""Codec measurements on Kodak: bits saved by each prior, coder overhead, seconds, exact round trips.

    python benchmarks/codec_kodak.py --model MODEL_DIR --prior AR_DIR --prior PAR_DIR [--limit N] \
        [--threads 2] [--json OUT.json]

For every image: raw ``.bsq`` (L bits per token) and one file per prior; seconds of the tokenizer
(encode, decode: shared by all coders, measured once) and of the entropy coder (encode, decode),
compress = tokenizer encode + entropy encode, decompress = entropy decode + tokenizer decode;
bits per token of the whole file and of the payload, the ideal ``-sum log2 p``, the coder
overhead, and whether decoding gives back exactly the tokens (every image) and the pixels of
``model.decode(model.encode(x))`` (what ``bsqvit reconstruct`` computes; full file path on the
first image, same tokens -> same pixels on the others).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bsqvit import BSQViT
from bsqvit.codec import CodecOptions, TokenPrior, decode_tokens, decompress, encode_tokens
from bsqvit.codec.api import base_header, summarize
from bsqvit.io import load_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prior", action="append", default=[])
    ap.add_argument("--data", default="../shared/data/kodak")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = BSQViT.from_pretrained(args.model).eval()
    priors = [(p, TokenPrior.from_pretrained(p).eval()) for p in args.prior]
    files = sorted(Path(args.data).glob("*.png"))[: args.limit]
    rows = []
    for f in files:
        x = load_image(f)
        H, W = x.shape[-2:]
        t0 = time.perf_counter()
        tokens = model.encode(x[None])  # what compress runs (bsqvit.codec.api.tokenize)
        t1 = time.perf_counter()
        ref = model.decode(tokens, size=(H, W))[0]  # what decompress runs after the entropy decoder
        t2 = time.perf_counter()
        enc_s, dec_s = t1 - t0, t2 - t1
        for name, prior in [("raw", None), *priors]:
            header = base_header(model, "image", H, W, 1, 0.0, prior, CodecOptions())
            t0 = time.perf_counter()
            data, info = encode_tokens(tokens.numpy(), header, prior)
            t1 = time.perf_counter()
            _, back = decode_tokens(data, prior)
            t2 = time.perf_counter()
            exact_tokens = bool(np.array_equal(back, tokens.numpy()))
            if name == "raw" or f == files[0]:  # the full file path once per prior: pixels == reconstruct
                y = decompress(data, model, prior)
                exact_pixels = bool(torch.equal(y, ref))
            else:
                exact_pixels = exact_tokens  # same tokens -> the same decode call -> the same pixels
            s = summarize(data, header, info, 0.0)
            row = {"image": f.name, "coder": s["coder"], "prior": name, "bytes": s["bytes"], "bpp": s["bpp"],
                   "bits_per_token": s["bits_per_token"], "payload_bits_per_token": s["payload_bits_per_token"],
                   "ideal_bits_per_token": s["ideal_bits_per_token"], "coder_overhead": s["coder_overhead"],
                   "seconds_entropy_encode": t1 - t0, "seconds_entropy_decode": t2 - t1,
                   "seconds_tokenizer_encode": enc_s, "seconds_tokenizer_decode": dec_s,
                   "seconds_compress": enc_s + t1 - t0, "seconds_decompress": dec_s + t2 - t1,
                   "exact_tokens": exact_tokens, "exact_pixels": exact_pixels}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for name in ["raw", *[p for p, _ in priors]]:
        r = [row for row in rows if row["prior"] == name]
        summary[name] = {k: float(np.mean([q[k] for q in r])) for k in
                         ("bpp", "bits_per_token", "payload_bits_per_token", "ideal_bits_per_token",
                          "coder_overhead", "seconds_compress", "seconds_decompress", "seconds_entropy_encode",
                          "seconds_entropy_decode", "seconds_tokenizer_encode", "seconds_tokenizer_decode")}
        summary[name]["exact_all"] = all(q["exact_tokens"] and q["exact_pixels"] for q in r)
        summary[name]["images"] = len(r)
    raw = summary["raw"]["bits_per_token"]
    for name, s in summary.items():
        s["saving_vs_raw_file"] = 1 - s["bits_per_token"] / raw
        s["saving_vs_L_bits"] = 1 - s["payload_bits_per_token"] / model.quantizer.bits
    out = {"model": args.model, "threads": args.threads, "summary": summary, "rows": rows}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
