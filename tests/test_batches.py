"""Batches end to end: a latent of n videos samples with guidance (one prompt for all), each video's noise comes from
its own seed, Save Video writes n numbered files, VAE Decode joins them with a warning, Image To Video makes one
video per start image, and image conditioning that no longer fits its latent is refused before any model runs."""
import logging

import pytest
import torch
import torch.nn.functional as F

from openreel import runtime, synthetic
from openreel.errors import InputError
from openreel.handles import TextEmbeds
from openreel.model_loaders.cache import MODULES
from openreel.nodes.encode import OpenReelVAEDecode
from openreel.nodes.loaders import OpenReelDiTLoader, OpenReelVAELoader
from openreel.nodes.sample import OpenReelEmptyLatent, OpenReelImageToVideo, OpenReelSampler
from openreel.nodes.video import OpenReelSaveVideo
from openreel.samplers.sample import make_noise, sample_diffusion_forcing
from openreel.video_io import read_video

T2V = "wan2.1_t2v_1.3B_fp16.safetensors"
I2V = "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"
TI2V = "wan2.2_ti2v_5B_fp16.safetensors"
HUNYUAN = synthetic.HUNYUAN_DIT
FRAMES = 5


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    synthetic.write_model_set(folder)
    runtime.set_models_dir(folder)
    dit = {name: OpenReelDiTLoader().load(name, "auto", "fp32")[0] for name in (T2V, I2V, TI2V, HUNYUAN)}
    vae = {kind: OpenReelVAELoader().load(name, "fp32")[0] for name, kind in synthetic.VAES.items()}
    yield dit, vae
    runtime.set_models_dir(None)
    MODULES.clear()


@pytest.fixture
def output(tmp_path):
    runtime.set_output_dir(tmp_path / "output")
    yield tmp_path / "output"
    runtime.set_output_dir(None)


def embeds():
    torch.manual_seed(0)
    return TextEmbeds(torch.randn(1, 4, synthetic.TINY_TEXT_DIM), torch.randn(1, 3, synthetic.TINY_TEXT_DIM))


def run(dit, latent, seed=7, cfg=5.0, **kw):
    return OpenReelSampler().run(dit, embeds(), latent, seed, 2, cfg, 0.0, "euler", **kw)[0]


def test_a_batch_samples_with_guidance_and_each_video_is_its_seeds_video(kit):
    dit, vae = kit
    batch = run(dit[T2V], OpenReelEmptyLatent().make(vae["wan21"], 64, 64, FRAMES, 2)[0])["samples"]
    assert batch.shape[0] == 2 and not torch.equal(batch[0], batch[1])
    for k in range(2):  # video k of the batch comes out the same made alone with seed + k
        alone = run(dit[T2V], OpenReelEmptyLatent().make(vae["wan21"], 64, 64, FRAMES, 1)[0], seed=7 + k)["samples"]
        # float32 rounding only (a batch of one and of two take different matrix kernels; CFG 5 amplifies it):
        # another seed's video differs by O(1)
        torch.testing.assert_close(batch[k:k + 1], alone, rtol=0, atol=1e-4)


def test_a_hunyuan_batch_samples_with_guidance(kit):
    dit, vae = kit
    width, pooled = synthetic.TINY_LLAMA["hidden_size"], synthetic.TINY_CLIP_TEXT["hidden_size"]
    texts = TextEmbeds(torch.randn(1, 5, width), torch.randn(1, 3, width), positive_pooled=torch.randn(1, pooled),
                       negative_pooled=torch.randn(1, pooled))
    sample = lambda batch, seed: OpenReelSampler().run(  # noqa: E731
        dit[HUNYUAN], texts, OpenReelEmptyLatent().make(vae["hunyuan"], 64, 64, FRAMES, batch)[0], seed, 2, 5.0,
        0.0, "euler")[0]["samples"]
    in_batch, alone = sample(2, 7)[1:], sample(1, 8)
    assert (in_batch - alone).norm() / alone.norm() < 1e-5  # float32 rounding of other matmul shapes only


def test_noise_follows_comfyui_batch_index():
    assert torch.equal(make_noise((2, 4, 2, 3, 3), 5), torch.cat([make_noise((1, 4, 2, 3, 3), s) for s in (5, 6)]))
    assert torch.equal(make_noise((2, 4, 2, 3, 3), 5, [3, 1]), make_noise((4, 4, 2, 3, 3), 5)[[3, 1]])


def test_save_video_writes_one_numbered_file_per_video_and_never_overwrites(kit, output):
    _, vae = kit
    latent = {"samples": torch.randn(2, 16, 2, 8, 8), "latent_format": "wan21"}
    first = OpenReelSaveVideo().save(16.0, "OpenReel/batch", 0, "yuv444p", latent=latent, vae=vae["wan21"])
    again = OpenReelSaveVideo().save(16.0, "OpenReel/batch", 0, "yuv444p", latent=latent, vae=vae["wan21"])
    names = [item["filename"] for item in first["ui"]["images"] + again["ui"]["images"]]
    assert names == [f"batch_{n:05d}_.mp4" for n in (1, 2, 3, 4)]
    decoded = OpenReelVAEDecode().decode(vae["wan21"], latent, "off")[0]
    for k, name in enumerate(names[:2]):
        frames, _ = read_video(output / "OpenReel" / name)
        assert frames.shape == (FRAMES, 64, 64, 3)
        expected = decoded[k * FRAMES:(k + 1) * FRAMES]  # file k holds video k (lossless, up to 8-bit rounding)
        assert (frames - expected.clamp(0, 1)).abs().max() < 4 / 255


