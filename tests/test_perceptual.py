"""Perceptual networks: torchvision-compatible backbones, weight loading, LPIPS (calibrated and stand-in)."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from bsqvit.nets import (
    BACKBONE_FILENAMES,
    WEIGHTS_DIR_ENV,
    WeightsNotFound,
    alexnet,
    load_backbone_weights,
    squeezenet1_1,
    vgg16,
)
from bsqvit.metrics import lpips as lpips_mod
from bsqvit.metrics.lpips import LPIPS, build_perceptual
from shared_data import KODAK, LPIPS_LIN, SQUEEZE_CAFFE, WEIGHTS, needs, needs_kodak, needs_squeeze

needs_lin = needs(LPIPS_LIN, what="LPIPS v0.1 weights (../shared/weights)")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _isolated_weight_dirs(tmp_path, monkeypatch):
    """No test may find weights in the user's real torch-hub cache or via the environment."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setattr(lpips_mod, "lpips_package_weights_dir", lambda: None)


# ---- expected torchvision state-dict tables --------------------------------------------------------
def _conv(prefix, c_out, c_in, k):
    return {f"{prefix}.weight": (c_out, c_in, k, k), f"{prefix}.bias": (c_out,)}


def vgg16_features_table():
    t = {}
    convs = [(0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128), (10, 256, 128), (12, 256, 256),
             (14, 256, 256), (17, 512, 256), (19, 512, 512), (21, 512, 512), (24, 512, 512),
             (26, 512, 512), (28, 512, 512)]
    for i, co, ci in convs:
        t.update(_conv(f"features.{i}", co, ci, 3))
    return t


def alexnet_features_table():
    t = {}
    for i, co, ci, k in [(0, 64, 3, 11), (3, 192, 64, 5), (6, 384, 192, 3), (8, 256, 384, 3), (10, 256, 256, 3)]:
        t.update(_conv(f"features.{i}", co, ci, k))
    return t


def squeezenet1_1_features_table():
    t = _conv("features.0", 64, 3, 3)
    fires = [(3, 64, 16, 64), (4, 128, 16, 64), (6, 128, 32, 128), (7, 256, 32, 128), (9, 256, 48, 192),
             (10, 384, 48, 192), (11, 384, 64, 256), (12, 512, 64, 256)]
    for i, cin, sq, ex in fires:
        t.update(_conv(f"features.{i}.squeeze", sq, cin, 1))
        t.update(_conv(f"features.{i}.expand1x1", ex, sq, 1))
        t.update(_conv(f"features.{i}.expand3x3", ex, sq, 3))
    return t


