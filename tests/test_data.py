"""Data pipeline tests: discovery, decoding, corrupt files, transforms, determinism,
resumable sampling, tar shards and video clips (fast; real files from shared/data)."""

from __future__ import annotations

import io
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bsqvit.config import ConfigError, from_dict
from bsqvit.data import (
    DataConfig,
    DataPosition,
    ImageFolderDataset,
    ImageTransform,
    ResumableDistributedSampler,
    VideoClipDataset,
    WebDatasetShards,
    build_dataloader,
    count_skipped,
    eval_transform,
    expand_braces,
    find_images,
    infinite_batches,
    train_transform,
)
from bsqvit.data.transforms import CropParams, center_crop_params, hflip, resize_short_side, to_tensor
from bsqvit.data.video_sources import count_frames, find_videos, read_frames
from shared_data import VIDEO, needs

H264 = VIDEO / "openh264_MR1_BT_A.h264"
BLACKSWAN = VIDEO / "davis2016_frames" / "blackswan"
needs_data = needs(VIDEO, what="video clips (../shared/data/video)")


def _rand_img(h, w, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _make_tree(root: Path) -> list[str]:
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "z").mkdir()
    _rand_img(20, 30, seed=1).save(root / "a" / "x.png")
    _rand_img(25, 18, seed=2).save(root / "a" / "b" / "y.jpg", quality=90)
    _rand_img(16, 16, "L", seed=3).save(root / "a" / "b" / "c" / "gray.png")
    _rand_img(17, 19, "RGBA", seed=4).save(root / "rgba.png")
    pal = _rand_img(12, 14, seed=5).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(root / "z" / "pal.png", transparency=0)
    _rand_img(10, 11, seed=6).save(root / "z" / "w.webp")
    _rand_img(9, 13, seed=7).save(root / "z" / "b.bmp")
    _rand_img(9, 13, seed=8).save(root / "z" / "t.TIFF")
    _rand_img(8, 8, seed=9).convert("P").save(root / "z" / "anim.gif")
    (root / "z" / "notes.txt").write_text("not an image")
    _rand_img(8, 8, seed=10).save(root / "z" / ".hidden.png")
    return ["a/b/c/gray.png", "a/b/y.jpg", "a/x.png", "rgba.png", "z/anim.gif", "z/b.bmp",
            "z/pal.png", "z/t.TIFF", "z/w.webp"]


# ----------------------------------------------------------------------------- images


def test_recursive_discovery_mixed_formats(tmp_path):
    expected = _make_tree(tmp_path)
    files = find_images(tmp_path)
    assert [os.path.relpath(f, tmp_path) for f in files] == expected  # sorted, recursive
    ds = ImageFolderDataset(str(tmp_path))  # no transform: full image
    assert len(ds) == len(expected)
    for i in range(len(ds)):
        s = ds[i]
        x = s["image"]
        assert x.dtype == torch.float32 and x.ndim == 3 and x.shape[0] == 3
        assert x.min() >= -1 and x.max() <= 1
        assert s["index"] == i and s["skipped"] == 0
    # grayscale -> 3 equal channels with exact value mapping
    g = ds[0]["image"]
    ref = np.asarray(Image.open(tmp_path / expected[0]), dtype=np.float32) / 127.5 - 1
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    assert np.allclose(g[0].numpy(), ref, atol=1e-6)
    # sizes preserved (H, W)
    assert tuple(ds[2]["image"].shape[1:]) == (20, 30)
    # with a transform every item has the crop size
    ds2 = ImageFolderDataset([str(tmp_path / "a"), str(tmp_path / "z")], train_transform(8))
    assert len(ds2) == 8
    assert all(tuple(ds2[i]["image"].shape) == (3, 8, 8) for i in range(len(ds2)))


