"""Per-phase timing of a training step, for ``benchmarks/train_throughput.py``.

The trainer wraps each phase of its step (data wait, G forward, perceptual, G's adversarial
term, G backward, G optimizer, EMA, D step, R1 step, D optimizer) in ``self.phase(name)``. By
default that is :data:`NO_PHASES` (a shared ``nullcontext``: no synchronisation, no cost). A
benchmark installs a :class:`PhaseTimer`, which

* synchronises CUDA before and after each phase (``torch.cuda.synchronize``), so a phase's time
  is its own kernels' and not the queue's; this serialises host and device, so the sum of the
  phases is an upper bound of an unsynchronised step;
* counts floating-point operations per phase with the formulas of
  ``torch.utils.flop_counter`` when ``count_flops`` (slow: use it on a separate step, not on a
  timed one). ``FlopCounterMode`` itself cannot be used: its module tracker raises inside
  ``torch.autograd.grad`` ("A leaf node was passed to _will_engine_execute_node"), i.e. in R1;
  :class:`FlopCounter` is the same count (aten-level matmuls / convolutions, their backward and
  double backward) without module attribution;
* records the peak CUDA memory allocated during each phase.

Phases are not nested; time outside every phase (loss arithmetic, logging) is ``other``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

__all__ = ["NO_PHASES", "PHASES", "FlopCounter", "NoPhases", "PhaseTimer"]

PHASES = ("data", "g_forward", "perceptual", "g_adv", "g_backward", "g_optim", "ema", "d_step", "r1", "d_optim")


class FlopCounter(TorchDispatchMode):
    """Counts the FLOPs of the aten ops run inside it (``total``), with ``flop_registry``."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


class NoPhases:
    """The default: every phase is a no-op context."""

    _null = nullcontext()

    def __call__(self, name: str):
        return self._null


NO_PHASES = NoPhases()


class PhaseTimer:
    """Accumulates, per phase, the seconds (and optionally FLOPs and peak CUDA bytes) of the
    current step; :meth:`end_step` files them under a step kind (e.g. ``plain`` / ``r1``)."""

    def __init__(self, device: torch.device | str = "cpu", count_flops: bool = False):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.count_flops = count_flops
        self.current: dict[str, float] = defaultdict(float)
        self.flops: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self.steps: dict[str, list[dict[str, float]]] = defaultdict(list)
        self._t_step = None

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def start_step(self) -> None:
        self._sync()
        self.current = defaultdict(float)
        self._t_step = time.perf_counter()

    @contextmanager
    def __call__(self, name: str):
        self._sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        counter = FlopCounter() if self.count_flops else nullcontext()
        t0 = time.perf_counter()
        try:
            with counter:
                yield
        finally:
            self._sync()
            self.current[name] += time.perf_counter() - t0
            if self.count_flops:
                self.flops[name] += counter.total
            if self.cuda:
                self.peak[name] = max(self.peak[name], torch.cuda.max_memory_allocated(self.device))

    def end_step(self, kind: str) -> dict[str, float]:
        """File the current step's phase times under ``kind``; ``total`` and ``other`` added."""
        self._sync()
        rec = dict(self.current)
        rec["total"] = time.perf_counter() - self._t_step
        rec["other"] = rec["total"] - sum(v for k, v in self.current.items())
        self.steps[kind].append(rec)
        return rec

    def summary(self, kind: str, skip: int = 0) -> dict[str, float]:
        """Median seconds per phase over the steps of ``kind`` (after the first ``skip``)."""
        recs = self.steps.get(kind, [])[skip:]
        if not recs:
            return {}
        keys = sorted({k for r in recs for k in r})
        return {k: float(torch.tensor([r.get(k, 0.0) for r in recs]).median()) for k in keys}
