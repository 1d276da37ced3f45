"""Wan2.1 / Wan2.2 VAEs: fp32 parity with the official code and diffusers on tiny random weights, tiling, loading.

Tiny models keep the real architecture (stages, strides, latent widths 16 / 48) with base widths of 8–12.
"""
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from openreel.errors import DetectionError, InputError
from openreel.handles import VAEHandle
from openreel.model_loaders.core import module_of as vae_module
from openreel.model_loaders.vae import load_vae
from openreel.models.wan.latents import diffusers_to_official
from openreel.models.common.tiling import stream, tile_by_tile
from openreel.models.wan.vae import WAN21, WAN22, WanVAE
from references import load_official, require

# kind → (official module, official kwargs, our config, frame height, frame width)
TINY = {
    "wan21": ("vae2_1", dict(dim=8, z_dim=16), replace(WAN21, dim=8, dec_dim=8), 32, 48),
    "wan22": ("vae2_2", dict(dim=8, dec_dim=12, z_dim=48), replace(WAN22, dim=8, dec_dim=12), 64, 80),
}
DIFFUSERS_TINY = {
    "wan21": dict(base_dim=8, z_dim=16),
    "wan22": dict(base_dim=8, decoder_base_dim=12, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
                  patch_size=2, scale_factor_spatial=16),
}


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def randomize(module, zero_attention=False):
    """Random weights of unit-scale activations (the default init zeroes the attention output); a damped output
    conv keeps decoded values mostly inside [-1, 1], so the clamp hides little of the comparison."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif p.dim() > 1:
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
            else:
                p.copy_(0.1 * torch.randn_like(p))
            if name.startswith("decoder.") and name.endswith(("head.2.weight", "conv_out.weight")):
                p.mul_(0.3)
            if zero_attention and name.endswith("middle.1.proj.weight"):
                p.zero_()
    return module.eval()


def official(kind):
    name, kwargs, cfg, _, _ = TINY[kind]
    ref = randomize(load_official(name).WanVAE_(**kwargs, temperal_downsample=[False, True, True]))
    ours = WanVAE(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # official names load as they are
    return ref, ours


def video(kind, frames=9):
    _, _, _, h, w = TINY[kind]
    return torch.rand(1, 3, frames, h, w) * 2 - 1


def moments(cfg):
    return (torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1), torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1))


# ----------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("kind", ["wan21", "wan22"])
def test_encode_decode_match_official(kind):
    ref, ours = official(kind)
    mean, std = moments(ours.cfg)
    x = video(kind)
    with torch.no_grad():
        expected = ref.encode(x, [mean.flatten(), 1 / std.flatten()])  # official encode normalizes itself
    latent = ours.encode(x)
    assert latent.shape == (1, ours.cfg.z_dim, 3, *(n // ours.cfg.spatial_stride for n in x.shape[3:]))
    assert rel(latent, expected) <= 1e-5

    z = torch.randn(1, ours.cfg.z_dim, 4, *latent.shape[3:])
    with torch.no_grad():
        raw = ref.decode(z, [mean.flatten(), 1 / std.flatten()])
    assert (raw.abs() > 1).float().mean() < 0.02  # the comparison sees nearly every value unclamped
    out = ours.decode(z)
    assert out.shape == (1, 3, 13, *x.shape[3:])
    assert rel(out, raw.clamp(-1, 1)) <= 1e-5


@pytest.mark.parametrize("kind", ["wan21", "wan22"])
def test_encode_decode_match_diffusers(kind):
    require("diffusers")
    from diffusers import AutoencoderKLWan

    ref = randomize(AutoencoderKLWan(**DIFFUSERS_TINY[kind]))
    residual = kind == "wan22"
    ours = WanVAE(TINY[kind][2]).eval()
    ours.load_state_dict({diffusers_to_official(k, residual): v for k, v in ref.state_dict().items()}, strict=True)
    mean, std = moments(ours.cfg)
    x = video(kind)
    with torch.no_grad():
        mu = ref.encode(x).latent_dist.mode()  # diffusers returns the raw mean; pipelines normalize it
    assert rel(ours.encode(x), (mu - mean) / std) <= 1e-5

    z = torch.randn(1, ours.cfg.z_dim, 4, *mu.shape[3:])
    with torch.no_grad():
        expected = ref.decode(z * std + mean).sample  # clamped by diffusers
    assert rel(ours.decode(z), expected) <= 1e-5


def test_latent_statistics_are_the_official_ones(monkeypatch):
    require("diffusers")
    from diffusers import AutoencoderKLWan

    mods = {name: load_official(name) for name in ("vae2_1", "vae2_2")}
    for mod in mods.values():  # the wrappers would load a checkpoint; only their mean/std lists are wanted
        monkeypatch.setattr(mod, "_video_vae", lambda **kwargs: torch.nn.Identity())
    v21 = mods["vae2_1"].Wan2_1_VAE(vae_pth=None, device="cpu")
    v22 = mods["vae2_2"].Wan2_2_VAE(vae_pth=None, device="cpu")
    assert torch.equal(torch.tensor(WAN21.latents_mean), v21.mean)
    assert torch.equal(torch.tensor(WAN21.latents_std), v21.std)
    assert torch.equal(torch.tensor(WAN22.latents_mean), v22.scale[0])
    assert torch.allclose(1 / torch.tensor(WAN22.latents_std), v22.scale[1])
    assert list(WAN21.latents_mean) == AutoencoderKLWan().config.latents_mean


# ----------------------------------------------------------------------------------------- streaming and tiling
@pytest.mark.parametrize("tile_size", [None, 48])
def test_decode_iter_streams_what_decode_returns(tile_size):
    # Streaming runs chunk-major, `decode` tile-major: the same sums in the same order, so equal bits.
    # Tiled: 3×3-cell tiles overlapping by one cell on the 4×5 latent grid.
    _, ours = official("wan22")
    z = torch.randn(1, 48, 3, 4, 5)
    chunks = list(ours.decode_iter(z, tile_size, tile_overlap=16))
    assert [c.shape[2] for c in chunks] == [1, 4, 4]
    assert torch.equal(torch.cat(chunks, 2), ours.decode(z, tile_size, tile_overlap=16))


def test_one_tile_covering_the_frame_is_the_untiled_run():
    _, ours = official("wan21")
    x = video("wan21")
    assert torch.equal(ours.encode(x, tile_size=512), ours.encode(x))
    z = torch.randn(1, 16, 2, 4, 6)
    assert torch.equal(ours.decode(z, tile_size=512), ours.decode(z))


def test_tile_blending_weights_sum_to_one():
    # An identity step through 2×3 overlapping tiles (the last ones shifted to the border) gives back the input.
    x = torch.randn(1, 2, 3, 20, 29)
    tiles = [(r, c) for r in [(0, 12), (8, 20)] for c in [(0, 12), (8, 20), (17, 29)]]
    chunks = [(0, 1), (1, 3)]
    identity = (lambda xc, cache: xc, x, chunks, tiles, 4, 1, 1, torch.device("cpu"))
    assert torch.allclose(torch.cat(list(stream(*identity)), 2), x, atol=1e-6)
    assert torch.allclose(tile_by_tile(*identity, frames_out=3), x, atol=1e-6)


# Receptive radius in latent cells, measured by perturbing one column. For the decoder it is the sum over its 3×3
# convs of their grid step: 11 on the latent grid, 7 at 1/2 and 1/4 of it, 8 at 1/8 (Wan2.1: 11·8 + 7·4 + 7·2 + 8·1
# = 138 px = 17.25 cells; Wan2.2 twice that in pixels, the same in cells). The encoder reaches 14 cells.
DECODE_REACH, ENCODE_REACH = 18, 14


@pytest.mark.parametrize("kind", ["wan21", "wan22"])
def test_tiling_changes_only_the_seam_band(kind):
    """The bound: with the mid-block attention silenced (its output conv zero, as the official init leaves it),
    tiled == untiled to rounding everywhere except the band a tile seam can reach: positions where a tile with
    nonzero weight lies within its receptive radius of its own cut border. With attention, tiles see only their
    own pixels in that one layer, and the difference spreads over the frame: that is the approximation tiled VAE
    decoding (ComfyUI, diffusers) makes everywhere; its size depends on trained weights, not on this code."""
    cfg = TINY[kind][2]
    ours = randomize(WanVAE(cfg), zero_attention=True)
    s = cfg.spatial_stride
    # 80 cells wide in two tiles: cells [0, 48) and [32, 80), blended over [32, 48).
    tile, overlap, first_end, second_start = 48 * s, 16 * s, 48, 32

    def band(cells, reach):
        return (cells >= min(second_start, first_end - reach)) & (cells < max(first_end, second_start + reach))

    z = torch.randn(1, cfg.z_dim, 2, 2, 80)
    err = (ours.decode(z, tile, overlap) - ours.decode(z)).abs().amax(dim=(0, 1, 2, 3))
    seam = band(torch.arange(80 * s) // s, DECODE_REACH)
    assert err[~seam].max() <= 1e-6 and err[seam].max() > 1e-3

    x = torch.rand(1, 3, 5, 2 * s, 80 * s) * 2 - 1
    err = (ours.encode(x, tile, overlap) - ours.encode(x)).abs().amax(dim=(0, 1, 2, 3))
    seam = band(torch.arange(80), ENCODE_REACH)
    assert err[~seam].max() <= 1e-6 and err[seam].max() > 1e-4


# ----------------------------------------------------------------------------------------- input errors
def test_frame_counts_must_be_4n_plus_1():
    _, ours = official("wan21")
    with pytest.raises(InputError, match=r"8 frames.*4n\+1.*e\.g\. 5"):
        ours.encode(video("wan21", frames=8))


def test_bad_shapes_and_tiles_are_input_errors():
    _, ours = official("wan21")
    with pytest.raises(InputError, match="multiples of 8"):
        ours.encode(torch.zeros(1, 3, 5, 32, 44))
    with pytest.raises(InputError, match="wan21 VAE decodes"):
        ours.decode(torch.zeros(1, 48, 2, 4, 4))
    with pytest.raises(InputError, match="overlap smaller than the tile"):
        ours.decode(torch.zeros(1, 16, 2, 4, 4), tile_size=64, tile_overlap=64)


# ----------------------------------------------------------------------------------------- loading
def _expected_decode(ref_state, kind, z):
    ours = WanVAE(TINY[kind][2]).eval()
    ours.load_state_dict(ref_state)
    return ours.decode(z)


@pytest.mark.parametrize("kind", ["wan21", "wan22"])
def test_every_layout_loads_to_the_same_model(tmp_path, kind):
    ref, _ = official(kind)
    state = ref.state_dict()
    z = torch.randn(1, TINY[kind][2].z_dim, 2, 2, 3)
    expected = _expected_decode(state, kind, z)

    torch.save(state, tmp_path / "vae.pth")
    prefixed = {"first_stage_model." + k: v.contiguous() for k, v in state.items()}
    prefixed["model.diffusion_model.head.modulation"] = torch.zeros(1, 2, 8)  # a combined file: the rest is ignored
    save_file(prefixed, tmp_path / "combined.safetensors")
    save_file({"vae." + k: v.to(torch.bfloat16).contiguous() for k, v in state.items()},
              tmp_path / "vae_bf16.safetensors")

    require("diffusers")
    from diffusers import AutoencoderKLWan

    diffusers_model = AutoencoderKLWan(**DIFFUSERS_TINY[kind])
    residual = kind == "wan22"
    to_diffusers = {diffusers_to_official(k, residual): k for k in diffusers_model.state_dict()}
    diffusers_model.load_state_dict({to_diffusers[k]: v for k, v in state.items()}, strict=True)
    diffusers_model.save_pretrained(tmp_path / "diffusers")

    for path in ("vae.pth", "combined.safetensors", "diffusers"):
        handle = load_vae(tmp_path / path)
        assert handle.latent_format == kind and handle.compute_dtype == "fp32"
        module = vae_module(handle)
        assert module.cfg == TINY[kind][2]
        assert torch.equal(module.decode(z), expected), path

    handle = load_vae(tmp_path / "vae_bf16.safetensors", dtype="bf16")
    module = vae_module(handle)
    assert module.conv2.weight.dtype == torch.bfloat16
    assert rel(module.decode(z), expected) < 0.05  # bf16 weights and activations


def _save(tmp_path, tensors, name="file.safetensors"):
    save_file({k: torch.zeros(shape) for k, shape in tensors.items()}, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("tensors, message", [
    ({"model.diffusion_model.head.modulation": (1, 2, 8),
      "model.diffusion_model.patch_embedding.weight": (8, 16, 1, 2, 2)},
     "is a Wan diffusion transformer, not a VAE"),
    ({"shared.weight": (10, 8), "encoder.block.0.layer.0.SelfAttention.q.weight": (8, 8)}, "a text encoder"),
    ({"visual.patch_embedding.weight": (8, 3, 14, 14), "textual.blocks.0.attn.q.weight": (8, 8)},
     "a CLIP vision encoder"),
    ({"decoder.conv_in.conv.weight": (8, 4, 3, 3, 3),
      "decoder.up_blocks.0.resnets.0.conv1.conv.weight": (8, 8, 3, 3, 3)},
     "is a video VAE, which"),  # a causal video VAE of no known family (LTX, CogVideoX … look like this)
    ({"decoder.up.0.block.0.conv1.weight": (8, 8, 3, 3), "decoder.conv_in.weight": (8, 4, 3, 3)}, "an image VAE"),
    ({"foo.weight": (3, 3)}, "not a VAE OpenReel knows"),
])
def test_wrong_files_say_what_they_are(tmp_path, tensors, message):
    with pytest.raises(DetectionError, match=message):
        load_vae(_save(tmp_path, tensors))


def test_incomplete_or_unreleased_wan_vaes_are_refused(tmp_path):
    ref, _ = official("wan21")
    state = ref.state_dict()
    decoder_only = {k: v for k, v in state.items() if not k.startswith(("encoder.", "conv1."))}
    save_file(decoder_only, tmp_path / "decoder.safetensors")
    with pytest.raises(DetectionError, match="lacks encoder.conv1.weight"):
        load_vae(tmp_path / "decoder.safetensors")
    z4 = load_official("vae2_1").WanVAE_(dim=8, z_dim=4).state_dict()
    save_file(z4, tmp_path / "z4.safetensors")
    with pytest.raises(DetectionError, match="4 latent channels"):
        load_vae(tmp_path / "z4.safetensors")


def test_handles_are_small_and_frozen():
    handle = VAEHandle(WAN21, ("a.pth",), ((1, 2),), "auto", "fp32", family="wan", latent_format="wan21")
    with pytest.raises(AttributeError):
        handle.latent_format = "wan22"
    assert handle.weights_key == ("vae", ("a.pth",), ((1, 2),), "auto", "fp32")


def test_decoding_shows_progress_and_stops_at_an_interrupt(tmp_path, monkeypatch):
    """Issue 13 item 7: VAE Decode sent no progress, and an interrupt waited for the whole decode."""
    from openreel import runtime
    from openreel.encoding.video import decode_video

    cfg = TINY["wan21"][2]
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanVAE(cfg).state_dict().items()}
    save_file({k: torch.randn(s) * 0.05 for k, s in shapes.items()}, tmp_path / "vae.safetensors")
    handle = load_vae(tmp_path / "vae.safetensors")
    updates = []

    class Recording(runtime.Progress):
        def update(self, n=1, preview=None):
            updates.append((n, self.total))
            super().update(n, preview)
    monkeypatch.setattr(runtime, "Progress", Recording)
    z = torch.randn(1, 16, 4, 4, 6)
    chunks = list(decode_video(handle, z, "off"))
    assert sum(c.shape[0] for c in chunks) == 13
    assert updates == [(1, 13), (4, 13), (4, 13), (4, 13)]  # frame by frame, as the decoder streams them

    updates.clear()
    stream = decode_video(handle, z, "off")
    next(stream)
    runtime.request_interrupt()
    with pytest.raises(runtime.Interrupted):
        next(stream)
    assert len(updates) == 2  # stopped after the chunk being decoded, not at the end
