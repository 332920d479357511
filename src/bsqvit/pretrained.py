"""The embedded default models: weights that ship inside the package.

``bsqvit/assets/default/`` holds one directory per component, each in the usual format
(``config.json`` + ``model.safetensors``; tensors stored in float16 and loaded into float32
parameters, exactly: the weights were rounded to float16 before the dependent models were
trained, so the tokenizer's ``weights_hash()`` is the one its prior and generator name):

* ``tokenizer`` -- the image tokenizer (:class:`~bsqvit.BSQViT`);
* ``prior`` -- the autoregressive token prior for compression
  (:class:`~bsqvit.codec.prior.TokenPrior`);
* ``gen`` -- the class-conditional masked token model
  (:class:`~bsqvit.generate.model.MaskedTokenModel`);
* ``video-tokenizer`` -- the block-causal video tokenizer, fine-tuned from ``tokenizer``; the
  default for video inputs (it streams frame by frame);
* ``video-prior`` -- its token prior, conditioned on the previous frame's tokens.

Which prior goes with which tokenizer is recorded in each prior (``tokenizer_hash``), and which
tokenizer a ``.bsq`` or token file needs in the file (its id): :func:`default_tokenizer_for`.

``MANIFEST.json`` lists every file with its SHA-256 and size; a component's files are verified
against it the first time the component is used in a process (:func:`default_dir`), and a
mismatch is a :class:`~bsqvit.models.io.ModelLoadError`, never a silently different model.
The card: ``docs/MODEL_CARD.md``. ``--model``, ``--prior`` and ``--gen`` default to these.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .io import InputError
from .models.io import ModelLoadError

ROOT = Path(__file__).resolve().parent / "assets" / "default"
SAMPLES = Path(__file__).resolve().parent / "assets" / "samples"  # five Kodak photos (see its README.md)
MANIFEST = "MANIFEST.json"
COMPONENTS = ("tokenizer", "prior", "gen", "video-tokenizer", "video-prior")
TOKENIZERS = ("tokenizer", "video-tokenizer")
PRIORS = ("prior", "video-prior")
_verified: set[str] = set()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(root: Path | None = None) -> dict:
    root = Path(root or ROOT)
    try:
        m = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{root / MANIFEST}: unreadable manifest ({e})") from None
    if not isinstance(m.get("files"), dict):
        raise ModelLoadError(f"{root / MANIFEST}: no 'files' table")
    return m


def verify(component: str, root: Path | None = None) -> Path:
    """Check the files of ``component`` against the manifest; return its directory."""
    root = Path(root or ROOT)
    files = {k: v for k, v in read_manifest(root).get("files", {}).items() if k.split("/", 1)[0] == component}
    if not files:
        raise ModelLoadError(f"embedded {component}: not in {root / MANIFEST}")
    for rel, entry in sorted(files.items()):
        p = root / rel
        if not p.is_file():
            raise ModelLoadError(f"embedded {component}: {rel} is missing")
        if p.stat().st_size != entry["bytes"] or sha256_file(p) != entry["sha256"]:
            raise ModelLoadError(f"embedded {component}: {rel} does not match its SHA-256 in {MANIFEST} "
                                 "(corrupted or modified install)")
    return root / component


def available(component: str, root: Path | None = None) -> bool:
    return component in {k.split("/", 1)[0] for k in read_manifest(root).get("files", {})}


def default_dir(component: str, root: Path | None = None) -> Path | None:
    """Directory of an embedded component, verified once per process; None if none ships."""
    root = Path(root or ROOT)
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; expected one of {COMPONENTS}")
    if not available(component, root):
        return None
    key = f"{root}:{component}"
    if key not in _verified:
        verify(component, root)
        _verified.add(key)
    return root / component


NO_DEFAULT_MODEL = "no --model given and no embedded default model is installed"


def sample_images() -> Path:
    """The folder of sample photos that ships with the package (what ``bsqvit demo`` runs on)."""
    if not any(SAMPLES.glob("*.png")):
        raise InputError(f"{SAMPLES}: the sample images are not installed (give --data DIR)")
    return SAMPLES


def default_model_dir(video: bool = False) -> Path:
    """The embedded default tokenizer (verified against its manifest), or an
    :class:`~bsqvit.io.InputError`. ``video``: the video tokenizer where one ships (else the
    image tokenizer, which codes videos frame by frame)."""
    d = (default_dir("video-tokenizer") if video else None) or default_dir("tokenizer")
    if d is None:
        raise InputError(NO_DEFAULT_MODEL)
    return d


def _config_of(component: str, root: Path) -> dict:
    try:
        return json.loads((root / component / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"embedded {component}: unreadable config ({e})") from None


def tokenizer_hashes(root: Path | None = None) -> dict[str, str]:
    """``weights_hash()`` of each embedded tokenizer, as the manifest records them."""
    m = read_manifest(root)
    hashes = dict(m.get("tokenizer_hashes") or {})
    if "tokenizer_hash" in m:  # manifests of one tokenizer
        hashes.setdefault("tokenizer", m["tokenizer_hash"])
    return {k: v for k, v in hashes.items() if k in TOKENIZERS and available(k, root)}


def default_tokenizer_for(tokenizer_id: str) -> Path | None:
    """The embedded tokenizer a file needs: the one whose ``weights_hash()`` starts with the
    file's ``tokenizer_id`` (hex), or None when none ships."""
    for comp, h in tokenizer_hashes().items():
        if tokenizer_id and h.startswith(tokenizer_id.lower()):
            return default_dir(comp)
    return None


def default_pair(video: bool = False) -> tuple[Path, Path | None]:
    """(the default tokenizer for images or videos, the embedded prior trained for it or None)."""
    d = default_model_dir(video)
    h = tokenizer_hashes().get(d.name)  # d is ROOT / component
    return d, (default_prior_dir(h) if h else None)


def default_prior_dir(tokenizer_hash: str | None) -> Path | None:
    """The embedded prior trained for the tokenizer with this ``weights_hash()`` (None: the image
    prior), or None when none ships for it."""
    root = ROOT
    for comp in PRIORS:
        if not available(comp, root):
            continue
        h = _config_of(comp, root).get("tokenizer_hash")
        if tokenizer_hash is None and comp == "prior" or h is not None and h == tokenizer_hash:
            return default_dir(comp, root)
    return None


def write_manifest(root: Path, meta: dict | None = None) -> dict:
    """(Re)write ``MANIFEST.json`` for every file under ``root`` (used when packaging)."""
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[p.relative_to(root).as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    m = {"version": 1, **(meta or {}), "files": files}
    (root / MANIFEST).write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    return m


def pack_component(src_dir: Path, dst_dir: Path, half: bool = True) -> None:
    """Copy a ``save_pretrained`` directory, storing floating tensors as float16.

    Refuses weights that float16 would change (train the dependent models on the rounded
    tokenizer: :func:`round_to_half`), so the packed model is bit-identical once loaded.
    """
    dst_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src_dir / "config.json", dst_dir / "config.json")
    state = load_file(str(src_dir / "model.safetensors"))
    if half:
        out = {}
        for k, v in state.items():
            if v.is_floating_point():
                h = v.to(torch.float16)
                if not torch.equal(h.to(v.dtype), v):
                    raise ValueError(f"{src_dir}: {k} is not exactly representable in float16; round it first")
                v = h
            out[k] = v.contiguous()
        state = out
    save_file(state, str(dst_dir / "model.safetensors"))


def round_to_half(module) -> None:
    """Round every floating parameter and buffer of ``module`` to float16 precision, in place."""
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.copy_(t.to(torch.float16).to(t.dtype))
