#!/usr/bin/env python
"""Numerical parity of Λ24-SQ checkpoints: ``BSQViT.from_official`` against the reference ``VITVQModel``.

The reference (zhaoyue-zephyrus/bsq-vit at 37d212d "lattice!", the code that became npq-vit)
builds its Λ24-SQ tokenizer as ``VITVQModel(l2_norm=True, predefined_codebook=<.npy>,
freeze_codebook=True)`` and finds codes by brute force (``argmin(-z @ normalize(E).T)``). Its
codebook file (``cache/leech_lattices_normalized.npy``) is not in the repository, so this script
writes one from **our** codebook in a seeded random row order: the reference's index order is then
unknown to us except through the checkpoint's frozen ``quantize.embedding.weight``, exactly as
with a released checkpoint. For each variant it

* builds the reference model from that file (seeded init, every other tensor perturbed, the
  codebook kept exact), writes a reference-layout ``checkpoint.pt`` (live + a different EMA),
  and loads it with ``BSQViT.from_official`` (EMA and live);
* compares on random inputs in [-1, 1]: unit features, token indices (ours mapped to the
  reference's order with ``to_reference_indices``), the decoder on the same codes, decoding the
  reference's indices mapped with ``from_reference_indices``, and the clamped forward pass;
* reports the smallest top-2 inner-product gap among the tokens, so that an fp32 near-tie in
  the reference's brute force can be told from a real disagreement.

Video variants use the reference with its block-causal mask fixed at run time, as in
``reference_parity.py`` (the released mask masks nothing).

    PYTHONPATH=src python benchmarks/reference_parity_leech.py --reference-repo /tmp/bsq-ref \
        [--timm-site /tmp/refsite] [--torchvision-stub /tmp/refstub] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_parity as rp

L24_YAML = "configs/tokenizer/imagenet_256x256_l24sq_stylegan_f8_fp16.yaml"
SMALL = {"width": 256, "layers": 4, "heads": 4}
# name -> (kind, vitconfig overrides, frames fed, input side, is ViT-B)
VARIANTS = {
    "image-B-256": ("image", {}, 1, 256, True),  # the released Λ24-SQ config as is
    "image-small-128": ("image", dict(SMALL, image_size=128), 1, 128, False),
    "video-B-T4-blockcausal-128": ("video", {"image_size": 128, "num_frames": 4, "mask_type": "block-causal"}, 4, 128, True),
    "video-small-T8-blockcausal-128": ("video", dict(SMALL, image_size=128, num_frames=8, mask_type="block-causal"),
                                       8, 128, False),
}


def reference_config(repo: Path, kind: str, overrides: dict, codebook_npy: Path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(repo / L24_YAML)
    vit = OmegaConf.to_container(cfg.model.params.vitconfig)
    vit.update(overrides)
    cfg.model.params.vitconfig = vit
    if kind == "video":
        cfg.model.params.dvitconfig = dict(vit)
    cfg.model.params.predefined_codebook = str(codebook_npy)
    cfg.model.params.grad_checkpointing = False
    cfg.model.params.clamp_range = [-1, 1] if cfg.data.zero_mean else [0, 1]  # as the training script does
    return cfg


def write_reference_codebook(path: Path, seed: int) -> torch.Tensor:
    """Our codebook with its rows shuffled; returns ``perm`` with reference row i = our row perm[i]."""
    from bsqvit.quantizers.leech import leech_codebook

    perm = torch.randperm(196560, generator=torch.Generator().manual_seed(seed))
    np.save(path, leech_codebook()[perm].numpy().astype(np.float32))
    return perm


def build_reference(ref_bsqvit, params: dict, gen: torch.Generator):
    model = ref_bsqvit.VITVQModel(**params)
    book = model.quantize.embedding.weight.detach().clone()
    rp.perturb_(model, gen)
    with torch.no_grad():
        model.quantize.embedding.weight.copy_(book)  # the frozen codebook stays exact
    return model


@torch.no_grad()
def run_reference(ref, x: torch.Tensor) -> dict:
    u = ref.encode(x, skip_quantize=True)[0]
    quant, _, info = ref.encode(x)
    idx = info["indices"].reshape(x.shape[0], -1)
    dec = ref.decode(quant)
    dec_idx = ref.decode(ref.quantize.get_codebook_entry(idx)).clamp(-1, 1)
    return {"u": u, "quant": quant, "idx": idx, "dec": dec, "dec_idx": dec_idx, "fwd": ref(x)[0]}


@torch.no_grad()
def run_ours(model, x: torch.Tensor, ref: dict) -> dict:
    q = model.quantizer
    z, thw = model.encode_continuous(x)
    full = model.encode(x)
    idx = full.reshape(x.shape[0], -1)
    dec = model.decode_codes(ref["quant"], thw)
    dec_idx = model.decode(q.from_reference_indices(ref["idx"]).reshape(full.shape))
    if x.ndim == 4:
        dec = dec[:, :, 0]
    return {"u": F.normalize(z, dim=-1).reshape(ref["u"].shape), "idx_ours": idx, "idx": q.to_reference_indices(idx),
                "dec": dec, "dec_idx": dec_idx, "fwd": model(x).reconstruction}


def top2_gap(u: torch.Tensor) -> float:
    """Smallest gap between the best and second-best inner product over the tokens (float64)."""
    from bsqvit.quantizers.leech import leech_codebook

    E = leech_codebook(torch.float64)
    flat = u.reshape(-1, 24).double()
    gaps = []
    for s in range(0, len(flat), 512):
        top = (flat[s : s + 512] @ E.t()).topk(2, dim=-1).values
        gaps.append(top[:, 0] - top[:, 1])
    return float(torch.cat(gaps).min())


def compare(ours: dict, ref: dict, perm: torch.Tensor) -> dict:
    return {
        "index_agreement": float((ours["idx"] == ref["idx"]).float().mean()),
        # the same fact from the other side: the reference's row perm[i] is our code i
        "index_agreement_via_perm": float((perm[ref["idx"]] == ours["idx_ours"]).float().mean()),
        "feature_maxdiff": rp.maxdiff(ours["u"], ref["u"]),
        "decode_same_codes_maxdiff_unclamped": rp.maxdiff(ours["dec"], ref["dec"]),
        "decode_from_indices_maxdiff": rp.maxdiff(ours["dec_idx"], ref["dec_idx"]),
        "forward_maxdiff_clamped": rp.maxdiff(ours["fwd"], ref["fwd"]),
        "min_top2_gap": top2_gap(ref["u"]),
        "distinct_codes": int(ref["idx"].unique().numel()),
    }


def ok(c: dict) -> bool:
    return (c["index_agreement"] == 1.0 and c["index_agreement_via_perm"] == 1.0
            and c["feature_maxdiff"] < rp.FEAT_TOL and c["decode_same_codes_maxdiff_unclamped"] < rp.PIX_TOL
            and c["decode_from_indices_maxdiff"] < rp.PIX_TOL and c["forward_maxdiff_clamped"] < rp.PIX_TOL)


def run_variant(name: str, args, ref_bsqvit, ref_transformer, tmpdir: Path) -> dict:
    from omegaconf import OmegaConf

    from bsqvit.models.bsqvit import BSQViT

    kind, overrides, T, side, _ = VARIANTS[name]
    t0 = time.time()
    npy = tmpdir / "leech_lattices_normalized.npy"
    perm = write_reference_codebook(npy, args.seed)
    cfg = reference_config(args.reference_repo, kind, overrides, npy)
    params = OmegaConf.to_container(cfg.model.params, resolve=True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    ref_live = build_reference(ref_bsqvit, params, gen)
    live = {k: v.clone() for k, v in ref_live.state_dict().items()}
    ema = rp.ema_from(live, gen)
    ema["quantize.embedding.weight"] = live["quantize.embedding.weight"].clone()
    ckpt = tmpdir / f"{name}-checkpoint.pt"
    rp.save_reference_checkpoint(ckpt, live, ema, cfg)
    ref_ema = ref_bsqvit.VITVQModel(**params)
    ref_ema.load_state_dict(ema, strict=True)
    ref_live.eval(), ref_ema.eval()

    ours_ema, ours_live = BSQViT.from_official(ckpt), BSQViT.from_official(ckpt, use_ema=False)
    xg = torch.Generator().manual_seed(args.seed + 2)
    shape = (2, 3, side, side) if kind == "image" else (1, 3, T, side, side)
    x = torch.rand(shape, generator=xg) * 2 - 1
    with rp.patched_reference_mask(ref_transformer, kind == "video"):
        r_ema, r_live = run_reference(ref_ema, x), run_reference(ref_live, x)
    res = {
        "variant": name,
        "vitconfig": params["vitconfig"],
        "quantizer": repr(ours_ema.quantizer),
        "params_M": round(sum(p.numel() for p in ours_ema.parameters()) / 1e6, 2),
        "input_shape": list(x.shape),
        "reference_mask": "patched (-inf additive)" if kind == "video" else "as released",
        "ema": compare(run_ours(ours_ema, x, r_ema), r_ema, perm),
        "live": compare(run_ours(ours_live, x, r_live), r_live, perm),
        "ema_vs_live_forward_maxdiff": rp.maxdiff(r_ema["fwd"], r_live["fwd"]),
        "ema_vs_live_index_agreement": float((r_ema["idx"] == r_live["idx"]).float().mean()),
    }
    res["pass"] = ok(res["ema"]) and ok(res["live"]) and res["ema_vs_live_forward_maxdiff"] > 1e-3
    res["seconds"] = round(time.time() - t0, 1)
    ckpt.unlink()
    return res


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"# Λ24-SQ reference parity (torch {meta['torch']}, timm {meta['timm']}, reference {meta['reference_commit']})",
        "",
        ("| variant | input | weights | ref mask | idx agree | feat maxdiff | decode(same codes) | decode(ref idx) | "
        "forward | min top-2 gap | distinct codes | pass |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for w in ("ema", "live"):
            c = r[w]
            lines.append(
                f"| {r['variant']} | {'x'.join(map(str, r['input_shape']))} | {w} | {r['reference_mask']} | "
                f"{c['index_agreement']:.4f} | {c['feature_maxdiff']:.2e} | "
                f"{c['decode_same_codes_maxdiff_unclamped']:.2e} | {c['decode_from_indices_maxdiff']:.2e} | "
                f"{c['forward_maxdiff_clamped']:.2e} | {c['min_top2_gap']:.1e} | {c['distinct_codes']} | "
                f"{'yes' if ok(c) else 'NO'} |")
    lines += ["", "EMA-vs-live sanity (reference forward max diff, index agreement):"]
    lines += [f"* {r['variant']}: {r['ema_vs_live_forward_maxdiff']:.3e}, {r['ema_vs_live_index_agreement']:.4f} "
              f"({r['params_M']} M parameters, {r['seconds']} s)" for r in results]
    lines += ["", f"Overall: {'PASS' if all(r['pass'] for r in results) else 'FAIL'}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference-repo", type=Path, default=Path("/tmp/bsq-ref"))
    ap.add_argument("--timm-site", type=Path, default=Path("/tmp/refsite"))
    ap.add_argument("--torchvision-stub", type=Path, default=Path("/tmp/refstub"))
    ap.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=None)
    ap.add_argument("--quick", action="store_true", help="skip the ViT-B variants")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.reference_repo / L24_YAML).is_file():
        sys.exit(f"{args.reference_repo} has no {L24_YAML}: use bsq-vit at 37d212d or later (or npq-vit)")
    ref_bsqvit, ref_transformer, timm_version = rp.import_reference(
        args.reference_repo, args.timm_site, args.torchvision_stub)
    names = args.variants or [n for n, v in VARIANTS.items() if not (args.quick and v[4])]
    head = args.reference_repo / ".reference_commit"
    meta = {"torch": torch.__version__, "timm": timm_version, "threads": torch.get_num_threads(), "seed": args.seed,
            "reference_commit": head.read_text().strip() if head.is_file() else "unknown"}
    results = []
    with tempfile.TemporaryDirectory() as td:
        for n in names:
            print(f"[parity-leech] {n} ...", file=sys.stderr, flush=True)
            results.append(run_variant(n, args, ref_bsqvit, ref_transformer, Path(td)))
            gc.collect()
    print(markdown(results, meta))
    out = {"meta": meta, "results": results, "pass": all(r["pass"] for r in results)}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
