"""Bits and seconds of the integer prior against the float prior it was derived from, on Kodak.

    python benchmarks/int_prior_kodak.py --prior src/bsqvit/assets/default/prior --prior runs/prior-par/prior \
        [--model DIR] [--data ../shared/data/kodak] [--limit N] [--threads 2] [--json OUT.json]

For every image and prior, both run through the coder's own code path (``code_frame``, same tiles,
same symbol order, 16-bit frequencies):

* ``float``: the float32 ``TokenPrior`` with the frequency rule of format 1.0 (float64 softmax,
  ``floor(p (2^16 - K)) + 1``, remainder to the most probable symbol) -- what files cost before
  the integer arithmetic, encode only (that float path is not portable, which is the point);
Bits are reported twice: whole payload bits (32-bit words) and the model's exact code length
``-sum log2(f / 2^16)`` under the frequencies each coder used.

* ``int``: the integer engine (:class:`bsqvit.codec.intprior.IntPrior`), encoded, then decoded
  and checked token for token, with the encode and decode seconds of the entropy coder.

The tokenizer's seconds (encode, decode) are reported too, so decompress = tokenizer decode +
entropy decode.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bsqvit import BSQViT
from bsqvit.codec import TokenPrior
from bsqvit.codec.coding import SymbolCoder, as_engine, code_frame, decoder_for, prior_threads
from bsqvit.io import from_uint8, iter_video_frames, load_image


class FloatEngine:
    """The float prior behind the coder's interface (format 1.0's frequency rule)."""

    def __init__(self, prior):
        self.prior, self.config = prior, prior.config
        for name in ("ar_init", "ar_step", "parallel_features", "condition"):
            setattr(self, name, getattr(prior, name))

    def group_frequencies(self, h, k, prev_groups, prob_bits):
        lg = self.prior.group_logits(h, k, prev_groups).double()
        p = torch.softmax(lg, -1)
        K, total = lg.shape[-1], 1 << prob_bits
        f = torch.floor(p * (total - K)).long() + 1
        f[torch.arange(len(f)), f.argmax(-1)] += total - f.sum(-1)
        return f, (p * (1 << 30)).long().clamp(min=1)


def _code(engine, frames, tile_batch):
    """Encode frames (T, h, w) (each conditioned on the previous one for a video prior)."""
    _, h, w = frames.shape
    enc = SymbolCoder(16)
    t0 = time.perf_counter()
    with prior_threads(None):
        for t, tokens in enumerate(frames):
            prev = frames[t - 1] if engine.config.video and t else None
            code_frame(engine, enc, h, w, tokens, prev, tile_batch)
    data = enc.finish()
    return data, time.perf_counter() - t0, enc.stats.model_bits


def _decode(engine, data, shape, tile_batch):
    dec, out = decoder_for(data, 16), []
    with prior_threads(None):
        for _ in range(shape[0]):
            prev = out[-1] if engine.config.video and out else None
            out.append(code_frame(engine, dec, *shape[1:], None, prev, tile_batch))
    return np.stack(out)


def _inputs(model, files, clip, max_frames):
    """(name, pixels (3, H, W) or (3, T, H, W)) of every Kodak image, or of the clip."""
    if clip:
        frames = [from_uint8(f) for f in iter_video_frames(clip, max_frames=max_frames)]
        return [(Path(clip).name, torch.stack(frames, 1))]
    return [(f.name, load_image(f)) for f in files]


def measure(model, priors, inputs, tile_batch):
    rows = []
    for name, x in inputs:
        frames = x[:, None] if x.ndim == 3 else x  # (3, T, H, W)
        with torch.inference_mode():
            t0 = time.perf_counter()
            tok = torch.cat([model.encode(frames[:, t][None]) for t in range(frames.shape[1])])
            t1 = time.perf_counter()
            for t in range(tok.shape[0]):
                model.decode(tok[t : t + 1], size=x.shape[-2:])
            t2 = time.perf_counter()
        tokens = tok.numpy()
        for pname, prior in priors:
            fdata, _, fbits = _code(FloatEngine(prior), tokens, tile_batch)
            engine = as_engine(prior)
            idata, t_enc, ibits = _code(engine, tokens, tile_batch)
            t3 = time.perf_counter()
            back = _decode(engine, idata, tokens.shape, tile_batch)
            t_dec = time.perf_counter() - t3
            row = {"image": name, "prior": pname, "tokens": int(tokens.size),
                   "float_bits_per_token": 8 * len(fdata) / tokens.size, "int_bits_per_token": 8 * len(idata) / tokens.size,
                   "float_model_bits_per_token": fbits / tokens.size, "int_model_bits_per_token": ibits / tokens.size,
                   "seconds_entropy_encode": t_enc, "seconds_entropy_decode": t_dec,
                   "seconds_tokenizer_encode": t1 - t0, "seconds_tokenizer_decode": t2 - t1,
                   "exact": bool(np.array_equal(back, tokens))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def speed(model, priors, files) -> dict:
    """Seconds per image of the entropy decoding, float prior (format 1.0's settings, and 2 threads)
    against the integer prior (default tile batch; 2 and 1 threads), on the same tokens."""
    settings = [("float, 1 thread, tile batch 16 (format 1.0)", False, 1, 16), ("float, 2 threads", False, 2, 16),
                ("integer, 2 threads", True, 2, None), ("integer, 1 thread", True, 1, None)]
    with torch.inference_mode():
        tokens = [model.encode(load_image(f)[None])[0].numpy() for f in files]
    out = {}
    for pname, prior in priors:
        for label, integer, threads, tile_batch in settings:
            engine = as_engine(prior) if integer else FloatEngine(prior)
            seconds = []
            for tok in tokens:
                with prior_threads(threads):
                    data, _, _ = _code(engine, tok[None], tile_batch)
                    t0 = time.perf_counter()
                    back = _decode(engine, data, tok[None].shape, tile_batch)
                    seconds.append(time.perf_counter() - t0)
                assert np.array_equal(back[0], tok)
            out[f"{pname} | {label}"] = float(np.mean(seconds))
            print(f"{pname} | {label}: {np.mean(seconds):.3f} s/image", flush=True)
    return out


def summarize(rows) -> dict:
    out = {}
    for name in dict.fromkeys(r["prior"] for r in rows):
        r = [q for q in rows if q["prior"] == name]
        s = {k: float(np.mean([q[k] for q in r])) for k in r[0] if isinstance(r[0][k], float)}
        s["int_vs_float"] = s["int_bits_per_token"] / s["float_bits_per_token"] - 1
        s["int_vs_float_model"] = s["int_model_bits_per_token"] / s["float_model_bits_per_token"] - 1
        s["seconds_decompress"] = s["seconds_tokenizer_decode"] + s["seconds_entropy_decode"]
        s["exact_all"], s["images"] = all(q["exact"] for q in r), len(r)
        out[name] = s
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="src/bsqvit/assets/default/tokenizer")
    ap.add_argument("--prior", action="append", required=True)
    ap.add_argument("--data", default="../shared/data/kodak")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tile-batch", type=int, default=None, help="default: the coder's, by prior kind")
    ap.add_argument("--video", default=None, metavar="CLIP", help="code the frames of a clip instead of Kodak")
    ap.add_argument("--max-frames", type=int, default=16)
    ap.add_argument("--speed", action="store_true", help="only the side-by-side decode seconds, float vs integer")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = BSQViT.from_pretrained(args.model).eval()
    priors = [(p, TokenPrior.from_pretrained(p).eval()) for p in args.prior]
    files = sorted(Path(args.data).glob("*.png"))[: args.limit]
    if args.speed:
        result = speed(model, priors, files)
        if args.json:
            Path(args.json).write_text(json.dumps({"speed": result}, indent=2) + "\n")
        return
    rows = measure(model, priors, _inputs(model, files, args.video, args.max_frames), args.tile_batch)
    summary = summarize(rows)
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "summary": summary, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
