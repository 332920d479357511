"""BSQCNN: the convolutional tokenizer keeps the BSQViT contract, and everything that builds or
loads a tokenizer (trainer, codec, CLI) takes it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from bsqvit import BSQCNN, BSQViT, Tokenizer, build_tokenizer, get_preset, load_tokenizer
from bsqvit.cli import main
from bsqvit.config import ConfigError
from bsqvit.models.streaming import NotStreamableError

# a ViT saved before arch / cnn_* / nested_bits existed, with its hash pinned by the golden codec files
DEFAULT = Path(__file__).resolve().parent / "data" / "codec" / "tokenizer"
DEFAULT_HASH = json.loads((DEFAULT.parent / "golden.json").read_text())["tokenizer_hash"]
# a small CNN: 3 stages (downsampling 4), 8 channels
TINY = dict(arch="cnn", image_size=[16, 16], patch_size=4, cnn_channels=8, cnn_channel_mult=[1, 2, 2],
            cnn_res_blocks=1, cnn_norm_groups=4, quantizer=dict(type="bsq", dim=10, group_size=5))


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def tiny(**kw) -> BSQCNN:
    torch.manual_seed(0)
    return build_tokenizer({**TINY, **kw}).eval()


def test_build_dispatches_on_arch_and_presets_build():
    m = tiny()
    assert isinstance(m, BSQCNN) and isinstance(m, Tokenizer) and m.patch_size == 4
    assert isinstance(build_tokenizer(get_preset("tiny")), BSQViT)
    small = build_tokenizer(get_preset("cnn-small"))
    assert isinstance(small, BSQCNN) and small.patch_size == 8 and small.bits_per_token == 18
    # equal FLOPs per 64^2 image as the ViT `small` (the comparison in docs/CNN.md relies on it)
    vit = build_tokenizer(get_preset("small"))
    assert small.flops(64, 64)["total"] == pytest.approx(vit.flops(64, 64)["total"], rel=0.02)
    with torch.device("meta"):
        assert build_tokenizer(get_preset("cnn-b-256-l18")).patch_size == 8


def test_shapes_padding_and_round_trip():
    m = tiny()
    x = torch.rand(2, 3, 18, 23) * 2 - 1  # not multiples of 4: padded to 20 x 24
    idx = m.encode(x)
    assert idx.shape == (2, 5, 6) and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < 2**10
    rec = m.decode(idx, size=(18, 23))
    assert rec.shape == x.shape and rec.abs().max() <= 1
    assert m.decode(idx).shape == (2, 3, 20, 24)
    out = m(x)
    assert torch.equal(out.indices, idx)
    torch.testing.assert_close(out.reconstruction, rec)
    with pytest.raises(ValueError, match="larger than the token grid"):
        m.decode(idx, size=(21, 23))


def test_video_is_coded_frame_by_frame():
    m = tiny()
    v = torch.rand(1, 3, 3, 16, 12) * 2 - 1
    idx = m.encode(v)
    assert idx.shape == (1, 3, 4, 3)
    frames = m.encode(v[0].movedim(1, 0))  # the frames as a batch of images
    assert torch.equal(idx[0], frames)
    torch.testing.assert_close(m.decode(idx)[0].movedim(1, 0), m.decode(frames))
    with pytest.raises(NotStreamableError, match="ViT-only"):
        m.encode_stream(v)


def test_nested_bits_through_the_cnn():
    m = tiny(quantizer=dict(type="bsq", dim=10, group_size=5, nested_bits=[4, 10]))
    assert m.nested_bits == (4, 10) or list(m.nested_bits) == [4, 10]
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    full, low = m.encode(x), m.encode(x, bits=4)
    assert torch.equal(low, full >> 6 << 6)  # the first 4 of 10 bits, the others cleared
    out = m(x, bits=4)
    assert torch.equal(out.indices, low)
    torch.testing.assert_close(out.reconstruction, m.decode(low, bits=4))
    with pytest.raises(ValueError):
        m.encode(x, bits=5)
    m.train()
    m(x).reconstruction.mean().backward()  # a nested rate drawn per call in training


def test_save_load_round_trip(tmp_path):
    m = tiny()
    m.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["arch"] == "cnn" and cfg["cnn_channel_mult"] == [1, 2, 2]
    back = load_tokenizer(tmp_path / "m")
    assert isinstance(back, BSQCNN) and back.weights_hash() == m.weights_hash()
    x = torch.rand(1, 3, 20, 20) * 2 - 1
    assert torch.equal(back.encode(x), m.encode(x))
    torch.testing.assert_close(back(x).reconstruction, m(x).reconstruction, rtol=0, atol=0)
    # ViT-only fields do not change what a CNN computes, so they do not enter its hash
    assert build_tokenizer({**TINY, "width": 99}).weights_hash() != ""  # accepted
    torch.manual_seed(0)
    assert build_tokenizer({**TINY, "width": 99}).weights_hash() == m.weights_hash()
    with pytest.raises(ConfigError, match="load_tokenizer"):
        BSQViT.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("bad, match", [
    (dict(patch_size=8), "patch_size 8 must equal the downsampling"),
    (dict(cnn_channel_mult=[]), "cnn_channel_mult must be a non-empty list"),
    (dict(cnn_res_blocks=0), ">= 1"),
    (dict(num_frames=4), "num_frames must be 1"),
    (dict(arch="resnet"), "arch must be one of"),
])
def test_bad_cnn_configs_fail_clearly(bad, match):
    with pytest.raises(ConfigError, match=match):
        build_tokenizer({**TINY, **bad})


def test_cnn_fields_need_arch_cnn():
    with pytest.raises(ConfigError, match="cnn_channels: cnn_\\* fields need arch: cnn"):
        get_preset("tiny", cnn_channels=16)
    with pytest.raises(ConfigError, match="build_tokenizer"):
        BSQViT(get_preset("cnn-small"))


def test_existing_vit_models_keep_their_hash_and_config(tmp_path):
    m = load_tokenizer(DEFAULT)
    assert type(m) is BSQViT and m.weights_hash() == DEFAULT_HASH
    assert BSQViT.from_pretrained(DEFAULT).weights_hash() == DEFAULT_HASH
    m.save_pretrained(tmp_path / "vit")
    saved = json.loads((tmp_path / "vit" / "config.json").read_text())
    assert saved == json.loads((DEFAULT / "config.json").read_text())  # no arch / cnn_* / null nested_bits


def _images(d: Path, n: int = 8, size=(40, 40)) -> Path:
    d.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size[0], 0:size[1]] / 40.0
    for i in range(n):
        a, b = rng.uniform(0.5, 3, 2)
        img = np.stack([np.sin(2 * np.pi * (a * xx + b * yy + c)) for c in (0, 0.3, 0.6)], -1) * 100 + 128
        Image.fromarray(np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)).save(d / f"{i}.png")
    return d


def test_train_then_compress_and_decompress_through_the_cli(tmp_path, capsys):
    data = _images(tmp_path / "imgs")
    cfg = {
        "model": {**TINY},
        "data": {"kind": "image", "train": [str(data)], "resolution": 16, "batch_size": 4, "num_workers": 0},
        "loss": {"l1_weight": 1.0, "l2_weight": 1.0, "perceptual": "none", "gan_weight": 0.0, "quant_rampup_steps": 0},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "amp": "none", "ema_decay": 0.0},
        "steps": 4, "log_every": 1, "eval_every": 0, "checkpoint_every": 0, "threads": 1,
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "l1" in r]
    assert len(steps) == 4 and all(np.isfinite(r["loss"]) for r in steps)
    model = tmp_path / "run" / "model"
    assert isinstance(load_tokenizer(model), BSQCNN)
    capsys.readouterr()
    img = data / "0.png"
    rc = main(["compress", str(img), str(tmp_path / "a.bsq"), "--model", str(model), "--prior", "none"])
    assert rc == 0, capsys.readouterr().err
    rc = main(["decompress", str(tmp_path / "a.bsq"), str(tmp_path / "a.png"), "--model", str(model)])
    assert rc == 0, capsys.readouterr().err
    got = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"))
    assert got.shape == (40, 40, 3)
    tok = load_tokenizer(model)
    x = torch.from_numpy(np.array(Image.open(img).convert("RGB"))).permute(2, 0, 1)[None].float() / 127.5 - 1
    want = ((tok.decode(tok.encode(x), size=(40, 40))[0] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0)
    assert np.abs(got.astype(int) - want.numpy().astype(int)).max() <= 1
