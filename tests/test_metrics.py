"""bsqvit.metrics: pixel metrics against scikit-image / pytorch-msssim, Fréchet distance against a
direct NumPy/SciPy computation, token statistics by hand, FID/I3D network layouts."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from bsqvit.io import load_image
from bsqvit.metrics import pixel
from bsqvit.metrics.fid import (
    FeatureStats,
    SqueezeCaffeFeatures,
    Stats,
    frechet_distance,
    load_stats,
    save_stats,
)
from bsqvit.metrics.fvd import fvd_from_features, preprocess_clips
from bsqvit.metrics.tokens import TokenStats, raw_bpp
from bsqvit.nets.backbones import WeightsNotFound
from shared_data import KODAK, WEIGHTS, needs_kodak, needs_squeeze



pytestmark = pytest.mark.usefixtures("one_thread")


def _degraded(x: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "noise":
        return (x + 0.08 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    # blocky blur (4x4 average, upsampled) + a brightness shift
    y = torch.nn.functional.avg_pool2d(x, 4).repeat_interleave(4, -1).repeat_interleave(4, -2)
    return (y + 0.05).clamp(-1, 1)


def _u8(x: torch.Tensor) -> np.ndarray:
    return pixel.to_255(x)[0].permute(1, 2, 0).numpy().astype(np.uint8)


# ---- pixel metrics ------------------------------------------------------------------------------
@needs_kodak
@pytest.mark.parametrize("name,kind", [("kodim01", "noise"), ("kodim04", "blur")])  # landscape and portrait
def test_psnr_ssim_match_scikit_image(name, kind):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    x = load_image(KODAK / f"{name}.png")[None]
    y = _degraded(x, kind, 1)
    a, b = _u8(x), _u8(y)
    ref_psnr = peak_signal_noise_ratio(a, b, data_range=255)
    ref_ssim = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=255, channel_axis=2)
    assert abs(float(pixel.psnr(x, y)[0]) - ref_psnr) < 1e-3
    assert abs(float(pixel.ssim(x, y)[0]) - ref_ssim) < 1e-3  # pytorch-msssim (measured ~4e-6)
    assert abs(float(pixel.ssim_reference(x, y)[0]) - ref_ssim) < 1e-6  # own float64 implementation


@needs_kodak
def test_ms_ssim_own_matches_pytorch_msssim_and_small_images_give_none():
    pytest.importorskip("pytorch_msssim")
    x = load_image(KODAK / "kodim07.png")[None][..., :333, :]  # odd height: exercises the padded pooling
    y = _degraded(x, "noise", 2)
    lib = pixel.ms_ssim(x, y)
    own = pixel.ms_ssim_reference(x, y)
    assert lib is not None and own is not None
    assert abs(float(lib[0]) - float(own[0])) < 1e-4
    assert pixel.ms_ssim(x[..., :160, :160], y[..., :160, :160]) is None
    assert pixel.ms_ssim_reference(x[..., :160, :160], y[..., :160, :160]) is None
    assert pixel.ms_ssim_db(0.99) == pytest.approx(20.0)


def test_ssim_without_pytorch_msssim_uses_own_implementation(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 40, 52, generator=g) * 2 - 1
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    with_lib = pixel.ssim(x, y)
    monkeypatch.setitem(sys.modules, "pytorch_msssim", None)  # import now raises ImportError
    without = pixel.ssim(x, y)
    assert torch.allclose(with_lib, without, atol=1e-5)
    from skimage.metrics import structural_similarity

    ref = structural_similarity(_u8(x[:1]), _u8(y[:1]), gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=255, channel_axis=2)
    assert abs(float(without[0]) - ref) < 1e-6


def test_per_frame_averages_image_metric_over_time():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 3, 24, 24, generator=g) * 2 - 1
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    v = pixel.per_frame(pixel.psnr, x, y)
    by_hand = torch.stack([torch.stack([pixel.psnr(x[b:b + 1, :, t], y[b:b + 1, :, t])[0] for t in range(3)]).mean()
                           for b in range(2)])
    assert torch.allclose(v, by_hand, atol=1e-5)
    assert pixel.per_frame(pixel.ms_ssim, x, y) is None


# ---- Fréchet distance ---------------------------------------------------------------------------
def _direct_fd(f1: np.ndarray, f2: np.ndarray) -> float:
    from scipy import linalg

    m1, m2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    c = linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * c))


def test_frechet_distance_matches_numpy_scipy_and_self_is_zero():
    rng = np.random.default_rng(0)
    D = 32
    f1 = rng.normal(size=(400, D)) @ rng.normal(size=(D, D)) * 0.3 + 5.0
    f2 = rng.normal(size=(300, D)) * 1.2 + 4.5
    a, b = FeatureStats("x"), FeatureStats("x")
    for chunk in np.array_split(f1, 7):  # streaming accumulation == all at once
        a.update(torch.from_numpy(chunk))  # float64 tensors accepted
    b.update(f2)
    np.testing.assert_allclose(a.mean, f1.mean(0), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(a.cov, np.cov(f1, rowvar=False), rtol=1e-9, atol=1e-10)
    fd = frechet_distance(a.mean, a.cov, b.mean, b.cov)
    assert fd == pytest.approx(_direct_fd(f1, f2), rel=1e-9)
    assert frechet_distance(a.mean, a.cov, b.mean, b.cov, method="symmetric") == pytest.approx(fd, rel=1e-9)
    assert fd > 1.0
    assert abs(frechet_distance(a.mean, a.cov, a.mean, a.cov)) < 1e-6
    assert a.stats().distance(b.stats()) == pytest.approx(fd, rel=1e-12)
    assert fvd_from_features(f1, f2) == pytest.approx(fd, rel=1e-9)


def test_frechet_distance_singular_covariances_are_finite():
    rng = np.random.default_rng(1)
    f1, f2 = rng.normal(size=(5, 64)), rng.normal(size=(5, 64)) + 0.5  # N < D: rank-deficient covariances
    a, b = FeatureStats(), FeatureStats()
    a.update(f1)
    b.update(f2)
    fd = frechet_distance(a.mean, a.cov, b.mean, b.cov)
    assert np.isfinite(fd) and fd > 0
    assert frechet_distance(a.mean, a.cov, b.mean, b.cov, method="symmetric") == pytest.approx(fd, rel=1e-6)
    assert abs(frechet_distance(a.mean, a.cov, a.mean, a.cov)) < 1e-4
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats().cov


def test_stats_npz_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    fs = FeatureStats("feat-a")
    fs.update(rng.normal(size=(10, 4)))
    st = fs.stats(data="somewhere", data_protocol="p")
    save_stats(tmp_path / "s.npz", st)
    back = load_stats(tmp_path / "s.npz")
    assert back.n == 10 and back.feature == "feat-a" and back.meta == {"data": "somewhere", "data_protocol": "p"}
    np.testing.assert_array_equal(back.mu, st.mu)
    np.testing.assert_array_equal(back.sigma, st.sigma)
    with pytest.raises(ValueError, match="different features"):
        back.distance(Stats(st.mu, st.sigma, 10, "feat-b"))
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a statistics file"):
        load_stats(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_text("junk")
    with pytest.raises(ValueError):
        load_stats(tmp_path / "junk.npz")


# ---- token statistics ---------------------------------------------------------------------------
def test_token_stats_by_hand():
    ts = TokenStats(4, binary=True, group_size=2)
    ts.update(torch.tensor([[0, 15], [15, 5]]))  # 0000, 1111, 1111, 0101
    s = ts.summary()
    assert s["tokens"] == 4 and s["codebook_size"] == 16 and s["used_codes"] == 3
    assert s["code_usage"] == pytest.approx(3 / 16)
    assert s["code_usage_of_possible"] == pytest.approx(3 / 4)
    assert s["bit_usage"] == [0.5, 0.75, 0.5, 0.75]  # channel 0 = most significant bit
    assert s["entropy_bits"] == pytest.approx(1.5)  # p = (1/4, 1/2, 1/4)
    assert s["group_entropy_bits"] == pytest.approx([1.5, 1.5])  # groups (00, 11, 11, 01) twice
    assert s["group_entropy_sum"] == pytest.approx(3.0)
    h = lambda p: -(p * np.log2(p) + (1 - p) * np.log2(1 - p))  # noqa: E731
    assert s["bit_entropy_sum"] == pytest.approx(2 * h(0.5) + 2 * h(0.75))
    assert raw_bpp(18, 8) == pytest.approx(0.28125)


# ---- feature networks ---------------------------------------------------------------------------
# (key, shape) pairs of pytorch-fid's pt_inception-2015-12-05 / torchvision's InceptionV3 layout
INCEPTION_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


def _random_like(sd: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue  # absent from the released files: the loader must not require them
        if k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(v.shape, generator=g) * 0.05
    return out


def test_fid_inception_layout_and_loading(tmp_path, monkeypatch):
    from bsqvit.nets.inception import FID_INCEPTION_FILENAMES, FIDInceptionV3, load_fid_inception

    with torch.device("meta"):
        sd = FIDInceptionV3().state_dict()
    for k, shape in INCEPTION_SHAPES.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any("AuxLogits" in k for k in sd)
    assert len([k for k in sd if not k.endswith("num_batches_tracked")]) == 472
    # torchvision documents 27,161,264 parameters for inception_v3 (aux head, 1000 classes); minus the
    # aux head (3,326,696) plus 8 more classes (8 x 2049) = the FID network:
    n_params = sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k)
    assert n_params == 27_161_264 - 3_326_696 + 8 * 2049
    monkeypatch.delenv("BSQVIT_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFound, match="pt_inception-2015-12-05"):
        load_fid_inception()
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(_random_like(sd), ckpt / FID_INCEPTION_FILENAMES[0])
    net = load_fid_inception()  # found in the torch-hub cache
    f = net(torch.rand(2, 3, 48, 64) * 2 - 1)
    assert f.shape == (2, 2048) and torch.isfinite(f).all()
    torch.save({k: v for k, v in _random_like(sd).items() if k != "fc.bias"}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="fc.bias"):
        load_fid_inception(tmp_path / "broken.pth")


def test_i3d_layout_and_forward(tmp_path):
    from bsqvit.nets.i3d import InceptionI3d, load_i3d

    with torch.device("meta"):
        sd = InceptionI3d().state_dict()
    expected = {
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_1a_7x7.bn.running_mean": (64,),
        "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
        "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
        "Mixed_4b.b0.conv3d.weight": (192, 480, 1, 1, 1),
        "Mixed_5c.b3b.conv3d.weight": (128, 832, 1, 1, 1),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    torch.save(_random_like(sd, 1), tmp_path / "i3d_pretrained_400.pt")
    net = load_i3d(tmp_path)
    y = net(torch.rand(1, 3, 9, 224, 224) * 2 - 1)
    assert y.shape == (1, 400) and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="at least 9 frames"):
        net(torch.zeros(1, 3, 8, 224, 224))
    x = torch.rand(2, 3, 4, 60, 90) * 2 - 1
    assert preprocess_clips(x).shape == (2, 3, 4, 224, 224)


@needs_squeeze
def test_squeeze_caffe_stand_in_features():
    net = SqueezeCaffeFeatures(None, [WEIGHTS])
    assert not net.comparable_to_published and "not comparable" in net.label
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 40, 56, generator=g) * 2 - 1
    f = net(x)
    assert f.shape == (4, 512) and torch.isfinite(f).all() and (f >= 0).all()  # post-ReLU average
    s = FeatureStats(net.name)
    s.update(f)
    st = s.stats()
    # rank-deficient covariance (4 samples in 512-d): ~0 up to sqrtm round-off relative to its trace
    assert abs(st.distance(st)) < 1e-6 * np.trace(st.sigma)
