"""The training loop shared by the tokenizer, token-prior and generator trainers.

:class:`TrainLoop` owns what every trainer does the same way: the step counter and stopping at
``max_steps``; the NaN guard (a non-finite logged value raises ``FloatingPointError``); the
cadence of logging (every ``log_every`` steps and at the last one), of checkpoints (every
``checkpoint_every`` steps and at the last one; crash-safe, :mod:`bsqvit.train.checkpoint`) and of
evaluations (every ``eval_every`` steps before the last; what happens at the start and the end is
the specialisation's); resuming from ``checkpoints/last``; tqdm; and the run log (``log.jsonl``,
``eval.jsonl``, TensorBoard ``tb/``, :class:`~bsqvit.train.runlog.RunLog`). One step::

    batch = next_batch()          # a function of the data position or of (seed, step)
    logs = train_step(batch)      # forward, backward, clipping, optimizer(s), schedule(s), EMA
    step += 1
    NaN guard -> log? -> checkpoint? -> evaluate?

A specialisation (subclass) provides the hooks: ``next_batch``, ``train_step``, ``evaluate``,
``state_dict`` / ``load_state_dict`` (what a checkpoint holds), and optionally ``format_log``
(log.jsonl record, TensorBoard scalars, tqdm postfix), ``on_fit_start`` (e.g. an evaluation at
step 0) and ``on_fit_end`` (by default a last evaluation). :class:`SingleModelLoop` adds the
common case of one model with AdamW, warm-up + half-cosine, clipping and an optional EMA.

The configuration (``cfg``) needs ``steps``, ``log_every``, ``eval_every``, ``checkpoint_every``
and ``keep_checkpoints``; :class:`SingleModelLoop` also ``optim`` (lr, betas, weight_decay,
warmup_steps, warmup_start, min_lr_ratio, grad_clip and, for an EMA, ema_decay).
"""

from __future__ import annotations

import abc
import logging
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import ConfigError
from . import checkpoint as ckpt
from .distributed import barrier
from .optim import adamw_warmup_cosine, clip_grad_norm, ema_update, make_ema
from .runlog import RunLog

log = logging.getLogger("bsqvit.train")


