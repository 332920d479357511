"""StyleGAN2 discriminators (2-D, per-frame, 3-D) and the GAN losses / regularisers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bsqvit.config import ConfigError
from bsqvit.train.discriminator import (
    DiscriminatorConfig,
    FrameDiscriminator,
    StyleGANDiscriminator,
    StyleGANDiscriminator3D,
    build_discriminator,
    count_parameters,
)
from bsqvit.train.gan import (
    REFERENCE_D_LOSS_SCALE,
    adaptive_weight,
    d_loss_hinge,
    d_loss_nonsaturating,
    g_loss_hinge,
    g_loss_nonsaturating,
    gan_losses,
    lazy_r1,
    r1_due,
    r1_penalty,
    r1_scale,
)
from bsqvit.train.stylegan_layers import EqualizedConv, EqualizedLinear, blur_downsample, minibatch_stddev


def tiny(image_size=16, **kw):
    kw.setdefault("channel_base", 256)
    kw.setdefault("channel_max", 16)
    return StyleGANDiscriminator(image_size, **kw)


# ----------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("image_size,batch", [(8, 1), (16, 3), (16, 4), (32, 5), (32, 8)])
def test_output_shape(image_size, batch):
    torch.manual_seed(0)
    d = tiny(image_size)
    out = d(torch.randn(batch, 3, image_size, image_size))
    assert out.shape == (batch,)
    assert torch.isfinite(out).all()


def test_other_input_sizes_are_pooled():
    torch.manual_seed(0)
    d = tiny(16)
    for h, w in [(32, 32), (24, 40), (12, 12)]:
        assert d(torch.randn(2, 3, h, w)).shape == (2,)
    with pytest.raises(ValueError):
        d(torch.randn(2, 1, 16, 16))  # wrong channel count


def test_channel_schedule_and_reference_names():
    d = StyleGANDiscriminator(64, channel_base=4096, channel_max=128)
    assert d.channels == {64: 64, 32: 128, 16: 128, 8: 128, 4: 128}
    keys = set(d.state_dict())
    for k in ["b64.fromrgb.weight", "b64.conv0.bias", "b64.conv1.weight", "b64.skip.weight",
              "b32.conv0.weight", "b8.skip.weight", "b4.conv.weight", "b4.fc.weight", "b4.out.bias"]:
        assert k in keys, k
    assert "b32.fromrgb.weight" not in keys and "b64.skip.bias" not in keys
    assert not any("fir" in k for k in keys)  # FIR kernels are constants, not state


def test_load_reference_state_dict_drops_filters_and_prefix():
    torch.manual_seed(0)
    src, dst = tiny(16), tiny(16)
    sd = {"module." + k: v.clone() for k, v in src.state_dict().items()}
    sd["module.b16.resample_filter"] = torch.ones(4, 4) / 16
    sd["module.b16.conv1.resample_filter"] = torch.ones(4, 4) / 16
    dst.load_reference_state_dict(sd)
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(dst(x), src(x))


# ----------------------------------------------------------------------------- parameter counts


def _expected_params(image_size, channel_base, channel_max, img_channels=3, mbstd=1):
    """Independent count of the StyleGAN2 resnet discriminator's parameters."""
    res = [2**i for i in range(int(math.log2(image_size)), 2, -1)]
    ch = {r: min(channel_base // r, channel_max) for r in res + [4]}
    n = 0
    for r in res:
        t, o = ch[r], ch[r // 2]
        if r == image_size:
            n += img_channels * t + t  # fromRGB
        n += t * t * 9 + t  # conv0
        n += t * o * 9 + o  # conv1
        n += t * o  # skip (no bias)
    c = ch[4]
    n += (c + mbstd) * c * 9 + c  # epilogue conv
    n += c * 16 * c + c  # fc
    n += c + 1  # out
    return n


@pytest.mark.parametrize(
    "image_size,channel_base,channel_max,expected",
    [
        (256, 32768, 512, 28_864_129),  # the reference's 256^2 config
        (128, 32768, 512, 28_389_121),
        (64, 32768, 128, 1_657_857),  # typical CPU config
        (64, 4096, 128, 1_465_025),
        (32, 32768, 64, 337_281),
    ],
)
def test_parameter_counts(image_size, channel_base, channel_max, expected):
    with torch.device("meta"):
        d = StyleGANDiscriminator(image_size, channel_base=channel_base, channel_max=channel_max)
    assert count_parameters(d) == expected == _expected_params(image_size, channel_base, channel_max)


def test_parameter_count_3d_default():
    with torch.device("meta"):
        d = StyleGANDiscriminator3D(128, 16)
    assert d.temporal_downsample == [1, 1, 2, 2, 2] and d.final_frames == 2
    assert d.channels == {128: 64, 64: 128, 32: 256, 16: 256, 8: 256, 4: 256}
    assert count_parameters(d) == 16_389_953


# ------------------------------------------------------------------------- equalized lr


def test_equalized_lr_conv_scaling():
    torch.manual_seed(0)
    conv = EqualizedConv(256, 256, 3, activation="lrelu")
    fan_in = 256 * 9
    assert conv.weight_gain == pytest.approx(1 / math.sqrt(fan_in))
    assert conv.weight.std().item() == pytest.approx(1.0, rel=0.02)  # stored N(0, 1)
    assert conv.effective_weight().std().item() == pytest.approx(1 / math.sqrt(fan_in), rel=0.02)
    assert torch.all(conv.bias == 0)
    # the forward pass really uses the scaled weight: linear conv == F.conv2d(x, w / sqrt(fan_in))
    lin = EqualizedConv(4, 5, 3)
    with torch.no_grad():
        lin.bias.normal_()
    x = torch.randn(2, 4, 7, 7)
    ref = F.conv2d(x, lin.weight / math.sqrt(36), lin.bias, padding=1)
    torch.testing.assert_close(lin(x), ref)
    # lrelu activation: leaky_relu(., 0.2) * sqrt(2) * gain
    act = EqualizedConv(4, 5, 3, activation="lrelu")
    act.load_state_dict(lin.state_dict())
    torch.testing.assert_close(act(x, gain=0.5), F.leaky_relu(ref, 0.2) * math.sqrt(2) * 0.5)


def test_equalized_lr_linear_with_lr_multiplier():
    torch.manual_seed(0)
    fc = EqualizedLinear(1024, 512, lr_multiplier=0.01, bias_init=1.0)
    assert fc.weight.std().item() == pytest.approx(100.0, rel=0.02)  # N(0, 1/lr_mul^2)
    assert fc.effective_weight().std().item() == pytest.approx(1 / math.sqrt(1024), rel=0.02)
    x = torch.randn(3, 1024)
    ref = x @ (fc.weight * 0.01 / 32).t() + fc.bias * 0.01
    torch.testing.assert_close(fc(x), ref)


# ------------------------------------------------------------------------------ resampling


def test_blur_downsample_constant_and_nyquist():
    x = torch.full((2, 3, 16, 16), 0.7)
    y = blur_downsample(x)
    assert y.shape == (2, 3, 8, 8)
    # interior stays constant (the borders see the zero padding, as in StyleGAN2)
    torch.testing.assert_close(y[..., 1:-1, 1:-1], torch.full_like(y[..., 1:-1, 1:-1], 0.7))
    # a Nyquist checkerboard is removed exactly: [1, 3, 3, 1] has a zero at pi
    i = torch.arange(16)
    cb = ((-1.0) ** (i[:, None] + i[None, :])).expand(1, 1, 16, 16)
    assert blur_downsample(cb)[..., 1:-1, 1:-1].abs().max().item() < 1e-6
    # 3-D: time and space
    v = torch.full((1, 2, 8, 8, 8), 2.0)
    yv = blur_downsample(v, down=(2, 2, 2))
    assert yv.shape == (1, 2, 4, 4, 4)
    torch.testing.assert_close(yv[..., 1:-1, 1:-1, 1:-1], torch.full((1, 2, 2, 2, 2), 2.0))
    # spatial only
    assert blur_downsample(v, down=(1, 2, 2)).shape == (1, 2, 8, 4, 4)


def test_down_convs_keep_constants_and_halve_sizes():
    torch.manual_seed(0)
    x = torch.full((1, 3, 16, 16), 1.5)
    for k in (1, 3):
        conv = EqualizedConv(3, 4, k, down=2)
        y = conv(x)
        assert y.shape == (1, 4, 8, 8)
        inner = y[..., 2:-2, 2:-2]
        expect = 1.5 * conv.effective_weight().sum(dim=(1, 2, 3))  # conv of a constant
        torch.testing.assert_close(inner, expect.view(1, 4, 1, 1).expand_as(inner), rtol=1e-5, atol=1e-5)
    # odd sizes: floor(size / 2) on both branches, so the residual add works
    d = tiny(16)
    assert d(torch.randn(2, 3, 17, 15)).shape == (2,)


# ------------------------------------------------------------------------------ minibatch std


def test_minibatch_stddev_matches_group_definition_and_ragged_batch():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 3, 3)
    y = minibatch_stddev(x, 4)
    assert y.shape == (8, 5, 3, 3)
    # StyleGAN2 grouping: sample i is in group i % (N / G)
    for g in range(2):
        members = x[g::2]
        std = (members.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        torch.testing.assert_close(y[g::2, 4], std.expand(4, 3, 3))
    # ragged: 7 = 4 + 3, the last 3 samples form their own group
    x7 = torch.randn(7, 4, 3, 3)
    y7 = minibatch_stddev(x7, 4)
    std_tail = (x7[4:].var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
    torch.testing.assert_close(y7[4:, 4], std_tail.expand(3, 3, 3))
    std_head = (x7[:4].var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
    torch.testing.assert_close(y7[:4, 4], std_head.expand(4, 3, 3))
    # a lone sample gets ~1e-4
    assert minibatch_stddev(torch.randn(1, 4, 2, 2), 4)[0, 4].max().item() == pytest.approx(1e-4, rel=1e-3)


# ---------------------------------------------------------------------------------- gradients


def test_gradients_flow_to_all_parameters_and_input():
    torch.manual_seed(0)
    d = tiny(16)
    x = torch.randn(5, 3, 16, 16, requires_grad=True)
    d(x).sum().backward()
    for name, p in d.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bf16_blocks_return_fp32_logits():
    torch.manual_seed(0)
    d = tiny(16, num_fp16_res=2)
    x = torch.randn(4, 3, 16, 16)
    out = d(x)
    assert out.dtype == torch.float32 and out.shape == (4,)
    d32 = tiny(16)
    d32.load_state_dict(d.state_dict())
    torch.testing.assert_close(out, d32(x), atol=0.05, rtol=0.05)


# ------------------------------------------------------------------------------------ video


def test_frame_discriminator_on_video():
    torch.manual_seed(0)
    d2 = tiny(16)
    fd = FrameDiscriminator(d2)
    v = torch.randn(2, 3, 3, 16, 16)
    out = fd(v)
    assert out.shape == (6,)
    frames = v.permute(0, 2, 1, 3, 4).reshape(6, 3, 16, 16)  # (b t) order
    torch.testing.assert_close(out, d2(frames))
    torch.testing.assert_close(d2(v), out)  # the plain 2-D D folds 5-D input the same way
    assert FrameDiscriminator(d2, average_frames=True)(v).shape == (2,)
    assert fd(frames).shape == (6,)  # images pass through


def test_stylegan3d():
    torch.manual_seed(0)
    d = StyleGANDiscriminator3D(16, num_frames=4, channel_base=128, channel_max=16)
    assert d.temporal_downsample == [1, 2] and d.final_frames == 2
    v = torch.randn(3, 3, 4, 16, 16, requires_grad=True)
    out = d(v)
    assert out.shape == (3,)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.parameters())
    assert v.grad.abs().sum() > 0
    assert d(torch.randn(2, 3, 8, 16, 16)).shape == (2,)  # longer clips are pooled in time
    with pytest.raises(ValueError, match="too short"):
        d(torch.randn(2, 3, 16, 16))  # one frame cannot be halved in time
    d1 = StyleGANDiscriminator3D(16, num_frames=1, channel_base=128, channel_max=16)
    assert d1.temporal_downsample == [1, 1]
    assert d1(torch.randn(2, 3, 16, 16)).shape == (2,)


def test_build_discriminator_from_config():
    d = build_discriminator(DiscriminatorConfig(image_size=16, channel_base=256, channel_max=16))
    assert isinstance(d, StyleGANDiscriminator) and d.channels[16] == 16
    f = build_discriminator(DiscriminatorConfig(type="frame", image_size=16, channel_base=256, channel_max=16))
    assert isinstance(f, FrameDiscriminator)
    assert f(torch.randn(1, 3, 2, 16, 16)).shape == (2,)
    d3 = build_discriminator(DiscriminatorConfig(type="stylegan3d", image_size=16, num_frames=4, channel_max=8))
    assert isinstance(d3, StyleGANDiscriminator3D)
    assert d3(torch.randn(2, 3, 4, 16, 16)).shape == (2,)
    with torch.device("meta"):
        ref = build_discriminator(DiscriminatorConfig())
    assert count_parameters(ref) == 28_864_129
    with pytest.raises(ConfigError):
        DiscriminatorConfig(type="patchgan")
    with pytest.raises(ConfigError):
        DiscriminatorConfig(image_size=100)


# ------------------------------------------------------------------------------------ losses


def test_loss_formulas():
    r = torch.tensor([2.0, -1.0, 0.5, 3.0])
    f = torch.tensor([-1.5, 0.3, 2.0])
    sp = lambda z: torch.log1p(torch.exp(z))  # noqa: E731
    torch.testing.assert_close(d_loss_nonsaturating(r, f), sp(-r).mean() + sp(f).mean())
    torch.testing.assert_close(d_loss_nonsaturating(r, f, scale=REFERENCE_D_LOSS_SCALE),
                               0.5 * (sp(-r).mean() + sp(f).mean()))
    torch.testing.assert_close(g_loss_nonsaturating(f), sp(-f).mean())
    torch.testing.assert_close(d_loss_hinge(r, f), F.relu(1 - r).mean() + F.relu(1 + f).mean())
    torch.testing.assert_close(g_loss_hinge(f), -f.mean())
    assert d_loss_nonsaturating(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(2 * math.log(2))
    assert gan_losses("nonsaturating") == (d_loss_nonsaturating, g_loss_nonsaturating)
    assert gan_losses("vanilla") == (d_loss_nonsaturating, g_loss_nonsaturating)
    assert gan_losses("hinge") == (d_loss_hinge, g_loss_hinge)
    with pytest.raises(ValueError):
        gan_losses("wgan")


def test_d_loss_decreases_on_separable_toy():
    torch.manual_seed(0)
    d = tiny(8, channel_base=64, channel_max=8)
    opt = torch.optim.Adam(d.parameters(), lr=5e-3, betas=(0.0, 0.99))
    real = 0.5 + 0.1 * torch.randn(16, 3, 8, 8)
    fake = -0.5 + 0.1 * torch.randn(16, 3, 8, 8)
    losses = []
    for step in range(20):
        loss = d_loss_nonsaturating(d(real), d(fake))
        r1 = lazy_r1(d, real, step, gamma=1.0, r1_every=4)
        total = loss + (r1[0] if r1 is not None else 0.0)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(b < a for a, b in zip(losses[::4], losses[4::4]))  # steadily
    assert (d(real) > d(fake).max()).all()


# ---------------------------------------------------------------------------------------- R1


class LinearD(nn.Module):
    """D(x) = sum(w * x) per sample: grad_x D = w, so R1 = ||w||^2."""

    def __init__(self, shape):
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape))

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1)


def test_r1_linear_discriminator_analytic():
    torch.manual_seed(0)
    d = LinearD((3, 4, 4))
    real = torch.randn(5, 3, 4, 4)
    r1 = r1_penalty(d, real)
    torch.testing.assert_close(r1, d.w.detach().square().sum())
    # create_graph: d R1 / d w = 2 w
    r1.backward()
    torch.testing.assert_close(d.w.grad, 2 * d.w.detach())
    assert not real.requires_grad  # input untouched


def test_r1_quadratic_and_finite_difference():
    torch.manual_seed(0)

    class QuadD(nn.Module):
        def forward(self, x):  # grad = 2 x  ->  R1 = mean_i 4 ||x_i||^2
            return x.square().flatten(1).sum(1)

    real = torch.randn(4, 2, 3, 3)
    torch.testing.assert_close(r1_penalty(QuadD(), real), 4 * real.square().flatten(1).sum(1).mean())

    # the real StyleGAN D (no mbstd, so samples are independent), in fp64
    d = tiny(8, channel_base=64, channel_max=8, mbstd_num_channels=0).double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    r1, logits = r1_penalty(d, x, return_logits=True)
    assert logits.shape == (3,) and logits.dtype == torch.float64
    # brute force: one sample at a time
    per_sample = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(d(xi).sum(), xi)
        per_sample.append(gi)
    grads = torch.cat(per_sample)
    assert r1.item() == pytest.approx(grads.square().flatten(1).sum(1).mean().item(), rel=1e-10)
    # and those gradients agree with central finite differences along random directions
    eps = 1e-6
    with torch.no_grad():
        for _ in range(3):
            v = torch.randn_like(x)
            fd = (d(x + eps * v) - d(x - eps * v)) / (2 * eps)
            torch.testing.assert_close(fd, (grads * v).flatten(1).sum(1), rtol=1e-6, atol=1e-8)


def test_r1_per_frame_is_mean_over_frames():
    torch.manual_seed(0)
    d = LinearD((3, 4, 4))
    fd = FrameDiscriminator(d)
    v = torch.randn(2, 3, 5, 4, 4)
    torch.testing.assert_close(r1_penalty(fd, v), d.w.detach().square().sum())


def test_lazy_r1_schedule_and_scale():
    assert r1_scale(10.0, 16) == 80.0
    assert [s for s in range(48) if r1_due(s, 16)] == [15, 31, 47]
    assert not any(r1_due(s, 0) for s in range(20))
    torch.manual_seed(0)
    d = LinearD((2, 2))
    real = torch.randn(3, 2, 2)
    assert lazy_r1(d, real, step=0) is None
    term, r1 = lazy_r1(d, real, step=15)
    torch.testing.assert_close(term, 80.0 * r1)
    torch.testing.assert_close(r1, d.w.detach().square().sum())
    assert lazy_r1(d, real, step=15, gamma=0.0) is None


# -------------------------------------------------------------------------- adaptive weight


def test_adaptive_weight_ratio_of_gradient_norms():
    torch.manual_seed(0)
    W = nn.Parameter(torch.randn(4, 3))
    x = torch.randn(6, 3)
    out = x @ W.t()  # shared graph up to the "last layer"
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    rec = (a * out).sum()  # d rec / d W = a^T x
    g = (b * out).sum()  # d g / d W = b^T x
    expected = (a.t() @ x).norm() / ((b.t() @ x).norm() + 1e-4)
    w = adaptive_weight(rec, g, W)
    torch.testing.assert_close(w, expected.detach())
    assert not w.requires_grad
    # graphs retained: the caller can still back-propagate the weighted sum
    (rec + w * g).backward()
    torch.testing.assert_close(W.grad, a.t() @ x + w * (b.t() @ x))
    # clamp
    out2 = x @ W.t()
    tiny_g = 1e-12 * (b * out2).sum()
    assert adaptive_weight((a * out2).sum(), tiny_g, W, max_weight=50.0).item() == 50.0
