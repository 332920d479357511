import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from bsqvit import BSQViT
from bsqvit.cli import main
from bsqvit.config import ConfigError
from bsqvit.train import load_train_config
from bsqvit.train.checkpoint import find_last, load_checkpoint
from bsqvit.train.config import LossConfig
from bsqvit.train.trainer import Trainer, warmup_cosine
from shared_data import KODAK, SQUEEZE_CAFFE, VIDEO, needs, needs_squeeze

SQUEEZE = SQUEEZE_CAFFE


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    kodim05 = KODAK / "kodim05.png"
    if kodim05.is_file():
        src = np.asarray(Image.open(kodim05).convert("RGB"))
    else:  # no ../shared: a smooth synthetic picture with texture
        yy, xx = np.mgrid[0:256, 0:256] / 256.0
        waves = [np.sin(2 * np.pi * (a * xx + b * yy)) for a, b in ((1, 2), (3, -1), (5, 4))]
        src = np.stack(waves, -1) * 90 + 128 + rng.normal(0, 12, (256, 256, 3))
        src = np.clip(src, 0, 255).astype(np.uint8)
    for i in range(16):
        y, x = rng.integers(0, src.shape[0] - 48), rng.integers(0, src.shape[1] - 48)
        Image.fromarray(src[y : y + 48, x : x + 48]).save(d / f"{i:02d}.png")
    (d / "broken.jpg").write_bytes(b"not a jpeg at all")
    return d


def write_config(path: Path, image_dir: Path, **extra) -> Path:
    cfg = {
        "preset": "tiny",
        "model": {"image_size": [32, 32]},
        "data": {"kind": "image", "train": [str(image_dir)], "val": [str(image_dir)], "val_limit": 4,
                 "resolution": 32, "batch_size": 4, "num_workers": 0},
        "loss": {"perceptual": "squeeze-caffe", "perceptual_weights": str(SQUEEZE), "gan_weight": 0.1,
                 "gan_start": 2, "r1_every": 2, "quant_rampup_steps": 4},
        "discriminator": {"image_size": 32, "channel_base": 1024, "channel_max": 32},
        "optim": {"lr": 3e-4, "warmup_steps": 2, "amp": "none", "ema_decay": 0.9},
        "steps": 6, "log_every": 1, "eval_every": 0, "checkpoint_every": 3, "threads": 1,
    }
    for k, v in extra.items():
        node = cfg
        keys = k.split(".")
        for kk in keys[:-1]:
            node = node.setdefault(kk, {})
        node[keys[-1]] = v
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_schedule_and_ramp():
    assert warmup_cosine(0, 10, 100, 0.1, 0.5) == pytest.approx(0.1)
    assert warmup_cosine(10, 10, 100, 0.1, 0.5) == pytest.approx(1.0)
    assert warmup_cosine(100, 10, 100, 0.1, 0.5) == pytest.approx(0.5)
    assert warmup_cosine(55, 10, 100, 0.1, 0.5) == pytest.approx(0.75)
    lc = LossConfig(quant_weight=0.1, quant_rampup_multiplier=3.0, quant_rampup_steps=2000)
    assert lc.quant_weight_at(0) == pytest.approx(0.3)
    assert lc.quant_weight_at(1000) == pytest.approx(0.2)
    assert lc.quant_weight_at(5000) == pytest.approx(0.1)


def test_config_errors(tmp_path, image_dir):
    p = write_config(tmp_path / "c.yaml", image_dir)
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_train_config(p, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="unknown preset|tinyy"):
        load_train_config(p, ["preset=tinyy"])
    cfg = load_train_config(p, ["optim.lr=1e-3", "data.batch_size=2"])
    assert cfg.optim.lr == 1e-3 and cfg.data.batch_size == 2 and cfg.model.width == 64


def test_missing_perceptual_weights_fail_at_start(tmp_path, image_dir, capsys):
    p = write_config(tmp_path / "c.yaml", image_dir, **{"loss.perceptual": "vgg", "loss.perceptual_weights": None})
    os.environ["TORCH_HOME"] = str(tmp_path / "empty_hub")
    try:
        rc = main(["train", str(p), "--output-dir", str(tmp_path / "run"), "--no-progress"])
    finally:
        del os.environ["TORCH_HOME"]
    err = capsys.readouterr().err
    assert rc == 2 and "vgg16" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoints").exists()


def _state(run: Path) -> dict:
    return load_checkpoint(find_last(run / "checkpoints"))


@needs_squeeze
def test_resume_is_bit_identical(tmp_path, image_dir):
    p = write_config(tmp_path / "c.yaml", image_dir)
    cfg = load_train_config(p)
    full = Trainer(cfg, tmp_path / "full", progress=False)
    full.fit()
    part = Trainer(cfg, tmp_path / "part", max_steps=3, progress=False)
    part.fit()
    assert (tmp_path / "part" / "checkpoints" / "last").exists()
    assert _state(tmp_path / "part")["step"] == 3
    resumed = Trainer(cfg, tmp_path / "part", resume=True, progress=False)
    assert resumed.step == 3
    resumed.fit()
    a, b = _state(tmp_path / "full"), _state(tmp_path / "part")
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema", "disc"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs after resume"
    la = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    # the bad file was skipped and counted, never fatal
    assert la[-1]["skipped_files"] >= 0
    # exported model loads and matches the EMA weights
    m = BSQViT.from_pretrained(tmp_path / "part" / "model")
    assert all(torch.equal(m.state_dict()[k], b["ema"][k]) for k in b["ema"])


