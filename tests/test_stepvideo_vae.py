"""The Step-Video VAE v2: fp32 parity with the official `AutoencoderKL(version=2)` on tiny random weights (several
chunks, the boundary blend, blocked attention), streaming, tiling, the frame rule of its latent format, loading
`vae_v2.safetensors` through the VAE loader, and wrong files.

Parity models keep the real architecture (4 levels, 2 resnets per level, per-frame GroupNorm with 32 groups, the
2×2×2 (un)patchify with 32·z channels) with widths 32–64 and 4 latent channels; the loader's files need the real
64 latent channels (the "stepvideo" format's), so `synthetic_stepvideo.write_vae` writes one with widths 32 (SYNTHETIC).
"""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from openreel.errors import DetectionError, InputError
from openreel.latents import empty_latent, latent_format, video_size_problems
from openreel.model_loaders.checkpoint import open_checkpoint
from openreel.model_loaders.identify import identify
from openreel.model_loaders.vae import load_vae
from openreel.models.stepvideo import vae as step_vae
from openreel.models.stepvideo.latents import STEPVIDEO_VAE
from openreel.models.stepvideo.vae import StepVideoVAE, StepVideoVAEConfig, causal_attention, front_zeros
from openreel.synthetic_stepvideo import TINY_VAE, write_vae
from references import load_stepvideo, randomize_vae, rel_err

TINY = StepVideoVAEConfig(latent_channels=4, encoder_widths=(32, 32, 64, 64), decoder_widths=(32, 32, 64, 64))
# Small models for files and for our own properties: widths 32, one resnet per encoder level, 4 latent channels (a
# 64-channel VAE's unpatchify conv alone is at least 2048 → 2048 × 3³ = 113M parameters; the released one's 226M).
SYNTHETIC = TINY_VAE


