"""Shared test fixtures."""

from __future__ import annotations

import os

import pytest
import torch
from shared_data import WEIGHTS


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (reproducible timings and results on a shared machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


if WEIGHTS.is_dir():  # the library finds metric weights through this variable only
    os.environ.setdefault("BSQVIT_WEIGHTS_DIR", str(WEIGHTS))
