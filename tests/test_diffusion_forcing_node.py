"""The diffusion-forcing sampler node on the synthetic SkyReels-V2 DF-1.3B: a three-window video through the node,
both window joins, start and end images, repeatability, and every refusal before a model runs."""
from __future__ import annotations

import pytest
import torch

from openreel import runtime, synthetic
from openreel.errors import InputError
from openreel.handles import TextEmbeds
from openreel.model_loaders.cache import MODULES
from openreel.nodes.diffusion_forcing import OpenReelDiffusionForcingSampler
from openreel.nodes.loaders import OpenReelDiTLoader, OpenReelVAELoader

DF = "SkyReels-V2-DF-1.3B-540P/model.safetensors"
I2V = "SkyReels-V2-I2V-1.3B-540P/model.safetensors"


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    synthetic.write_model_set(folder)
    runtime.set_models_dir(folder)
    runtime.set_output_dir(tmp_path_factory.mktemp("output"))
    dit = {name: OpenReelDiTLoader().load(name, "auto", "fp32")[0] for name in (DF, I2V)}
    vae = {kind: OpenReelVAELoader().load(name, "fp32")[0] for name, kind in synthetic.VAES.items()}
    yield dit, vae
    runtime.set_models_dir(None)
    runtime.set_output_dir(None)
    MODULES.clear()


@pytest.fixture
def no_sampling(monkeypatch):
    """Refusals must come before sampling: reaching the window loop fails the test."""
    def reached(*args, **kwargs):
        raise AssertionError("sampling started")
    monkeypatch.setattr("openreel.samplers.sample.sample_video", reached)


def embeds(seed=3):
    gen = torch.Generator().manual_seed(seed)
    width = synthetic.TINY_TEXT_DIM
    return TextEmbeds(torch.randn(1, 6, width, generator=gen), torch.randn(1, 3, width, generator=gen))


def run(dit, vae, prompt_seed=3, **kw):
    args = dict(width=64, height=64, num_frames=25, base_num_frames=13, overlap_history=5, ar_step=0,
                causal_block_size=1, addnoise_condition=0, seed=7, steps=2, cfg=0.0, shift=0.0, fps="24",
                join="vae_roundtrip", solver="unipc", causal_attention=False)
    args.update(kw)
    return OpenReelDiffusionForcingSampler().run(dit, embeds(prompt_seed), vae, **args)[0]


def test_a_three_window_video_through_the_node(kit, monkeypatch):
    dit, vae = kit
    calls = []
    module = __import__("openreel.model_loaders.core", fromlist=["module_of"]).module_of(dit[DF])
    hook = module.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[2]))
    try:
        latent = run(dit[DF], vae["wan21"])
    finally:
        hook.remove()
    assert latent["latent_format"] == "wan21" and latent["samples"].shape == (1, 16, 7, 8, 8)
    assert torch.isfinite(latent["samples"]).all()
    # windows of 4, 4 and 3 latent frames, 2 steps each (guidance batched on the CPU: one call per step)
    assert calls == [4] * 2 + [4] * 2 + [3] * 2
    again = run(dit[DF], vae["wan21"])
    assert torch.equal(again["samples"], latent["samples"])  # the same seed gives the same video
    reused = run(dit[DF], vae["wan21"], join="reuse_latents")
    assert reused["samples"].shape == latent["samples"].shape
    assert not torch.equal(reused["samples"], latent["samples"])  # the joins differ after the first window
    assert torch.equal(reused["samples"][:, :, :4], latent["samples"][:, :, :4])


def test_start_and_end_images_asynchronous(kit):
    dit, vae = kit
    image = torch.rand(1, 48, 64, 3)
    latent = run(dit[DF], vae["wan21"], start_image=image, end_image=image, ar_step=1, addnoise_condition=20)
    assert latent["samples"].shape == (1, 16, 7, 8, 8) and torch.isfinite(latent["samples"]).all()


@pytest.mark.parametrize("kw, message", [
    ({"num_frames": 24}, "num_frames is 24, not of the form 4n\\+1"),
    ({"overlap_history": 13}, "overlap_history 13 is not shorter than base_num_frames 13"),
    ({"causal_block_size": 3, "ar_step": 1}, "every window must be whole causal blocks.*Use"),
    ({"width": 72}, "72×64 is not a multiple of 16"),
    ({"join": "blend"}, "unknown window join 'blend'"),
])
def test_bad_settings_are_refused_before_any_model_runs(kit, kw, message, no_sampling):
    dit, vae = kit
    with pytest.raises(InputError, match="^OpenReel Diffusion Forcing Sampler: .*" + message):
        run(dit[DF], vae["wan21"], **kw)


def test_models_that_are_no_diffusion_forcing_models_are_refused(kit, no_sampling):
    dit, vae = kit
    with pytest.raises(InputError, match="is not a diffusion-forcing model.*OpenReel Sampler"):
        run(dit[I2V], vae["wan21"])
    with pytest.raises(InputError, match="this VAE makes 48-channel .* takes 16-channel"):
        run(dit[DF], vae["wan22"])


def interrupt_after(dit, calls: int):
    """Run the DF node until its `calls`-th model call, which asks for an interrupt (the run stops before the next)."""
    from openreel.model_loaders.core import module_of

    seen = []
    hook = module_of(dit).register_forward_pre_hook(
        lambda m, args: seen.append(1) or (runtime.request_interrupt() if len(seen) == calls else None))
    return hook


def resume_files():
    return sorted((runtime.output_dir() / "openreel-resume").glob("*"))


