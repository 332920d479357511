"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (reproducible timings and results on a shared machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


SHARED = Path(__file__).resolve().parents[2] / "shared"  # the project's data and weights, beside the checkout
if (SHARED / "weights").is_dir():  # the library finds metric weights through this variable only
    os.environ.setdefault("BSQVIT_WEIGHTS_DIR", str(SHARED / "weights"))
