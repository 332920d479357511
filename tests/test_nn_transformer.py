"""The one transformer block: attention against a brute-force softmax, the KV-cache step against
the causal forward, and the flat tensor names of the prior's files."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from bsqvit.nn.transformer import FLAT_BLOCK_NAMES, Attention, Block, use_flat_block_names

pytestmark = pytest.mark.usefixtures("one_thread")


def _brute_attention(att: Attention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    B, N, D = x.shape
    H = att.heads
    q, k, v = att.qkv(x).split(D, dim=-1)
    out = torch.zeros(B, N, D, dtype=x.dtype)
    for h in range(H):
        sl = slice(h * D // H, (h + 1) * D // H)
        s = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(D // H)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        out[..., sl] = s.softmax(-1) @ v[..., sl]
    return att.proj(out)


def test_attention_matches_a_brute_force_softmax():
    torch.manual_seed(0)
    att = Attention(12, 3).double()
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    mask = torch.rand(7, 7) < 0.6
    mask |= torch.eye(7, dtype=torch.bool)  # every row attends somewhere
    with torch.no_grad():
        torch.testing.assert_close(att(x), _brute_attention(att, x, None))
        torch.testing.assert_close(att(x, mask), _brute_attention(att, x, mask))
        tril = torch.ones(7, 7, dtype=torch.bool).tril()
        torch.testing.assert_close(att(x, causal=True), _brute_attention(att, x, tril))


def test_step_with_a_cache_equals_the_causal_forward():
    torch.manual_seed(1)
    blk = Block(16, 4, mlp_ratio=2.0).double().eval()
    x = torch.randn(3, 9, 16, dtype=torch.float64)
    cache = torch.zeros(2, 3, 4, 9, 4, dtype=torch.float64)
    with torch.no_grad():
        full = blk(x, causal=True)
        steps = torch.cat([blk.step(x[:, t : t + 1], cache, t) for t in range(9)], dim=1)
    torch.testing.assert_close(steps, full)


def test_width_must_divide_into_heads():
    with pytest.raises(ValueError, match="divisible"):
        Block(10, 4)


class _Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block(8, 2) for _ in range(2))
        self.head = nn.ModuleDict({"fc1": nn.Linear(8, 8), "proj": nn.Linear(8, 8)})  # not a block: not renamed
        use_flat_block_names(self)


def test_flat_names_round_trip_and_touch_only_the_blocks():
    torch.manual_seed(2)
    m = _Stack()
    keys = list(m.state_dict())
    nested = [k for k, _ in m.named_parameters()]
    assert "blocks.1.qkv.weight" in keys and "blocks.0.fc2.bias" in keys
    assert not any(".attn." in k or ".mlp." in k for k in keys)
    assert {"head.fc1.weight", "head.proj.bias"} <= set(keys)
    assert len(keys) == len(nested)
    for k in nested:  # every module name maps to exactly one file name
        flat = k
        for a, b in FLAT_BLOCK_NAMES.items():
            flat = flat.replace(f".{a}.", f".{b}.") if k.startswith("blocks.") else flat
        assert flat in keys
    # keys keep the modules' order (renamed in place, not moved to the end)
    assert keys.index("blocks.0.ln2.weight") < keys.index("blocks.1.ln1.weight") < keys.index("head.fc1.weight")
    other = _Stack()
    other.load_state_dict(m.state_dict())
    for (ka, a), (kb, b) in zip(m.state_dict().items(), other.state_dict().items()):
        assert ka == kb and torch.equal(a, b)


def test_flat_names_apply_inside_a_parent_module():
    parent = nn.Module()
    parent.prior = _Stack()
    keys = list(parent.state_dict())
    assert "prior.blocks.0.qkv.weight" in keys and not any(".attn." in k for k in keys)
    fresh = nn.Module()
    fresh.prior = _Stack()
    fresh.load_state_dict(parent.state_dict())
    assert torch.equal(fresh.prior.blocks[0].attn.qkv.weight, parent.prior.blocks[0].attn.qkv.weight)
