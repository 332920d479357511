"""Where the tests find the project's data and weights: ``../shared`` beside the checkout, or
the folder named by ``$BSQVIT_TEST_SHARED`` (``BSQVIT_TEST_SHARED=none`` hides it: a bare machine).

A bare clone has no ``../shared``; tests that need it skip with a reason naming what is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_HIDDEN = Path(__file__).resolve().parent / "no-shared-data-here"  # never exists
_ENV = os.environ.get("BSQVIT_TEST_SHARED")
SHARED = (_HIDDEN if _ENV == "none" else Path(_ENV)) if _ENV else Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data"
KODAK = DATA / "kodak"
VIDEO = DATA / "video"
WEIGHTS = SHARED / "weights"
SQUEEZE_CAFFE = WEIGHTS / "squeezenet1_1_caffe" / "squeezenet1_1_features.pth"
LPIPS_LIN = WEIGHTS / "lpips_v0.1"


def needs(*paths: Path, what: str) -> pytest.MarkDecorator:
    """Skip unless every path exists."""
    missing = [p for p in paths if not p.exists()]
    return pytest.mark.skipif(bool(missing), reason=f"{what} not available ({missing[0] if missing else ''})")


needs_kodak = needs(KODAK / "kodim01.png", what="Kodak (../shared/data/kodak)")
KODIM01 = KODAK / "kodim01.png"
RAW_H264 = VIDEO / "openh264_MR1_BT_A.h264"  # a raw Annex-B H.264 stream
MP4 = VIDEO / "imageio_realshort.mp4"
needs_kodak_and_video = needs(KODIM01, RAW_H264, what="Kodak and video clips (../shared/data)")


def leftovers(d: Path) -> list[str]:
    """Temporary files an atomic write left behind in ``d`` (there must be none)."""
    return sorted(p.name for p in d.iterdir() if ".tmp" in p.name)
needs_squeeze = needs(SQUEEZE_CAFFE, what="SqueezeNet-Caffe weights (../shared/weights)")