CLASSIFIER_TABLES = {
    "vgg16": {"classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
              "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
              "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,)},
    "alexnet": {"classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
                "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
                "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,)},
    "squeezenet1_1": {"classifier.1.weight": (1000, 512, 1, 1), "classifier.1.bias": (1000,)},
}
FEATURE_TABLES = {"vgg16": vgg16_features_table, "alexnet": alexnet_features_table,
                  "squeezenet1_1": squeezenet1_1_features_table}
CONSTRUCTORS = {"vgg16": vgg16, "alexnet": alexnet, "squeezenet1_1": squeezenet1_1}
# torchvision's total parameter counts (vgg16 / alexnet / squeezenet1_1 with 1000 classes)
PARAM_COUNTS = {"vgg16": 138_357_544, "alexnet": 61_100_840, "squeezenet1_1": 1_235_496}


def shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("name", ["vgg16", "alexnet", "squeezenet1_1"])
def test_backbone_features_keys_match_torchvision(name):
    table = FEATURE_TABLES[name]()
    assert shapes(CONSTRUCTORS[name]().state_dict()) == table
    assert len(table) == {"vgg16": 26, "alexnet": 10, "squeezenet1_1": 50}[name]


@pytest.mark.parametrize("name", ["alexnet", "squeezenet1_1"])  # vgg16's 138M-param head is too big to build here
def test_backbone_full_keys_and_param_count(name):
    m = CONSTRUCTORS[name](with_classifier=True)
    assert shapes(m.state_dict()) == {**FEATURE_TABLES[name](), **CLASSIFIER_TABLES[name]}
    assert sum(p.numel() for p in m.parameters()) == PARAM_COUNTS[name]
    with torch.no_grad():
        assert m(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_vgg16_param_count_without_building_head():
    n_feat = sum(p.numel() for p in vgg16().parameters())
    n_head = sum(int(np.prod(s)) for s in CLASSIFIER_TABLES["vgg16"].values())
    assert n_feat + n_head == PARAM_COUNTS["vgg16"]


@needs_squeeze
def test_shipped_caffe_squeezenet_matches_layout_and_loads_strict():
    sd = torch.load(SQUEEZE_CAFFE, map_location="cpu", weights_only=True)
    assert len(sd) == 50
    expected = {k.removeprefix("features."): v for k, v in squeezenet1_1_features_table().items()}
    assert shapes(sd) == expected
    m = squeezenet1_1()
    m.features.load_state_dict(sd, strict=True)
    assert torch.equal(m.features[12].expand3x3.bias, sd["12.expand3x3.bias"])
    # through the loader (directory + sub-folder search)
    sd2 = load_backbone_weights("squeezenet1_1_caffe", search_dirs=[WEIGHTS])
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)


# ---- weight files ----------------------------------------------------------------------------------
def hub_dir(tmp_path):
    d = tmp_path / "torch_home" / "hub" / "checkpoints"
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_loader_finds_hub_file_full_and_features_only(tmp_path):
    torch.manual_seed(0)
    m = squeezenet1_1(with_classifier=True)
    assert Path(torch.hub.get_dir()) == tmp_path / "torch_home" / "hub"
    f = hub_dir(tmp_path) / "squeezenet1_1-b8a52dc0.pth"
    torch.save(m.state_dict(), f)  # full torchvision-style dict, keys features.N / classifier.N
    sd = load_backbone_weights("squeezenet1_1")
    assert set(sd) == set(m.features.state_dict())
    assert all(torch.equal(sd[k], v) for k, v in m.features.state_dict().items())
    # features-only dict, explicit path
    g = tmp_path / "feat_only.pth"
    torch.save(m.features.state_dict(), g)
    sd = load_backbone_weights("squeezenet1_1", path=g)
    assert all(torch.equal(sd[k], v) for k, v in m.features.state_dict().items())


@pytest.mark.parametrize("name", ["vgg16", "alexnet", "squeezenet1_1"])
def test_missing_backbone_weights_error_names_file_and_dirs(tmp_path, name):
    with pytest.raises(WeightsNotFound) as e:
        load_backbone_weights(name)
    msg = str(e.value)
    assert BACKBONE_FILENAMES[name][0] in msg
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in msg
    assert isinstance(e.value, FileNotFoundError)


def test_build_perceptual_fails_at_start_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        build_perceptual("vgg")
    with pytest.raises(FileNotFoundError, match="squeezenet1_1_features.pth"):
        build_perceptual("squeeze-caffe", weights_dir=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        LPIPS("squeeze-caffe", weights_path=tmp_path / "nope.pth")


def test_missing_lin_weights_error_names_file(tmp_path):
    torch.manual_seed(0)
    torch.save(squeezenet1_1().state_dict(), hub_dir(tmp_path) / "squeezenet1_1-b8a52dc0.pth")
    with pytest.raises(WeightsNotFound, match=r"squeeze\.pth"):
        LPIPS("squeeze", weights_dir=tmp_path / "empty")
    assert not LPIPS("squeeze", calibrated=False).calibrated  # baseline form needs no lin file


# ---- calibrated LPIPS vs an independent hand-written computation ------------------------------------
LPIPS_SLICES = {  # lpips/pretrained_networks.py slice boundaries into torchvision `features`
    "vgg": [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)],
    "alex": [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)],
    "squeeze": [(0, 2), (2, 5), (5, 8), (8, 10), (10, 11), (11, 12), (12, 13)],
}
HUB_NAMES = {"vgg": ("vgg16", vgg16), "alex": ("alexnet", alexnet), "squeeze": ("squeezenet1_1", squeezenet1_1)}


def manual_lpips(features, slices, x, y, lin=None, caffe=False):
    """Independent loop: scaling layer, slices, unit-normalise, squared diff, lin / channel sum, mean."""
    def prep(z):
        if caffe:
            z = (z + 1) / 2 * 255
            z = torch.stack([z[:, 2], z[:, 1], z[:, 0]], 1)
            return z - torch.tensor([104.006, 116.669, 122.679]).view(1, 3, 1, 1)
        return (z - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor(
            [0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    out = torch.zeros(x.shape[0], dtype=torch.float64)
    hx, hy = prep(x), prep(y)
    for k, (a, b) in enumerate(slices):
        for i in range(a, b):
            hx, hy = features[i](hx), features[i](hy)
        for n in range(x.shape[0]):
            fx, fy = hx[n].double(), hy[n].double()
            nx = torch.sqrt((fx ** 2).sum(0, keepdim=True)) + 1e-10
            ny = torch.sqrt((fy ** 2).sum(0, keepdim=True)) + 1e-10
            d = (fx / nx - fy / ny) ** 2  # (C, H, W)
            if lin is not None:
                w = lin[f"lin{k}.model.1.weight"].double().view(-1, 1, 1)
                d = (d * w).sum(0)
            else:
                d = d.sum(0)
            out[n] += d.mean()
    return out


@needs_lin
@pytest.mark.parametrize("net", ["vgg", "alex", "squeeze"])
def test_calibrated_lpips_equals_manual_computation(tmp_path, net):
    hub_name, ctor = HUB_NAMES[net]
    torch.manual_seed(0)
    full = net == "squeeze"  # a full torchvision dict (with classifier); the others features.* only (small files)
    ref = ctor(with_classifier=full)
    sd = ref.state_dict() if full else {f"features.{k}": v for k, v in ref.features.state_dict().items()}
    torch.save(sd, hub_dir(tmp_path) / BACKBONE_FILENAMES[hub_name][0])

    m = LPIPS(net, lin_path=LPIPS_LIN / f"{net}.pth")
    assert m.calibrated and m.comparable_to_published and "v0.1" in m.label
    # default search via a weights dir holding lpips_v0.1/ finds the same file
    assert LPIPS(net, weights_dir=WEIGHTS).lin_file == LPIPS_LIN / f"{net}.pth"

    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 40, 40, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(2, 3, 40, 40, generator=g)).clamp(-1, 1)
    lin = torch.load(LPIPS_LIN / f"{net}.pth", map_location="cpu", weights_only=True)
    with torch.no_grad():
        got = m(x, y)
        want = manual_lpips(ref.features, LPIPS_SLICES[net], x, y, lin=lin)
        assert got.shape == (2,)
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
        base = LPIPS(net, calibrated=False)
        assert not base.comparable_to_published
        torch.testing.assert_close(base(x, y).double(), manual_lpips(ref.features, LPIPS_SLICES[net], x, y),
                                   rtol=1e-4, atol=1e-6)


# ---- the offline stand-in ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def standin():
    if not SQUEEZE_CAFFE.is_file():
        pytest.skip("shared SqueezeNet-Caffe weights absent")
    return LPIPS("squeeze-caffe", weights_path=SQUEEZE_CAFFE)


def to_tensor(img):
    return torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1


@pytest.fixture(scope="module")
def kodak_crop():
    if not (KODAK / "kodim01.png").is_file():
        pytest.skip("Kodak image absent")
    im = Image.open(KODAK / "kodim01.png").convert("RGB")
    return im.crop((320, 192, 448, 320))  # 128x128, textured (window, wall)


def scores_against(metric, ref_img, imgs):
    ref = to_tensor(ref_img)
    with torch.no_grad():
        return metric(ref.expand(len(imgs), -1, -1, -1), torch.cat([to_tensor(i) for i in imgs])).tolist()


def test_standin_metadata_and_manual_computation(standin):
    assert standin.comparable_to_published is False
    assert "not comparable" in standin.label and "SqueezeNet-Caffe" in standin.label
    assert not standin.calibrated and not standin.training
    assert not any(p.requires_grad for p in standin.parameters())
    with pytest.raises(ValueError):
        LPIPS("squeeze-caffe", weights_path=SQUEEZE_CAFFE, calibrated=True)
    ref = squeezenet1_1()
    ref.features.load_state_dict(torch.load(SQUEEZE_CAFFE, map_location="cpu", weights_only=True))
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 48, 40, generator=g) * 2 - 1
    y = torch.rand(2, 3, 48, 40, generator=g) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(standin(x, y).double(),
                                   manual_lpips(ref.features, LPIPS_SLICES["squeeze"], x, y, caffe=True),
                                   rtol=1e-4, atol=1e-6)


def test_identity_symmetry_positivity(standin):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 40, 40, generator=g) * 2 - 1
    y = torch.rand(3, 3, 40, 40, generator=g) * 2 - 1
    with torch.no_grad():
        assert torch.all(standin(x, x) == 0)
        dxy, dyx = standin(x, y), standin(y, x)
        torch.testing.assert_close(dxy, dyx)
        assert dxy.shape == (3,) and torch.all(dxy > 0.1)
        assert standin(x, y, reduction="mean").shape == ()
        assert torch.isclose(standin(x, y, reduction="sum"), dxy.sum())
    with pytest.raises(ValueError):
        standin(x, y[:, :, :32])


@needs_kodak
def test_standin_grows_with_jpeg_degradation(standin, kodak_crop):
    imgs = []
    for q in (90, 30, 5):
        buf = io.BytesIO()
        kodak_crop.save(buf, "JPEG", quality=q)
        imgs.append(Image.open(buf).convert("RGB"))
    d = scores_against(standin, kodak_crop, imgs)
    assert 0 < d[0] < d[1] < d[2], d


@needs_kodak
def test_standin_grows_with_gaussian_blur(standin, kodak_crop):
    d = scores_against(standin, kodak_crop, [kodak_crop.filter(ImageFilter.GaussianBlur(s)) for s in (0.5, 1, 2, 4)])
    assert 0 < d[0] < d[1] < d[2] < d[3], d


def test_video_is_frame_average(standin):
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 3, 40, 40, generator=g) * 2 - 1
    y = torch.rand(2, 3, 3, 40, 40, generator=g) * 2 - 1
    with torch.no_grad():
        dv = standin(x, y)
        per_frame = torch.stack([standin(x[:, :, t], y[:, :, t]) for t in range(3)], 1)
    assert dv.shape == (2,)
    torch.testing.assert_close(dv, per_frame.mean(1))


def test_gradients_flow_to_input_not_params(standin):
    standin.train()  # a parent trainer calling .train() must not change it
    assert not standin.training
    g = torch.Generator().manual_seed(5)
    y = torch.rand(2, 3, 48, 48, generator=g) * 2 - 1
    x = (y + 0.2 * torch.randn(2, 3, 48, 48, generator=g)).requires_grad_(True)
    standin(x, y, reduction="mean").backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in standin.parameters())
