"""Streaming video (models/streaming.py): block-by-block encode/decode with a key/value cache equals
the whole-clip computation (no window) or a brute-force banded-mask computation (window)."""

import pytest
import torch

from bsqvit import BSQViT
from bsqvit.models.frames import (
    decode_frames,
    encode_frames,
    stream_decode_frames,
    stream_encode_frames,
)
from bsqvit.models.streaming import (
    NotStreamableError,
    StreamingDecoder,
    StreamingEncoder,
)
from bsqvit.models.transformer import attention_mask, patchify, unpatchify
from bsqvit.nn import Block

# Decoded pixels are not bitwise equal: BLAS sums in another order for a shorter sequence, so the
# features differ by ~1e-15 (float64 model) or ~1e-7 (float32). Pixels come out as float32 either
# way, so a float64 model may still differ by one float32 rounding step (1.2e-7 at 1.0).
PIXEL_ATOL = {torch.float64: 2.5e-7, torch.float32: 1e-5}
H, W = 20, 28  # not multiples of the patch: padding and cropping on the way

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: one thread is faster on a busy machine


def video_model(frames=4, block=1, mask="block-causal", dtype=torch.float32):
    torch.manual_seed(0)
    model = BSQViT.from_preset("tiny", num_frames=frames, mask_type=mask, mask_block_size=block)
    return model.eval().to(dtype)


def rand(*shape, dtype=torch.float32):
    return (torch.rand(*shape, dtype=torch.float64) * 2 - 1).to(dtype)


def pieces(x, sizes, dim=2):
    """Split ``x`` along ``dim`` into chunks of the given sizes (ragged pushes)."""
    out, s = [], 0
    for n in sizes:
        out.append(x.narrow(dim, s, min(n, x.shape[dim] - s)))
        s += n
        if s >= x.shape[dim]:
            break
    if s < x.shape[dim]:
        out.append(x.narrow(dim, s, x.shape[dim] - s))
    return out


