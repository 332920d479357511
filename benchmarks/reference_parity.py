#!/usr/bin/env python
"""Numerical parity of ``BSQViT.from_official`` with the reference implementation.

For each variant this script builds the reference ``VITBSQModel`` (zhaoyue-zephyrus/bsq-vit,
``transcoder/models/bsqvit.py``) with a seeded random init, perturbs every tensor (so that
LayerNorm affines, biases and the zero-initialised temporal embedding are exercised too), writes a
reference-layout ``checkpoint.pt`` (``state_dict`` under ``module.``, an EMA that differs slightly
under ``module.module.``, and ``config`` as an OmegaConf object), loads it with
``BSQViT.from_official`` (EMA and live weights) and compares both models in eval mode on random
inputs in [-1, 1]:

* encoder features (the unit vectors u before binarisation),
* token indices (fraction equal; must be 1.0),
* the unclamped decoder output for the same codes (reference ``decode(quant)`` against our
  ``decode_codes``; must differ by < 1e-4),
* the clamped ``forward`` reconstruction and ``decode(indices)``.

Clamping: the reference's ``clamp_range`` defaults to (0, 1) and the YAML configs do not set it;
its training script sets ``clamp_range = (-1, 1)`` because ``data.zero_mean`` is true, and that
value is what a checkpoint's pickled config holds. We save that, and compare unclamped outputs too.

Video: the reference's block-causal mask is a boolean "disable" mask that its attention casts to
float, i.e. an additive +1.0, so it masks nothing. Video variants are therefore compared against
the reference with ``get_attention_mask`` monkeypatched at runtime to return a proper additive
-inf mask (no file is edited), and a causality probe (change the last frame, look at frame 0)
is run on our model, the unpatched reference and the patched reference.

The reference needs ``timm==0.9.12`` (``pip install --no-deps --target /tmp/refsite timm==0.9.12``)
and imports torchvision through timm; when torchvision is absent an import-only stub directory
is put on ``sys.path`` (``--torchvision-stub``). Those paths are added to this process only.

    PYTHONPATH=src python benchmarks/reference_parity.py --reference-repo /tmp/bsq-ref \
        [--timm-site /tmp/refsite] [--torchvision-stub /tmp/refstub] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

IMAGE_YAML = "configs/tokenizer/imagenet_128x128_bsqvit_stylegan_f8_fp16.yaml"
SMALL = dict(width=256, layers=4, heads=4)

# name -> (kind, vitconfig overrides, number of frames fed, is ViT-B)
VARIANTS = {
    "image-B": ("image", {}, 1, True),
    "image-small": ("image", SMALL, 1, False),
    "video-B-T4-blockcausal": ("video", dict(num_frames=4, mask_type="block-causal"), 4, True),
    "video-small-T8-blockcausal": ("video", dict(SMALL, num_frames=8, mask_type="block-causal"), 8, False),
    # two frames per causal block (mask_block_size is in tokens in the reference: 2 * 16 * 16)
    "video-small-T8-block2": ("video", dict(SMALL, num_frames=8, mask_type="block-causal", mask_block_size=512), 8, False),
    # token-level causal: the reference builds this one as an additive -inf mask, so it works unpatched
    "video-small-T4-causal": ("video", dict(SMALL, num_frames=4, mask_type="causal"), 4, False),
}

PIX_TOL = 1e-4
FEAT_TOL = 1e-4
CAUSAL_TOL = 1e-6


# ---- reference import -------------------------------------------------------------------------
def import_reference(repo: Path, timm_site: Path, tv_stub: Path):
    repo = repo.resolve()
    if not (repo / "transcoder" / "models" / "bsqvit.py").is_file():
        sys.exit(f"{repo} does not look like the reference repository (no transcoder/models/bsqvit.py)")
    sys.path.insert(0, str(repo))
    if importlib.util.find_spec("timm") is None:
        sys.path.append(str(timm_site))
    if importlib.util.find_spec("torchvision") is None:
        sys.path.append(str(tv_stub))
    import timm  # noqa: F401

    from transcoder.models import bsqvit as ref_bsqvit
    from transcoder.models import transformer as ref_transformer

    return ref_bsqvit, ref_transformer, timm.__version__


def fixed_attention_mask(sequence_length, device, mask_type="block-causal", block_size=16, **kwargs):
    """What the reference's get_attention_mask means to return: an additive mask with -inf."""
    if mask_type is None or mask_type.lower() == "none":
        return None
    i = torch.arange(sequence_length, device=device)
    if mask_type.lower() == "block-causal":
        allowed = (i[:, None] // block_size) >= (i[None, :] // block_size)
    elif mask_type.lower() == "causal":
        allowed = i[:, None] >= i[None, :]
    else:
        raise NotImplementedError(mask_type)
    return torch.zeros(sequence_length, sequence_length, device=device).masked_fill_(~allowed, float("-inf"))


@contextlib.contextmanager
def patched_reference_mask(ref_transformer, enabled: bool):
    if not enabled:
        yield
        return
    orig = ref_transformer.get_attention_mask
    ref_transformer.get_attention_mask = fixed_attention_mask
    try:
        yield
    finally:
        ref_transformer.get_attention_mask = orig


# ---- model construction -----------------------------------------------------------------------
def reference_config(repo: Path, kind: str, overrides: dict):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(repo / IMAGE_YAML)
    vit = OmegaConf.to_container(cfg.model.params.vitconfig)
    vit.update(overrides)
    cfg.model.params.vitconfig = vit
    if kind == "video":
        cfg.model.params.dvitconfig = copy.deepcopy(vit)
    # what scripts/main_image_tokenizer.py does before instantiating (data.zero_mean is true)
    cfg.model.params.clamp_range = [-1, 1] if cfg.data.zero_mean else [0, 1]
    return cfg


def perturb_(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Make every float tensor non-trivial (LN weights ~1, biases, temporal embeddings ~N(0, .02))."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("weight") and ("ln" in name.split(".")[-2] or "norm" in name):
                p.copy_(1.0 + 0.1 * noise)
            elif "temporal" in name or name.endswith("bias"):
                p.copy_(0.02 * noise)
            else:
                p.add_(0.002 * noise)


def ema_from(state: dict, gen: torch.Generator, scale: float = 0.003) -> dict:
    out = {}
    for k, v in state.items():
        if v.is_floating_point():
            out[k] = v + scale * v.abs().mean().clamp_min(1e-3) * torch.randn(v.shape, generator=gen)
        else:
            out[k] = v.clone()
    return out


def save_reference_checkpoint(path: Path, live: dict, ema: dict, cfg) -> None:
    torch.save(
        {
            "state_dict": {f"module.{k}": v for k, v in live.items()},
            "ema_state_dict": {f"module.module.{k}": v for k, v in ema.items()},
            "optimizer": {"state": {}, "param_groups": []},
            "epoch": 0,
            "config": cfg,
        },
        path,
    )


# ---- comparisons ------------------------------------------------------------------------------
def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


@torch.no_grad()
def run_reference(ref, x: torch.Tensor) -> dict:
    u = ref.encode(x, skip_quantize=True)[0]
    quant, _, info = ref.encode(x)
    idx = info["indices"].reshape(x.shape[0], -1)
    dec = ref.decode(quant)
    dec_idx = ref.decode(ref.quantize.get_codebook_entry(idx)).clamp(-1, 1)
    fwd = ref(x)[0]
    return dict(u=u, quant=quant, idx=idx, dec=dec, dec_idx=dec_idx, fwd=fwd)


@torch.no_grad()
def run_ours(model, x: torch.Tensor, ref_quant: torch.Tensor) -> dict:
    z, thw = model.encode_continuous(x)
    u = model.quantizer.project(z)
    idx = model.encode(x)
    dec = model.decode_codes(ref_quant, thw)
    if x.ndim == 4:
        dec = dec[:, :, 0]
    return dict(u=u, idx=idx.reshape(x.shape[0], -1), dec=dec, dec_idx=model.decode(idx), fwd=model(x).reconstruction)


def compare(ours: dict, ref: dict) -> dict:
    return {
        "index_agreement": float((ours["idx"] == ref["idx"]).float().mean()),
        "feature_maxdiff": maxdiff(ours["u"], ref["u"]),
        "min_abs_u": float(ref["u"].abs().min()),
        "decode_same_codes_maxdiff_unclamped": maxdiff(ours["dec"], ref["dec"]),
        "decode_from_indices_maxdiff": maxdiff(ours["dec_idx"], ref["dec_idx"]),
        "forward_maxdiff_clamped": maxdiff(ours["fwd"], ref["fwd"]),
        "decoder_output_range": [float(ref["dec"].min()), float(ref["dec"].max())],
    }


def ok(c: dict) -> bool:
    return (
        c["index_agreement"] == 1.0
        and c["feature_maxdiff"] < FEAT_TOL
        and c["decode_same_codes_maxdiff_unclamped"] < PIX_TOL
        and c["decode_from_indices_maxdiff"] < PIX_TOL
        and c["forward_maxdiff_clamped"] < PIX_TOL
    )


@torch.no_grad()
def frame0_sensitivity(encode_u, decode_fn, x: torch.Tensor, x2: torch.Tensor, tokens_per_frame: int) -> dict:
    """How much frame 0 changes when only the last frame of the input changes."""
    u1, u2 = encode_u(x), encode_u(x2)
    enc = maxdiff(u1[:, :tokens_per_frame], u2[:, :tokens_per_frame])
    # decoder alone: same codes except the last frame's
    q1 = torch.where(u1 > 0, 1.0, -1.0) / u1.shape[-1] ** 0.5
    q2 = q1.clone()
    q2[:, -tokens_per_frame:] = torch.where(u2[:, -tokens_per_frame:] > 0, 1.0, -1.0) / u1.shape[-1] ** 0.5
    d1, d2 = decode_fn(q1), decode_fn(q2)
    dec = maxdiff(d1[:, :, 0], d2[:, :, 0])
    last_changed = maxdiff(d1[:, :, -1], d2[:, :, -1]) > 0
    return {
        "encoder_frame0_maxdiff": enc,
        "decoder_frame0_maxdiff": dec,
        "last_frame_changed": bool(last_changed),
        "causal": enc <= CAUSAL_TOL and dec <= CAUSAL_TOL,
    }


def run_variant(name: str, args, ref_bsqvit, ref_transformer, tmpdir: Path) -> dict:
    from bsqvit.models.bsqvit import BSQViT

    kind, overrides, T, _ = VARIANTS[name]
    t0 = time.time()
    cfg = reference_config(args.reference_repo, kind, overrides)
    from omegaconf import OmegaConf

    params = OmegaConf.to_container(cfg.model.params, resolve=True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    ref_live = ref_bsqvit.VITBSQModel(**params)
    perturb_(ref_live, gen)
    live = {k: v.clone() for k, v in ref_live.state_dict().items()}
    ema = ema_from(live, gen)
    ckpt = tmpdir / f"{name}-checkpoint.pt"
    save_reference_checkpoint(ckpt, live, ema, cfg)
    ref_ema = ref_bsqvit.VITBSQModel(**params)
    ref_ema.load_state_dict(ema, strict=True)
    ref_live.eval()
    ref_ema.eval()

    ours_ema = BSQViT.from_official(ckpt)  # EMA first, like the reference
    ours_live = BSQViT.from_official(ckpt, use_ema=False)
    res: dict = {
        "variant": name,
        "vitconfig": OmegaConf.to_container(cfg.model.params.vitconfig),
        "ours_config": {k: getattr(ours_ema.config, k) for k in ("image_size", "num_frames", "width", "layers", "heads",
                                                                "head_dim", "mask_type", "mask_block_size")},
        "clamp_range_saved": list(params["clamp_range"]),
        "params_M": round(sum(p.numel() for p in ours_ema.parameters()) / 1e6, 2),
    }
    if name == "image-B":  # the YAML file as config_path must give the same model
        from_yaml = BSQViT.from_official(ckpt, config_path=args.reference_repo / IMAGE_YAML)
        res["yaml_config_path_same_config"] = from_yaml.config == ours_ema.config
        del from_yaml

    xg = torch.Generator().manual_seed(args.seed + 2)
    if kind == "image":
        x = torch.rand(2, 3, 128, 128, generator=xg) * 2 - 1
    else:
        x = torch.rand(1, 3, T, 128, 128, generator=xg) * 2 - 1
    res["input_shape"] = list(x.shape)

    fix = kind == "video"
    with patched_reference_mask(ref_transformer, fix):
        r_ema, r_live = run_reference(ref_ema, x), run_reference(ref_live, x)
    o_ema, o_live = run_ours(ours_ema, x, r_ema["quant"]), run_ours(ours_live, x, r_live["quant"])
    res["reference_mask"] = "patched (-inf additive)" if fix else "as released"
    res["ema"] = compare(o_ema, r_ema)
    res["live"] = compare(o_live, r_live)
    # sanity: EMA and live weights really give different outputs (else the EMA check is vacuous)
    res["ema_vs_live_forward_maxdiff"] = maxdiff(r_ema["fwd"], r_live["fwd"])
    res["ema_vs_live_index_agreement"] = float((r_ema["idx"] == r_live["idx"]).float().mean())
    res["pass"] = ok(res["ema"]) and ok(res["live"]) and res["ema_vs_live_forward_maxdiff"] > 1e-3

    if kind == "video":
        with torch.no_grad():
            res["vs_unpatched_reference"] = compare(o_ema, run_reference(ref_ema, x))
        # a clip shorter than the model's num_frames (temporal embeddings sliced, shorter mask)
        xs = x[:, :, : max(1, T // 2)].contiguous()
        with patched_reference_mask(ref_transformer, True):
            r_short = run_reference(ref_ema, xs)
        res["short_clip"] = dict(frames=xs.shape[2], **compare(run_ours(ours_ema, xs, r_short["quant"]), r_short))
        res["pass"] = res["pass"] and ok(res["short_clip"])
        x2 = x.clone()
        x2[:, :, -1] = torch.rand(x2[:, :, -1].shape, generator=xg) * 2 - 1
        tpf = 16 * 16
        thw = (T, 16, 16)
        probes = {
            "ours": frame0_sensitivity(
                lambda v: ours_ema.quantizer.project(ours_ema.encode_continuous(v)[0]),
                lambda q: ours_ema.decode_codes(q, thw), x, x2, tpf),
        }
        for label, patched in (("reference_unpatched", False), ("reference_patched", True)):
            with patched_reference_mask(ref_transformer, patched):
                probes[label] = frame0_sensitivity(
                    lambda v: ref_ema.encode(v, skip_quantize=True)[0], ref_ema.decode, x, x2, tpf)
        res["causality_probe"] = probes
        res["pass"] = res["pass"] and probes["ours"]["causal"] and probes["reference_patched"]["causal"]
    res["seconds"] = round(time.time() - t0, 1)
    ckpt.unlink()
    return res


# ---- report -----------------------------------------------------------------------------------
def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"# Reference parity (torch {meta['torch']}, timm {meta['timm']}, reference {meta['reference_commit']})",
        "",
        "| variant | input | weights | ref mask | idx agree | feat maxdiff | decode(same codes) maxdiff | "
        "decode(idx) maxdiff | forward maxdiff | min abs u | pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows = [("ema", r["ema"], r["reference_mask"]), ("live", r["live"], r["reference_mask"])]
        if "short_clip" in r:
            rows.append((f"ema, T={r['short_clip']['frames']}", r["short_clip"], r["reference_mask"]))
        if "vs_unpatched_reference" in r:
            rows.append(("ema", r["vs_unpatched_reference"], "as released (unpatched)"))
        for w, c, m in rows:
            lines.append(
                f"| {r['variant']} | {'x'.join(map(str, r['input_shape']))} | {w} | {m} | {c['index_agreement']:.4f} | "
                f"{c['feature_maxdiff']:.2e} | {c['decode_same_codes_maxdiff_unclamped']:.2e} | "
                f"{c['decode_from_indices_maxdiff']:.2e} | {c['forward_maxdiff_clamped']:.2e} | {c['min_abs_u']:.1e} | "
                f"{'yes' if ok(c) else 'NO'} |"
            )
    lines += ["", "EMA-vs-live sanity (reference forward max diff, index agreement):"]
    for r in results:
        lines.append(f"* {r['variant']}: {r['ema_vs_live_forward_maxdiff']:.3e}, {r['ema_vs_live_index_agreement']:.4f}"
                     + (f"; config from YAML path identical: {r['yaml_config_path_same_config']}"
                        if "yaml_config_path_same_config" in r else ""))
    probes = [r for r in results if "causality_probe" in r]
    if probes:
        lines += ["", "Causality probe (change only the last frame; max abs change of frame 0):", "",
                  "| variant | model | encoder frame 0 | decoder frame 0 | causal |", "|---|---|---|---|---|"]
        for r in probes:
            for label, p in r["causality_probe"].items():
                lines.append(f"| {r['variant']} | {label} | {p['encoder_frame0_maxdiff']:.3e} | "
                             f"{p['decoder_frame0_maxdiff']:.3e} | {p['causal']} |")
    lines += ["", f"Overall: {'PASS' if all(r['pass'] for r in results) else 'FAIL'}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference-repo", type=Path, default=Path("/tmp/bsq-ref"))
    ap.add_argument("--timm-site", type=Path, default=Path("/tmp/refsite"), help="where timm 0.9.12 is, if not importable")
    ap.add_argument("--torchvision-stub", type=Path, default=Path("/tmp/refstub"),
                    help="import-only torchvision stub, used only if torchvision is not installed")
    ap.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=None)
    ap.add_argument("--quick", action="store_true", help="skip the ViT-B variants")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    ref_bsqvit, ref_transformer, timm_version = import_reference(args.reference_repo, args.timm_site, args.torchvision_stub)
    names = args.variants or [n for n, v in VARIANTS.items() if not (args.quick and v[3])]
    commit = "unknown"
    head = args.reference_repo / ".reference_commit"
    if head.is_file():
        commit = head.read_text().strip()
    meta = {"torch": torch.__version__, "timm": timm_version, "reference_commit": commit,
            "threads": torch.get_num_threads(), "seed": args.seed}
    results = []
    with tempfile.TemporaryDirectory() as td:
        for n in names:
            print(f"[parity] {n} ...", file=sys.stderr, flush=True)
            results.append(run_variant(n, args, ref_bsqvit, ref_transformer, Path(td)))
            gc.collect()
    print(markdown(results, meta))
    out = {"meta": meta, "results": results, "pass": all(r["pass"] for r in results)}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