def test_vae_decode_joins_a_batch_with_a_warning_naming_the_node(kit, caplog):
    _, vae = kit
    latent = {"samples": torch.randn(2, 16, 2, 8, 8), "latent_format": "wan21"}
    with caplog.at_level(logging.WARNING):
        images = OpenReelVAEDecode().decode(vae["wan21"], latent, "off")[0]
    assert images.shape == (2 * FRAMES, 64, 64, 3)
    assert "OpenReel VAE Decode: the latent holds 2 videos" in caplog.text and "OpenReel Save Video" in caplog.text
    single = OpenReelVAEDecode().decode(vae["wan21"], {**latent, "samples": latent["samples"][1:]}, "off")[0]
    torch.testing.assert_close(images[FRAMES:], single, rtol=0, atol=1e-5)


def test_image_to_video_makes_one_video_per_start_image(kit):
    dit, vae = kit
    images = torch.rand(2, 48, 64, 3)
    both = OpenReelImageToVideo().make(vae["wan21"], images, 64, 64, FRAMES)[0]
    assert both["samples"].shape[0] == 2 and both["openreel"].concat.shape[0] == 2
    for k in range(2):
        alone = OpenReelImageToVideo().make(vae["wan21"], images[k:k + 1], 64, 64, FRAMES)[0]
        torch.testing.assert_close(both["openreel"].concat[k:k + 1], alone["openreel"].concat)
    assert run(dit[I2V], both)["samples"].shape[0] == 2
    ti2v = OpenReelImageToVideo().make(vae["wan22"], images, 64, 64, FRAMES)[0]
    assert ti2v["openreel"].given.shape[0] == 2 and run(dit[TI2V], ti2v)["samples"].shape[0] == 2


def test_start_and_end_image_batches_pair_up_or_are_refused(kit, monkeypatch):
    _, vae = kit
    monkeypatch.setattr("openreel.nodes.sample.encode_image",
                        lambda handle, images: torch.zeros(len(images), 257, synthetic.TINY_CLIP_DIM))
    make = lambda n_start, n_end: OpenReelImageToVideo().make(  # noqa: E731
        vae["wan21"], torch.rand(n_start, 64, 64, 3), 64, 64, FRAMES, clip_vision="clip",
        end_image=torch.rand(n_end, 64, 64, 3))[0]
    assert make(2, 1)["openreel"].image_tokens.shape == (2, 514, synthetic.TINY_CLIP_DIM)
    assert make(1, 3)["samples"].shape[0] == 3
    with pytest.raises(InputError, match="^OpenReel Image To Video: start_image holds 2 images and end_image 3"):
        make(2, 3)


def test_diffusion_forcing_refuses_a_batch_of_start_images(kit):
    dit, vae = kit
    with pytest.raises(InputError, match="start_image holds 2 images but diffusion forcing makes one video"):
        sample_diffusion_forcing(dit[T2V], embeds(), vae["wan21"], width=64, height=64, num_frames=17,
                                 base_num_frames=17, overlap_history=5, seed=0, start_image=torch.rand(2, 64, 64, 3))


@pytest.mark.parametrize("change, message", [
    (lambda s: F.interpolate(s, scale_factor=(1, 2, 2)), "the latent is 128×128 but its image conditioning is 64×64"),
    (lambda s: s[:, :, :1], "the latent has 1 frames but its image conditioning was made for 5"),
    (lambda s: torch.cat([s[:1]] * 3), "the latent holds 3 videos but its image conditioning is for 2"),
])
def test_conditioning_a_native_latent_node_left_behind_is_refused_before_any_model_runs(kit, monkeypatch, change,
                                                                                      message):
    dit, vae = kit
    latent = OpenReelImageToVideo().make(vae["wan21"], torch.rand(2, 64, 64, 3), 64, 64, FRAMES)[0]
    changed = {**latent, "samples": change(latent["samples"])}  # what e.g. LatentUpscale does: other keys kept
    monkeypatch.setattr("openreel.samplers.sample.prepare", lambda *_: pytest.fail("a model was prepared"))
    with pytest.raises(InputError, match=f"^OpenReel Sampler: {message} .*Set the size, frames and batch on "
                                         f"OpenReel Image To Video"):
        run(dit[I2V], changed)


def test_ti2v_start_frames_of_another_size_are_refused(kit, monkeypatch):
    dit, vae = kit
    latent = OpenReelImageToVideo().make(vae["wan22"], torch.rand(1, 64, 64, 3), 64, 64, FRAMES)[0]
    changed = {**latent, "samples": F.interpolate(latent["samples"], scale_factor=(1, 2, 2))}
    monkeypatch.setattr("openreel.samplers.sample.prepare", lambda *_: pytest.fail("a model was prepared"))
    with pytest.raises(InputError, match="the latent is 128×128 but its image conditioning is 64×64"):
        run(dit[TI2V], changed)
