"""The HunyuanVideo VAE: fp32 parity with diffusers and the official code on tiny random weights (whole clips,
temporal windows, spatial tiles), streaming, the tiling seam bound, every file layout, detection, the latent format.

Tiny models keep the real architecture (4 levels, 16 latent channels, 2 layers per block, mid attention) with
widths 8–32 and 4 norm groups; files without a config.json (ComfyUI's single file) need widths 32 divides.
"""
import importlib
import json
import os
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from openreel.errors import DetectionError, InputError
from openreel.latents import empty_latent, format_of, latent_format, preview
from openreel.model_loaders.checkpoint import open_checkpoint
from openreel.model_loaders.core import module_of
from openreel.model_loaders.identify import identify
from openreel.model_loaders.vae import load_vae
from openreel.models.common.tiling import SEQUENTIAL, blend, strided_spans
from openreel.models.hunyuan import vae as hunyuan_vae
from openreel.models.hunyuan.vae import (SCALING_FACTOR, HunyuanVAE, HunyuanVAEConfig, frame_causal_attention,
                                         temporal_windows)
from references import randomize_vae, rel_err, require

TINY = HunyuanVAEConfig(block_out=(8, 16, 32, 32), norm_groups=4)
WIDE = HunyuanVAEConfig(block_out=(32, 64, 96, 96))          # 32 norm groups, as a file without config.json says
SHORT = dict(temporal_tile=4, temporal_overlap=1)              # diffusers' default windows (16 frames, stride 12)


def diffusers_vae(cfg=TINY):
    require("diffusers")
    from diffusers import AutoencoderKLHunyuanVideo

    ref = randomize_vae(AutoencoderKLHunyuanVideo(block_out_channels=cfg.block_out, norm_num_groups=cfg.norm_groups))
    ref.use_framewise_encoding = ref.use_framewise_decoding = False  # diffusers' default is windows of 16 frames
    return ref