@pytest.mark.parametrize("join", ["vae_roundtrip", "reuse_latents"])
def test_an_interrupted_render_resumes_after_its_last_window_with_the_same_result(kit, join):
    from openreel.model_loaders.core import module_of

    dit, vae = kit
    whole = run(dit[DF], vae["wan21"], join=join)["samples"]
    assert resume_files() == []  # a finished render leaves no state behind
    hook = interrupt_after(dit[DF], 4)
    try:
        with pytest.raises(runtime.Interrupted):
            run(dit[DF], vae["wan21"], join=join)  # stops in window 3, after windows 1 and 2 (two calls each)
    finally:
        hook.remove()
    assert len(resume_files()) == 1
    calls = []
    hook = module_of(dit[DF]).register_forward_pre_hook(lambda m, args: calls.append(1))
    try:
        resumed = run(dit[DF], vae["wan21"], join=join)["samples"]
    finally:
        hook.remove()
    assert len(calls) == 2  # only window 3 ran again
    assert torch.equal(resumed, whole)
    assert resume_files() == []


def test_a_changed_graph_never_resumes_from_another_render(kit):
    dit, vae = kit
    hook = interrupt_after(dit[DF], 3)
    try:
        with pytest.raises(runtime.Interrupted):
            run(dit[DF], vae["wan21"])
    finally:
        hook.remove()
    stale = resume_files()
    assert len(stale) == 1
    other = run(dit[DF], vae["wan21"], prompt_seed=4)["samples"]  # another prompt: starts from scratch
    fresh_dir = runtime.output_dir()
    runtime.set_output_dir(fresh_dir / "elsewhere")
    try:
        assert torch.equal(other, run(dit[DF], vae["wan21"], prompt_seed=4)["samples"])
    finally:
        runtime.set_output_dir(fresh_dir)
    assert resume_files() == stale  # the interrupted render's state is still there for its own graph
    stale[0].unlink()


def test_block_causal_attention_only_when_asked(kit):
    from openreel.model_loaders.core import module_of

    dit, vae = kit
    seen = []
    hook = module_of(dit[DF]).register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs.get("causal_block_size")), with_kwargs=True)
    try:
        plain = run(dit[DF], vae["wan21"], num_frames=13, causal_block_size=2, base_num_frames=13)["samples"]
        assert set(seen) == {None}  # the original's default: bidirectional attention
        seen.clear()
        causal = run(dit[DF], vae["wan21"], num_frames=13, causal_block_size=2, base_num_frames=13,
                     causal_attention=True)["samples"]
        assert set(seen) == {2}
    finally:
        hook.remove()
    assert not torch.equal(plain, causal)


def test_extending_a_video_gives_its_continuation(kit):
    dit, vae = kit
    video = torch.rand(9, 48, 64, 3)  # 9 frames, fitted to 64×64 like a start image
    latent = run(dit[DF], vae["wan21"], extend_video=video, num_frames=25)["samples"]
    assert latent.shape == (1, 16, 7, 8, 8)  # 25 frames = 7 latent frames, the first 2 the overlap taken over
    with pytest.raises(InputError, match="fewer than overlap_history 5"):
        run(dit[DF], vae["wan21"], extend_video=video[:3])
    with pytest.raises(InputError, match="a start image and a video to extend are both connected"):
        run(dit[DF], vae["wan21"], extend_video=video, start_image=video[:1])


def test_the_video_decodes_window_by_window_as_the_original(kit):
    from openreel.encoding.video import decode_pixels
    from openreel.nodes.encode import OpenReelVAEDecode

    dit, vae = kit
    latent = run(dit[DF], vae["wan21"])
    windows = latent["windows"]
    assert len(windows.latents) == 3 and windows.overlap_frames == 5
    frames = OpenReelVAEDecode().decode(vae["wan21"], latent, "off")[0]
    # the original: every window decoded whole, clamped, and appended without the frames it took over
    parts = [decode_pixels(vae["wan21"], w, "off").clamp(-1, 1) for w in windows.latents]
    expected = torch.cat([parts[0]] + [p[:, :, 5:] for p in parts[1:]], dim=2)
    expected = ((expected[0] + 1) / 2).permute(1, 2, 3, 0)
    assert frames.shape == (25, 64, 64, 3)
    torch.testing.assert_close(frames, expected, rtol=0, atol=1e-6)
    joined = OpenReelVAEDecode().decode(vae["wan21"], {**latent, "windows": None}, "off")[0]
    assert joined.shape == frames.shape and not torch.equal(joined, frames)  # one pass over the joined latent
    assert "windows" not in run(dit[DF], vae["wan21"], join="reuse_latents")  # diffusers decodes the joined latent


def test_a_latent_can_be_extended_like_its_decoded_video(kit):
    from openreel.nodes.encode import OpenReelVAEDecode

    dit, vae = kit
    first = run(dit[DF], vae["wan21"], num_frames=13, base_num_frames=13)
    frames = OpenReelVAEDecode().decode(vae["wan21"], first, "off")[0]
    by_latent = run(dit[DF], vae["wan21"], extend_latent=first, num_frames=25)["samples"]
    by_frames = run(dit[DF], vae["wan21"], extend_video=frames, num_frames=25)["samples"]
    assert by_latent.shape == (1, 16, 7, 8, 8)
    torch.testing.assert_close(by_latent, by_frames, rtol=0, atol=1e-4)  # the same frames, by two routes
    with pytest.raises(InputError, match="both a video and a latent to extend"):
        run(dit[DF], vae["wan21"], extend_latent=first, extend_video=frames)
