"""Nested ("variable rate") BSQ: keeping the first L' of L bits."""

import math

import pytest
import torch

from bsqvit import BSQViT
from bsqvit.quantizers import BinarySphericalQuantizer, QuantizerConfig, build_quantizer
from bsqvit.quantizers.bsq import keep_bits

LEVELS = [6, 12, 18]


def _q() -> BinarySphericalQuantizer:
    return BinarySphericalQuantizer(18, group_size=9, nested_bits=LEVELS)


def test_kept_codes_lie_on_the_sphere_of_the_kept_bits():
    q = _q().eval()
    z = torch.randn(500, 18)
    for L in LEVELS:
        out = q(z, bits=L)
        zq = out.quantized
        assert torch.all(zq[:, L:] == 0)
        assert torch.allclose(zq[:, :L].abs(), torch.full((500, L), 1 / math.sqrt(L)))
        assert torch.allclose(zq.norm(dim=-1), torch.ones(500))
        # the kept bits are the signs of the first L channels; the index has the others cleared
        ref = (z[:, :L] > 0).long()
        want = (ref << torch.arange(17, 17 - L, -1)).sum(-1)
        assert torch.equal(out.indices, want)
        torch.testing.assert_close(q.indices_to_codes(out.indices, bits=L), zq)


def test_prefixes_nest():
    """A token at L' is the token at L with its low bits cleared, at every level."""
    q = _q().eval()
    z = torch.randn(300, 18)
    full = q(z).indices
    for L in LEVELS:
        assert torch.equal(q(z, bits=L).indices, keep_bits(full, 18, L))
        assert torch.equal(q.keep_bits(full, L), keep_bits(full, 18, L))


def test_dropped_channels_get_no_gradient():
    """The kept code is a function of the kept channels only (renormalised on their own sphere)."""
    q = _q().eval()
    z = torch.randn(64, 18, requires_grad=True)
    (q(z, bits=6).quantized * torch.randn(64, 18)).sum().backward()
    kept, dropped = z.grad[:, :6].abs().max(), z.grad[:, 6:].abs().max()
    assert kept > 1e-3 and dropped < 1e-5 * kept  # zero up to rounding


def test_training_draws_levels_and_eval_keeps_all():
    q = _q().train()
    torch.manual_seed(0)
    seen = set()
    for _ in range(60):
        zq = q(torch.randn(8, 18)).quantized
        seen.add(int((zq[0] != 0).sum()))
    assert seen == set(LEVELS)
    q.eval()
    assert int((q(torch.randn(8, 18)).quantized[0] != 0).sum()) == 18


@pytest.mark.parametrize("bad", [[6, 12], [12, 6, 18], [0, 18], [6, 6, 18]])
def test_bad_levels_are_rejected(bad):
    with pytest.raises(ValueError, match="nested_bits"):
        build_quantizer(QuantizerConfig(type="bsq", dim=18, nested_bits=bad))
    with pytest.raises(ValueError, match="nested_bits"):
        QuantizerConfig(type="vq", dim=18, nested_bits=[18])


def test_unknown_level_and_fixed_model_are_errors():
    q = _q()
    with pytest.raises(ValueError, match="trained levels"):
        q.indices_to_codes(torch.zeros(3, dtype=torch.long), bits=7)
    fixed = BinarySphericalQuantizer(18)
    with pytest.raises(ValueError, match="not trained with nested_bits"):
        fixed.keep_bits(torch.zeros(3, dtype=torch.long), 12)
    assert torch.equal(fixed.keep_bits(torch.tensor([5]), 18), torch.tensor([5]))


def test_model_encode_decode_at_every_rate():
    torch.manual_seed(0)
    m = BSQViT.from_preset("tiny", quantizer=dict(type="bsq", dim=18, group_size=9, nested_bits=LEVELS)).eval()
    x = torch.rand(2, 3, 32, 40) * 2 - 1
    for L in LEVELS:
        idx = m.encode(x, bits=L)
        out = m(x, bits=L)
        assert torch.equal(out.indices, idx)
        torch.testing.assert_close(m.decode(idx, size=(32, 40), bits=L), out.reconstruction, atol=1e-5, rtol=0)
        assert torch.all(idx & ((1 << (18 - L)) - 1) == 0)
    with pytest.raises(ValueError, match="trained levels"):
        m.encode(x, bits=9)