def test_corrupt_files_skipped_and_counted(tmp_path, caplog):
    for i in range(6):
        _rand_img(16, 16, seed=i).save(tmp_path / f"{i:02d}.jpg")
    buf = io.BytesIO()
    _rand_img(64, 64, seed=99).save(buf, "JPEG")
    (tmp_path / "01a_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "03a_random.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (tmp_path / "05a_empty.png").write_bytes(b"")
    ds = ImageFolderDataset(tmp_path, train_transform(8))
    names = [os.path.basename(f) for f in ds.files]
    bad = [names.index(n) for n in ("01a_truncated.jpg", "03a_random.jpg", "05a_empty.png")]
    with caplog.at_level(logging.WARNING):
        s = ds[bad[0]]
        assert s["skipped"] == 1 and s["index"] == bad[0] + 1
        ds[bad[0]]
    assert sum("01a_truncated.jpg" in r.getMessage() for r in caplog.records) == 1  # logged once
    assert ds.bad_files[ds.files[bad[0]]] == 2
    s = ds[bad[2]]  # last file is bad -> wraps around to index 0
    assert s["index"] == 0 and s["skipped"] == 1
    # a full pass through a DataLoader: never raises; skipped counts sum in the main process
    cfg = DataConfig(train=[str(tmp_path)], resolution=8, batch_size=3, num_workers=2, val=[str(tmp_path)])
    dl = build_dataloader(cfg, "val")
    total = sum(count_skipped(b) for b in dl)
    assert total == 3
    # nothing readable at all -> a clear error instead of an endless loop
    bad_dir = tmp_path / "allbad"
    bad_dir.mkdir()
    for i in range(3):
        (bad_dir / f"{i}.png").write_bytes(b"garbage")
    with pytest.raises(RuntimeError):
        ImageFolderDataset(bad_dir)[0]


# ----------------------------------------------------------------------------- transforms


def test_random_crop_centre_crop_hflip():
    img = _rand_img(50, 80, seed=3)
    for resize, res in [(None, 32), (40, 32), (0, 32), (64, 64)]:
        t = train_transform(res, resize)
        for s in range(5):
            g = torch.Generator().manual_seed(s)
            assert tuple(t(img, g).shape) == (3, res, res)
    # short side smaller than the crop with resize=0 -> upscaled to fit
    assert tuple(train_transform(64, 0)(img).shape) == (3, 64, 64)
    # centre crop == manual slice of the Lanczos-resized image
    ev = eval_transform(32)
    out = ev(img)
    r = resize_short_side(img, 32, "lanczos")
    assert r.size == (51, 32)
    top, left = center_crop_params(r.height, r.width, 32)
    assert (top, left) == (0, 10)
    manual = np.asarray(r)[top:top + 32, left:left + 32]
    assert torch.equal(out, to_tensor(manual))
    # hflip: tensor and PIL agree, and equals reversing the width axis
    x = to_tensor(img)
    assert torch.equal(hflip(x), to_tensor(hflip(img)))
    assert torch.equal(hflip(x), x[..., torch.arange(x.shape[-1] - 1, -1, -1)])
    t = ImageTransform(32, 40, random_crop=True, flip=True)
    p = t.params(img.width, img.height, torch.Generator().manual_seed(0))
    a = t.apply(img, CropParams(p.resized, p.top, p.left, False))
    b = t.apply(img, CropParams(p.resized, p.top, p.left, True))
    assert torch.equal(a.flip(-1), b)
    flips = {t.params(80, 50, torch.Generator().manual_seed(s)).flip for s in range(32)}
    assert flips == {True, False}
    with pytest.raises(ValueError):
        ImageTransform(32, 16)


def test_draft_keeps_geometry_close(tmp_path):
    """JPEG draft decoding only speeds up; output stays close to the full decode."""
    img = Image.fromarray(np.asarray(_rand_img(60, 80, seed=1).resize((640, 480), Image.BILINEAR)))
    img.save(tmp_path / "big.jpg", quality=95)
    ds_d = ImageFolderDataset(tmp_path, train_transform(64, draft=True))
    ds_f = ImageFolderDataset(tmp_path, train_transform(64, draft=False))
    a, b = ds_d[(0, 0)]["image"], ds_f[(0, 0)]["image"]
    assert a.shape == b.shape == (3, 64, 64)
    assert (a - b).abs().mean() < 0.05


def test_augmentation_determinism_and_worker_independence(tmp_path):
    for i in range(10):
        _rand_img(40, 48, seed=i).save(tmp_path / f"{i}.png")
    ds = ImageFolderDataset(tmp_path, train_transform(24, 32), seed=7)
    assert torch.equal(ds[(3, 5)]["image"], ds[(3, 5)]["image"])
    assert any(not torch.equal(ds[(0, i)]["image"], ds[(1, i)]["image"]) for i in range(10))
    other = ImageFolderDataset(tmp_path, train_transform(24, 32), seed=8)
    assert any(not torch.equal(ds[(0, i)]["image"], other[(0, i)]["image"]) for i in range(10))

    cfg = DataConfig(train=[str(tmp_path)], resolution=24, train_resize=32, batch_size=3, seed=7)

    def run(nw):
        dl = build_dataloader(cfg, "train", num_workers=nw, epoch=2)
        return [(b["index"].clone(), b["image"].clone()) for b in dl]

    r0, r2 = run(0), run(2)
    assert len(r0) == len(r2) == 3  # 10 // 3, drop_last
    for (i0, x0), (i2, x2) in zip(r0, r2):
        assert torch.equal(i0, i2) and torch.equal(x0, x2)
    # sample content is a function of (seed, epoch, index): same as direct access
    assert torch.equal(r0[0][1][0], ds[(2, int(r0[0][0][0]))]["image"])


# ----------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("n,world,drop_last", [(23, 1, False), (23, 2, False), (24, 2, True), (23, 3, True)])
def test_resumable_sampler_resume_and_shards(n, world, drop_last):
    bs = 4
    for rank in range(world):
        s = ResumableDistributedSampler(n, rank, world, shuffle=True, seed=3, drop_last=drop_last)
        s.set_epoch(5)
        full = list(s)
        for k in range(0, len(full) // bs + 1):
            r = ResumableDistributedSampler(n, rank, world, shuffle=True, seed=3, drop_last=drop_last)
            r.set_epoch(5)
            r.set_start(k, bs)
            assert full[: k * bs] + list(r) == full
            assert len(r) == len(full) - min(k * bs, len(full))
        s.set_epoch(6)
        assert list(s) != full  # reshuffled per epoch
    shares = []
    for rank in range(world):
        s = ResumableDistributedSampler(n, rank, world, shuffle=True, seed=3, drop_last=drop_last)
        s.set_epoch(1)
        shares.append(list(s))
    assert len({len(x) for x in shares}) == 1
    flat = [i for x in shares for i in x]
    if drop_last:
        assert len(set(flat)) == len(flat) == (n // world) * world  # disjoint
    else:
        assert set(flat) == set(range(n))  # covers everything
        assert len(flat) - len(set(flat)) == (-n) % world  # only the padding repeats
    # eval mode: disjoint shards without padding
    ev = [list(ResumableDistributedSampler(n, r, world, shuffle=False, pad=False)) for r in range(world)]
    assert sorted(i for x in ev for i in x) == list(range(n))


def test_infinite_batches_resume_matches_uninterrupted(tmp_path):
    for i in range(7):
        _rand_img(12, 12, seed=i).save(tmp_path / f"{i}.png")
    cfg = DataConfig(train=[str(tmp_path)], resolution=8, batch_size=2, num_workers=0, seed=1)
    dl = build_dataloader(cfg, "train")
    ref, positions = [], []
    for b, pos in infinite_batches(dl):
        ref.append((b["index"].tolist(), b["image"]))
        positions.append(pos)
        if len(ref) == 8:  # 3 batches per epoch -> crosses two epoch boundaries
            break
    assert positions[2] == DataPosition(0, 3) and positions[3] == DataPosition(1, 1)
    for cut in (1, 3, 4):
        pos = positions[cut - 1]
        dl2 = build_dataloader(cfg, "train")
        out = []
        for b, p in infinite_batches(dl2, pos.epoch, pos.batch):
            out.append((b["index"].tolist(), b["image"]))
            if len(out) == 8 - cut:
                break
        for (i1, x1), (i2, x2) in zip(ref[cut:], out):
            assert i1 == i2 and torch.equal(x1, x2)


def test_config_strict_and_loader_options(tmp_path):
    cfg = from_dict(DataConfig, {"train": ["a"], "kind": "video", "resolution": 64, "batch_size": 2})
    assert cfg.kind == "video" and cfg.train_resize is None and cfg.num_frames == 16
    with pytest.raises(ConfigError):
        from_dict(DataConfig, {"train": ["a"], "resolutoin": 64})
    with pytest.raises(ConfigError):
        from_dict(DataConfig, {"train": ["a"], "kind": "audio"})
    with pytest.raises(ConfigError):
        from_dict(DataConfig, {"train": ["a"], "resolution": 64, "train_resize": 32})
    for i in range(5):
        _rand_img(12, 12, seed=i).save(tmp_path / f"{i}.png")
    cfg = DataConfig(train=[str(tmp_path)], val=[str(tmp_path)], resolution=8, batch_size=2,
                     val_limit=3, num_workers=1)
    dl = build_dataloader(cfg, "val")
    assert dl.pin_memory == torch.cuda.is_available()
    assert dl.persistent_workers
    assert [b["index"].tolist() for b in dl] == [[0, 1], [2]]


# ----------------------------------------------------------------------------- tar shards


def _make_shards(root: Path) -> list[str]:
    keys = []
    for s, n in enumerate((5, 4)):
        with tarfile.open(root / f"shard-{s:03d}.tar", "w") as tf:
            for j in range(n):
                key = f"s{s}_{j:03d}"
                buf = io.BytesIO()
                _rand_img(20, 24, seed=10 * s + j).save(buf, "JPEG" if j % 2 else "PNG")
                for name, data in ((f"{key}.{'jpg' if j % 2 else 'png'}", buf.getvalue()),
                                   (f"{key}.cls", str(j).encode())):
                    ti = tarfile.TarInfo(name)
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
                keys.append(key)
    return keys


def test_tar_shards_each_image_once(tmp_path):
    keys = _make_shards(tmp_path)
    assert expand_braces(str(tmp_path / "shard-{000..001}.tar")) == [
        str(tmp_path / "shard-000.tar"), str(tmp_path / "shard-001.tar")]
    assert expand_braces("x{a,b}{1..2}") == ["xa1", "xa2", "xb1", "xb2"]
    pattern = str(tmp_path / "shard-{000..001}.tar")
    ds = WebDatasetShards(pattern, train_transform(16), seed=0, shuffle=True)
    for nw in (0, 2):
        dl = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=nw)
        got = [k for b in dl for k in b["key"]]
        assert sorted(got) == sorted(keys) and len(got) == len(keys)
        assert all(b["image"].shape[1:] == (3, 16, 16) for b in dl)
    # one shard, two workers, two ranks -> modulo split, still each exactly once
    got = []
    for rank in range(2):
        d = WebDatasetShards(str(tmp_path / "shard-000.tar"), None, rank=rank, world_size=2)
        got += [k for b in torch.utils.data.DataLoader(d, batch_size=None, num_workers=2)
                for k in [b["key"]]]
    assert sorted(got) == sorted(keys[:5])
    # resume: skipping consumed batches reproduces the uninterrupted stream
    cfg = DataConfig(train=[pattern], resolution=16, batch_size=2, num_workers=2)
    full = [b["key"] for b in build_dataloader(cfg, "train", epoch=1)]
    assert len(full) == 4
    for cut in (1, 2, 3):
        rest = [b["key"] for b in build_dataloader(cfg, "train", epoch=1, start_batch=cut)]
        assert rest == full[cut:]


# ----------------------------------------------------------------------------- video


@needs_data
def test_video_raw_h264_clip():
    assert count_frames(str(H264)) == 62
    ds = VideoClipDataset(str(H264), num_frames=8, stride=2, resolution=64, train=True, seed=0)
    assert len(ds) == 62 // 15
    s = ds[(0, 1)]
    assert tuple(s["video"].shape) == (3, 8, 64, 64) and s["video"].dtype == torch.float32
    assert s["video"].min() >= -1 and s["video"].max() <= 1
    assert 0 <= s["start"] <= 62 - 15
    assert torch.equal(ds[(0, 1)]["video"], s["video"])  # deterministic
    ev = VideoClipDataset(str(H264), num_frames=8, stride=2, resolution=64, train=False)
    assert [ev[i]["start"] for i in range(len(ev))] == [0, 16, 31, 47]
    # the clip frames are the decoded frames start, start+2, ...
    frames = read_frames(str(H264), [ev[1]["start"] + 2 * t for t in range(8)])
    ref = torch.stack([eval_transform(64)(f) for f in frames], 1)
    assert torch.equal(ev[1]["video"], ref)


@needs_data
def test_video_frame_folder_and_seek():
    vids = find_videos(str(VIDEO / "davis2016_frames"))
    assert len(vids) == 6 and all(v.is_folder and len(v.frames) == 32 for v in vids)
    ds = VideoClipDataset(str(BLACKSWAN), num_frames=8, stride=2, resolution=32, train=True)
    assert len(ds) == 32 // 15
    s = ds[0]
    assert tuple(s["video"].shape) == (3, 8, 32, 32)
    starts = {ds[(e, 0)]["start"] for e in range(12)}
    assert len(starts) > 1 and all(0 <= x <= 8 for x in starts)  # stratum 0 of [0, 17]
    # seek (keyframe at 187) gives the same frames as decoding from the start
    mp4 = str(VIDEO / "mmaction2_demo.mp4")
    idx = [200, 202, 204]
    a = read_frames(mp4, idx, seek=True)
    b = read_frames(mp4, idx, seek=False)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_video_same_crop_for_all_frames(tmp_path):
    base = _rand_img(40, 60, seed=5)
    folder = tmp_path / "vid"
    folder.mkdir()
    for i in range(12):
        base.save(folder / f"{i}.png")
    ds = VideoClipDataset(str(folder), num_frames=6, stride=2, resolution=24, train=True,
                          train_resize=32, hflip=True)
    outs = []
    for e in range(6):
        v = ds[(e, 0)]["video"]
        assert tuple(v.shape) == (3, 6, 24, 24)
        for t in range(1, 6):
            assert torch.equal(v[:, t], v[:, 0])
        outs.append(v[:, 0])
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # crops do vary with the epoch
    # a clip from a video shorter than the span is skipped by default, or padded
    with pytest.raises(ValueError):
        VideoClipDataset(str(folder), num_frames=8, stride=2, resolution=24)
    pad = VideoClipDataset(str(folder), num_frames=8, stride=2, resolution=24, short="pad", train=False)
    assert tuple(pad[0]["video"].shape) == (3, 8, 24, 24)
