"""The training-speed paths (issue #13): the double-backward-friendly FIR of the discriminator,
R1 as its own backward, compile / fused AdamW / channels-last / bf16. Real properties only (values,
gradients, state-dict keys, finiteness), never timings; CUDA paths skip without CUDA."""

import shutil

import pytest
import torch
import torch.nn.functional as F
from shared_data import needs_squeeze
from test_train import image_dir, write_config  # noqa: F401  (the fixture is used by name)

import bsqvit.train.stylegan_layers as layers
from bsqvit.config import ConfigError, from_dict
from bsqvit.train import TrainConfig, load_train_config
from bsqvit.train.discriminator import StyleGANDiscriminator, StyleGANDiscriminator3D
from bsqvit.train.gan import r1_penalty
from bsqvit.train.optim import adamw, keeping_fused, use_fused
from bsqvit.train.phases import PhaseTimer
from bsqvit.train.trainer import Trainer

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _plain_fir(x, w, stride):
    """The previous formulation: autograd through a grouped F.conv2d / conv3d."""
    conv = F.conv2d if x.ndim == 4 else F.conv3d
    return conv(x, w.to(x.dtype), stride=stride, groups=x.shape[1])


def _r1_and_grads(d, x):
    d.zero_grad(set_to_none=True)
    r1 = r1_penalty(d, x)
    r1.backward()
    return r1.detach(), [p.grad.clone() for p in d.parameters() if p.grad is not None]


@pytest.mark.parametrize("three_d", [False, True])
def test_r1_through_fir_function_equals_plain_conv_autograd(monkeypatch, three_d):
    torch.manual_seed(0)
    if three_d:
        d, x = StyleGANDiscriminator3D(16, num_frames=4, channel_base=128, channel_max=8), torch.randn(4, 3, 4, 16, 16)
    else:
        d, x = StyleGANDiscriminator(16, channel_base=128, channel_max=8), torch.randn(4, 3, 16, 16)
    d, x = d.double(), x.double()
    r1, grads = _r1_and_grads(d, x)
    monkeypatch.setattr(layers._FirConv, "apply", staticmethod(_plain_fir))
    r1_ref, grads_ref = _r1_and_grads(d, x)
    # the penalty against a brute-force torch.autograd.grad of the plain-conv network
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(d(xr).sum(), xr)
    brute = g.square().sum() / x.shape[0]
    torch.testing.assert_close(r1, r1_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(r1, brute, rtol=1e-12, atol=0)
    # every parameter but the last bias (a constant shift of the logits) gets an R1 gradient
    assert len(grads) == len(grads_ref) == sum(1 for _ in d.parameters()) - 1
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("shape,stride", [((2, 3, 9, 8), (2, 2)), ((2, 3, 9, 8), (1, 1)), ((1, 2, 3, 6, 7), (1, 2, 2))])
def test_fir_function_first_and_second_derivatives(shape, stride):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    k = layers._fir_kernel((1, 3, 3, 1), stride if max(stride) > 1 else (2,) * len(stride)).double()
    w = k.expand(shape[1], 1, *k.shape[2:])
    f = lambda t: layers._FirConv.apply(t, w, stride)
    torch.testing.assert_close(f(x), _plain_fir(x, w, stride))
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_phase_timer_counts_r1_flops():
    d, x = StyleGANDiscriminator(16, channel_base=128, channel_max=8), torch.randn(2, 3, 16, 16)
    t = PhaseTimer("cpu", count_flops=True)
    t.start_step()
    with t("d_step"):
        d(x).sum().backward()
    with t("r1"):
        r1_penalty(d, x).backward()
    rec = t.end_step("r1")
    assert rec["total"] >= rec["d_step"] + rec["r1"] > 0
    # R1: a forward, a backward to the input and its backward, > 1.5x a forward + backward
    assert t.flops["r1"] > 1.5 * t.flops["d_step"] > 0


def test_fused_adamw_choice_on_cpu():
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert use_fused(p, None) is False and use_fused(p, False) is False
    with pytest.raises(ConfigError):
        use_fused(p, True)
    cfg = from_dict(TrainConfig, {"optim": {"fused": None}})
    assert not adamw(p, cfg.optim, 1e-3).param_groups[0]["fused"]


def test_keeping_fused_restores_the_own_setting():
    p = torch.nn.Parameter(torch.ones(3))
    a = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    a.step()
    state = a.state_dict()
    state["param_groups"][0]["fused"] = True  # as saved by a fused (CUDA) run
    b = torch.optim.AdamW([p], lr=0.1)
    with keeping_fused(b):
        b.load_state_dict(state)
    assert not b.param_groups[0]["fused"]
    assert b.state[p]["step"].device.type == "cpu"


@needs_squeeze
def test_compile_config_parses_and_checkpoint_keys_are_unwrapped(tmp_path, image_dir):  # noqa: F811
    cfg = load_train_config(write_config(tmp_path / "c.yaml", image_dir, compile=True, channels_last=True))
    assert cfg.compile and cfg.channels_last
    with pytest.raises(ConfigError):
        load_train_config(write_config(tmp_path / "bad.yaml", image_dir, compile_mode="max"))
    tr = Trainer(cfg, tmp_path / "run", progress=False)  # torch.compile is lazy: nothing compiles here
    plain = Trainer(load_train_config(write_config(tmp_path / "p.yaml", image_dir)), tmp_path / "p", progress=False)
    assert hasattr(tr.train_model, "_orig_mod") and tr.objective.disc_forward is not tr.disc
    sd, ref = tr.state_dict(), plain.state_dict()
    for key in ("model", "disc", "ema"):
        assert list(sd[key]) == list(ref[key]) and not any("_orig_mod" in k for k in sd[key])
    plain.load_state_dict(sd)  # a compiled run's checkpoint resumes without compile


@pytest.mark.slow
@needs_squeeze
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None, reason="inductor needs a C++ compiler")
def test_compile_trains_two_steps_on_cpu(tmp_path, image_dir):  # noqa: F811
    """Marked slow: 17 s with a warm inductor cache on 2 idle cores, minutes when cold or loaded."""
    cfg = load_train_config(write_config(tmp_path / "c.yaml", image_dir, compile=True, steps=2,
                                         **{"loss.gan_start": 0, "loss.r1_every": 2}))
    logs = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert logs["step"] == 2 and all(torch.isfinite(torch.tensor(v)) for v in logs.values())


