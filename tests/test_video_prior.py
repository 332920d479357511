"""A video prior warm-started from an image prior (``init_from`` of train-prior): it starts as the
image prior exactly and only then learns to use the previous frame."""

import pytest
import torch

from bsqvit.codec.prior import PriorConfig, TokenPrior
from bsqvit.codec.prior_init import warm_start
from bsqvit.config import ConfigError

ARCH = dict(kind="ar", bits=12, group_bits=6, rates=[6, 12], width=16, layers=1, heads=2, tile=[4, 4])


def trained_like(**kw) -> TokenPrior:
    torch.manual_seed(0)
    p = TokenPrior(PriorConfig(**{**ARCH, **kw})).eval()
    with torch.no_grad():  # weights away from their initial values
        for v in p.parameters():
            v.add_(0.1 * torch.randn_like(v))
    return p


def test_warm_started_video_prior_predicts_what_the_image_prior_does(tmp_path):
    image = trained_like()
    image.save_pretrained(tmp_path / "image")
    torch.manual_seed(1)
    video = TokenPrior(PriorConfig(**ARCH, video=True)).eval()
    assert warm_start(video, tmp_path / "image") == ["no_prev", "prev_conv.bias", "prev_conv.weight"]
    tokens = torch.randint(0, 1 << 12, (3, 4, 4))
    prev = torch.randint(0, 1 << 12, (3, 4, 4))
    with torch.no_grad():
        for bits in (6, 12):
            t, q = tokens >> (12 - bits), prev >> (12 - bits)
            want = image(t, bits=bits)
            assert torch.equal(video(t, prev=q, bits=bits), want)
            assert torch.equal(video(t, prev=None, bits=bits), want)
    # the previous frame's path is live: its convolution gets a gradient
    video.train()
    video(tokens, prev=prev).mean().backward()
    assert video.prev_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("change", [dict(width=32, heads=2), dict(group_bits=3), dict(rates=None)])
def test_another_architecture_is_refused(tmp_path, change):
    trained_like().save_pretrained(tmp_path / "image")
    other = TokenPrior(PriorConfig(**{**ARCH, **change, "video": True}))
    with pytest.raises(ConfigError, match="another architecture"):
        warm_start(other, tmp_path / "image")
    with pytest.raises(ConfigError, match="init_from"):
        warm_start(other, tmp_path / "missing")


def test_a_video_prior_does_not_start_an_image_prior(tmp_path):
    trained_like(video=True).save_pretrained(tmp_path / "video")
    with pytest.raises(ConfigError, match="video"):
        warm_start(TokenPrior(PriorConfig(**ARCH)), tmp_path / "video")