@needs_squeeze
@needs(VIDEO / "davis2016_frames" / "blackswan", what="DAVIS frames (../shared/data/video)")
def test_cli_train_smoke_and_video(tmp_path, image_dir):
    p = write_config(tmp_path / "c.yaml", image_dir, steps=2, eval_every=2, **{"loss.gan_weight": 0.0})
    rc = main(["train", str(p), "--output-dir", str(tmp_path / "run"), "--no-progress"])
    assert rc == 0
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert list((tmp_path / "run" / "samples").glob("*.png"))
    ev = [json.loads(x) for x in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert ev[-1]["n"] == 4 and 5 < ev[-1]["psnr"] < 60
    # video fine-tune from the image model: temporal embeddings start at zero
    v = write_config(
        tmp_path / "v.yaml", image_dir, steps=1, eval_every=0, init_from=str(tmp_path / "run" / "model"),
        **{"model.num_frames": 4, "model.mask_type": "block-causal", "data.kind": "video",
           "data.train": [str(VIDEO / "davis2016_frames" / "blackswan")],
           "data.val": None, "data.num_frames": 4, "data.frame_stride": 4, "data.batch_size": 1,
           "loss.gan_weight": 0.1, "loss.gan_start": 0},
    )
    assert main(["train", str(v), "--output-dir", str(tmp_path / "vrun"), "--no-progress"]) == 0
    vm = BSQViT.from_pretrained(tmp_path / "vrun" / "model")
    assert vm.config.mask_type == "block-causal" and vm.config.num_frames == 4


@pytest.mark.slow
@needs_squeeze
def test_ddp_two_processes_match_one_process(tmp_path, image_dir):
    """2 gloo processes x batch 2 == 1 process x batch 4: same losses (global-batch semantics)."""
    common = {"loss.gan_start": 1, "loss.r1_every": 2, "steps": 3, "checkpoint_every": 3}
    one = write_config(tmp_path / "one.yaml", image_dir, **common)
    two = write_config(tmp_path / "two.yaml", image_dir, **{**common, "data.batch_size": 2})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r1 = subprocess.run([sys.executable, "-m", "bsqvit", "train", str(one), "--output-dir", str(tmp_path / "r1"),
                         "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                         "29517", "-m", "bsqvit", "train", str(two), "--output-dir", str(tmp_path / "r2"), "--no-progress"],
                        env=env, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-2000:]
    l1 = [json.loads(x) for x in (tmp_path / "r1" / "log.jsonl").read_text().splitlines()]
    l2 = [json.loads(x) for x in (tmp_path / "r2" / "log.jsonl").read_text().splitlines()]
    assert len(l1) == len(l2) == 3
    for a, b in zip(l1, l2):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
        assert a["codebook_entropy"] == pytest.approx(b["codebook_entropy"], rel=1e-5)
    s1, s2 = _state(tmp_path / "r1"), _state(tmp_path / "r2")
    for k in s1["model"]:
        assert torch.allclose(s1["model"][k], s2["model"][k], atol=1e-4), k


@needs_squeeze
def test_ablation_runs_all_quantizers_at_matched_bits(tmp_path, image_dir, capsys):
    p = write_config(tmp_path / "a.yaml", image_dir, steps=2, **{"loss.gan_weight": 0.0, "data.val_resolution": 64,
                                                                 "checkpoint_every": 0})
    rc = main(["ablate-quantizers", str(p), "--output-dir", str(tmp_path / "abl"), "--bits", "8",
               "--quantizers", "bsq,lfq,vq,fsq,leech"])
    assert rc == 0
    rows = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert [r["quantizer"] for r in rows] == ["bsq", "lfq", "vq", "fsq", "leech"]
    for r in rows:
        # FSQ [8,6,5] = 240 codes = 7.9 bits; Λ24-SQ has its fixed 196,560 codes whatever --bits is
        assert abs(r["bits"] - (17.585 if r["quantizer"] == "leech" else 8)) < 0.1
        assert 0 < r["code_usage"] <= 1 and r["tokens"] == 4 * 4 * 16  # 4 images, 2x2 tiles of 4x4 tokens
        assert 3 < r["psnr"] < 60
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| BSQ |" in table and "| Λ24-SQ | 17.5" in table and "196,560 fixed codes" in table
    # an unknown quantizer is refused before anything trains
    capsys.readouterr()
    assert main(["ablate-quantizers", str(p), "--output-dir", str(tmp_path / "bad"), "--quantizers", "bsq,nope"]) != 0
    assert "unknown quantizer 'nope'" in capsys.readouterr().err and not (tmp_path / "bad" / "bsq").exists()
