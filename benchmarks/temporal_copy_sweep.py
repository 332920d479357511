"""Rate and distortion of temporal copying (codec/temporal.py) against its threshold, on one clip.

    python benchmarks/temporal_copy_sweep.py --data ../shared/data/video/openh264_BA1_FT_C.264 \
        [--model DIR] [--prior DIR] [--max-frames 16] [--taus 0,0.05,0.1,0.2,0.3] [--bits 6,12,18,24,30,36] \
        [--baseline benchmarks/results/rd_foreman_video.json] [--json OUT.json]

The encoder runs once (the clip's latents); for every rate L' and threshold tau the copied tokens
are decoded to pixels (PSNR-RGB per frame, as ``bsqvit rd``) and their code length is estimated:
the prior's -log2 p of the tokens it would code (every token of frame 0, the tokens that differ
from the previous frame's after it; tiles as the coder cuts them), plus the skip maps' exact
ideal bits under their adaptive model (``code_skip_map``). This skips the integer range coder
(minutes per point) and is within about 1 % of whole files (0.0808 against 0.0815 bpp at 36 bits,
tau 0.1, the default). With ``--baseline`` (an ``rd --video`` JSON holding H.264 points), each
tau's curve gets its BD-rate and PSNR gap to H.264 (bjontegaard).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bsqvit.codec import TokenPrior
from bsqvit.codec.coding import SymbolCoder, code_skip_map
from bsqvit.codec.prior import tile_layout
from bsqvit.codec.temporal import copy_video, video_latents
from bsqvit.evaluation.bdrate import bd_rate
from bsqvit.io.video import read_video
from bsqvit.models import load_tokenizer
from bsqvit.models.frames import decode_frames, video_chunk
from bsqvit.pretrained import default_pair


@torch.no_grad()
def estimated_bits(prior: TokenPrior, tokens: torch.Tensor, bits: int, full: int) -> tuple[float, float]:
    """(prior bits, skip-map bits) of full-width tokens (T, h, w) at rate ``bits``."""
    tok = tokens >> (full - bits)
    T, h, w = tok.shape
    total = 0.0
    for r, c, th, tw in tile_layout(h, w, prior.config.tile):
        t = tok[:, r : r + th, c : c + tw]
        total += float(prior(t[:1], None, bits=bits).sum())
        if T > 1:
            nll = prior(t[1:], t[:-1], bits=bits) * (t[1:] != t[:-1]).reshape(T - 1, -1)
            total += float(nll.sum())
    coder, tn = SymbolCoder(), tok.numpy()
    for f in range(1, T):
        code_skip_map(coder, h, w, tn[f] == tn[f - 1], (tn[f - 1] == tn[f - 2]) if f > 1 else None)
    return total, coder.stats.ideal_bits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--prior", default=None)
    ap.add_argument("--max-frames", type=int, default=16)
    ap.add_argument("--taus", default="0,0.05,0.1,0.2,0.3")
    ap.add_argument("--bits", default="6,12,18,24,30,36")
    ap.add_argument("--baseline", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    mdir, pdir = default_pair(video=True)
    model = load_tokenizer(a.model or str(mdir)).eval()
    prior = TokenPrior.from_pretrained(a.prior or str(pdir)).eval()
    x, _ = read_video(a.data, max_frames=a.max_frames)
    T, H, W = x.shape[1:]
    ref = ((x + 1) * 127.5).round().clamp(0, 255)
    latents = video_latents(model, x)
    full, n = model.quantizer.dim, video_chunk(model)
    rows = []
    for bits in [int(b) for b in a.bits.split(",")]:
        for tau in [float(t) for t in a.taus.split(",")]:
            tok = copy_video(latents, full, bits, tau)
            rec = torch.cat([decode_frames(model, tok[s : s + n], (H, W), bits=bits) for s in range(0, T, n)], 1)
            rec = ((rec + 1) * 127.5).round().clamp(0, 255)
            mse = ((rec - ref) ** 2).mean(dim=(0, 2, 3))  # per frame, 8-bit RGB
            p = float((10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))).mean())
            prior_bits, skip_bits = estimated_bits(prior, tok, bits, full)
            row = {"bits": bits, "tau": tau, "bpp": (prior_bits + skip_bits) / (T * H * W), "psnr": p,
                   "skip_map_bpp": skip_bits / (T * H * W), "copied": float((tok[1:] == tok[:-1]).float().mean())}
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"data": a.data, "frames": T, "points": rows, "bd": {}}
    if a.baseline:
        base = json.loads(Path(a.baseline).read_text())
        for codec in ("h264", "h265"):
            pts = [p for p in base["points"] if p["codec"] == codec]
            for tau in sorted({r["tau"] for r in rows}):
                r = bd_rate([q for q in rows if q["tau"] == tau], pts)
                report["bd"][f"{codec}@{tau}"] = r
                print(f"tau {tau}: against {codec} BD-rate {r['bd_rate']:.1f} %, "
                      f"{r['delta_psnr_at_equal_rate']:.2f} dB at equal rate (bpp {min(q['bpp'] for q in rows if q['tau'] == tau):.4f}"
                      f"-{max(q['bpp'] for q in rows if q['tau'] == tau):.4f})")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
