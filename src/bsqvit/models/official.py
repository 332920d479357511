"""Loading the reference implementation's checkpoints (``zhaoyue-zephyrus/bsq-vit``).

Its ``checkpoint.pt`` holds ``state_dict`` (keys prefixed ``module.``), ``ema_state_dict``
(prefixed ``module.module.``), optimizer states and ``config``, a pickled OmegaConf object.
We read it as plain data (:mod:`.reference_pickle`): tensors with ``weights_only=True``, the
config through inert stand-ins for OmegaConf's classes, under OmegaConf 2.3, 2.4 or none, and
nothing in the file is imported or called. The config may also come from the reference's YAML
file (``configs/tokenizer/*.yaml``).

Differences we deliberately do not reproduce: the reference casts its boolean block-causal
mask to float (an additive +1 instead of -inf, so no masking at all); we build a real mask.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml

from ..config import ConfigError, from_dict
from ..quantizers.leech import CODEBOOK_SIZE
from .config import BSQViTConfig
from .io import ModelLoadError, load_state_dict_checked
from .reference_pickle import load_reference_checkpoint

LEECH_KEY = "quantize.embedding.weight"  # a VITVQModel's frozen codebook

# (reference pattern, ours); applied to keys without the DDP prefix
_RULES = [
    (r"^encoder\.conv1\.", "encoder.patch_embed."),
    (r"^(encoder|decoder)\.positional_embedding$", r"\1.pos_embed"),
    (r"^(encoder|decoder)\.temporal_positional_embedding$", r"\1.temporal_embed"),
    (r"^(encoder|decoder)\.transformer\.resblocks\.(\d+)\.ln_1\.", r"\1.blocks.\2.ln1."),
    (r"^(encoder|decoder)\.transformer\.resblocks\.(\d+)\.ln_2\.", r"\1.blocks.\2.ln2."),
    (r"^(encoder|decoder)\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", r"\1.blocks.\2.attn.qkv.\3"),
    (r"^(encoder|decoder)\.transformer\.resblocks\.(\d+)\.attn\.out_proj\.", r"\1.blocks.\2.attn.proj."),
    (r"^(encoder|decoder)\.transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"\1.blocks.\2.mlp.fc."),
    (r"^(encoder|decoder)\.transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"\1.blocks.\2.mlp.proj."),
    (r"^decoder\.ffn\.0\.", "decoder.head.fc."),
    (r"^decoder\.conv_out\.", "decoder.head.proj."),
]
_IGNORED = re.compile(r"^(quantize\.(basis|group_basis|group_codebook)|logit_laplace_loss\.)")


def _apply(rules, key: str) -> str:
    for pat, rep in rules:
        new, n = re.subn(pat, rep, key)
        if n:
            return new
    return key


def convert_reference_state_dict(state: dict) -> dict:
    """Reference-layout tensors (prefix already stripped) -> this project's names."""
    return {_apply(_RULES, k): v for k, v in state.items() if not _IGNORED.match(k)}


_INVERSE = [
    (r"^encoder\.patch_embed\.", "encoder.conv1."),
    (r"^(encoder|decoder)\.pos_embed$", r"\1.positional_embedding"),
    (r"^(encoder|decoder)\.temporal_embed$", r"\1.temporal_positional_embedding"),
    (r"^(encoder|decoder)\.blocks\.(\d+)\.ln1\.", r"\1.transformer.resblocks.\2.ln_1."),
    (r"^(encoder|decoder)\.blocks\.(\d+)\.ln2\.", r"\1.transformer.resblocks.\2.ln_2."),
    (r"^(encoder|decoder)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", r"\1.transformer.resblocks.\2.attn.in_proj_\3"),
    (r"^(encoder|decoder)\.blocks\.(\d+)\.attn\.proj\.", r"\1.transformer.resblocks.\2.attn.out_proj."),
    (r"^(encoder|decoder)\.blocks\.(\d+)\.mlp\.fc\.", r"\1.transformer.resblocks.\2.mlp.c_fc."),
    (r"^(encoder|decoder)\.blocks\.(\d+)\.mlp\.proj\.", r"\1.transformer.resblocks.\2.mlp.c_proj."),
    (r"^decoder\.head\.fc\.", "decoder.ffn.0."),
    (r"^decoder\.head\.proj\.", "decoder.conv_out."),
]


