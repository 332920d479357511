"""Pack trained runs into the embedded default models (src/bsqvit/assets/default).

    python scripts/package_default.py --tokenizer runs/default/tokenizer --prior runs/prior-ar/prior \
        --gen runs/gen/gen

The tokenizer must already be float16-exact (it is rounded before its prior and generator are
trained, so that their recorded tokenizer hash is the shipped one); the prior and the generator
are rounded here. Every component is checked against the tokenizer's hash, stored as float16
safetensors + JSON, and listed with its SHA-256 in MANIFEST.json. Fails above --max-mb.
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
    ap.add_argument("--out", default=str(ROOT))
    ap.add_argument("--max-mb", type=float, default=40.0)
    a = ap.parse_args()
    tok = load_tokenizer(a.tokenizer)
    h = tok.weights_hash()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".default.", dir=out.parent))
    try:
        pack_component(Path(a.tokenizer), staging / "tokenizer")
        for name, cls, src in (("prior", TokenPrior, a.prior), ("gen", MaskedTokenModel, a.gen)):
            m = cls.from_pretrained(src)
            if m.config.tokenizer_hash != h:
                raise SystemExit(f"{src}: trained for tokenizer {m.config.tokenizer_hash}, not {h}")
            round_to_half(m)
            with tempfile.TemporaryDirectory() as td:
                m.save_pretrained(td)
                pack_component(Path(td), staging / name)
        manifest = write_manifest(staging, {"tokenizer_hash": h, "sources": {
            "tokenizer": a.tokenizer, "prior": a.prior, "gen": a.gen}})
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
