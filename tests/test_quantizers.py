"""Properties of the quantizers: BSQ (entropy terms vs brute force), LFQ, VQ, FSQ, distributed stats."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from bsqvit.quantizers import (
    BinarySphericalQuantizer,
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    QuantizerConfig,
    VectorQuantizer,
    bits_to_indices,
    build_quantizer,
    indices_to_bits,
)

# ---------------------------------------------------------------------------------------------
# helpers


def all_codes(L: int, scale: float) -> torch.Tensor:
    """(2^L, L) float64 codes, row k = code with index k (channel 0 = most significant bit)."""
    return (indices_to_bits(torch.arange(2**L), L).double() * 2 - 1) * scale


def H(p: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum(-1)


def brute_force_entropies(u: torch.Tensor, tau: float, scale: float, group_size: int):
    """Per-sample entropy, exact codebook entropy, and the sum of the group-marginal entropies
    of the averaged distribution, by enumerating all 2^L codes in float64."""
    u = u.double()
    L = u.shape[-1]
    codes = all_codes(L, scale)
    q = torch.softmax(2 * tau * u @ codes.t(), dim=-1)  # (N, 2^L)
    per_sample = H(q).mean()
    avg = q.mean(0)
    joint = H(avg)
    G = L // group_size
    idx = torch.arange(2**L)
    marginal_sum = torch.zeros((), dtype=torch.float64)
    for k in range(G):
        gidx = (idx >> (group_size * (G - 1 - k))) & (2**group_size - 1)
        marg = torch.zeros(2**group_size, dtype=torch.float64).index_add_(0, gidx, avg)
        marginal_sum = marginal_sum + H(marg)
    return per_sample, joint, marginal_sum


def batches(L: int, n: int = 64):
    """Random batches: isotropic, anisotropic, and with strongly correlated bits."""
    g = torch.Generator().manual_seed(1234)
    iso = torch.randn(n, L, generator=g)
    aniso = torch.randn(n, L, generator=g) * torch.linspace(0.1, 3.0, L) + 0.5
    base = torch.randn(n, 1, generator=g)
    corr = base.expand(n, L) + 0.1 * torch.randn(n, L, generator=g)  # all bits nearly equal
    corr[:, 1::2] *= -1  # alternate signs: bits strongly (anti-)correlated, marginals ~uniform
    return {"iso": iso, "aniso": aniso, "corr": corr}


# ---------------------------------------------------------------------------------------------
# BSQ: codes and indices


def test_bsq_codes_unit_norm_and_values():
    torch.manual_seed(0)
    L = 18
    q = BinarySphericalQuantizer(L)
    z = torch.randn(4, 10, L)
    out = q(z)
    assert out.quantized.shape == z.shape
    assert torch.allclose(out.quantized.norm(dim=-1), torch.ones(4, 10), atol=1e-6)
    s = 1 / math.sqrt(L)
    vals = out.quantized.abs()
    assert torch.allclose(vals, torch.full_like(vals, s), atol=1e-7, rtol=0)
    # sign agrees with the input
    assert torch.equal(out.quantized > 0, z > 0)
    assert out.indices.dtype == torch.int64 and out.indices.shape == (4, 10)
    assert out.indices.min() >= 0 and out.indices.max() < 2**L
    assert torch.allclose(q.indices_to_codes(out.indices), out.quantized, atol=1e-7)


def test_bsq_channel0_is_msb_and_groups():
    L, g = 12, 4
    q = BinarySphericalQuantizer(L, group_size=g)
    z = -torch.ones(1, L)
    z[0, 0] = 1.0
    out = q(z)
    assert out.indices.item() == 2 ** (L - 1)
    assert out.group_indices.tolist() == [[2 ** (g - 1), 0, 0]]
    z = -torch.ones(1, L)
    z[0, L - 1] = 1.0
    out = q(z)
    assert out.indices.item() == 1
    assert out.group_indices.tolist() == [[0, 0, 1]]


def test_bsq_sign_zero_maps_to_minus():
    L = 6
    q = BinarySphericalQuantizer(L)
    z = torch.tensor([[0.0, 1.0, 0.0, -1.0, 2.0, 0.0]])
    out = q(z)
    s = 1 / math.sqrt(L)
    expected = torch.tensor([[-s, s, -s, -s, s, -s]])
    assert torch.allclose(out.quantized, expected, atol=1e-7)
    assert out.indices.item() == 0b010010
    # an all-zero vector is all -1 (index 0), not NaN
    out0 = q(torch.zeros(1, L))
    assert out0.indices.item() == 0 and torch.isfinite(out0.quantized).all()


@pytest.mark.parametrize("L,g", [(6, 1), (6, 2), (6, 3), (6, 6), (18, 9), (36, 9), (62, 2), (62, 31)])
def test_bsq_index_round_trips(L, g):
    torch.manual_seed(L + g)
    if g > 24:
        with pytest.raises(ValueError):
            BinarySphericalQuantizer(L, group_size=g)
        return
    q = BinarySphericalQuantizer(L, group_size=g)
    bits = torch.randint(0, 2, (200, L))
    bits[0] = 1  # largest index 2^L - 1
    bits[1] = 0
    bits[2] = 0
    bits[2, 0] = 1  # 2^(L-1)
    idx = bits_to_indices(bits)
    assert idx.dtype == torch.int64
    assert (idx >= 0).all(), "overflow"
    assert idx[0].item() == 2**L - 1 and idx[1].item() == 0 and idx[2].item() == 2 ** (L - 1)
    assert torch.equal(indices_to_bits(idx, L), bits)
    codes = q.indices_to_codes(idx)
    assert torch.equal(codes > 0, bits.bool())
    out = q(codes)
    assert torch.equal(out.indices, idx)
    gi = q.indices_to_group_indices(idx)
    assert gi.shape == (200, L // g) and gi.max() < 2**g and gi.min() >= 0
    assert torch.equal(gi, out.group_indices)
    assert torch.equal(q.group_indices_to_indices(gi), idx)
    assert torch.allclose(q.group_indices_to_codes(gi), codes)


def test_bsq_rejects_bad_dims():
    with pytest.raises(ValueError):
        BinarySphericalQuantizer(63)
    with pytest.raises(ValueError):
        BinarySphericalQuantizer(6, group_size=4)


# ---------------------------------------------------------------------------------------------
# BSQ: entropy terms against brute-force enumeration


@pytest.mark.parametrize("g", [1, 2, 3, 6])
@pytest.mark.parametrize("kind", ["iso", "aniso", "corr"])
def test_bsq_entropy_matches_brute_force(g, kind):
    L, tau = 6, 0.7
    z = batches(L)[kind]
    q = BinarySphericalQuantizer(L, group_size=g, inv_temperature=tau)
    out = q(z)
    u = F.normalize(z.double(), dim=-1)
    ps, joint, marg = brute_force_entropies(u, tau, 1 / math.sqrt(L), g)
    assert out.per_sample_entropy.dtype == torch.float32
    assert abs(out.per_sample_entropy.double() - ps) < 1e-5
    assert abs(out.codebook_entropy.double() - marg) < 1e-5
    if g == L:
        assert abs(out.codebook_entropy.double() - joint) < 1e-5
    # grouping can only over-estimate (subadditivity)
    assert out.codebook_entropy.double() >= joint - 1e-5


def test_bsq_factorised_entropy_is_upper_bound():
    L, tau = 6, 8.0  # sharp assignments, so that correlations show in the averaged distribution
    gaps = {}
    for kind, z in batches(L).items():
        ents = {g: BinarySphericalQuantizer(L, group_size=g, inv_temperature=tau)(z).codebook_entropy.double() for g in (1, 2, 3, 6)}
        _, joint, _ = brute_force_entropies(F.normalize(z.double(), dim=-1), tau, 1 / math.sqrt(L), L)
        assert abs(ents[6] - joint) < 1e-5
        # coarser groups see more correlation: g=1 >= g=2 >= g=6 and g=1 >= g=3 >= g=6
        assert ents[1] >= ents[2] - 1e-5 >= ents[6] - 2e-5
        assert ents[1] >= ents[3] - 1e-5 >= ents[6] - 2e-5
        gaps[kind] = float(ents[1] - joint)
    # with correlated bits the factorised bound is far from tight
    assert gaps["corr"] > 1.0, gaps


def test_bsq_entropy_batch_shape_invariance():
    """(B, N, L) inputs average over all tokens, exactly as the flattened batch."""
    torch.manual_seed(3)
    z = torch.randn(3, 7, 6)
    q = BinarySphericalQuantizer(6, group_size=3)
    a, b = q(z), q(z.reshape(21, 6))
    assert torch.allclose(a.codebook_entropy, b.codebook_entropy)
    assert torch.allclose(a.per_sample_entropy, b.per_sample_entropy)


def test_bsq_loss_formula():
    torch.manual_seed(0)
    L = 6
    tau, g0, g1, zeta = 0.7, 1.3, 0.6, 0.5
    q = BinarySphericalQuantizer(L, group_size=3, inv_temperature=tau, gamma0=g0, gamma=g1, zeta=zeta)
    out = q(torch.randn(50, L))
    expected = zeta * (g0 * out.per_sample_entropy - g1 * out.codebook_entropy) / tau
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert torch.allclose(out.entropy_loss, expected, atol=1e-6)
    # commitment adds beta * ||sg(zq) - u||^2
    qc = BinarySphericalQuantizer(L, group_size=3, inv_temperature=tau, commitment_weight=0.25)
    z = torch.randn(50, L)
    out = qc(z)
    u = F.normalize(z, dim=-1)
    commit = ((out.quantized - u) ** 2).sum(-1).mean()
    assert torch.allclose(out.loss, out.entropy_loss + 0.25 * commit, atol=1e-6)


@pytest.mark.parametrize("cls", [BinarySphericalQuantizer, LookupFreeQuantizer])
def test_straight_through_gradient(cls):
    torch.manual_seed(0)
    L = 8
    q = cls(L)
    z = torch.randn(5, 9, L, requires_grad=True)
    w = torch.randn(5, 9, L)
    (w * q(z).quantized).sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    ref = F.normalize(z2, dim=-1) if cls is BinarySphericalQuantizer else z2
    (w * ref).sum().backward()
    assert torch.allclose(z.grad, z2.grad, atol=1e-6)


@pytest.mark.parametrize("g", [1, 3])
def test_bsq_entropy_gradient_flows_and_matches_double(g):
    torch.manual_seed(0)
    L = 6
    z = torch.randn(40, L, requires_grad=True)
    q = BinarySphericalQuantizer(L, group_size=g, inv_temperature=0.7)
    q(z).loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # the gradient is that of the brute-force loss (per-sample - marginal codebook entropy)
    zd = z.detach().double().requires_grad_(True)
    ps, _, marg = brute_force_entropies(F.normalize(zd, dim=-1), 0.7, 1 / math.sqrt(L), g)
    ((ps - marg) / 0.7).backward()
    assert torch.allclose(z.grad.double(), zd.grad, atol=1e-5)


def test_bsq_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    L = 18
    lin = torch.nn.Linear(32, L)
    q = BinarySphericalQuantizer(L, group_size=9)
    x = torch.randn(64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = lin(x)
        assert z.dtype == torch.bfloat16
        out = q(z)
    assert out.quantized.dtype == torch.bfloat16
    for t in (out.per_sample_entropy, out.codebook_entropy, out.loss):
        assert t.dtype == torch.float32 and torch.isfinite(t)
    out.loss.backward()
    assert torch.isfinite(lin.weight.grad).all() and lin.weight.grad.abs().sum() > 0
    ref = q(z.detach().float())
    assert torch.allclose(out.codebook_entropy, ref.codebook_entropy)


# ---------------------------------------------------------------------------------------------
# LFQ


def test_lfq_codes_and_exact_entropy():
    torch.manual_seed(0)
    L, tau = 5, 0.7
    q = LookupFreeQuantizer(L, inv_temperature=tau)
    assert q.group_size == L
    z = torch.randn(64, L)
    out = q(z)
    assert torch.equal(out.quantized.abs(), torch.ones_like(z))
    assert torch.equal(out.quantized > 0, z > 0)
    assert torch.equal(q.indices_to_codes(out.indices), out.quantized)
    ps, joint, _ = brute_force_entropies(z.double(), tau, 1.0, L)  # no sphere: u = z
    assert abs(out.per_sample_entropy.double() - ps) < 1e-5
    assert abs(out.codebook_entropy.double() - joint) < 1e-5


# ---------------------------------------------------------------------------------------------
# VQ


def test_vq_nearest_code_is_max_cosine():
    torch.manual_seed(0)
    vq = VectorQuantizer(300, 8, chunk_size=7).eval()  # small chunks exercise the chunked search
    z = torch.randn(3, 111, 8) * 5
    out = vq(z)
    cb = vq.codebook
    assert torch.allclose(cb.norm(dim=-1), torch.ones(300), atol=1e-6)
    sims = F.normalize(z, dim=-1) @ cb.t()
    assert torch.equal(out.indices, sims.argmax(-1))
    assert out.indices.dtype == torch.int64 and out.indices.shape == (3, 111)
    assert torch.allclose(out.quantized, cb[out.indices], atol=1e-6)
    assert torch.allclose(vq.indices_to_codes(out.indices), out.quantized, atol=1e-6)
    # diagnostics: histogram entropy and used codes
    counts = torch.bincount(out.indices.flatten(), minlength=300).double()
    p = counts / counts.sum()
    assert abs(out.codebook_entropy.double() - H(p)) < 1e-5
    assert out.used_codes.item() == (counts > 0).sum().item()
    # commitment loss (the only loss in EMA mode)
    u = F.normalize(z, dim=-1)
    commit = ((u - out.quantized) ** 2).sum(-1).mean()
    assert torch.allclose(out.loss, 0.25 * commit, atol=1e-6)


def test_vq_straight_through_and_autocast():
    torch.manual_seed(0)
    vq = VectorQuantizer(64, 8, commitment_weight=0.0).eval()
    z = torch.randn(20, 8, requires_grad=True)
    w = torch.randn(20, 8)
    (w * vq(z).quantized).sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    (w * F.normalize(z2, dim=-1)).sum().backward()
    assert torch.allclose(z.grad, z2.grad, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        zb = torch.nn.Linear(8, 8)(torch.randn(20, 8))
        out = vq(zb)
    assert out.quantized.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32 and out.codebook_entropy.dtype == torch.float32


def _set_codebook(vq: VectorQuantizer, codes: torch.Tensor) -> None:
    codes = F.normalize(codes, dim=-1)
    vq.embed.copy_(codes)
    vq.embed_sum.copy_(codes)


def test_vq_ema_update_formula_and_moves_towards_data():
    torch.manual_seed(0)
    K, D, decay = 4, 6, 0.9
    vq = VectorQuantizer(K, D, decay=decay, dead_code_threshold=0.0)
    centers = F.normalize(torch.randn(K, D), dim=-1)
    _set_codebook(vq, centers + 0.5 * torch.randn(K, D))
    z = (centers.repeat(25, 1) + 0.1 * torch.randn(100, D))
    # eval: nothing moves
    vq.eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(z)
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items())
    # train: one step follows the EMA formulas
    vq.train()
    out = vq(z)
    u = F.normalize(z, dim=-1)
    counts = torch.bincount(out.indices, minlength=K).float()
    sums = torch.zeros(K, D).index_add_(0, out.indices, u)
    assert torch.allclose(vq.cluster_size, (1 - decay) * counts, atol=1e-6)
    assert torch.allclose(vq.embed_sum, decay * before["embed_sum"] + (1 - decay) * sums, atol=1e-6)
    assert torch.allclose(vq.embed, F.normalize(vq.embed_sum, dim=-1), atol=1e-6)
    # the forward used the old codebook
    assert torch.allclose(out.quantized, before["embed"][out.indices], atol=1e-6)
    # each code moves towards its cluster centre
    cos_before = (F.normalize(before["embed"], dim=-1) * centers).sum(-1)
    for _ in range(5):
        vq(z)
    cos_after = (vq.embed * centers).sum(-1)
    assert (cos_after > cos_before + 1e-3).all(), (cos_before, cos_after)
    assert (cos_after > 0.99).all()


def test_vq_dead_codes_restart_from_batch():
    torch.manual_seed(0)
    K, D = 16, 8
    vq = VectorQuantizer(K, D, dead_code_threshold=1.0).train()
    vq.cluster_size.fill_(100.0)
    dead = torch.tensor([3, 7, 11])
    vq.cluster_size[dead] = 0.0
    old = vq.embed.clone()
    z = torch.randn(64, D) * 3
    vq(z)
    u = F.normalize(z, dim=-1)
    cos = vq.embed @ u.t()  # (K, N)
    # restarted codes are (distinct) batch vectors
    assert (cos[dead].max(dim=1).values > 1 - 1e-6).all()
    assert len(set(cos[dead].argmax(dim=1).tolist())) == len(dead)
    assert not torch.allclose(vq.embed[dead], old[dead])
    assert torch.allclose(vq.cluster_size[dead], torch.ones(3))
    alive = torch.ones(K, dtype=torch.bool)
    alive[dead] = False
    assert (cos[alive].max(dim=1).values < 1 - 1e-4).all()
    assert (vq.cluster_size[alive] > 1.0).all()


def test_vq_first_training_step_initialises_from_data():
    torch.manual_seed(0)
    vq = VectorQuantizer(32, 4).train()  # cluster sizes start at 0: every code is dead
    z = torch.randn(100, 4)
    vq(z)
    cos = vq.embed @ F.normalize(z, dim=-1).t()
    assert (cos.max(dim=1).values > 1 - 1e-6).all()


def test_vq_learned_mode_gradients():
    torch.manual_seed(0)
    K, D = 32, 8
    vq = VectorQuantizer(K, D, ema=False, commitment_weight=0.25, dead_code_threshold=0.0).train()
    assert isinstance(vq.embed, torch.nn.Parameter)
    z = torch.randn(50, D, requires_grad=True)
    out = vq(z)
    u = F.normalize(z.detach(), dim=-1)
    d2 = ((u - vq.codebook.detach()[out.indices]) ** 2).sum(-1).mean()
    assert torch.allclose(out.loss, 1.25 * d2, atol=1e-6)
    assert torch.allclose(out.extras["codebook_loss"], d2, atol=1e-6)
    out.loss.backward()
    used = torch.zeros(K, dtype=torch.bool)
    used[out.indices] = True
    gnorm = vq.embed.grad.norm(dim=-1)
    assert (gnorm[used] > 0).all() and (gnorm[~used] == 0).all()
    assert z.grad.abs().sum() > 0
    assert torch.allclose(vq.indices_to_codes(out.indices), out.quantized.detach(), atol=1e-6)
    # a few SGD steps on the codebook reduce the quantization error
    first = None
    for _ in range(20):
        vq.embed.grad = None
        loss = vq(u).loss
        first = first if first is not None else loss.item()
        loss.backward()
        with torch.no_grad():
            vq.embed -= 0.5 * vq.embed.grad
    assert vq(u).loss.item() < first


def test_build_quantizer():
    assert isinstance(build_quantizer(QuantizerConfig(type="vq", dim=8, codebook_size=64)), VectorQuantizer)
    f = build_quantizer(QuantizerConfig(type="fsq", levels=[8, 5, 5]))
    assert isinstance(f, FiniteScalarQuantizer) and f.dim == 3 and f.codebook_size == 200
    b = build_quantizer(QuantizerConfig(type="bsq", dim=18))
    assert isinstance(b, BinarySphericalQuantizer) and b.group_size == 9


# ---------------------------------------------------------------------------------------------
# FSQ


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [7, 6, 2], [3, 4]])
def test_fsq_grid_and_sweep(levels):
    q = FiniteScalarQuantizer(levels)
    assert q.dim == len(levels) and q.codebook_size == math.prod(levels)
    # sweep: many wide random inputs reach every code, and nothing off the grid
    g = torch.Generator().manual_seed(0)
    z = torch.cat([torch.randn(30_000, len(levels), generator=g) * 1.5, torch.full((2, len(levels)), 50.0) * torch.tensor([[1.0], [-1.0]])])
    out = q(z)
    assert torch.unique(out.indices).numel() == q.codebook_size
    assert out.used_codes.item() == q.codebook_size
    assert out.indices.min() == 0 and out.indices.max() == q.codebook_size - 1
    for i, l in enumerate(levels):
        hw = l // 2
        v = out.quantized[:, i] * hw
        assert torch.allclose(v, v.round(), atol=1e-6), "off the grid"
        grid = sorted(set(v.round().tolist()))
        assert grid == [float(k) for k in range(-hw, l - hw)]
        assert out.quantized[:, i].min() == -1.0 and out.quantized[:, i].max() <= 1.0
    assert out.loss.item() == 0.0
    counts = torch.bincount(out.indices, minlength=q.codebook_size).double()
    assert abs(out.codebook_entropy.double() - H(counts / counts.sum())) < 1e-5


def test_fsq_index_round_trip_and_convention():
    levels = [8, 5, 3]
    q = FiniteScalarQuantizer(levels)
    idx = torch.arange(q.codebook_size)
    codes = q.indices_to_codes(idx)
    assert torch.equal(q.codes_to_indices(codes), idx)
    assert torch.unique(codes, dim=0).shape[0] == q.codebook_size
    # first channel least significant
    assert torch.equal(q.indices_to_codes(torch.tensor(1)) - q.indices_to_codes(torch.tensor(0)), torch.tensor([0.25, 0.0, 0.0]))
    assert torch.equal(q.indices_to_codes(torch.tensor(8)) - q.indices_to_codes(torch.tensor(0)), torch.tensor([0.0, 0.5, 0.0]))
    torch.manual_seed(0)
    out = q(torch.randn(2, 9, 3) * 2)
    assert out.indices.shape == (2, 9)
    assert torch.equal(q.indices_to_codes(out.indices), out.quantized)
    # zero maps to the zero code
    assert torch.equal(q(torch.zeros(1, 3)).quantized, torch.zeros(1, 3))


def test_fsq_straight_through_gradient():
    torch.manual_seed(0)
    q = FiniteScalarQuantizer([8, 5, 4])
    z = torch.randn(30, 3, requires_grad=True)
    w = torch.randn(30, 3)
    (w * q(z).quantized).sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    (w * q.bound(z2) / torch.tensor([4.0, 2.0, 2.0])).sum().backward()
    assert torch.allclose(z.grad, z2.grad, atol=1e-6)
    # and that is the identity through the rounding: dq/dz = bound'(z) / half_width > 0
    assert (z.grad.sign() == w.sign()).all()


# ---------------------------------------------------------------------------------------------
# distributed: codebook statistics are averaged across ranks, gradients match one process


def _dist_worker(rank, world, init_file, x, w, refs, vq_ref):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        n = x.shape[0] // world
        xr = x[rank * n : (rank + 1) * n]
        for g, ref in refs.items():
            q = BinarySphericalQuantizer(6, group_size=g, inv_temperature=0.7)
            # (a) codebook entropy and its gradient wrt this rank's inputs
            xi = xr.clone().requires_grad_(True)
            out = q(xi)
            assert abs(out.codebook_entropy.item() - ref["cb"]) < 1e-5, (rank, g, out.codebook_entropy.item(), ref["cb"])
            out.codebook_entropy.backward()
            # DDP averages gradients over ranks: the rank's gradient / world must be the
            # single-process gradient wrt the same inputs
            expected = ref["cb_grad_x"][rank * n : (rank + 1) * n]
            assert torch.allclose(xi.grad / world, expected, atol=1e-6), (rank, g, (xi.grad / world - expected).abs().max())
            # (b) full loss through a shared linear layer; mean of the rank gradients (DDP)
            wi = w.clone().requires_grad_(True)
            out = q(xr @ wi)
            out.loss.backward()
            grad = wi.grad.clone()
            dist.all_reduce(grad)
            grad /= world
            assert torch.allclose(grad, ref["loss_grad_w"], atol=1e-5), (rank, g, (grad - ref["loss_grad_w"]).abs().max())
        # VQ: EMA statistics are summed over ranks -> same update as one process on the full batch
        torch.manual_seed(rank)  # different RNG per rank: restarts must still agree
        vq = VectorQuantizer(8, 6, decay=0.9, dead_code_threshold=0.0)
        vq.load_state_dict(vq_ref["init"])
        vq.train()(xr)
        for k in ("cluster_size", "embed_sum", "embed"):
            assert torch.allclose(getattr(vq, k), vq_ref[k], atol=1e-6), (rank, k)
        # dead-code restarts are identical on every rank (rank 0's batch vectors)
        vq.dead_code_threshold = 1.0
        vq.cluster_size[:4] = 0.0
        vq(xr)
        gathered = [torch.empty_like(vq.embed) for _ in range(world)]
        dist.all_gather(gathered, vq.embed)
        assert torch.equal(gathered[0], gathered[1])
        u0 = F.normalize(x[:n], dim=-1)  # rank 0's inputs
        assert ((vq.embed[:4] @ u0.t()).max(dim=1).values > 1 - 1e-6).all()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_distributed_entropy_matches_single_process(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    torch.manual_seed(0)
    world = 2
    x = torch.randn(40, 6)
    x[:20] += 0.8  # the two halves have different statistics
    w = torch.randn(6, 6)
    refs = {}
    for g in (1, 3):
        q = BinarySphericalQuantizer(6, group_size=g, inv_temperature=0.7)
        xi = x.clone().requires_grad_(True)
        out = q(xi)
        out.codebook_entropy.backward()
        wi = w.clone().requires_grad_(True)
        q(x @ wi).loss.backward()
        refs[g] = {"cb": out.codebook_entropy.item(), "cb_grad_x": xi.grad.clone(), "loss_grad_w": wi.grad.clone()}
        # the halves alone differ from the full batch, so the test can tell synced from local stats
        assert abs(q(x[:20]).codebook_entropy.item() - refs[g]["cb"]) > 1e-3
    vq = VectorQuantizer(8, 6, decay=0.9, dead_code_threshold=0.0)
    vq_ref = {"init": {k: v.clone() for k, v in vq.state_dict().items()}}
    vq.train()(x)
    vq_ref.update({k: getattr(vq, k).clone() for k in ("cluster_size", "embed_sum", "embed")})
    init_file = str(tmp_path / "store")
    mp.spawn(_dist_worker, args=(world, init_file, x, w, refs, vq_ref), nprocs=world, join=True)
