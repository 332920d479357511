import json

import pytest
import torch

from bsqvit import BSQViT, BSQViTConfig, ModelLoadError
from bsqvit.config import ConfigError
from bsqvit.models.official import (
    config_from_reference,
    convert_reference_state_dict,
    to_reference_state_dict,
)
from bsqvit.models.transformer import attention_mask, patchify, unpatchify


def tiny(**kw):
    torch.manual_seed(0)
    return BSQViT.from_preset("tiny", **kw).eval()


def video_model(mask="block-causal", block=1, frames=4):
    torch.manual_seed(0)
    return BSQViT.from_preset("tiny", num_frames=frames, mask_type=mask, mask_block_size=block).eval()


def rand(*shape):
    return torch.rand(*shape) * 2 - 1


# ---- attention masks ----------------------------------------------------------------------------
def test_block_causal_mask_matches_definition():
    T, n, b = 5, 3, 2
    m = attention_mask("block-causal", T, n, b)
    for i in range(T * n):
        for j in range(T * n):
            assert m[i, j].item() == ((i // n) // b >= (j // n) // b)


def test_causal_mask_is_lower_triangular():
    m = attention_mask("causal", 2, 3)
    assert torch.equal(m, torch.ones(6, 6, dtype=torch.bool).tril())
    assert attention_mask("full", 4, 4) is None


@pytest.mark.parametrize("block", [1, 2])
def test_block_causal_encoder_and_decoder_are_exact(block):
    model = video_model(block=block, frames=4)
    x = rand(1, 3, 4, 16, 24)
    y = x.clone()
    y[:, :, 2:] = rand(1, 3, 2, 16, 24)  # change frames 2 and 3 (the last block(s))
    first = 2 if block in (1, 2) else 0
    zx, _ = model.encode_continuous(x)
    zy, _ = model.encode_continuous(y)
    n = (16 // 8) * (24 // 8)
    assert torch.equal(zx[:, : first * n], zy[:, : first * n])
    assert not torch.equal(zx[:, first * n :], zy[:, first * n :])
    ix, iy = model.encode(x), model.encode(y)
    assert torch.equal(ix[:, :first], iy[:, :first])
    # decoder: earlier frames depend only on earlier tokens
    dx, dy = model.decode(ix, size=(16, 24)), model.decode(iy, size=(16, 24))
    assert torch.equal(dx[:, :, :first], dy[:, :, :first])


def test_full_attention_is_not_causal():
    # the control: without the mask, later frames do change earlier tokens (the reference's bug)
    model = video_model(mask="full")
    x = rand(1, 3, 4, 16, 16)
    y = x.clone()
    y[:, :, 3] = rand(1, 3, 16, 16)
    zx, _ = model.encode_continuous(x)
    zy, _ = model.encode_continuous(y)
    assert not torch.allclose(zx[:, :4], zy[:, :4])


def test_token_causal_mask():
    model = video_model(mask="causal", frames=2)
    x = rand(1, 3, 2, 16, 16)
    y = x.clone()
    y[..., 8:, 8:] = 0.5  # changes the last token of each frame
    zx, _ = model.encode_continuous(x)
    zy, _ = model.encode_continuous(y)
    assert torch.equal(zx[:, :3], zy[:, :3])  # tokens before the first changed one
    assert not torch.equal(zx[:, 3], zy[:, 3])


# ---- shapes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(32, 32), (37, 50), (8, 8), (5, 3), (71, 16)])
def test_odd_image_sizes_round_trip_shapes(hw):
    model = tiny()
    x = rand(2, 3, *hw)
    idx = model.encode(x)
    assert idx.shape == (2, -(-hw[0] // 8), -(-hw[1] // 8)) and idx.dtype == torch.int64
    assert 0 <= idx.min() and idx.max() < 2**18
    rec = model.decode(idx, size=hw)
    assert rec.shape == x.shape and rec.abs().max() <= 1
    out = model(x)
    assert out.reconstruction.shape == x.shape
    assert torch.equal(out.indices, idx)
    assert torch.allclose(out.reconstruction, rec, atol=1e-5)


@pytest.mark.parametrize("T", [1, 3, 4])
def test_variable_video_lengths(T):
    model = video_model(frames=4)
    x = rand(1, 3, T, 19, 21)
    idx = model.encode(x)
    assert idx.shape == (1, T, 3, 3)
    assert model.decode(idx, size=(19, 21)).shape == x.shape


def test_too_many_frames_and_bad_shapes_raise():
    model = video_model(frames=4)
    with pytest.raises(ValueError, match="exceed"):
        model.encode(rand(1, 3, 5, 16, 16))
    with pytest.raises(ValueError):
        tiny().encode(rand(3, 16, 16))
    with pytest.raises(ValueError, match="channels"):
        tiny().encode(rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="video"):
        tiny().encode(rand(1, 3, 2, 16, 16))


def test_image_in_video_model_equals_one_frame_video():
    model = video_model(frames=4)
    x = rand(1, 3, 16, 16)
    assert torch.equal(model.encode(x), model.encode(x.unsqueeze(2))[:, 0])


def test_patchify_matches_reference_layout():
    einops = pytest.importorskip("einops")
    x = torch.randn(2, 3, 1, 16, 24)
    ours, thw = patchify(x, 8)
    ref = einops.rearrange(x[:, :, 0], "b c (hh sh) (ww sw) -> b (hh ww) (c sh sw)", sh=8, sw=8)
    assert torch.equal(ours, ref) and thw == (1, 2, 3)
    assert torch.equal(unpatchify(ours, 8, thw), x)


def test_position_interpolation_identity_on_training_grid():
    model = tiny()
    enc = model.encoder
    assert enc.spatial_embedding(enc.grid) is enc.pos_embed
    pe = enc.spatial_embedding((8, 6))
    assert pe.shape == (48, enc.pos_embed.shape[1])
    # bicubic upsampling by 2 from a constant field stays constant
    with torch.no_grad():
        enc.pos_embed.fill_(0.25)
    assert torch.allclose(enc.spatial_embedding((8, 8)), torch.full((64, 64), 0.25), atol=1e-6)


def test_bf16_autocast_close_to_fp32():
    model = tiny()
    x = rand(1, 3, 32, 32)
    z32, _ = model.encode_continuous(x)
    z16, _ = model.encode_continuous(x, amp=True)
    assert z16.dtype == torch.float32
    assert (z32 - z16).abs().max() < 0.1
    rec = model.decode(model.encode(x, amp=True), amp=True)
    assert rec.dtype == torch.float32 and rec.shape == (1, 3, 32, 32)


def test_forward_gradients_reach_the_encoder():
    model = tiny().train()
    out = model(rand(2, 3, 32, 32))
    loss = out.reconstruction.abs().mean() + out.quant.loss
    loss.backward()
    assert model.encoder.patch_embed.weight.grad.abs().sum() > 0
    assert model.quant_embed.weight.grad.abs().sum() > 0


def test_flops_grow_with_resolution():
    model = tiny()
    f1, f2 = model.flops(32, 32)["total"], model.flops(64, 64)["total"]
    assert f2 > 4 * f1 * 0.99


# ---- weights ----------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    model = video_model(frames=2)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "model.safetensors").is_file()
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["mask_type"] == "block-causal" and cfg["quantizer"]["dim"] == 18
    loaded = BSQViT.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    assert loaded.weights_hash() == model.weights_hash()
    x = rand(1, 3, 2, 16, 16)
    assert torch.equal(loaded.encode(x), model.encode(x))


def test_load_errors(tmp_path):
    with pytest.raises(ModelLoadError):
        BSQViT.from_pretrained(tmp_path / "nope")
    tiny().save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["widht"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="widht"):
        BSQViT.from_pretrained(tmp_path / "m")
    cfg.pop("widht")
    cfg["width"] = 32
    cfg["heads"] = 2
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="shape"):
        BSQViT.from_pretrained(tmp_path / "m")


def test_weights_hash_changes_with_weights():
    a = tiny()
    h = a.weights_hash()
    with torch.no_grad():
        a.decoder.head.proj.bias[0] += 1e-3
    assert a.weights_hash() != h


# ---- reference checkpoints --------------------------------------------------------------------
REF_PARAMS = {
    "embed_dim": 18,
    "embed_group_size": 9,
    "l2_norm": True,
    "post_q_l2_norm": True,
    "logit_laplace": False,
    "beta": 0.0,
    "vitconfig": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "heads": 2, "mlp_ratio": 4, "drop_rate": 0},
}


def ref_config(**vit):
    params = json.loads(json.dumps(REF_PARAMS))
    params["vitconfig"].update(vit)
    params["dvitconfig"] = dict(params["vitconfig"], dim_ffn_output=256)
    return {"model": {"target": "transcoder.models.bsqvit.VITBSQModel", "params": params}}


def test_reference_state_dict_conversion_round_trip():
    model = tiny()
    ref = to_reference_state_dict(model.state_dict())
    assert "encoder.conv1.weight" in ref
    assert "encoder.transformer.resblocks.0.attn.in_proj_weight" in ref
    assert "decoder.conv_out.weight" in ref and "decoder.ffn.0.weight" in ref
    assert "encoder.positional_embedding" in ref
    back = convert_reference_state_dict({**ref, "quantize.basis": torch.ones(18)})
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_reference_config_mapping():
    cfg = config_from_reference(ref_config())
    assert cfg.quantizer.type == "bsq" and cfg.quantizer.group_size == 9 and cfg.head_dim == 256
    vcfg = config_from_reference(ref_config(num_frames=4, mask_type="block-causal", mask_block_size=-1))
    assert vcfg.mask_type == "block-causal" and vcfg.mask_block_size == 1 and vcfg.num_frames == 4
    vcfg2 = config_from_reference(ref_config(num_frames=4, mask_type="block-causal", mask_block_size=32))
    assert vcfg2.mask_block_size == 2  # 32 tokens = 2 frames of 4x4
    with pytest.raises(ConfigError, match="whole number"):
        config_from_reference(ref_config(num_frames=4, mask_type="block-causal", mask_block_size=5))
    fact = ref_config()
    fact["model"]["params"]["persample_entropy_compute"] = "analytical"
    assert config_from_reference(fact).quantizer.group_size == 1


def _write_reference_checkpoint(path, model, ema_model, config):
    ref = {f"module.{k}": v for k, v in to_reference_state_dict(model.state_dict()).items()}
    ema = {f"module.module.{k}": v for k, v in to_reference_state_dict(ema_model.state_dict()).items()}
    ref["module.quantize.basis"] = 2 ** torch.arange(17, -1, -1)
    torch.save({"state_dict": ref, "ema_state_dict": ema, "config": config, "optimizer": {"lr": 1e-4}}, path)


def test_from_official_checkpoint_with_omegaconf_config(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    cfg = config_from_reference(ref_config(num_frames=2, mask_type="block-causal"))
    live, ema = BSQViT(cfg).eval(), BSQViT(cfg).eval()
    _write_reference_checkpoint(tmp_path / "checkpoint.pt", live, ema,
                                omegaconf.OmegaConf.create(ref_config(num_frames=2, mask_type="block-causal")))
    x = rand(1, 3, 2, 32, 32)
    m = BSQViT.from_official(tmp_path / "checkpoint.pt")
    assert m.config.mask_type == "block-causal"
    assert torch.equal(m.encode(x), ema.encode(x))  # EMA by default
    m_live = BSQViT.from_official(tmp_path / "checkpoint.pt", use_ema=False)
    assert torch.equal(m_live.encode(x), live.encode(x))
    assert m.weights_hash() != m_live.weights_hash()


def test_from_official_with_yaml_config_and_errors(tmp_path):
    import yaml

    cfg = config_from_reference(ref_config())
    live = BSQViT(cfg)
    torch.save({"state_dict": {f"module.{k}": v for k, v in to_reference_state_dict(live.state_dict()).items()}},
               tmp_path / "ck.pt")
    with pytest.raises(ModelLoadError, match="config"):
        BSQViT.from_official(tmp_path / "ck.pt")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(ref_config()))
    m = BSQViT.from_official(tmp_path / "ck.pt", tmp_path / "c.yaml")  # no EMA: falls back to live
    x = rand(1, 3, 32, 32)
    assert torch.equal(m.encode(x), live.encode(x))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {}, "config": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelLoadError, match="safely"):
        BSQViT.from_official(tmp_path / "evil.pt")
    with pytest.raises(ModelLoadError, match="not found"):
        BSQViT.from_official(tmp_path / "missing.pt")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        BSQViTConfig(image_size=[30, 32])
    with pytest.raises(ValueError):
        BSQViTConfig(mask_type="diagonal")


def test_reference_config_rejects_unit_range_models():
    cfg = ref_config()
    cfg["data"] = {"zero_mean": False}
    with pytest.raises(ConfigError, match="zero_mean"):
        config_from_reference(cfg)
    cfg = ref_config()
    cfg["model"]["params"]["clamp_range"] = [0, 1]
    with pytest.raises(ConfigError, match="clamp_range"):
        config_from_reference(cfg)
    cfg["model"]["params"]["clamp_range"] = [-1, 1]
    assert config_from_reference(cfg).quantizer.dim == 18