def check_finite(logs: dict, step: int) -> None:
    """The NaN guard: raise ``FloatingPointError`` when a logged number is NaN or infinite."""
    if not all(math.isfinite(v) for v in logs.values() if isinstance(v, (int, float))):
        raise FloatingPointError(f"non-finite loss at step {step}: {logs}")


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of step ``step``'s batch: batches are a function of (seed, step), so a
    resumed run draws what an uninterrupted one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class TrainLoop(abc.ABC):
    """The loop; see the module docstring for the hooks a specialisation provides."""

    desc = "train"  # the tqdm label
    resume_optional = False  # --resume without a checkpoint: start afresh (True) or ConfigError

    def __init__(self, cfg, output_dir: str | Path, max_steps: int | None = None, progress: bool = True,
                 is_main: bool = True):
        self.cfg = cfg
        self.out = Path(output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.total_steps = cfg.steps
        self.stop_at = min(cfg.steps, max_steps) if max_steps is not None else cfg.steps
        self.is_main = is_main
        self.progress = progress and is_main
        self.step = 0
        self.last_logs: dict = {}  # the TensorBoard scalars of the last log line, and its step
        self.last_eval: dict = {}
        self.runlog = RunLog(self.out, enabled=is_main)
        self._t_last = time.time()

    # ---- hooks ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def next_batch(self):
        """The data of the next optimisation step."""

    @abc.abstractmethod
    def train_step(self, batch) -> dict:
        """One optimisation step on ``batch``; ``{name: number}`` for the log. ``self.step`` is
        the number of steps done before this one (the loop increments it afterwards)."""

    @abc.abstractmethod
    def evaluate(self) -> dict:
        """Evaluate (write eval.jsonl with :meth:`log_eval`, export the model); the record."""

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """Everything a checkpoint holds beyond the step (models, optimisers, data position)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""

    def format_log(self, logs: dict, elapsed: float) -> tuple[dict, dict, dict]:
        """(log.jsonl record without "step", TensorBoard scalars, tqdm postfix) of a log step;
        ``elapsed``: seconds since the last log line. Default: every value, floats rounded to 6
        decimals in the record."""
        record = {k: round(v, 6) if isinstance(v, float) else v for k, v in logs.items()}
        return record, logs, {}

    def on_fit_start(self) -> None:
        """Before the first step of :meth:`fit` (e.g. an evaluation at step 0)."""

    def on_fit_end(self):
        """After the last step; what :meth:`fit` returns. Default: a last evaluation."""
        if self.is_main:
            self.last_eval = self.evaluate()
        return self.last_eval

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self):
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.runlog.open_tensorboard()
        self.on_fit_start()
        bar = tqdm(total=self.stop_at, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                   desc=self.desc)
        self._t_last = time.time()
        while self.step < self.stop_at:
            self._one_step(bar)
        bar.close()
        result = self.on_fit_end()
        self.runlog.close()
        barrier()
        return result

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def _one_step(self, bar) -> None:
        logs = self.train_step(self.next_batch())
        self.step += 1
        check_finite(logs, self.step)
        last = self.step == self.stop_at
        if last or self._due(self.cfg.log_every):
            self._log(logs, bar)
        bar.update(1)
        if self.cfg.checkpoint_every > 0 and (last or self._due(self.cfg.checkpoint_every)):
            self.save_checkpoint()
        if self.is_main and not last and self._due(self.cfg.eval_every):
            self.last_eval = self.evaluate()

    def _log(self, logs: dict, bar) -> None:
        now = time.time()
        record, scalars, postfix = self.format_log(logs, now - self._t_last)  # a collective under DDP
        self._t_last = now
        self.last_logs = {**scalars, "step": self.step}
        if self.is_main:
            self.runlog.train(self.step, record, scalars)
            bar.set_postfix(postfix)

    def log_eval(self, record: dict, scalars: dict) -> None:
        """Append an evaluation to eval.jsonl and its ``scalars`` to TensorBoard (eval/)."""
        self.runlog.eval(self.step, record, scalars)

    # ---- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """``checkpoints/step_XXXXXXXX.pt`` and ``checkpoints/last`` (every rank calls it: under
        FSDP gathering the state is a collective)."""
        state = self.state_dict()
        if self.is_main:
            ckpt.save_checkpoint(state, self.ckpt_dir, self.step, keep=self.cfg.keep_checkpoints)
        barrier()

    def resume(self) -> Path | None:
        """Load ``checkpoints/last``; the path loaded, or None when there is none and
        ``resume_optional`` (else ``ConfigError``)."""
        path = ckpt.find_last(self.ckpt_dir)
        if path is None:
            if not self.resume_optional:
                raise ConfigError(f"--resume: no checkpoint in {self.ckpt_dir}")
            log.info("no checkpoint in %s: starting from scratch", self.ckpt_dir)
            return None
        self.load_state_dict(ckpt.load_checkpoint(path))
        return path


class SingleModelLoop(TrainLoop):
    """One model, AdamW with warm-up + half-cosine (:func:`~bsqvit.train.optim.adamw_warmup_cosine`),
    gradient clipping and, when ``ema`` is set, an EMA of the weights (``cfg.optim.ema_decay``).

    Checkpoints hold ``{model_key: weights, "ema": ..., "optimizer", "scheduler", "step", "rng"}``.
    """

    model_key = "model"

    def __init__(self, cfg, output_dir: str | Path, model: torch.nn.Module, ema: bool = False,
                 max_steps: int | None = None, progress: bool = True):
        super().__init__(cfg, output_dir, max_steps=max_steps, progress=progress)
        self.model = model
        self.ema = make_ema(model) if ema else None
        self.opt, self.sched = adamw_warmup_cosine(model, cfg.optim, cfg.steps)

    def optimizer_step(self, loss: torch.Tensor) -> float:
        """Backward, clip, AdamW step, schedule step, EMA; the gradient norm before clipping."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_grad_norm(self.model.parameters(), self.cfg.optim.grad_clip)
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            ema_update(self.ema, self.model, self.cfg.optim.ema_decay)
        return grad_norm

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def state_dict(self) -> dict:
        state = {self.model_key: self.model.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return {**state, "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "step": self.step, "rng": ckpt.rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state[self.model_key])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        ckpt.set_rng_state(state["rng"])


__all__ = ["SingleModelLoop", "TrainLoop", "check_finite", "step_generator"]