def official(cfg=TINY):
    """The official AutoencoderKL(version=2) with `cfg`'s widths (its constructor fixes them; the encoder and
    decoder are rebuilt with the official classes) and random weights; ours with the same weights."""
    ref_module = load_stepvideo("vae.vae")
    ref = ref_module.AutoencoderKL(z_channels=cfg.latent_channels, num_res_blocks=cfg.layers, version=2)
    ch, dch = cfg.encoder_base, cfg.decoder_widths[0]
    ref.encoder = ref_module.VideoEncoder(ch=ch, ch_mult=tuple(w // ch for w in cfg.encoder_widths),
                                          num_res_blocks=cfg.layers, z_channels=cfg.latent_channels, version=2)
    ref.decoder = ref_module.VideoDecoder(ch=dch, ch_mult=tuple(w // dch for w in cfg.decoder_widths),
                                          num_res_blocks=cfg.layers, z_channels=cfg.latent_channels, version=2)
    randomize_vae(ref)
    ours = StepVideoVAE(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # the official module's names are ours
    return ref_module, ref, ours


def frames(count, height, width, seed=1):
    return torch.rand(1, 3, count, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def latent(count, height, width, channels=4, seed=2):
    return torch.randn(1, channels, count, height, width, generator=torch.Generator().manual_seed(seed))



# ----------------------------------------------------------------------------------------- parity (official code)
def test_encode_is_the_official_posterior_mean():
    ref_module, ref, ours = official()
    x = frames(34, 16, 32)  # two chunks
    with torch.inference_mode():
        z = torch.cat([ref.naive_encode(c, True) for c in x.transpose(1, 2).split(17, dim=1)], dim=1)
        mean = ref_module.DiagonalGaussianDistribution(z).mean.transpose(1, 2)
        torch.manual_seed(0)
        sample = ref.encode(x.transpose(1, 2)).transpose(1, 2)
    ours_mean = ours.encode(x)
    assert ours_mean.shape == (1, 4, 6, 1, 2)
    assert rel_err(ours_mean, mean) <= 1e-5
    assert rel_err(ours_mean, sample) > 1e-3  # the official encode() draws a sample around that mean


@pytest.mark.parametrize("chunks", [1, 3])
def test_decode_matches_the_official_code(chunks):
    _, ref, ours = official()
    z = latent(3 * chunks, 1, 2)
    with torch.inference_mode():
        expected = ref.decode(z.transpose(1, 2).clone()).transpose(1, 2)
    out = ours.decode(z)
    assert out.shape == (1, 3, 17 * chunks, 16, 32)
    assert rel_err(out, expected) <= 1e-5


def test_blocked_attention_and_slabs_match_the_official_code(monkeypatch):
    """Attention in blocks of queries, and every per-frame step and convolution a frame at a time."""
    _, ref, ours = official()
    monkeypatch.setattr(step_vae, "ATTENTION_SCORES", 7 * 40)  # 5 × 2 × 4 mid-block tokens: blocks of 7 queries
    monkeypatch.setattr(step_vae, "SLAB", 1)
    z = latent(3, 1, 2)
    with torch.inference_mode():
        expected = ref.decode(z.transpose(1, 2).clone()).transpose(1, 2)
    assert rel_err(ours.decode(z), expected) <= 1e-5
    x = frames(17, 16, 32)  # 5 × 1 × 2 encoder mid-block tokens: blocks of 28 queries
    with torch.inference_mode():
        mean = ref.naive_encode(x.transpose(1, 2), True).transpose(1, 2)[:, :4]
    assert rel_err(ours.encode(x), mean) <= 1e-5


# ----------------------------------------------------------------------------------------- our own properties
def test_causal_attention_in_blocks_is_sdpa_causal(monkeypatch):
    q, k, v = (torch.randn(2, 50, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    whole = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], is_causal=True)[:, 0]
    monkeypatch.setattr(step_vae, "ATTENTION_SCORES", 300)  # blocks of 6 queries
    assert (causal_attention(q, k, v) - whole).abs().max() <= 1e-6


def test_chunks_are_independent_and_their_boundary_blends_in_order():
    """Each 3-frame latent chunk decodes alone; then the next chunk's first frame = 0.6·itself + 0.4·the previous
    chunk's last, and that last = 0.6·itself + 0.4·the new first (0.76 / 0.24 of the originals)."""
    ours = randomize_vae(StepVideoVAE(SYNTHETIC))
    z = latent(6, 2, 3)
    a, b, both = ours.decode(z[:, :, :3]), ours.decode(z[:, :, 3:]), ours.decode(z)
    first = 0.6 * b[:, :, 0] + 0.4 * a[:, :, -1]
    assert torch.allclose(both[:, :, :16], a[:, :, :16], atol=1e-6)
    assert torch.allclose(both[:, :, 18:], b[:, :, 1:], atol=1e-6)
    assert torch.allclose(both[:, :, 17], first, atol=1e-6)
    assert torch.allclose(both[:, :, 16], 0.76 * a[:, :, -1] + 0.24 * b[:, :, 0], atol=1e-6)


@pytest.mark.parametrize("tile_size", [None, 16])
def test_decode_iter_streams_what_decode_returns(tile_size):
    ours = randomize_vae(StepVideoVAE(SYNTHETIC))
    z = latent(9, 1, 2)  # 16-pixel tiles: 2 of them
    chunks = list(ours.decode_iter(z, tile_size))
    assert [c.shape[2] for c in chunks] == [17, 17, 17]
    assert torch.equal(torch.cat(chunks, 2), ours.decode(z, tile_size))


def test_one_tile_covering_the_frame_is_the_untiled_run():
    ours = randomize_vae(StepVideoVAE(SYNTHETIC))
    x, z = frames(17, 32, 48), latent(3, 2, 3)
    assert torch.equal(ours.encode(x, tile_size=512), ours.encode(x))
    assert torch.equal(ours.decode(z, tile_size=512), ours.decode(z))


def frozen_frame_norms(monkeypatch):
    """Make every per-frame GroupNorm use the statistics it saw in the first run after this call (a tile then sees
    the whole frame's)."""
    stats = {}

    def frame_norm(norm, x, silu, front=0):
        b, c, t, h, w = x.shape
        groups = x.transpose(1, 2).reshape(b, t, norm.num_groups, -1)
        if norm not in stats:
            stats[norm] = groups.mean(-1, keepdim=True), groups.var(-1, unbiased=False, keepdim=True)
        mean, var = stats[norm]
        y = ((groups - mean) / torch.sqrt(var + norm.eps)).view(b, t, c, h, w).transpose(1, 2)
        y = y * norm.weight.view(1, -1, 1, 1, 1) + norm.bias.view(1, -1, 1, 1, 1)
        return front_zeros(F.silu(y) if silu else y, front)
    monkeypatch.setattr(step_vae, "frame_norm", frame_norm)


def test_tiling_changes_only_the_seam_band(monkeypatch):
    """With GroupNorm on the whole frame's statistics and the mid attention silenced, tiled == untiled to rounding
    outside the tiles' blend overlap and 4 cells either side (20 cells wide in tiles of 12: [0, 12) and [8, 20),
    blended over [8, 12); measured: differences only inside the overlap). With them, a tile's statistics and its
    causal attention see only its own pixels and the difference spreads over the frame: measured on these random
    weights 27% (decode) and 14% (encode) relative (TINY's widths, 40 cells in tiles of 24 every 16), an approximation whose size depends on trained
    weights (there is no official tiling to match)."""
    ours = randomize_vae(StepVideoVAE(SYNTHETIC))
    z, x = latent(3, 1, 20), frames(17, 16, 320)
    with torch.no_grad():
        for attention in (ours.encoder.mid.attn_1, ours.decoder.mid.attn_1):
            attention.proj_out.conv.weight.zero_()
            attention.proj_out.conv.bias.zero_()
    seam = (torch.arange(20) >= 4) & (torch.arange(20) < 16)
    frozen_frame_norms(monkeypatch)
    untiled = ours.decode(z)
    err = (ours.decode(z, 192, 64) - untiled).abs().amax(dim=(0, 1, 2, 3))
    assert err[~seam.repeat_interleave(16)].max() <= 1e-5 and err.max() > 1e-4

    frozen_frame_norms(monkeypatch)
    untiled = ours.encode(x)
    err = (ours.encode(x, 192, 64) - untiled).abs().amax(dim=(0, 1, 2, 3))
    assert err[~seam].max() <= 1e-5 and err.max() > 1e-4


def test_bad_inputs_are_input_errors():
    ours = StepVideoVAE(SYNTHETIC)
    with pytest.raises(InputError, match=r"16 frames.*chunks of 17.*e\.g\. 17 or 34"):
        ours.encode(frames(16, 32, 32))
    with pytest.raises(InputError, match=r"multiples of 16"):
        ours.encode(frames(17, 24, 32))
    with pytest.raises(InputError, match=r"3n frames"):
        ours.decode(latent(4, 2, 2))
    with pytest.raises(InputError, match=r"(?i)decode with the VAE"):
        ours.decode(latent(3, 2, 2, channels=16))


# ----------------------------------------------------------------------------------------- the latent format
def test_frame_counts_are_multiples_of_17():
    fmt = latent_format("stepvideo")
    assert fmt.latent_frames(204) == 36 and fmt.pixel_frames(36) == 204 and fmt.latent_frames(17) == 3
    with pytest.raises(InputError, match=r"200 frames is not a multiple of 17") as err:
        fmt.latent_frames(200)
    assert "Use 187 or 204 frames" in str(err.value)
    for bad in (0, 16, 18):
        with pytest.raises(InputError):
            fmt.latent_frames(bad)
    assert empty_latent(fmt, 992, 544, 204)["samples"].shape == (1, 64, 36, 34, 62)
    with pytest.raises(InputError, match="multiple of 16"):
        empty_latent(fmt, 990, 544, 204)
    wan = latent_format("wan21")  # the lead-frame rule is unchanged
    assert wan.latent_frames(81) == 21 and wan.pixel_frames(21) == 81
    assert video_size_problems(992, 544, 204) == []
    assert video_size_problems(992, 544, 81) == []
    problem, = video_size_problems(992, 544, 200)
    assert "of the form 4n+1: use 197 or 201" in problem and "a multiple of 17: use 187 or 204" in problem


# ----------------------------------------------------------------------------------------- files
def test_vae_v2_file_loads_and_decodes(tmp_path):
    from openreel.encoding.video import decode_video, encode_video
    from openreel.model_loaders.core import module_of

    path = write_vae(tmp_path / "vae_v2.safetensors")
    found = identify(open_checkpoint(path), "vae")
    assert found.kind == "vae" and found.what == "a video VAE (Step-Video)"
    handle = load_vae(path)
    assert handle.family == "stepvideo" and handle.spec == SYNTHETIC
    assert handle.latent_format == "stepvideo_4ch" and latent_format("stepvideo_4ch").latent_frames(34) == 6
    assert STEPVIDEO_VAE.latent_format(StepVideoVAEConfig()) == "stepvideo"  # the released VAE's 64 channels
    module = module_of(handle)
    assert module.decoder.conv_out.conv.weight.dtype == torch.float32  # fp32 compute on the CPU
    z = encode_video(handle, frames(17, 32, 32))
    assert z.shape == (1, 4, 3, 2, 2)
    images = list(decode_video(handle, torch.cat([z, z], 2), "off"))
    assert [i.shape for i in images] == [(17, 32, 32, 3)] * 2
    assert all(i.min() >= 0 and i.max() <= 1 for i in images)

    # The same tensors under a prefix (a combined file), and as saved from the official module (conv_out.conv.*).
    combined = write_vae(tmp_path / "combined.safetensors", prefix="vae.")
    assert load_vae(combined).spec == SYNTHETIC
    from safetensors.torch import load_file
    saved = {k.replace("decoder.conv_out.", "decoder.conv_out.conv."): v for k, v in load_file(path).items()}
    save_file(saved, tmp_path / "state_dict.safetensors")
    assert load_vae(tmp_path / "state_dict.safetensors").spec == SYNTHETIC


def test_decoding_shows_progress_per_chunk(tmp_path, monkeypatch):
    from openreel import runtime
    from openreel.encoding.video import decode_video

    handle = load_vae(write_vae(tmp_path / "vae_v2.safetensors"))
    updates = []

    class Recording(runtime.Progress):
        def update(self, n=1, preview=None):
            updates.append((n, self.total))
            super().update(n, preview)
    monkeypatch.setattr(runtime, "Progress", Recording)
    z = latent(6, 2, 2)
    assert sum(c.shape[0] for c in decode_video(handle, z, "off")) == 34
    assert updates == [(17, 34), (17, 34)]


def test_wrong_step_video_vaes_are_refused(tmp_path):
    path = write_vae(tmp_path / "vae_v2.safetensors")
    from safetensors.torch import load_file
    tensors = load_file(path)
    save_file({k: v for k, v in tensors.items() if not k.startswith("decoder.conv_in.")},
              tmp_path / "incomplete.safetensors")
    with pytest.raises(DetectionError, match="looks like a Step-Video VAE but lacks decoder.conv_in.conv.weight"):
        load_vae(tmp_path / "incomplete.safetensors")
    narrow = write_vae(tmp_path / "z16.safetensors", replace(SYNTHETIC, latent_channels=16))
    with pytest.raises(DetectionError, match="for 16 latent channels, which the Step-Video VAE's 32 norm groups and "
                                             "patchify shortcuts do not fit"):
        load_vae(narrow)
    save_file({"foo.weight": torch.zeros(3, 3)}, tmp_path / "other.safetensors")
    with pytest.raises(DetectionError, match="Step-Video VAE"):  # the loader's list of what it takes names it
        load_vae(tmp_path / "other.safetensors")
    # version 1 (no patchify convs; its causal convs' names and SD-like up blocks): named, not "an image VAE"
    v1 = {k: v for k, v in tensors.items() if "patchify" not in k and "shortcut" not in k}
    save_file(v1, tmp_path / "vae.safetensors")
    with pytest.raises(DetectionError, match="Step-Video VAE version 1 .* Use Step-Video's vae_v2.safetensors"):
        load_vae(tmp_path / "vae.safetensors")
