"""Regenerate the codec's golden files (tiny seeded models, inputs, .bsq files, golden.json).

    python tests/data/codec/make_golden.py

Only needed when the ``.bsq`` format or the priors' numerics change on purpose (a major format
version bump, see docs/CODEC.md); tests/test_codec.py checks the files written here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bsqvit import BSQViT
from bsqvit.codec import CodecOptions, TokenPrior, compress, decode_tokens

HERE = Path(__file__).resolve().parent
KODAK = Path("/work/shared/data/kodak/kodim23.png")

TOKENIZER = dict(image_size=[8, 8], patch_size=4, width=16, layers=1, heads=2, head_dim=16,
                 quantizer=dict(type="bsq", dim=18, group_size=9))
PRIORS = {
    "prior-ar": dict(kind="ar", bits=18, group_bits=6, width=16, layers=1, heads=2, mlp_ratio=2.0, tile=[4, 4]),
    "prior-par": dict(kind="parallel", bits=18, group_bits=3, width=16, layers=1, heads=2, mlp_ratio=2.0,
                      tile=[3, 4], passes=5, schedule="quadtree", video=True),
    # skip maps (docs/FORMAT.md section 5.5): the encoder copies tokens of the previous frame
    "prior-ar-skip": dict(kind="ar", bits=18, group_bits=6, width=16, layers=1, heads=2, mlp_ratio=2.0,
                          tile=[4, 3], video=True, temporal_copy=0.1),
}
OPTIONS = CodecOptions(tile_batch=3, frames_per_chunk=2)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def perturb(module: torch.nn.Module, seed: int) -> None:
    """Random init leaves the zero-initialised parts (biases, vectors) at 0; give everything values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    img = np.array(Image.open(HERE / "image.png").convert("RGB"))
    vid = np.load(HERE / "video.npy")
    from bsqvit.io import from_uint8

    return from_uint8(img), from_uint8(vid)


def main() -> None:
    torch.set_num_threads(1)
    if not (HERE / "image.png").exists():
        a = np.asarray(Image.open(KODAK).convert("RGB"))
        Image.fromarray(np.ascontiguousarray(a[300:322, 400:430])).save(HERE / "image.png")  # 30 x 22
        frames = np.stack([a[200 + 2 * t : 216 + 2 * t, 500 + 3 * t : 522 + 3 * t] for t in range(5)])  # 5 x 16 x 22
        np.save(HERE / "video.npy", frames)
    torch.manual_seed(0)
    model = BSQViT(TOKENIZER).eval()
    perturb(model, 1)
    model.save_pretrained(HERE / "tokenizer")
    priors = {}
    for i, (name, cfg) in enumerate(PRIORS.items()):
        torch.manual_seed(10 + i)
        prior = TokenPrior(cfg).eval()
        perturb(prior, 20 + i)
        prior.save_pretrained(HERE / name)
        priors[name] = TokenPrior.from_pretrained(HERE / name)
    model = BSQViT.from_pretrained(HERE / "tokenizer")
    img, vid = inputs()
    golden = {"tokenizer_hash": model.weights_hash(), "priors": {k: p.weights_hash() for k, p in priors.items()},
              "files": {}}
    cases = {
        "image-raw": (img, None), "image-ar": (img, "prior-ar"), "image-par": (img, "prior-par"),
        "video-raw": (vid, None), "video-par": (vid, "prior-par"), "video-ar-skip": (vid, "prior-ar-skip"),
    }
    for name, (x, pname) in cases.items():
        prior = priors[pname] if pname else None
        res = compress(x, model, prior, fps=12.5, options=OPTIONS)
        (HERE / f"{name}.bsq").write_bytes(res.data)
        _, tokens = decode_tokens(res.data, prior)
        golden["files"][name] = {"sha256": sha(res.data), "bytes": len(res.data), "prior": pname,
                                 "tokens_sha256": sha(np.ascontiguousarray(tokens, "<i8").tobytes())}
    (HERE / "golden.json").write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n")
    for f in (HERE / "tokenizer", *(HERE / n for n in PRIORS)):
        readme = f / "README.md"
        if readme.exists():
            readme.unlink()
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
    print(json.dumps(golden, indent=2), f"\ntotal {total} bytes")


if __name__ == "__main__":
    main()
