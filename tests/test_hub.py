"""The Hub, offline: from_pretrained("owner/name") out of the Hub cache layout, push_to_hub with the
upload intercepted, and the generated model card; for the tokenizer, the prior and the generator."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi

from bsqvit import BSQViT
from bsqvit.codec.prior import TokenPrior
from bsqvit.generate.model import MaskedTokenModel
from bsqvit.nn import ModelLoadError

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = {
    "tokenizer": lambda: BSQViT.from_preset("tiny"),
    "prior": lambda: TokenPrior(layers=1, width=32, heads=2, bits=6, group_bits=3),
    "generator": lambda: MaskedTokenModel(bits=6, group_bits=3, grid=[2, 2], width=32, layers=1, heads=2,
                                          num_classes=2, class_ids=["a", "b"], class_names=["cat", "dog"]),
}


def _hub_cache(cache: Path, repo_id: str, src: Path, revision: str = "0123456789abcdef0123456789abcdef01234567"):
    """Lay ``src``'s files out as huggingface_hub's cache does: blobs, a snapshot and refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copyfile(f, snap / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_from_pretrained_reads_the_hub_cache_offline(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    m = MODELS[kind]()
    m.save_pretrained(tmp_path / "saved")
    _hub_cache(tmp_path / "cache", "someone/bsq-model", tmp_path / "saved")
    back = type(m).from_pretrained("someone/bsq-model", cache_dir=str(tmp_path / "cache"), local_files_only=True)
    assert back.weights_hash() == m.weights_hash() and not back.training
    with pytest.raises(ModelLoadError, match="could not fetch someone/absent"):
        type(m).from_pretrained("someone/absent", cache_dir=str(tmp_path / "cache"), local_files_only=True)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_push_to_hub_uploads_weights_config_and_card(kind, tmp_path, monkeypatch):
    uploaded = {}

    def create_repo(self, repo_id, **kw):
        return type("Repo", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, **kw):
        shutil.copytree(folder_path, tmp_path / "remote")
        uploaded["repo_id"] = repo_id
        return "https://hub.invalid/commit"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    torch.manual_seed(0)
    m = MODELS[kind]()
    url = m.push_to_hub("someone/bsq-model", model_card_kwargs={
        "metrics": {"Kodak PSNR": "22.26 dB"}, "recipe": "steps: 1000\nlr: 0.0003"})
    assert url == "https://hub.invalid/commit" and uploaded["repo_id"] == "someone/bsq-model"
    remote = tmp_path / "remote"
    assert sorted(p.name for p in remote.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    back = type(m).from_pretrained(remote)
    assert back.weights_hash() == m.weights_hash()
    card = (remote / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: bsqvit\n")
    assert m.weights_hash() in card and f"{m.num_parameters():,}" in card
    assert "| Kodak PSNR | 22.26 dB |" in card and "steps: 1000" in card
    assert f"{type(m).__name__}.from_pretrained" in card
