"""``bsqvit train-gen / generate / eval-gen``: the generator's commands.

Same error policy as the rest of the command line (:mod:`bsqvit.cli.common`): one
``bsqvit: error: ...`` line, exit 2, atomic outputs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..generate.data import class_of, discover_classes
from ..metrics.generation import GenEvaluator, load_folder
from ..generate.sampling import fill_canvas
from ..generate.train import generate_images, image_grid, load_gen_train_config, train_gen
from ..io import InputError, atomic_path, from_uint8, load_image, to_uint8
from .common import (
    add_device_arg,
    add_model_args,
    check_input,
    check_output,
    check_output_dir,
    check_pair,
    default_model_dir,
    model_files,
    resolve_gen,
    resolve_model,
    setup_torch,
)


def parse_classes(gen, cls: str | None, label: str | None) -> list[int] | None:
    """``--class C|all`` / ``--label NAME`` -> class indices (None = unconditional)."""
    c = gen.config
    if cls is not None and label is not None:
        raise InputError("give --class or --label, not both")
    if cls is None and label is None:
        return None
    if c.num_classes == 0:
        raise InputError("this generator is unconditional: --class/--label do not apply")
    if cls is not None:
        if cls == "all":
            return list(range(c.num_classes))
        try:
            k = int(cls)
        except ValueError:
            raise InputError(f"--class must be an integer or 'all', got {cls!r}") from None
        if not (0 <= k < c.num_classes):
            raise InputError(f"--class {k} out of range 0..{c.num_classes - 1}")
        return [k]
    want = label.strip().lower()
    for i, (cid, name) in enumerate(zip(c.class_ids or [""] * c.num_classes, c.class_names or [""] * c.num_classes)):
        if want in (cid.lower(), name.lower()):
            return [i]
    names = ", ".join(c.class_names or c.class_ids)
    raise InputError(f"unknown --label {label!r}; known: {names}")


def sample_args(p) -> None:
    p.add_argument("--steps", type=int, default=12, metavar="S", help="decoding steps (default 12)")
    p.add_argument("--guidance", type=float, default=2.0, metavar="W",
                   help="classifier-free guidance scale w: logits = l_c + w (l_c - l_u) (default 2; 0 = off)")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="sampling temperature (default 1)")
    p.add_argument("--choice-temperature", type=float, default=4.5, metavar="T",
                   help="Gumbel noise on the confidences, annealed to 0 (default 4.5, as MaskGIT)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=64, help="samples per forward pass (part of the seed's meaning)")


def _check_sampling(args) -> None:
    if args.steps < 1 or args.steps > 1024:
        raise InputError(f"--steps must be in 1..1024, got {args.steps}")
    if not args.temperature > 0:
        raise InputError(f"--temperature must be > 0, got {args.temperature}")
    if args.batch < 1:
        raise InputError(f"--batch must be >= 1, got {args.batch}")


# ---- train-gen -------------------------------------------------------------------------------------
def add_train_gen(sub) -> None:
    p = sub.add_parser("train-gen", help="train a masked token model (MaskGIT) on a tokenizer's tokens",
                       description=(
                           "Tokenize the training images once (cached in OUTPUT_DIR/tokens), then train the masked "
                           "token model of CONFIG; writes checkpoints/, gen/ (config.json + model.safetensors), "
                           "samples/, tb/, log.jsonl and eval.jsonl (FID-like, IS, precision/recall)."))
    p.add_argument("config", help="YAML config (see configs/gen-*.yaml)")
    p.add_argument("--tokenizer", default=None, metavar="DIR", help="tokenizer model directory (default: embedded)")
    p.add_argument("--output-dir", required=True, metavar="DIR")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.set_defaults(func=cmd_train_gen)


def cmd_train_gen(args) -> int:
    cfg = load_gen_train_config(check_input(args.config), args.overrides)
    tok = args.tokenizer if args.tokenizer is not None else default_model_dir()
    res = train_gen(cfg, tok, args.output_dir, resume=args.resume, max_steps=args.max_steps,
                    progress=not args.no_progress)
    fid = res.get("fid")
    print(f"done: step {res['step']}" + (f", FID-like {fid:.2f}" if fid is not None else "")
          + f" -> {Path(args.output_dir) / 'gen'}")
    return 0


# ---- generate -------------------------------------------------------------------------------------------
def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="sample images (class-conditional, guided), or inpaint / outpaint one",
                       description=(
                           "Sample N images with the masked token model and decode them with the tokenizer. "
                           "Writes OUT/<class-id>_<k>.png (or uncond_<k>.png) and OUT/grid.png. With --inpaint "
                           "IMAGE --mask MASK.png the tokens under the white part of the mask are re-generated; "
                           "--outpaint PIXELS enlarges the canvas on every side and generates the border."))
    add_model_args(p)
    p.add_argument("--gen", default=None, metavar="DIR", help="generator directory (default: embedded)")
    p.add_argument("--n", type=int, default=8, metavar="N", help="samples (per class with --class all)")
    p.add_argument("--class", dest="cls", default=None, metavar="C",
                   help="class index, or 'all' (default: unconditional, the null class)")
    p.add_argument("--label", default=None, metavar="NAME", help="class by name or id (e.g. 'church', n03028079)")
    sample_args(p)
    p.add_argument("--inpaint", default=None, metavar="IMAGE", help="image to edit")
    p.add_argument("--mask", default=None, metavar="MASK.png", help="white = regenerate (any pixel of a patch)")
    p.add_argument("--outpaint", type=int, default=0, metavar="PIXELS", help="extend IMAGE by PIXELS on every side")
    p.add_argument("--no-paste", action="store_true", help="inpainting: do not paste the unmasked pixels back")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--force", action="store_true", help="write into an existing non-empty --out")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    _check_sampling(args)
    if not (1 <= args.n <= 100_000):
        raise InputError(f"--n must be in 1..100000, got {args.n}")
    if (args.mask or args.outpaint) and not args.inpaint:
        raise InputError("--mask and --outpaint need --inpaint IMAGE")
    if args.inpaint and not args.mask and not args.outpaint:
        raise InputError("--inpaint needs --mask MASK.png and/or --outpaint PIXELS")
    if args.outpaint < 0:
        raise InputError(f"--outpaint must be >= 0, got {args.outpaint}")
    inputs = [check_input(f) for f in (args.inpaint, args.mask) if f]
    out = check_output_dir(args.out, [*inputs, *model_files(args.model), *model_files(args.gen)], force=args.force)
    setup_torch(args)
    model = resolve_model(args.model, args.device, compile=args.compile)
    gen = resolve_gen(args.gen, args.device)
    check_pair(model, gen)
    classes = parse_classes(gen, args.cls, args.label)
    t0 = time.time()
    if args.inpaint:
        images, names = _edit(args, model, gen, classes)
    else:
        if classes is None:
            labels = torch.full((args.n,), -1, dtype=torch.int64)
        else:
            labels = torch.tensor(classes).repeat_interleave(args.n)
        _, images = generate_images(gen, model, labels, seed=args.seed, batch=args.batch, steps=args.steps,
                                    guidance=args.guidance, temperature=args.temperature,
                                    choice_temperature=args.choice_temperature)
        ids = gen.config.class_ids or [str(i) for i in range(gen.config.num_classes)]
        names = [f"{ids[int(c)] if c >= 0 else 'uncond'}_{k % args.n:05d}.png" for k, c in enumerate(labels.tolist())]
    out.mkdir(exist_ok=True)
    for im, name in zip(images, names):
        if any((out / name).resolve() == p.resolve() for p in inputs):
            raise InputError(f"{out / name}: refusing to overwrite an input")
        with atomic_path(out / name) as tmp:
            Image.fromarray(im).save(tmp)
    cols = args.n if classes is not None and len(classes) > 1 else min(len(images), 8)
    if len({im.shape for im in images}) == 1:
        with atomic_path(out / "grid.png") as tmp:
            Image.fromarray(image_grid(images, cols)).save(tmp)
    dt = time.time() - t0
    print(f"{len(images)} image(s) -> {out} ({dt:.2f} s, {dt / max(1, len(images)):.3f} s/image)")
    return 0


def _edit(args, model, gen, classes):
    """Inpainting / outpainting of one image: n variants."""
    p = model.patch_size
    img = to_uint8(load_image(args.inpaint))
    H, W = img.shape[:2]
    if args.mask:
        try:
            with Image.open(args.mask) as m:
                m = m.convert("L")
                if m.size != (W, H):
                    m = m.resize((W, H), Image.Resampling.NEAREST)
                mask = np.asarray(m) > 127
        except (OSError, ValueError) as e:
            raise InputError(f"{args.mask}: cannot read the mask ({e})") from None
    else:
        mask = np.zeros((H, W), bool)
    if args.outpaint:
        e = -(-args.outpaint // p) * p  # whole patches
        img = np.pad(img, ((e, e), (e, e), (0, 0)), mode="edge")
        mask = np.pad(mask, e, constant_values=True)
        H, W = img.shape[:2]
    gh, gw = gen.config.grid
    if H < gh * p or W < gw * p:
        raise InputError(f"the image ({W}x{H}) is smaller than the generator's canvas ({gw * p}x{gh * p})")
    Hp, Wp = -(-H // p) * p, -(-W // p) * p
    mpad = np.pad(mask, ((0, Hp - H), (0, Wp - W)))
    unknown = torch.from_numpy(mpad.reshape(Hp // p, p, Wp // p, p).any((1, 3)))
    if not bool(unknown.any()):
        raise InputError("the mask selects nothing to generate")
    with torch.no_grad():
        tokens = model.encode(from_uint8(img)[None])  # (1, h, w)
    n = args.n
    label = torch.full((n,), classes[0] if classes else -1, dtype=torch.int64)
    if classes and len(classes) > 1:
        raise InputError("inpainting takes one class (--class C or --label NAME), not 'all'")
    outs = []
    for i in range(0, n, args.batch):
        b = min(args.batch, n - i)
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([args.seed, i // args.batch]).generate_state(1)[0]))
        t = fill_canvas(gen, tokens.expand(b, -1, -1), unknown.expand(b, -1, -1), label[i : i + b], gen=g,
                        steps=args.steps, guidance=args.guidance, temperature=args.temperature,
                        choice_temperature=args.choice_temperature)
        with torch.no_grad():
            x = model.decode(t, size=(H, W))
        for im in x:
            a = to_uint8(im)
            if not args.no_paste:
                a = np.where(mask[..., None], a, img)
            outs.append(a)
    stem = Path(args.inpaint).stem
    return outs, [f"{stem}_edit_{k:05d}.png" for k in range(n)]


# ---- eval-gen ----------------------------------------------------------------------------------------------
def add_eval_gen(sub) -> None:
    p = sub.add_parser("eval-gen", help="FID / IS / precision-recall of generated images against a reference folder",
                       description=(
                           "Score a folder of samples (--samples DIR), or sample with --gen/--model over a sweep of "
                           "--guidance and --steps values, against reference images (--ref DIR, resized to the "
                           "samples' resolution). Offline the SqueezeNet stand-in features are used and labelled."))
    p.add_argument("--ref", required=True, metavar="DIR", help="reference images (class = file-name prefix)")
    p.add_argument("--samples", default=None, metavar="DIR", help="folder of generated images")
    p.add_argument("--model", default=None, metavar="DIR", help="tokenizer (with --gen; default: embedded)")
    p.add_argument("--gen", default=None, metavar="DIR", help="generator to sample from (default: embedded)")
    p.add_argument("--n-per-class", type=int, default=50, metavar="K", help="with --gen: samples per class")
    p.add_argument("--n", type=int, default=500, help="with an unconditional --gen: samples")
    p.add_argument("--steps", type=int, nargs="+", default=[12], metavar="S", help="sweep of step counts")
    p.add_argument("--guidance", type=float, nargs="+", default=[2.0], metavar="W", help="sweep of guidance scales")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--choice-temperature", type=float, default=4.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--resolution", type=int, default=None, help="reference resize (default: the samples' size)")
    p.add_argument("--ref-limit", type=int, default=None, metavar="N")
    p.add_argument("--features", default="auto", choices=("auto", "inception", "squeeze-caffe"))
    p.add_argument("--inception-weights", default=None, metavar="PATH")
    p.add_argument("--weights-dir", default=None, metavar="DIR",
                   help="where feature weights are looked for (a folder holding squeezenet1_1_caffe/, or that folder)")
    p.add_argument("--threads", type=int, default=None)
    add_device_arg(p)
    p.add_argument("--json", default=None, metavar="OUT.json")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.set_defaults(func=cmd_eval_gen)


def cmd_eval_gen(args) -> int:
    if not Path(args.ref).is_dir():
        raise InputError(f"{args.ref}: not a directory")
    if args.samples is not None and not Path(args.samples).is_dir():
        raise InputError(f"{args.samples}: not a directory")
    if args.json:
        check_output(args.json, force=args.force)
    setup_torch(args)
    if args.samples is not None:
        first, _ = load_folder(args.samples, limit=1, exclude=("grid.png",))
        if not first:
            raise InputError(f"{args.samples}: no readable images")
        res = args.resolution or first[0].shape[0]
        samples, sample_files = load_folder(args.samples, res, exclude=("grid.png",))  # grid.png: bsqvit generate's
        if len(samples) < 2:
            raise InputError(f"{args.samples}: need at least 2 images, found {len(samples)}")
        gen = model = None
    else:
        model = resolve_model(args.model, args.device)
        gen = resolve_gen(args.gen, args.device)
        check_pair(model, gen)
        res = args.resolution or gen.config.image_size[0]
        for s in args.steps:
            if not (1 <= s <= 1024):
                raise InputError(f"--steps must be in 1..1024, got {s}")
    ref, ref_files = load_folder(args.ref, res, args.ref_limit)
    if len(ref) < 2:
        raise InputError(f"{args.ref}: need at least 2 images, found {len(ref)}")
    classes = (gen.config.class_ids if gen is not None and gen.config.class_ids else discover_classes(ref_files))
    index = {c: i for i, c in enumerate(classes)}
    ref_labels = np.array([index.get(class_of(f), -1) for f in ref_files]) if classes else None
    ev = GenEvaluator(ref, ref_labels, features=args.features, inception_weights=args.inception_weights,
                      weights_dir=args.weights_dir)
    rows = []
    if gen is None:
        lab = np.array([index.get(class_of(f), -1) for f in sample_files])
        rows.append({"samples": str(args.samples), **ev.score(samples, lab if (lab >= 0).any() else None)})
    else:
        if gen.config.num_classes:
            labels = torch.arange(gen.config.num_classes).repeat_interleave(args.n_per_class)
        else:
            labels = torch.full((args.n,), -1, dtype=torch.int64)
        for steps in args.steps:
            for w in args.guidance:
                t0 = time.time()
                _, imgs = generate_images(gen, model, labels, seed=args.seed, batch=args.batch, steps=steps, guidance=w,
                                          temperature=args.temperature, choice_temperature=args.choice_temperature)
                dt = time.time() - t0
                r = {"steps": steps, "guidance": w, "seconds_per_image": round(dt / len(imgs), 4),
                     **ev.score(imgs, labels.numpy() if gen.config.num_classes else None)}
                rows.append(r)
                print(_row_line(r), flush=True)
    result = {"features_label": ev.label, "ref": str(args.ref), "resolution": res, "results": rows}
    if args.json:
        with atomic_path(args.json) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
    print(ev.label)
    print(markdown_table(rows))
    return 0


def _row_line(r: dict) -> str:
    keys = ("steps", "guidance", "fid", "is", "is_probe", "precision", "recall", "class_accuracy")
    return " ".join(f"{k}={r[k]:.4g}" if isinstance(r[k], float) else f"{k}={r[k]}" for k in keys if k in r)


def markdown_table(rows: list[dict]) -> str:
    cols = [c for c in ("samples", "steps", "guidance", "fid", "is", "is_probe", "precision", "recall", "class_accuracy",
                        "seconds_per_image", "n_samples") if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, ""))
                                       for c in cols) + " |")
    return "\n".join(lines)


GEN_COMMANDS = [add_train_gen, add_generate, add_eval_gen]
