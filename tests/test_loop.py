"""The generic training loop (bsqvit.train.loop) on a toy regression: resume, NaN guard, cadence."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch

from bsqvit.config import ConfigError
from bsqvit.train.checkpoint import find_last, load_checkpoint
from bsqvit.train.loop import SingleModelLoop, TrainLoop, check_finite, step_generator
from bsqvit.train.optim import adamw_warmup_cosine, clip_grad_norm, ema_update, make_ema, warmup_cosine
from bsqvit.train.runlog import RunLog


@dataclass
class ToyOptim:
    lr: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.01
    warmup_steps: int = 2
    warmup_start: float = 0.1
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.9


@dataclass
class ToyConfig:
    optim: ToyOptim = field(default_factory=ToyOptim)
    steps: int = 8
    seed: int = 0
    log_every: int = 1
    eval_every: int = 0
    checkpoint_every: int = 3
    keep_checkpoints: int = 2


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(3, 4)
        self.lin = torch.nn.Linear(4, 1)

    def forward(self, x):
        return self.lin(x + self.emb.weight.mean(0))


class ToyLoop(SingleModelLoop):
    """y = x @ w on fresh (seed, step) batches; ``nan_at``: the step whose loss is NaN."""

    def __init__(self, cfg, out, nan_at=None, **kw):
        torch.manual_seed(cfg.seed)
        super().__init__(cfg, out, Toy(), ema=True, **kw)
        self.nan_at = nan_at
        self.evals: list[int] = []

    def next_batch(self):
        g = step_generator(self.cfg.seed, self.step)
        x = torch.randn(8, 4, generator=g)
        return x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    def train_step(self, batch):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.model(x), y)
        if self.step + 1 == self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss.item(), "grad_norm": self.optimizer_step(loss), "lr": self.lr}

    def evaluate(self):
        self.evals.append(self.step)
        rec = {"step": self.step, "w": float(self.model.lin.weight.detach().sum())}
        self.log_eval(rec, {"w": rec["w"]})
        return rec


def _log(run) -> list[dict]:
    return [json.loads(s) for s in (run / "log.jsonl").read_text().splitlines()]


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    cfg = ToyConfig()
    full = ToyLoop(cfg, tmp_path / "full", progress=False)
    full.fit()
    ToyLoop(cfg, tmp_path / "part", max_steps=4, progress=False).fit()  # checkpoints at 3 and 4 (the stop)
    assert load_checkpoint(find_last(tmp_path / "part" / "checkpoints"))["step"] == 4
    resumed = ToyLoop(cfg, tmp_path / "part", progress=False)
    assert resumed.resume() is not None and resumed.step == 4
    resumed.fit()
    a, b = _log(tmp_path / "full"), _log(tmp_path / "part")
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [(r["loss"], r["lr"], r["grad_norm"]) for r in a] == [(r["loss"], r["lr"], r["grad_norm"]) for r in b]
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k])
    for k, v in full.ema.state_dict().items():
        assert torch.equal(v, resumed.ema.state_dict()[k])
    state = load_checkpoint(find_last(tmp_path / "part" / "checkpoints"))
    assert sorted(state) == ["ema", "model", "optimizer", "rng", "scheduler", "step"] and state["step"] == 8
    kept = sorted(p.name for p in (tmp_path / "part" / "checkpoints").glob("step_*.pt"))
    assert kept == ["step_00000006.pt", "step_00000008.pt"]  # keep_checkpoints = 2


def test_cadence_of_logs_checkpoints_and_evaluations(tmp_path):
    cfg = ToyConfig(steps=7, log_every=2, checkpoint_every=3, eval_every=2, keep_checkpoints=0)
    loop = ToyLoop(cfg, tmp_path, progress=False)
    res = loop.fit()
    assert [r["step"] for r in _log(tmp_path)] == [2, 4, 6, 7]  # every log_every, and the last step
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.pt")) == [
        f"step_{s:08d}.pt" for s in (3, 6, 7)]
    assert loop.evals == [2, 4, 6, 7]  # every eval_every before the last step, then on_fit_end's
    assert res == loop.last_eval and res["step"] == 7
    assert [json.loads(s)["step"] for s in (tmp_path / "eval.jsonl").read_text().splitlines()] == [2, 4, 6, 7]
    assert list(_log(tmp_path)[0]) == ["step", "loss", "grad_norm", "lr"]  # "step" first, values rounded
    assert loop.last_logs["step"] == 7


def test_max_steps_stops_early_on_the_full_schedule(tmp_path):
    a = ToyLoop(ToyConfig(), tmp_path / "a", max_steps=3, progress=False)
    a.fit()
    assert a.step == 3 and a.total_steps == 8
    expected = 0.05 * warmup_cosine(3, 2, 8, 0.1, 0.1)
    assert a.lr == pytest.approx(expected)


def test_nan_guard_raises_at_the_first_non_finite_step(tmp_path):
    loop = ToyLoop(ToyConfig(checkpoint_every=1, keep_checkpoints=0), tmp_path, nan_at=5, progress=False)
    with pytest.raises(FloatingPointError, match="non-finite loss at step 5"):
        loop.fit()
    assert [r["step"] for r in _log(tmp_path)] == [1, 2, 3, 4]
    assert load_checkpoint(find_last(tmp_path / "checkpoints"))["step"] == 4  # the poisoned state is not saved
    check_finite({"loss": 1.0, "video": True, "n": 3}, 1)
    with pytest.raises(FloatingPointError):
        check_finite({"loss": 1.0, "grad_norm": float("inf")}, 1)


def test_resume_without_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        ToyLoop(ToyConfig(), tmp_path, progress=False).resume()

    class Optional(ToyLoop):
        resume_optional = True

    assert Optional(ToyConfig(), tmp_path, progress=False).resume() is None


def test_hooks_are_required():
    with pytest.raises(TypeError, match="abstract"):
        TrainLoop(ToyConfig(), "unused")

    class Partial(TrainLoop):  # a specialisation that forgets a hook cannot be built
        def next_batch(self):
            return None

    with pytest.raises(TypeError, match="evaluate"):
        Partial(ToyConfig(), "unused")


def test_optimiser_pieces():
    torch.manual_seed(0)
    m = Toy()
    opt, sched = adamw_warmup_cosine(m, ToyOptim(), 10)
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert decayed == {id(m.lin.weight)} and opt.param_groups[0]["weight_decay"] == 0.01
    assert opt.param_groups[1]["weight_decay"] == 0.0 and len(opt.param_groups[1]["params"]) == 2
    assert sched.get_last_lr()[0] == pytest.approx(0.05 * 0.1)  # warmup_start at step 0
    m.lin.weight.grad = torch.full_like(m.lin.weight, 3.0)
    assert clip_grad_norm([m.lin.weight], 0) == pytest.approx(6.0)  # off: the norm, unclipped
    assert float(m.lin.weight.grad.norm()) == pytest.approx(6.0)
    assert clip_grad_norm([m.lin.weight], 1.0) == pytest.approx(6.0)
    assert float(m.lin.weight.grad.norm()) == pytest.approx(1.0, rel=1e-5)
    ema = make_ema(m)
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())
    before = ema.lin.bias.clone()
    with torch.no_grad():
        m.lin.bias.add_(1.0)
    ema_update(ema, m, 0.75)
    assert torch.allclose(ema.lin.bias, before + 0.25)


def test_runlog_writes_only_on_the_main_process(tmp_path):
    (tmp_path / "a").mkdir()
    RunLog(tmp_path / "a").train(3, {"loss": 1.5}, {"loss": 1.5})
    assert json.loads((tmp_path / "a" / "log.jsonl").read_text()) == {"step": 3, "loss": 1.5}
    off = RunLog(tmp_path / "b", enabled=False)
    off.open_tensorboard()
    off.train(1, {"loss": 1.0}, {})
    off.eval(1, {"step": 1}, {})
    assert not (tmp_path / "b").exists()