def ours_from(ref, cfg=TINY):
    ours = HunyuanVAE(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # diffusers names are ours
    return ours


def frames(count, height, width, seed=1):
    return torch.rand(1, 3, count, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def latent(count, height, width, seed=2):
    return torch.randn(1, 16, count, height, width, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------- parity with diffusers
def test_encode_decode_match_diffusers():
    ref = diffusers_vae()
    ours = ours_from(ref)
    x = frames(9, 32, 48)
    with torch.no_grad():
        mu = ref.encode(x).latent_dist.mode()  # the raw posterior mean; pipelines scale it
    out = ours.encode(x)
    assert out.shape == (1, 16, 3, 4, 6)
    assert rel_err(out, mu * SCALING_FACTOR) <= 1e-5

    z = latent(4, 4, 6)
    with torch.no_grad():
        raw = ref.decode(z / SCALING_FACTOR).sample
    assert (raw.abs() > 1).float().mean() < 0.02  # the comparison sees nearly every value unclamped
    video = ours.decode(z)
    assert video.shape == (1, 3, 13, 32, 48)
    assert rel_err(video, raw.clamp(-1, 1)) <= 1e-5


@pytest.mark.parametrize("windows", ["diffusers", "official"])
def test_temporal_windows_match_diffusers(windows):
    # diffusers' default windows (16 pixel frames, stride 12) and the official ones (64, stride 48), including a
    # window that only repeats the end of the one before (17 latent frames) and a short last window.
    ref = diffusers_vae()
    ref.use_framewise_encoding = ref.use_framewise_decoding = True
    if windows == "official":
        ref.enable_tiling(tile_sample_min_num_frames=64, tile_sample_stride_num_frames=48)
        ref.use_tiling = False
    cfg = TINY if windows == "official" else replace(TINY, **SHORT)
    ours = ours_from(ref, cfg)
    tile = 4 * cfg.temporal_tile
    for count in (tile + 1, 2 * tile + 5):
        x = frames(count, 16, 16)
        with torch.no_grad():
            expected = ref.encode(x).latent_dist.mode() * SCALING_FACTOR
        assert rel_err(ours.encode(x), expected) <= 1e-5, count
    for count in (cfg.temporal_tile + 1, 2 * cfg.temporal_tile + 2):
        z = latent(count, 2, 2)
        with torch.no_grad():
            expected = ref.decode(z / SCALING_FACTOR).sample.clamp(-1, 1)
        assert rel_err(ours.decode(z), expected) <= 1e-5, count


def test_spatial_tiles_and_windows_match_diffusers():
    # 64-pixel tiles every 48 pixels (8 latent cells every 6): a 10×7 latent frame has rows [0, 8), [6, 10) and
    # columns [0, 7), [6, 7) (a tile one cell wide), blended as diffusers blends them in place (rows first, then
    # columns); and 2 temporal windows: tiled in space, ours (official windows untiled) takes diffusers' short
    # temporal windows too, a quarter of the memory.
    ref = diffusers_vae()
    ref.use_framewise_encoding = ref.use_framewise_decoding = True
    ref.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64, tile_sample_stride_height=48,
                      tile_sample_stride_width=48)
    ours = ours_from(ref, TINY)
    x = frames(17, 80, 56)
    with torch.no_grad():
        expected = ref.encode(x).latent_dist.mode() * SCALING_FACTOR
    assert rel_err(ours.encode(x, tile_size=64, tile_overlap=16), expected) <= 1e-5
    z = latent(5, 10, 7)
    with torch.no_grad():
        expected = ref.decode(z / SCALING_FACTOR).sample.clamp(-1, 1)
    assert rel_err(ours.decode(z, tile_size=64, tile_overlap=16), expected) <= 1e-5


# ----------------------------------------------------------------------------------------- parity with official code
def official_module():
    """hyvideo/vae/autoencoder_kl_causal_3d.py of the checkout at HUNYUAN_VIDEO_PATH, imported without its
    package __init__ (which loads weights and the rest of hyvideo)."""
    root = os.environ.get("HUNYUAN_VIDEO_PATH")
    if not root:
        pytest.skip("set HUNYUAN_VIDEO_PATH to a checkout of Tencent-Hunyuan/HunyuanVideo to compare with its "
                    "hyvideo/vae code")
    require("diffusers")  # the official VAE builds on diffusers' classes
    for name, path in (("hyvideo_ref", Path(root) / "hyvideo"), ("hyvideo_ref.vae", Path(root) / "hyvideo" / "vae")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
    return importlib.import_module("hyvideo_ref.vae.autoencoder_kl_causal_3d")


def official_vae(**tiling):
    module = official_module()
    ref = module.AutoencoderKLCausal3D(
        latent_channels=16, down_block_types=("DownEncoderBlockCausal3D",) * 4,
        up_block_types=("UpDecoderBlockCausal3D",) * 4, block_out_channels=TINY.block_out, layers_per_block=2,
        norm_num_groups=TINY.norm_groups, time_compression_ratio=4, spatial_compression_ratio=8, **tiling)
    return randomize_vae(ref)


def test_encode_decode_match_the_official_code():
    ref = official_vae()
    ours = ours_from(ref)
    x = frames(9, 32, 48)
    with torch.no_grad():
        mu = ref.encode(x).latent_dist.mode()
    assert rel_err(ours.encode(x), mu * SCALING_FACTOR) <= 1e-5
    z = latent(4, 4, 6)
    with torch.no_grad():
        expected = ref.decode(z / SCALING_FACTOR).sample.clamp(-1, 1)
    assert rel_err(ours.decode(z), expected) <= 1e-5


def test_official_tiling_matches_the_official_code():
    # The official tiles are sample_size pixels every ¾ of that, windows sample_tsize frames every ¾ of that.
    ref = official_vae(sample_size=64, sample_tsize=16)
    ref.enable_tiling()
    ours = ours_from(ref, replace(TINY, **SHORT))
    x = frames(17, 80, 56)
    with torch.no_grad():
        mu = ref.encode(x).latent_dist.mode()
    assert rel_err(ours.encode(x, tile_size=64), mu * SCALING_FACTOR) <= 1e-5
    z = latent(5, 10, 7)
    with torch.no_grad():
        expected = ref.decode(z / SCALING_FACTOR).sample.clamp(-1, 1)
    assert rel_err(ours.decode(z, tile_size=64), expected) <= 1e-5


# ----------------------------------------------------------------------------------------- attention, streaming
def test_frame_causal_attention_is_the_masked_attention(monkeypatch):
    monkeypatch.setattr(hunyuan_vae, "ATTENTION_SCORES", 50)  # query blocks of a few rows
    q, k, v = (torch.randn(2, 3 * 6, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    frame = torch.arange(18) // 6
    mask = frame[None, :] <= frame[:, None]  # a query sees keys of its own and earlier frames
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(frame_causal_attention(q, k, v, 6), expected, atol=1e-6)


def test_official_windows():
    # 129 frames = 33 latent frames; a window of only its first frame (latent 36 of 37) is left out
    decode = temporal_windows(34, 16, 12, lambda t: 4 * t, 16)
    assert [(i, o) for i, o, _ in decode] == [((0, 17), (0, 65)), ((12, 29), (49, 113)), ((24, 34), (97, 133))]
    assert [(i, o) for i, o, _ in temporal_windows(37, 16, 12, lambda t: 4 * t, 16)][-1] == ((24, 37), (97, 145))
    assert torch.allclose(decode[0][2][-16:] + decode[1][2][:16], torch.ones(16))
    assert decode[1][2][0] == 0 and decode[1][2][15] == 15 / 16  # ramps from each window's first frame, as the official
    encode = temporal_windows(133, 64, 48, lambda f: f // 4, 4)
    assert [(i, o) for i, o, _ in encode] == [((0, 65), (0, 17)), ((48, 113), (13, 29)), ((96, 133), (25, 34))]
    assert temporal_windows(65, 64, 48, lambda f: f // 4, 4)[0][:2] == ((0, 65), (0, 17))  # 65 frames: one window


@pytest.mark.parametrize("tile_size", [None, 64])
def test_decode_iter_streams_what_decode_returns(tile_size):
    ours = randomize_vae(HunyuanVAE(replace(TINY, **SHORT)))
    z = latent(10, 2, 10)  # windows of latent frames [0, 5), [3, 8), [6, 10); 64-pixel tiles: 2 of them
    chunks = list(ours.decode_iter(z, tile_size))
    assert [c.shape[2] for c in chunks] == [13, 12, 12]
    assert torch.equal(torch.cat(chunks, 2), ours.decode(z, tile_size))


def test_one_tile_covering_the_frame_is_the_untiled_run():
    ours = randomize_vae(HunyuanVAE(TINY))
    x = frames(9, 32, 48)
    assert torch.equal(ours.encode(x, tile_size=512), ours.encode(x))
    z = latent(3, 4, 6)
    assert torch.equal(ours.decode(z, tile_size=512), ours.decode(z))


def test_large_tensors_run_in_slabs(monkeypatch):
    # On CUDA one convolution must not take or make 2³¹ elements; past LARGEST, convs run in slabs of rows.
    ours = randomize_vae(HunyuanVAE(TINY))
    x, z = frames(5, 32, 48), latent(2, 4, 6)
    calls = []
    monkeypatch.setattr(torch.nn.Conv3d, "forward",
                        lambda self, x: calls.append(1) or self._conv_forward(x, self.weight, self.bias))
    encoded, decoded = ours.encode(x), ours.decode(z)
    whole = len(calls)
    monkeypatch.setattr(hunyuan_vae, "LARGEST", 3000)
    assert torch.allclose(ours.encode(x), encoded, atol=1e-6) and torch.allclose(ours.decode(z), decoded, atol=1e-6)
    assert len(calls) - whole > 5 * whole  # most convs ran in several slabs


# Receptive radius of a tile's cut border, measured by perturbing one column with GroupNorm frozen and attention off:
# decoder 138 pixels (11 convs on the latent grid, 7 at 1/4 and 1/2 of the output size, 8 on it: 17.25 cells),
# encoder 13.5 cells.
DECODE_REACH, ENCODE_REACH = 144, 14  # pixels, latent cells


def seam_band(size, tiles, overlap, scale, reach):
    """Positions (in output elements) where a tile with nonzero weight lies within `reach` of its own cut border."""
    spans = strided_spans(size // scale, *tiles)
    _, weights = blend([((0, 1), span) for span in spans], overlap, scale, torch.device("cpu"), SEQUENTIAL)
    band = torch.zeros(size, dtype=torch.bool)
    for (s, e), weight in zip(spans, weights):
        s, e = s * scale, e * scale
        near = torch.arange(s, e)
        near = ((s > 0) & (near - s < reach)) | ((e < size) & (e - near <= reach))
        band[s:e] |= near & (weight[0] > 0)
    return band


def frozen_group_norms(monkeypatch):
    """Make every GroupNorm normalize with the statistics it saw in the first run after this call (record them on
    the first call of each norm, replay them on later calls): a tile then sees the whole frame's statistics."""
    stats = {}

    def forward(self, x):
        groups = x.unflatten(1, (self.num_groups, -1)).flatten(2)
        if self not in stats:
            stats[self] = groups.mean(-1), groups.var(-1, unbiased=False)
        mean, var = (s.view(*s.shape, 1, 1, 1, 1) for s in stats[self])
        y = (x.unflatten(1, (self.num_groups, -1)) - mean) / torch.sqrt(var + self.eps)
        return y.flatten(1, 2) * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)

    monkeypatch.setattr(torch.nn.GroupNorm, "forward", forward)
    return stats


def test_tiling_changes_only_the_seam_band(monkeypatch):
    """The bound: with GroupNorm using the whole frame's statistics and the mid attention silenced, tiled ==
    untiled to rounding everywhere except the band a tile seam can reach. With them, a tile's GroupNorm statistics
    and its attention see only its own pixels and the difference spreads over the frame: measured on these random
    weights 10.3% (decode) and 7.4% (encode) relative, the approximation the official tiled VAE makes everywhere;
    its size depends on trained weights, not on this code."""
    ours = randomize_vae(HunyuanVAE(TINY))
    z, x = latent(2, 2, 64), frames(5, 16, 512)
    assert 0.05 < rel_err(ours.decode(z, 384, 128), ours.decode(z)) <= 0.11
    assert 0.03 < rel_err(ours.encode(x, 384, 128), ours.encode(x)) <= 0.08

    with torch.no_grad():
        for attention in (ours.encoder.mid_block.attentions[0], ours.decoder.mid_block.attentions[0]):
            attention.to_out[0].weight.zero_()
    # 64 cells wide, tiles of 48 every 32: [0, 48) and [32, 64), blended over [32, 48).
    frozen_group_norms(monkeypatch)
    untiled = ours.decode(z)
    assert (untiled.abs() >= 1).float().mean() < 0.02
    err = (ours.decode(z, 384, 128) - untiled).abs().amax(dim=(0, 1, 2, 3))
    seam = seam_band(512, (48, 32), 16, 8, DECODE_REACH)
    assert err[~seam].max() <= 1e-6 and err[seam].max() > 1e-3

    frozen_group_norms(monkeypatch)
    untiled = ours.encode(x)
    err = (ours.encode(x, 384, 128) - untiled).abs().amax(dim=(0, 1, 2, 3))
    seam = seam_band(64, (48, 32), 16, 1, ENCODE_REACH)
    assert err[~seam].max() <= 1e-6 and err[seam].max() > 1e-4


# ----------------------------------------------------------------------------------------- input errors
def test_bad_inputs_are_input_errors():
    ours = HunyuanVAE(TINY)
    with pytest.raises(InputError, match=r"8 frames.*4n\+1.*e\.g\. 5"):
        ours.encode(torch.zeros(1, 3, 8, 32, 32))
    with pytest.raises(InputError, match="multiples of 8"):
        ours.encode(torch.zeros(1, 3, 5, 32, 44))
    with pytest.raises(InputError, match="HunyuanVideo VAE decodes"):
        ours.decode(torch.zeros(1, 48, 2, 4, 4))
    with pytest.raises(InputError, match="overlap smaller than the tile"):
        ours.decode(torch.zeros(1, 16, 2, 4, 4), tile_size=64, tile_overlap=64)


# ----------------------------------------------------------------------------------------- files
def to_comfy(key: str) -> str:
    """Our (diffusers / official) name → the LDM name ComfyUI's hunyuan_video_vae_bf16.safetensors uses (ComfyUI's
    diffusers_convert tables: decoder levels counted from the output side, mid.block_1 / attn_1 / block_2)."""
    for old, new in ((".conv_shortcut.", ".nin_shortcut."), (".conv_norm_out.", ".norm_out."),
                     (".mid_block.resnets.0.", ".mid.block_1."), (".mid_block.resnets.1.", ".mid.block_2."),
                     (".mid_block.attentions.0.group_norm.", ".mid.attn_1.norm."),
                     (".mid_block.attentions.0.to_out.0.", ".mid.attn_1.proj_out."),
                     (".mid_block.attentions.0.to_", ".mid.attn_1.")):
        key = key.replace(old, new)
    parts = key.split(".")
    if parts[1] == "down_blocks":
        parts[1:5] = ["down", parts[2], "block" if parts[3] == "resnets" else "downsample"] + \
            ([parts[4]] if parts[3] == "resnets" else [])
    elif parts[1] == "up_blocks":
        parts[1:5] = ["up", str(3 - int(parts[2])), "block" if parts[3] == "resnets" else "upsample"] + \
            ([parts[4]] if parts[3] == "resnets" else [])
    return ".".join(parts)


def comfy_file(state: dict, prefix: str = "") -> dict:
    """The state dict as ComfyUI saves it: LDM names, attention projections as 1×1×1 conv kernels."""
    out = {}
    for key, value in state.items():
        name = to_comfy(key)
        if ".mid.attn_1." in name and name.endswith("weight") and value.dim() == 2:
            value = value[:, :, None, None, None]
        out[prefix + name] = value.contiguous()
    return out


OFFICIAL_CONFIG = {  # the official vae/config.json keys (AutoencoderKLCausal3D), with the tiny widths
    "_class_name": "AutoencoderKLCausal3D", "act_fn": "silu", "block_out_channels": list(TINY.block_out),
    "down_block_types": ["DownEncoderBlockCausal3D"] * 4, "up_block_types": ["UpDecoderBlockCausal3D"] * 4,
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "layers_per_block": 2,
    "norm_num_groups": TINY.norm_groups, "sample_size": 256, "sample_tsize": 64, "scaling_factor": 0.476986,
    "time_compression_ratio": 4, "spatial_compression_ratio": 8, "mid_block_add_attention": True}


def test_every_layout_loads_to_the_same_model(tmp_path):
    ref = diffusers_vae()
    state = ref.state_dict()
    z = latent(2, 2, 3)
    expected = ours_from(ref).decode(z)

    ref.save_pretrained(tmp_path / "diffusers")
    (tmp_path / "official").mkdir()
    torch.save(state, tmp_path / "official" / "pytorch_model.pt")
    (tmp_path / "official" / "config.json").write_text(json.dumps(OFFICIAL_CONFIG))
    (tmp_path / "wrapped").mkdir()  # a training checkpoint: {"state_dict": {"vae.…": …}}, read by the official loader
    torch.save({"state_dict": {"vae." + k: v for k, v in state.items()}}, tmp_path / "wrapped" / "pytorch_model.pt")
    (tmp_path / "wrapped" / "config.json").write_text(json.dumps(OFFICIAL_CONFIG))
    for path in ("diffusers", "official", "wrapped", "official/pytorch_model.pt"):
        handle = load_vae(tmp_path / path)
        assert (handle.family, handle.latent_format, handle.compute_dtype) == ("hunyuan", "hunyuan", "fp32")
        module = module_of(handle)
        assert module.cfg == TINY
        assert torch.equal(module.decode(z), expected), path


def test_comfyui_single_files_load(tmp_path):
    ours = randomize_vae(HunyuanVAE(WIDE))  # no config.json beside a single file: 32 norm groups, as released
    state = ours.state_dict()
    z = latent(2, 2, 3)
    expected = ours.decode(z)
    save_file(comfy_file(state), tmp_path / "hunyuan_video_vae_bf16.safetensors")
    combined = comfy_file(state, "first_stage_model.")
    combined["model.diffusion_model.double_blocks.0.img_attn_qkv.weight"] = torch.zeros(3, 2)  # ignored
    save_file(combined, tmp_path / "combined.safetensors")
    for name in ("hunyuan_video_vae_bf16.safetensors", "combined.safetensors"):
        module = module_of(load_vae(tmp_path / name))
        assert module.cfg == replace(WIDE, attention_kernels=True)
        assert torch.equal(module.decode(z), expected), name
    linear = {k: v.flatten(1) if v.dim() == 5 and ".attn_1." in k else v for k, v in comfy_file(state).items()}
    save_file({"vae." + k: v.to(torch.bfloat16) for k, v in linear.items()}, tmp_path / "bf16.safetensors")
    module = module_of(load_vae(tmp_path / "bf16.safetensors", dtype="bf16"))
    assert module.cfg == WIDE and module.post_quant_conv.weight.dtype == torch.bfloat16
    assert rel_err(module.decode(z), expected) < 0.05  # bf16 weights and activations


# ----------------------------------------------------------------------------------------- detection
def _keys_only(path: Path, keys) -> Path:
    save_file({k: torch.zeros(1) for k in keys}, path)
    return path


def _family(path: Path) -> str | None:
    found = identify(open_checkpoint(path), "vae")
    return getattr(found.family, "name", None)


def test_wan_and_hunyuan_vaes_are_told_apart(tmp_path):
    require("diffusers")
    from diffusers import AutoencoderKLWan

    from openreel.models.wan.latents import diffusers_to_official

    wan = AutoencoderKLWan(base_dim=8, z_dim=16)
    wan.save_pretrained(tmp_path / "wan")
    save_file({diffusers_to_official(k, False): v.contiguous() for k, v in wan.state_dict().items()},
              tmp_path / "wan_2.1_vae.safetensors")
    for path in ("wan", "wan_2.1_vae.safetensors"):
        assert _family(tmp_path / path) == "wan" and load_vae(tmp_path / path).latent_format == "wan21"
    state = diffusers_vae().state_dict()
    save_file(state, tmp_path / "hy.safetensors")
    save_file(comfy_file(state), tmp_path / "hy_comfy.safetensors")
    assert _family(tmp_path / "hy.safetensors") == _family(tmp_path / "hy_comfy.safetensors") == "hunyuan"


@pytest.mark.parametrize("model", ["AutoencoderKLHunyuanVideo15", "AutoencoderKLLTXVideo", "AutoencoderKLCogVideoX",
                                   "AutoencoderKLHunyuanImageRefiner", "AutoencoderKL", "AutoencoderKLAllegro"])
def test_other_diffusers_vaes_are_not_taken_for_it(tmp_path, model):
    # Their keys share much with HunyuanVideo's (causal convs under `.conv`, `conv_in.conv`, mid attention).
    require("diffusers")
    import diffusers

    with torch.device("meta"):
        keys = list(getattr(diffusers, model)().state_dict())
    path = _keys_only(tmp_path / "vae.safetensors", keys)
    assert _family(path) != "hunyuan"
    with pytest.raises(DetectionError, match="not a VAE OpenReel knows|recognizes but cannot run"):
        load_vae(path)


def test_incomplete_or_other_hunyuan_like_vaes_are_refused(tmp_path):
    state = randomize_vae(HunyuanVAE(WIDE)).state_dict()
    decoder_only = {k: v for k, v in state.items() if not k.startswith(("encoder.", "quant_conv."))}
    save_file(decoder_only, tmp_path / "decoder.safetensors")
    with pytest.raises(DetectionError, match="lacks encoder.conv_in.conv.weight, quant_conv.weight"):
        load_vae(tmp_path / "decoder.safetensors")
    wide_latent = {**state, "decoder.conv_in.conv.weight": torch.zeros(64, 32, 3, 3, 3)}
    save_file(wide_latent, tmp_path / "z32.safetensors")
    with pytest.raises(DetectionError, match="32 latent channels"):
        load_vae(tmp_path / "z32.safetensors")
    save_file(comfy_file(diffusers_vae().state_dict()), tmp_path / "narrow.safetensors")  # no config.json
    with pytest.raises(DetectionError, match=r"\(8, 16, 32, 32\), which 32 norm groups do not divide"):
        load_vae(tmp_path / "narrow.safetensors")


# ----------------------------------------------------------------------------------------- latent format, nodes
def test_latent_format():
    fmt = latent_format("hunyuan")
    assert (fmt.channels, fmt.temporal_stride, fmt.spatial_stride, fmt.size_multiple) == (16, 4, 8, 16)
    assert fmt.mean == (0.0,) * 16 and fmt.std == (1 / 0.476986,) * 16 and len(fmt.preview_factors) == 16
    assert empty_latent(fmt, 1280, 720, 129)["samples"].shape == (1, 16, 33, 90, 160)
    assert preview(torch.randn(1, 16, 3, 8, 12), fmt).size == (12, 8)  # one pixel per latent cell


def test_untagged_16_channel_latents_take_the_consumers_format():
    native = {"samples": torch.zeros(1, 16, 3, 4, 4)}  # a native ComfyUI node's latent: no tag
    with pytest.raises(InputError, match="matches 2 known formats"):
        format_of(native)
    assert format_of(native, "hunyuan").name == "hunyuan" and format_of(native, "wan21").name == "wan21"


def test_decode_video_streams_hunyuan_latents(tmp_path):
    from openreel.encoding.video import decode_video, encode_video

    ref = diffusers_vae()
    ref.save_pretrained(tmp_path / "vae")
    handle = load_vae(tmp_path / "vae")
    z = latent(2, 2, 3)
    chunks = list(decode_video(handle, z))
    assert torch.equal(torch.cat(chunks), ((module_of(handle).decode(z)[0] + 1) / 2).permute(1, 2, 3, 0))
    assert encode_video(handle, frames(5, 16, 24)).shape == (1, 16, 2, 2, 3)