def test_step_block_equals_block_causal_forward():
    torch.manual_seed(1)
    blk = Block(32, 4).double().eval()
    n, T = 6, 5
    x = torch.randn(2, T * n, 32, dtype=torch.float64)
    cache = torch.zeros(2, 2, 4, T * n, 8, dtype=torch.float64)
    b = torch.arange(T * n) // n
    banded = (b[:, None] >= b[None, :]) & (b[:, None] - b[None, :] <= 1)  # this block and the one before
    with torch.no_grad():
        for mask, begin in ((attention_mask("block-causal", T, n, 1), lambda t: 0), (banded, lambda t: max(0, t - 1) * n)):
            ref = blk(x, mask)
            for t in range(T):
                y = blk.step_block(x[:, t * n : (t + 1) * n], cache, t * n, begin(t))
                torch.testing.assert_close(y, ref[:, t * n : (t + 1) * n], rtol=0, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("frames,block", [(4, 1), (4, 2), (5, 2)])  # (5, 2): a shorter last block
def test_stream_equals_whole_clip(dtype, frames, block):
    model = video_model(frames, block, dtype=dtype)
    for T in range(1, frames + 1):
        x = rand(2, 3, T, H, W, dtype=dtype)
        whole = model.encode(x)
        streamed = torch.cat(list(model.encode_stream(pieces(x, [1, 2, 1, 3]))), 1)
        assert torch.equal(streamed, whole)  # indices: exactly equal
        dec = model.decode(whole, size=(H, W))
        sdec = torch.cat(list(model.decode_stream(pieces(whole, [2, 1, 5], dim=1), size=(H, W))), 2)
        assert sdec.dtype == dec.dtype and sdec.shape == dec.shape
        torch.testing.assert_close(sdec, dec, rtol=0, atol=PIXEL_ATOL[dtype])


def test_blocks_come_out_as_soon_as_complete():
    model = video_model(4, 2)
    enc = StreamingEncoder(model)
    x = rand(1, 3, 5, H, W)
    assert enc.push(x[:, :, :1]) == []
    out = enc.push(x[:, :, 1:2])
    assert [o.shape for o in out] == [(1, 2, 3, 4)]
    out = enc.push(x[:, :, 2:5])  # frames 2-3 complete the clip's second block, frame 4 waits
    assert [o.shape for o in out] == [(1, 2, 3, 4)]
    assert enc.trunk.cached_tokens() == 0  # clip done: cache dropped
    assert [o.shape for o in enc.flush()] == [(1, 1, 3, 4)]
    assert enc.frame == 5


@pytest.mark.parametrize("frames,block", [(4, 1), (4, 2), (3, 2)])
def test_long_stream_equals_chunked_clips(frames, block):
    """No window: the stream is cut into num_frames clips exactly as encode_frames cuts it."""
    model = video_model(frames, block)
    T = 2 * frames + 3
    x = rand(1, 3, T, H, W)
    chunked = torch.cat([model.encode(x[:, :, s : s + frames]) for s in range(0, T, frames)], 1)
    enc = StreamingEncoder(model)
    blocks = []
    for piece in pieces(x, [3, 1, 4, 2, 5]):
        blocks += enc.push(piece)
        assert enc.trunk.cached_tokens() <= (frames - 1) * 12  # bounded: at most one clip
    blocks += enc.flush()
    assert torch.equal(torch.cat(blocks, 1), chunked)
    ref = torch.cat([model.decode(chunked[:, s : s + frames], size=(H, W)) for s in range(0, T, frames)], 2)
    sdec = torch.cat(list(model.decode_stream(pieces(chunked, [4, 4, 4, 4], dim=1), size=(H, W))), 2)
    torch.testing.assert_close(sdec, ref, rtol=0, atol=PIXEL_ATOL[torch.float32])
    # the (3, t, H, W) helpers for the CLI give the same as encode_frames / decode_frames per chunk
    frames_in = [x[0, :, s : s + 3] for s in range(0, T, 3)]
    got = torch.cat(list(stream_encode_frames(model, frames_in)), 0)
    assert torch.equal(got, chunked[0])
    pix = torch.cat(list(stream_decode_frames(model, [chunked[0, :5], chunked[0, 5:]], (H, W))), 1)
    want = torch.cat([decode_frames(model, chunked[0, s : s + frames], (H, W)) for s in range(0, T, frames)], 1)
    torch.testing.assert_close(pix, want, rtol=0, atol=PIXEL_ATOL[torch.float32])


def banded_trunk(vit, h, thw, block, window):
    """Brute force of the window rule: the whole stream at once, frame f at temporal position
    min(f // block, window - 1) * block + f % block, blocks attending to the last ``window`` blocks."""
    T, gh, gw = thw
    n = gh * gw
    pos = torch.tensor([min(f // block, window - 1) * block + f % block for f in range(T)])
    pe = vit.spatial_embedding((gh, gw)).repeat(T, 1) + vit.temporal_embed[pos].repeat_interleave(n, 0)
    x = vit.ln_pre(h + pe)
    b = torch.arange(T * n) // (n * block)
    mask = (b[:, None] >= b[None, :]) & (b[:, None] - b[None, :] < window)
    for blk in vit.blocks:
        x = blk(x, mask)
    return vit.ln_post(x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("frames,block,window", [(4, 1, 1), (4, 1, 2), (4, 1, 4), (4, 2, 2), (5, 2, 2)])
def test_window_equals_banded_brute_force(dtype, frames, block, window):
    model = video_model(frames, block, dtype=dtype)
    T = 3 * frames + 1
    x = rand(1, 3, T, 16, 24, dtype=dtype)
    with torch.no_grad():
        tokens, thw = patchify(x, 8)
        z = model.quant_embed(banded_trunk(model.encoder, model.encoder.patch_embed(tokens), thw, block, window))
        q = model.quantizer
        want = q.codes_to_indices(q.project(z.float())).reshape(1, *thw)
        zq = q.indices_to_codes(want.reshape(1, -1)).to(dtype)
        out = model.decoder.head(banded_trunk(model.decoder, model.post_quant_embed(zq), thw, block, window))
        want_pix = unpatchify(out.float(), 8, thw).clamp(-1, 1)
    enc = StreamingEncoder(model, window=window)
    got = []
    for piece in pieces(x, [2, 3, 1]):
        got += enc.push(piece)
        assert enc.trunk.cached_tokens() <= (window - 1) * block * 6
    got = torch.cat(got + enc.flush(), 1)
    assert torch.equal(got, want)
    pix = torch.cat(list(model.decode_stream([want], window=window)), 2)
    torch.testing.assert_close(pix, want_pix, rtol=0, atol=PIXEL_ATOL[dtype])
    if window * block == frames:  # a full-clip window: the first clip is the whole-clip computation
        assert torch.equal(got[:, :frames], model.encode(x[:, :, :frames]))


def test_image_model_streams_frame_by_frame():
    torch.manual_seed(0)
    model = BSQViT.from_preset("tiny").eval()
    x = rand(3, 5, H, W)
    want = encode_frames(model, x)
    assert torch.equal(torch.cat(list(stream_encode_frames(model, [x[:, :2], x[:, 2:]])), 0), want)
    assert torch.equal(torch.cat(list(model.encode_stream([x[None]])), 1)[0], want)
    pix = torch.cat(list(model.decode_stream([want[None]], size=(H, W))), 2)[0]
    torch.testing.assert_close(pix, decode_frames(model, want, (H, W)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("mask", ["full", "none", "causal"])
def test_non_block_causal_models_are_refused(mask):
    model = video_model(4, 1, mask=mask)
    with pytest.raises(NotStreamableError, match="block-causal"):
        StreamingEncoder(model)
    with pytest.raises(NotStreamableError, match="block-causal"):
        list(model.decode_stream([torch.zeros(1, 1, 2, 2, dtype=torch.long)]))


def test_bad_windows_and_inputs_are_refused():
    model = video_model(4, 2)
    for bad in (0, 3, 1.5):
        with pytest.raises(ValueError, match="window"):
            StreamingEncoder(model, window=bad)
    enc = StreamingEncoder(model)
    enc.push(rand(1, 3, 1, H, W))
    with pytest.raises(ValueError, match="shape changed"):
        enc.push(rand(1, 3, 1, H, W + 8))
    with pytest.raises(ValueError, match="B,3,t,H,W"):
        enc.push(rand(1, 3, H, W))
    with pytest.raises(ValueError, match="larger than the token grid"):
        StreamingDecoder(model, size=(64, 64)).push(torch.zeros(1, 1, 2, 2, dtype=torch.long))


def test_stream_at_a_nested_rate_equals_the_clip_path():
    """A nested-bits video model streams at every rate: the tokens and pixels of encode/decode(bits=L')."""
    torch.manual_seed(0)
    model = BSQViT.from_preset("tiny", num_frames=4, mask_type="block-causal", mask_block_size=1,
                               quantizer=dict(type="bsq", dim=8, group_size=1, nested_bits=[4, 8])).eval()
    x = rand(1, 3, 6, H, W)
    for bits in (4, 8):
        chunked = torch.cat([model.encode(x[:, :, s : s + 4], bits=bits) for s in range(0, 6, 4)], 1)
        assert torch.equal(chunked & ((1 << (8 - bits)) - 1), torch.zeros_like(chunked))  # dropped bits clear
        streamed = torch.cat(list(model.encode_stream(pieces(x, [1, 2, 3]), bits=bits)), 1)
        assert torch.equal(streamed, chunked)
        ref = torch.cat([model.decode(chunked[:, s : s + 4], size=(H, W), bits=bits) for s in range(0, 6, 4)], 2)
        sdec = torch.cat(list(model.decode_stream(pieces(chunked, [2, 4], dim=1), size=(H, W), bits=bits)), 2)
        torch.testing.assert_close(sdec, ref, rtol=0, atol=PIXEL_ATOL[torch.float32])
    with pytest.raises(ValueError, match="trained levels"):
        StreamingEncoder(model, bits=5)
