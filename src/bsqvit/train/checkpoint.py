"""Crash-safe checkpoints: temporary file + fsync + rename; ``checkpoints/last`` always valid."""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..io.files import atomic_dir, atomic_path

LAST = "last"
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")


def atomic_torch_save(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def point_last(ckpt_dir: Path, target: Path) -> None:
    """Atomically make ``ckpt_dir/last`` refer to ``target`` (a relative symlink)."""
    ckpt_dir = Path(ckpt_dir)
    with atomic_path(ckpt_dir / LAST, suffix="") as tmp:
        tmp.unlink()  # a unique free name for the link
        try:
            os.symlink(Path(target).name, tmp)
        except OSError:  # no symlinks (some filesystems): copy, still atomically
            shutil.copyfile(target, tmp)
    _fsync_dir(ckpt_dir)


def save_checkpoint(state: dict, ckpt_dir: Path, step: int, keep: int = 2) -> Path:
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / f"step_{step:08d}.pt"
    atomic_torch_save(state, path)
    point_last(ckpt_dir, path)
    if keep > 0:
        old = sorted(p for p in ckpt_dir.iterdir() if _STEP_RE.match(p.name))
        current = (ckpt_dir / LAST).resolve()
        for p in old[:-keep]:
            if p.resolve() != current:
                p.unlink(missing_ok=True)
    return path


def find_last(ckpt_dir: Path) -> Path | None:
    last = Path(ckpt_dir) / LAST
    if last.exists():
        return last
    steps = sorted(p for p in Path(ckpt_dir).glob("step_*.pt") if _STEP_RE.match(p.name))
    return steps[-1] if steps else None


def load_checkpoint(path: Path) -> dict:
    """Our checkpoints hold only tensors and plain containers: loaded with weights_only=True."""
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain containers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def export_model(model, out_dir: Path) -> None:
    """``save_pretrained`` into ``out_dir`` atomically (write beside, then swap)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out_dir, replace=True) as tmp:
        model.save_pretrained(tmp)
