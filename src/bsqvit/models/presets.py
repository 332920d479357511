"""Named architectures: the paper's ViT-B configs, small ones that train on a CPU, and the CNN family."""

from __future__ import annotations

from ..config import from_dict, to_dict
from .config import BSQViTConfig


def _vitb(image: int, bits: int, group: int, **kw) -> dict:
    return dict(
        image_size=[image, image], patch_size=8, width=768, layers=12, heads=12,
        quantizer=dict(type="bsq", dim=bits, group_size=group), **kw,
    )


PRESETS: dict[str, dict] = {
    # the paper / reference configs (about 174M parameters)
    "vit-b-128-l18": _vitb(128, 18, 9),
    "vit-b-256-l18": _vitb(256, 18, 1),  # the ImageNet 256 L=18 "factorised" row of the paper
    "vit-b-256-l36": _vitb(256, 36, 9),
    # UCF-101-style video fine-tune: block-causal over 16 frames at 128^2
    "vit-b-video-128-l18": _vitb(128, 18, 9, num_frames=16, mask_type="block-causal", mask_block_size=1),
    "vit-b-16-256-l18": dict(_vitb(256, 18, 9), patch_size=16),
    # CPU scale
    "tiny": dict(image_size=[32, 32], patch_size=8, width=64, layers=2, heads=2, quantizer=dict(type="bsq", dim=18, group_size=9)),
    "small": dict(image_size=[64, 64], patch_size=8, width=256, layers=4, heads=4, quantizer=dict(type="bsq", dim=18, group_size=1)),
    "small-video": dict(
        image_size=[64, 64], patch_size=8, width=256, layers=4, heads=4, num_frames=8,
        mask_type="block-causal", mask_block_size=1, quantizer=dict(type="bsq", dim=18, group_size=1),
    ),
    # Λ24-SQ: the small preset with the fixed 196,560-code spherical Leech codebook (17.58 bits)
    "small-leech": dict(image_size=[64, 64], patch_size=8, width=256, layers=4, heads=4, quantizer=dict(type="leech", dim=24)),
    # convolutional (BSQCNN, docs/CNN.md): MAGVIT-v2-style ResNet encoder/decoder
    "cnn-small": dict(
        arch="cnn", image_size=[64, 64], patch_size=8, cnn_channels=32, cnn_channel_mult=[1, 1, 2, 4],
        cnn_res_blocks=1, quantizer=dict(type="bsq", dim=18, group_size=1),
    ),
    "cnn-b-256-l18": dict(
        arch="cnn", image_size=[256, 256], patch_size=8, cnn_channels=128, cnn_channel_mult=[1, 2, 2, 4],
        cnn_res_blocks=2, quantizer=dict(type="bsq", dim=18, group_size=1),
    ),
    "base-cpu": dict(image_size=[128, 128], patch_size=8, width=384, layers=6, heads=6, quantizer=dict(type="bsq", dim=18, group_size=1)),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str, **overrides) -> BSQViTConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    cfg = from_dict(BSQViTConfig, PRESETS[name])
    if overrides:
        cfg = from_dict(BSQViTConfig, {**to_dict(cfg), **overrides})
    return cfg
