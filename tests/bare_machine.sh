#!/usr/bin/env bash
# The newcomer's first run, reproduced: a fresh clone in an empty folder (no ../shared beside it),
# a fresh virtual environment, an empty HOME (no caches, no weights), then
#   1. the base install (no extras) compresses, decompresses, reconstructs and generates;
#   2. the README's set-up command 1, exactly: pip install torch==2.13.0 && pip install -e ".[all]" && bsqvit demo
#      (on --limit 2 of the shipped samples, for time);
#   3. the README's set-up command 2 (the test suite), with ../shared absent.
# Usage: bash tests/bare_machine.sh [WORKDIR]      (takes several minutes: it installs everything)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$(mktemp -d)}"
mkdir -p "$WORK" && cd "$WORK"
rm -rf clone venv home && git clone -q "$REPO" clone && mkdir home
python -m venv venv && source venv/bin/activate
export HOME="$WORK/home" XDG_CACHE_HOME="$WORK/home/.cache" TORCH_HOME="$WORK/home/.torch"
unset BSQVIT_WEIGHTS_DIR BSQVIT_TEST_SHARED
cd clone
test ! -e ../shared

echo "== 1. base install: compress, decompress, reconstruct, generate"
pip install -q torch==2.13.0 && pip install -q -e .
python - <<'PY'
import numpy as np
from PIL import Image
Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)).save("in.png")
PY
bsqvit compress in.png out.bsq && bsqvit decompress out.bsq dec.png && bsqvit reconstruct in.png rec.png
bsqvit generate --n 1 --class 0 --out gen
cmp <(python -c "import numpy as np; from PIL import Image; print(np.asarray(Image.open('dec.png')).tobytes().hex())") \
    <(python -c "import numpy as np; from PIL import Image; print(np.asarray(Image.open('rec.png')).tobytes().hex())")

echo "== 2. README command 1"
pip install -q torch==2.13.0 && pip install -q -e ".[all]" && bsqvit demo --limit 2 --no-progress
test -s demo-out/rd.png && test -s demo-out/generated/grid.png && test -s demo-out/demo.json

echo "== 3. README command 2, no ../shared"
pip install -q torch==2.13.0 && pip install -q -e ".[test]" && python -m pytest -q
echo "bare machine: OK"
