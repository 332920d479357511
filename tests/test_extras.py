"""Optional dependencies: each one missing gives a one-line error naming the extra, never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bsqvit.evaluation.bdrate import bd_rate
from bsqvit.evaluation.rd_report import plot
from bsqvit.extras import OPTIONAL, MissingDependency, available, require
from bsqvit.metrics.fid import frechet_distance


def _hide(monkeypatch, *modules):
    """Make ``import m`` fail for each module (and its submodules) for the rest of the test."""
    for name in list(sys.modules):
        if any(name == m or name.startswith(m + ".") for m in modules):
            monkeypatch.delitem(sys.modules, name)
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


@pytest.mark.parametrize("module", sorted(OPTIONAL))
def test_each_optional_dependency_names_its_extra(monkeypatch, module):
    _hide(monkeypatch, module)
    dist, extra = OPTIONAL[module]
    with pytest.raises(MissingDependency) as e:
        require(module, "this job")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("this job needs") and f"bsqvit[{extra}]" in msg and dist in msg
    assert not available(module)


def test_undeclared_modules_are_a_programming_error():
    with pytest.raises(KeyError):
        require("numpy", "anything")


def _points(shift):
    return [{"bpp": r, "psnr": 20 + 10 * r + shift} for r in (0.1, 0.2, 0.4, 0.8)]


def test_the_callers_raise_it(monkeypatch, tmp_path):
    _hide(monkeypatch, "scipy", "bjontegaard", "matplotlib")
    with pytest.raises(MissingDependency, match=r"Fréchet distance needs scipy.*bsqvit\[eval\]"):
        frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2), method="sqrtm")
    assert frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2), method="symmetric") == pytest.approx(2.0)
    with pytest.raises(MissingDependency, match=r"BD-rate needs bjontegaard"):
        bd_rate(_points(1.0), _points(0.0))
    with pytest.raises(MissingDependency, match=r"RD plot needs matplotlib"):
        plot({"points": [], "items": [], "video": False, "data": "x"}, tmp_path / "rd.png")
    assert not (tmp_path / "rd.png").exists()


def test_the_command_line_prints_one_line():
    code = ("import sys; sys.modules['bjontegaard'] = None\n"
            "from bsqvit.cli.common import EXPECTED_ERRORS\n"
            "from bsqvit.evaluation.bdrate import bd_rate\n"
            "pts = lambda s: [{'bpp': r, 'psnr': 20 + 10 * r + s} for r in (0.1, 0.2, 0.4, 0.8)]\n"
            "try:\n    bd_rate(pts(1), pts(0))\n"
            "except EXPECTED_ERRORS as e:\n    print('caught', type(e).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "caught MissingDependency", out.stderr


def test_the_base_install_has_the_range_coder():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    base = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)[1]
    assert re.search(r'^\s*"constriction>=', base, re.M)