@cuda
@needs_squeeze
@pytest.mark.parametrize("compile_", [False, True])
def test_cuda_bf16_fused_channels_last_steps_are_finite(tmp_path, image_dir, compile_):  # noqa: F811
    cfg = load_train_config(write_config(
        tmp_path / "c.yaml", image_dir, compile=compile_, channels_last=True, device="cuda", steps=4,
        checkpoint_every=2, **{"loss.gan_start": 0, "loss.r1_every": 2, "optim.amp": "bf16", "data.val": None}))
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    assert tr.opt_g.param_groups[0]["fused"] and tr.opt_d.param_groups[0]["fused"]
    logs = tr.fit()
    assert logs["step"] == 4 and "r1" in logs  # step index 3 is an R1 step
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    # resume with the other compile setting from the same checkpoint
    cfg2 = load_train_config(write_config(
        tmp_path / "c2.yaml", image_dir, compile=not compile_, channels_last=True, device="cuda", steps=6,
        **{"loss.gan_start": 0, "loss.r1_every": 2, "optim.amp": "bf16", "data.val": None}))
    tr2 = Trainer(cfg2, tmp_path / "run", resume=True, progress=False)
    assert tr2.step == 4 and tr2.opt_g.param_groups[0]["fused"]
    assert all(torch.isfinite(torch.tensor(v)) for v in tr2.fit().values())


@cuda
def test_cuda_r1_fir_function_matches_plain_conv(monkeypatch):
    torch.manual_seed(0)
    d = StyleGANDiscriminator(32, channel_base=256, channel_max=16).cuda()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    r1, grads = _r1_and_grads(d, x)
    monkeypatch.setattr(layers._FirConv, "apply", staticmethod(_plain_fir))
    r1_ref, grads_ref = _r1_and_grads(d, x)
    torch.testing.assert_close(r1, r1_ref, rtol=1e-4, atol=1e-6)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
