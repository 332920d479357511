"""--device on every command that runs a model: auto/cpu everywhere, cuda where CUDA is present,
and a one-line error where it is not. The .bsq bits come from the prior's integer arithmetic, so a
file written on one device decodes to the same tokens on another."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bsqvit.cli import build_parser, main
from bsqvit.codec import decode_tokens
from bsqvit.codec.files import read_bsq
from bsqvit.codec.container import read_container

pytestmark = pytest.mark.usefixtures("one_thread")

CODEC = Path(__file__).resolve().parent / "data" / "codec"
MODEL_COMMANDS = ["reconstruct", "tokenize", "detokenize", "compress", "decompress", "generate", "eval-gen",
                  "eval", "fid-stats", "bench", "rd", "demo"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_every_model_command_takes_device():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    missing = [c for c in MODEL_COMMANDS if not any("--device" in a.option_strings for a in sub[c]._actions)]
    assert missing == []


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    Image.open(CODEC / "image.png").convert("RGB").save(d / "a.png")
    return d / "a.png"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path, capsys, image):
    rc = main(["reconstruct", str(image), str(tmp_path / "r.png"), "--model", str(CODEC / "tokenizer"),
               "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "CUDA is not available" in err
    assert not (tmp_path / "r.png").exists()


def test_bad_device_name(tmp_path, capsys, image):
    rc = main(["tokenize", str(image), str(tmp_path / "t.npz"), "--model", str(CODEC / "tokenizer"), "--device", "tpu"])
    assert rc == 2 and "--device must be auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_auto_and_cpu_give_the_same_file_here(tmp_path, capsys, image):
    outs = []
    for dev in ("auto", "cpu"):
        out = tmp_path / f"{dev}.bsq"
        rc = main(["compress", str(image), str(out), "--model", str(CODEC / "tokenizer"), "--prior",
                   str(CODEC / "prior-ar"), "--device", dev])
        assert rc == 0, capsys.readouterr().err
        outs.append(out.read_bytes())
    if not torch.cuda.is_available():
        assert outs[0] == outs[1]


@needs_cuda
def test_cuda_file_decodes_to_the_same_tokens_on_cpu(tmp_path, capsys, image):
    from bsqvit.codec.prior import TokenPrior

    out = tmp_path / "cuda.bsq"
    rc = main(["compress", str(image), str(out), "--model", str(CODEC / "tokenizer"), "--prior",
               str(CODEC / "prior-ar"), "--device", "cuda"])
    assert rc == 0, capsys.readouterr().err
    header, chunks = read_container(read_bsq(out))
    prior = TokenPrior.from_pretrained(CODEC / "prior-ar")
    tokens_cpu = decode_tokens(header, chunks, prior)
    rc = main(["decompress", str(out), str(tmp_path / "d.png"), "--model", str(CODEC / "tokenizer"), "--prior",
               str(CODEC / "prior-ar"), "--device", "cuda"])
    assert rc == 0
    rc = main(["tokenize", str(image), str(tmp_path / "t.npz"), "--model", str(CODEC / "tokenizer"), "--device", "cuda"])
    assert rc == 0
    assert np.array_equal(np.load(tmp_path / "t.npz")["indices"][None], tokens_cpu)
