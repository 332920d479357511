"""Pack trained runs into the embedded default models (src/bsqvit/assets/default).

    python scripts/package_default.py --tokenizer runs/default/tokenizer --prior runs/prior-ar/prior \
        --gen runs/gen/gen [--video-tokenizer runs/default-video/tokenizer --video-prior runs/prior-video/prior]

The tokenizer must already be float16-exact (it is rounded before its prior and generator are
trained, so that their recorded tokenizer hash is the shipped one); the priors and the generator
are rounded here. Every component is checked against its tokenizer's hash (the video prior
against the video tokenizer's), stored as float16 safetensors + JSON, and listed with its SHA-256
in MANIFEST.json, with both tokenizers' hashes. Fails above --max-mb (all components together).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bsqvit.models import load_tokenizer
from bsqvit.codec import TokenPrior
from bsqvit.generate.model import MaskedTokenModel
from bsqvit.pretrained import ROOT, pack_component, round_to_half, write_manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--prior", required=True)
    ap.add_argument("--gen", required=True)
    ap.add_argument("--video-tokenizer", default=None, help="the block-causal video tokenizer (optional)")
    ap.add_argument("--video-prior", default=None, help="its previous-frame prior (with --video-tokenizer)")
    ap.add_argument("--out", default=str(ROOT))
    ap.add_argument("--max-mb", type=float, default=40.0)
    a = ap.parse_args()
    if (a.video_tokenizer is None) != (a.video_prior is None):
        raise SystemExit("--video-tokenizer and --video-prior go together")
    tok = load_tokenizer(a.tokenizer)
    h = tok.weights_hash()
    hashes = {"tokenizer": h}
    if a.video_tokenizer:
        hashes["video-tokenizer"] = load_tokenizer(a.video_tokenizer).weights_hash()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".default.", dir=out.parent))
    try:
        pack_component(Path(a.tokenizer), staging / "tokenizer")
        parts = [("prior", TokenPrior, a.prior, h), ("gen", MaskedTokenModel, a.gen, h)]
        sources = {"tokenizer": a.tokenizer, "prior": a.prior, "gen": a.gen}
        if a.video_tokenizer:
            pack_component(Path(a.video_tokenizer), staging / "video-tokenizer")
            parts.append(("video-prior", TokenPrior, a.video_prior, hashes["video-tokenizer"]))
            sources.update({"video-tokenizer": a.video_tokenizer, "video-prior": a.video_prior})
        for name, cls, src, want in parts:
            m = cls.from_pretrained(src)
            if m.config.tokenizer_hash != want:
                raise SystemExit(f"{src}: trained for tokenizer {m.config.tokenizer_hash}, not {want}")
            round_to_half(m)
            with tempfile.TemporaryDirectory() as td:
                m.save_pretrained(td)
                pack_component(Path(td), staging / name)
        manifest = write_manifest(staging, {"tokenizer_hash": h, "tokenizer_hashes": hashes, "sources": sources})
        total = sum(f["bytes"] for f in manifest["files"].values())
        if total > a.max_mb * 1e6:
            raise SystemExit(f"{total / 1e6:.1f} MB exceeds {a.max_mb} MB")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for rel, f in sorted(manifest["files"].items()):
        print(f"{f['bytes']:>10,}  {f['sha256'][:16]}  {rel}")
    print(f"{total:>10,}  total -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
