"""The paper's quantizer ablation at small scale: same tokenizer, BSQ vs LFQ vs VQ vs FSQ vs Λ24-SQ.

Each quantizer is given the same number of bits per token (``bits``): BSQ and LFQ use L =
bits, VQ a codebook of 2^bits entries, FSQ the level set closest to 2^bits codes. Λ24-SQ
(``leech``) has a fixed rate, log2(196,560) = 17.58 bits, whatever ``bits`` is, and no entropy
or commitment term (the successor paper's ``codebook_weight: 0``). Everything else
(architecture, data, objective, steps, seed) is identical.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..metrics.pixel import psnr, ssim
from ..metrics.tokens import TokenStats
from ..quantizers import QuantizerConfig
from ..quantizers.base import bits_per_token
from ..train.config import TrainConfig
from ..train.trainer import Trainer

# FSQ level sets from Mentzer et al. (2023), Table 1, plus 2^18 as six 8-level channels.
FSQ_LEVELS = {
    8: [8, 6, 5],
    10: [8, 5, 5, 5],
    12: [7, 5, 5, 5, 5],
    14: [8, 8, 8, 6, 5],
    16: [8, 8, 8, 5, 5, 5],
    18: [8, 8, 8, 8, 8, 8],
}


NAMES = {"leech": "Λ24-SQ"}  # table names other than the kind in capitals


def quantizer_for(kind: str, bits: int, base: QuantizerConfig, vq_dim: int = 16) -> QuantizerConfig:
    if kind == "bsq":
        g = base.group_size if base.type == "bsq" and base.group_size and bits % base.group_size == 0 else None
        return replace(base, type="bsq", dim=bits, group_size=g)
    if kind == "lfq":
        # exact entropy (g = L) is the LFQ paper's form; it costs N x 2^L memory, so beyond
        # 14 bits we fall back to groups of 9 (said so in the table)
        return replace(base, type="lfq", dim=bits, group_size=bits if bits <= 14 else 9)
    if kind == "vq":
        return QuantizerConfig(type="vq", dim=vq_dim, codebook_size=2**bits, commitment_weight=0.25)
    if kind == "fsq":
        if bits not in FSQ_LEVELS:
            raise ValueError(f"no FSQ level set for {bits} bits (have {sorted(FSQ_LEVELS)})")
        return QuantizerConfig(type="fsq", levels=list(FSQ_LEVELS[bits]))
    if kind == "leech":
        return QuantizerConfig(type="leech", dim=24)
    raise ValueError(f"unknown quantizer {kind!r}")


@torch.no_grad()
def evaluate_tokenizer(model, loader, device) -> dict:
    """PSNR, SSIM (means over images) and token statistics of ``model`` on ``loader``'s batches."""
    q = model.quantizer
    binary = hasattr(q, "group_size")
    stats = TokenStats(q.bits, binary=binary, group_size=getattr(q, "group_size", None), codebook_size=q.codebook_size)
    ps, ss = [], []
    model.eval()
    key = "video" if getattr(loader.dataset, "num_frames", None) else "image"
    th, tw = model.config.image_size
    for batch in loader:
        x = batch[key].to(device)
        B, C, H, W = x.shape
        H, W = H - H % th, W - W % tw
        x = x[..., :H, :W]
        # tiles on the training grid, so every quantizer is judged where it was trained
        tiles = x.unfold(2, th, th).unfold(3, tw, tw)  # B, C, nh, nw, th, tw
        nh, nw = tiles.shape[2:4]
        tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, C, th, tw)
        out = model(tiles)
        rec = out.reconstruction.reshape(B, nh, nw, C, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)
        ps.extend(psnr(rec, x).tolist())
        ss.extend(ssim(rec, x).tolist())
        stats.update(out.indices)
    s = stats.summary()
    return {"psnr": sum(ps) / len(ps), "ssim": sum(ss) / len(ss), "n": len(ps), **s}


def run_ablation(cfg: TrainConfig, output_dir, bits: int | None = None, kinds=("bsq", "lfq", "vq", "fsq"),
                 max_steps: int | None = None, progress: bool = True) -> list[dict]:
    """Train and evaluate the tokenizer of ``cfg`` once per quantizer kind in ``output_dir/<kind>``;
    writes ``ablation.json`` and ``ablation.md`` there and returns the rows."""
    out = Path(output_dir)
    bits = bits or cfg.model.quantizer.dim
    quantizers = {kind: quantizer_for(kind, bits, cfg.model.quantizer) for kind in kinds}  # all checked first
    rows = []
    for kind in kinds:
        c = copy.deepcopy(cfg)
        c.model = replace(c.model, quantizer=quantizers[kind])
        trainer = Trainer(c, out / kind, max_steps=max_steps, progress=progress)
        t0 = time.time()
        steps0 = trainer.step
        trainer.fit()
        sec_per_step = (time.time() - t0) / max(1, trainer.step - steps0)
        model = trainer.ema if trainer.ema is not None else trainer.model
        res = evaluate_tokenizer(model, trainer.val_loader, trainer.device)
        row = {
            "quantizer": kind,
            "bits": round(bits_per_token(model.quantizer.codebook_size), 3),
            "psnr": res["psnr"],
            "ssim": res["ssim"],
            "code_usage": res["code_usage"],
            "used_codes": res["used_codes"],
            "tokens": res["tokens"],
            "entropy_bits": res["entropy_bits"],
            "bit_entropy_sum": res.get("bit_entropy_sum"),
            "sec_per_step": sec_per_step,
            "steps": trainer.step,
            "settings": _describe(c.model.quantizer),
        }
        rows.append(row)
        if trainer.dist.is_main:
            print(json.dumps(row), flush=True)
    write_table(rows, out)
    return rows


def _describe(q: QuantizerConfig) -> str:
    if q.type in ("bsq", "lfq"):
        g = q.group_size
        return f"L={q.dim}, entropy groups g={g if g else 'default'}"
    if q.type == "vq":
        return f"K={q.codebook_size}, dim={q.dim}, {'EMA' if q.ema else 'learned'}, dead-code restart"
    if q.type == "leech":
        return "Λ24: 196,560 fixed codes, exact search, no entropy or commitment term"
    return f"levels={q.levels}"


def write_table(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "| quantizer | bits | PSNR (dB) | SSIM | code usage | token entropy (bits) | bit-entropy sum | s/step | settings |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        be = f"{r['bit_entropy_sum']:.2f}" if r.get("bit_entropy_sum") is not None else "-"
        lines.append(
            f"| {NAMES.get(r['quantizer'], r['quantizer'].upper())} | {r['bits']:.2f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
            f"{100 * r['code_usage']:.1f}% ({r['used_codes']}/{r['tokens']} tokens) | {r['entropy_bits']:.2f} | {be} | "
            f"{r['sec_per_step']:.3f} | {r['settings']} |"
        )
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