def to_reference_state_dict(state: dict) -> dict:
    """This project's names -> the reference layout (without the DDP prefix)."""
    return {_apply(_INVERSE, k): v for k, v in state.items()}


# ---- config -------------------------------------------------------------------------------------
def _as_plain(obj):
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:
        pass
    return obj


def config_from_reference(ref: dict, leech: bool = False) -> BSQViTConfig:
    """Map a reference config (whole file, or ``model.params``) to a :class:`BSQViTConfig`.
    ``leech``: the checkpoint is a ``VITVQModel`` whose frozen codebook is the Λ24 one."""
    ref = _as_plain(ref)
    params = ref.get("model", {}).get("params", ref) if isinstance(ref, dict) else None
    if not isinstance(params, dict) or "vitconfig" not in params:
        raise ConfigError("reference config has no model.params.vitconfig")
    target = ref.get("model", {}).get("target", "") if isinstance(ref, dict) else ""
    if target and not target.endswith("VITBSQModel") and not (leech and target.endswith("VITVQModel")):
        raise ConfigError(f"unsupported reference model {target!r} (VITBSQModel, or VITVQModel with the Λ24 codebook)")
    # Our models take inputs in [-1, 1]: the reference's training script uses that range when
    # data.zero_mean is true (every released config); a [0, 1] model would load but be wrong.
    zero_mean = ref.get("data", {}).get("zero_mean", True) if isinstance(ref, dict) else True
    clamp = params.get("clamp_range")
    if zero_mean is False or (clamp is not None and [float(c) for c in clamp] != [-1.0, 1.0]):
        raise ConfigError(f"reference model trained on [0, 1] inputs (zero_mean={zero_mean}, clamp_range={clamp}); "
                          "only [-1, 1] models are supported")
    enc = dict(params["vitconfig"])
    dec = dict(params.get("dvitconfig") or enc)
    _check_supported(enc, dec, params)
    size = enc["image_size"]
    size = [size, size] if isinstance(size, int) else list(size)
    p = int(enc["patch_size"])
    cfg = dict(
        image_size=size,
        patch_size=p,
        num_frames=int(enc.get("num_frames", 1)),
        width=int(enc["width"]),
        layers=int(enc["layers"]),
        heads=int(enc["heads"]),
        mlp_ratio=float(enc.get("mlp_ratio", 4.0)),
        decoder_width=int(dec["width"]),
        decoder_layers=int(dec["layers"]),
        decoder_heads=int(dec["heads"]),
        head_dim=int(dec.get("dim_ffn_output", 3072)),
        mask_type=str(enc.get("mask_type") or "none").lower(),
        mask_block_size=_mask_block_frames(int(enc.get("mask_block_size", -1)), (size[0] // p) * (size[1] // p)),
        quantizer=dict(type="leech", dim=24) if leech else _quantizer_config(params),
    )
    return from_dict(BSQViTConfig, cfg)


def _check_supported(enc: dict, dec: dict, params: dict) -> None:
    """Refuse reference options this implementation does not reproduce."""
    for c, name in ((enc, "vitconfig"), (dec, "dvitconfig")):
        if c.get("ls_init_value") is not None:
            raise ConfigError(f"{name}.ls_init_value (LayerScale) is not supported")
        if not c.get("ln_pre", True):
            raise ConfigError(f"{name}.ln_pre=False is not supported")
        if c.get("num_frames", 1) > 1 and not c.get("cross_frames", True):
            raise ConfigError(f"{name}.cross_frames=False (per-frame model) is not supported")
    if not dec.get("use_ffn_output", True) or params.get("logit_laplace", False):
        raise ConfigError("use_ffn_output=False / logit_laplace=True are not supported")
    if not dec.get("ln_post", True):
        raise ConfigError("dvitconfig.ln_post=False is not supported")
    for key in ("image_size", "patch_size", "num_frames"):
        if enc.get(key, 1) != dec.get(key, 1):
            raise ConfigError(f"encoder and decoder disagree on {key}")
    mask_e, mask_d = (str(c.get("mask_type") or "none").lower() for c in (enc, dec))
    if mask_e != mask_d:
        raise ConfigError(f"encoder mask {mask_e!r} and decoder mask {mask_d!r} differ")


def _mask_block_frames(mask_block_size: int, tokens_per_frame: int) -> int:
    """The reference counts a mask block in tokens; we count it in frames."""
    if mask_block_size <= 0:
        return 1
    if mask_block_size % tokens_per_frame == 0:
        return mask_block_size // tokens_per_frame
    raise ConfigError(f"mask_block_size {mask_block_size} is not a whole number of frames "
                      f"({tokens_per_frame} tokens each)")


def _quantizer_config(params: dict) -> dict:
    l2, post = params.get("l2_norm", False), params.get("post_q_l2_norm", False)
    if l2 and post:
        qtype = "bsq"
    elif not l2 and not post:
        qtype = "lfq"
    else:
        raise ConfigError(f"l2_norm={l2}, post_q_l2_norm={post}: only both true (BSQ) or both false (LFQ)")
    # The reference's 'analytical' per-sample mode also makes the codebook entropy per-bit.
    g = 1 if params.get("persample_entropy_compute", "group") == "analytical" else int(params.get("embed_group_size", 9))
    return dict(
        type=qtype,
        dim=int(params["embed_dim"]),
        group_size=g,
        inv_temperature=float(params.get("inv_temperature", 1.0)),
        gamma0=float(params.get("gamma0", 1.0)),
        gamma=float(params.get("gamma", 1.0)),
        zeta=float(params.get("zeta", 1.0)),
        commitment_weight=float(params.get("beta", 0.0)),
    )


# ---- safe checkpoint loading --------------------------------------------------------------------
def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint as plain data: tensors by ``weights_only=True``, the OmegaConf config by
    inert stand-ins (:mod:`.reference_pickle`); OmegaConf is never imported, nothing is called."""
    return load_reference_checkpoint(path)


def extract_state_dict(ckpt: dict, use_ema: bool = True) -> tuple[dict, str]:
    """The model tensors with DDP prefixes stripped, EMA first as the reference does."""
    order = [("ema_state_dict", "module.module."), ("state_dict", "module.")] if use_ema else [("state_dict", "module.")]
    for key, prefix in order:
        sd = ckpt.get(key)
        if isinstance(sd, dict) and sd:
            out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            if not out:  # saved without DDP wrapping
                out = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
            return out, key
    raise ModelLoadError(f"checkpoint has no {' or '.join(k for k, _ in order)}")


def load_official(cls, checkpoint_path, config_path=None, use_ema: bool = True):
    ckpt = read_checkpoint(checkpoint_path)
    if config_path is not None:
        p = Path(config_path)
        if not p.is_file():
            raise ModelLoadError(f"config not found: {p}")
        ref_cfg = yaml.safe_load(p.read_text())
    elif ckpt.get("config") is not None:
        ref_cfg = ckpt["config"]
    else:
        raise ModelLoadError(f"{checkpoint_path} holds no config; pass config_path (configs/tokenizer/*.yaml)")
    state, which = extract_state_dict(ckpt, use_ema=use_ema)
    codebook = state.pop(LEECH_KEY, None)
    leech = codebook is not None and tuple(codebook.shape) == (CODEBOOK_SIZE, 24)
    if codebook is not None and not leech:
        raise ModelLoadError(f"{checkpoint_path}: a learned VQ codebook {tuple(codebook.shape)} is not supported "
                             f"(only the frozen Λ24 codebook, ({CODEBOOK_SIZE}, 24))")
    config = config_from_reference(ref_cfg, leech=leech)
    model = cls(config)
    load_state_dict_checked(model, convert_reference_state_dict(state), strict=True, source=f"{checkpoint_path}[{which}]")
    if leech:  # the checkpoint's own index order, so tokens convert both ways
        try:
            model.quantizer.set_reference_order(codebook)
        except ValueError as e:
            raise ModelLoadError(f"{checkpoint_path}: {e}") from None
    model.eval()
    return model
