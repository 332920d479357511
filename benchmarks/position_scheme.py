"""Why interpolated position embeddings: PSNR at resolutions other than the training grid.

A model trained on S x S crops is run on Kodak (a) as S x S tiles, each on the training grid,
and (b) whole, with its learned spatial embeddings bicubically interpolated to the larger grid
(what ``BSQViT`` does). (c) is a control that shows what the positional signal is worth: whole
images with the *training-grid* embedding tiled periodically instead of interpolated.

    python benchmarks/position_scheme.py --model runs/cpu-small/model --data ../shared/data/kodak
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bsqvit import BSQViT
from bsqvit.io import load_image
from bsqvit.metrics.pixel import psnr


@torch.no_grad()
def tiled(model: BSQViT, x: torch.Tensor, s: int) -> torch.Tensor:
    _, _, H, W = x.shape
    out = torch.empty_like(x)
    for y in range(0, H, s):
        for xx in range(0, W, s):
            tile = x[..., y : y + s, xx : xx + s]
            out[..., y : y + s, xx : xx + s] = model.decode(model.encode(tile), size=tile.shape[-2:])
    return out


@torch.no_grad()
def periodic(model: BSQViT, x: torch.Tensor) -> torch.Tensor:
    """Control: repeat the training-grid embedding instead of interpolating it."""
    saved = []
    for vit in (model.encoder, model.decoder):
        orig = vit.spatial_embedding

        def rep(grid, vit=vit):
            g = vit.grid
            pe = vit.pos_embed.reshape(*g, -1)
            reps = (-(-grid[0] // g[0]), -(-grid[1] // g[1]))
            return pe.repeat(reps[0], reps[1], 1)[: grid[0], : grid[1]].reshape(grid[0] * grid[1], -1)

        vit.spatial_embedding = rep
        saved.append((vit, orig))
    try:
        return model.decode(model.encode(x), size=x.shape[-2:])
    finally:
        for vit, orig in saved:
            vit.spatial_embedding = orig


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="../shared/data/kodak")
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = BSQViT.from_pretrained(a.model).eval()
    s = model.config.image_size[0]
    files = sorted(Path(a.data).glob("*.png"))[: a.limit]
    res = {"tiles_on_training_grid": [], "whole_interpolated": [], "whole_periodic_control": []}
    for f in files:
        x = load_image(f).unsqueeze(0) * 1.0
        res["tiles_on_training_grid"].append(psnr(tiled(model, x, s), x).item())
        res["whole_interpolated"].append(psnr(model.decode(model.encode(x), size=x.shape[-2:]), x).item())
        res["whole_periodic_control"].append(psnr(periodic(model, x), x).item())
    summary = {k: sum(v) / len(v) for k, v in res.items()}
    summary.update(model=a.model, training_grid=f"{s}x{s}", images=len(files))
    print("| scheme | Kodak PSNR (dB), original resolution |\n|---|---|")
    for k in ("tiles_on_training_grid", "whole_interpolated", "whole_periodic_control"):
        print(f"| {k} | {summary[k]:.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
