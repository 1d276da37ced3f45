"""Every mismatch between a model and its latent or conditioning is refused, with the node's name, before any model
runs; sizes and frame counts are validated when latents are made."""
import pytest
import torch

from openreel import runtime, synthetic
from openreel.errors import InputError
from openreel.handles import TextEmbeds
from openreel.model_loaders.cache import MODULES
from openreel.nodes.loaders import OpenReelDiTLoader, OpenReelVAELoader
from openreel.nodes.encode import OpenReelVAEDecode
from openreel.nodes.sample import OpenReelEmptyLatent, OpenReelImageToVideo, OpenReelSampler
from openreel.samplers.flow import sample_flow

D = synthetic.DIFFUSION_MODELS


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    synthetic.write_model_set(folder)
    runtime.set_models_dir(folder)
    dit = {name: OpenReelDiTLoader().load(name, "auto", "fp32")[0] for name in D}
    vae = {kind: OpenReelVAELoader().load(name, "fp32")[0] for name, kind in synthetic.VAES.items()}
    yield dit, vae
    runtime.set_models_dir(None)
    MODULES.clear()


@pytest.fixture(autouse=True)
def no_sampling(monkeypatch):
    """Refusals must come before sampling: reaching the sampler fails these tests."""
    def reached(*args, **kwargs):
        raise AssertionError("sampling started")
    monkeypatch.setattr("openreel.samplers.sample.sample_flow", reached)


def embeds(width=synthetic.TINY_TEXT_DIM):
    return TextEmbeds(torch.zeros(1, 4, width), torch.zeros(1, 2, width))


def image():
    return torch.rand(1, 48, 64, 3)


def i2v_latent(vae, clip=None, end=None):
    return OpenReelImageToVideo().make(vae, image(), 64, 64, 5, clip_vision=clip, end_image=end)[0]


def run(dit, latent, **kw):
    return OpenReelSampler().run(dit, embeds(kw.pop("width", synthetic.TINY_TEXT_DIM)), latent, 0, 2, 0.0, 0.0,
                                 "unipc", **kw)


def test_empty_latent_validates_size_and_frames(kit):
    _, vae = kit
    with pytest.raises(InputError, match="^OpenReel Empty Latent: 840×480 is not a multiple of 16.*832×480"):
        OpenReelEmptyLatent().make(vae["wan21"], 840, 480, 81, 1)
    with pytest.raises(InputError, match="not a multiple of 32"):
        OpenReelEmptyLatent().make(vae["wan22"], 848, 480, 81, 1)  # Wan2.2 VAE: stride 16 × patch 2
    with pytest.raises(InputError, match="80 frames is not of the form 4n\\+1.*77 or 81"):
        OpenReelEmptyLatent().make(vae["wan21"], 832, 480, 80, 1)
    latent = OpenReelEmptyLatent().make(vae["wan22"], 1280, 704, 121, 1)[0]
    assert latent["samples"].shape == (1, 48, 31, 44, 80) and latent["latent_format"] == "wan22"


@pytest.mark.parametrize("model, latent_of, message", [
    ("wan2.2_ti2v_5B_fp16.safetensors", "t2v21", "16-channel .* takes 48-channel \\(Wan2.2 VAE\\) latents"),
    ("wan2.1_t2v_1.3B_fp16.safetensors", "t2v22", "48-channel .* takes 16-channel"),
    ("wan2.1_i2v_480p_14B_fp16.safetensors", "t2v21", "needs a start image.*OpenReel Image To Video"),
    ("wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "t2v21", "needs a start image"),
    ("wan2.1_i2v_480p_14B_fp16.safetensors", "i2v", "needs CLIP vision features.*clip_vision_h"),
    ("wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "i2v_clip", "uses no CLIP vision features"),
    ("wan2.1_flf2v_720p_14B_fp16.safetensors", "i2v_clip", "needs a first and a last frame"),
    ("wan2.1_t2v_1.3B_fp16.safetensors", "i2v", "text-to-video model but the latent carries image conditioning"),
    ("SkyReels-V2-I2V-1.3B-540P/model.safetensors", "flf2v_clip", "takes no last frame"),
])
def test_sampler_refuses_mismatches(kit, model, latent_of, message, monkeypatch):
    dit, vae = kit
    clip_tokens = torch.zeros(1, 257, synthetic.TINY_CLIP_DIM)
    monkeypatch.setattr("openreel.nodes.sample.encode_image", lambda handle, images: clip_tokens.repeat(len(images), 1, 1))
    latents = {
        "t2v21": lambda: OpenReelEmptyLatent().make(vae["wan21"], 64, 64, 5, 1)[0],
        "t2v22": lambda: OpenReelEmptyLatent().make(vae["wan22"], 64, 64, 5, 1)[0],
        "i2v": lambda: i2v_latent(vae["wan21"]),
        "i2v_clip": lambda: i2v_latent(vae["wan21"], clip="clip"),
        "flf2v_clip": lambda: i2v_latent(vae["wan21"], clip="clip", end=image()),
    }
    with pytest.raises(InputError, match="^OpenReel Sampler: .*" + message):
        run(dit[model], latents[latent_of]())


def test_sampler_refuses_mismatched_experts_and_text(kit):
    dit, vae = kit
    latent = OpenReelEmptyLatent().make(vae["wan21"], 64, 64, 5, 1)[0]
    with pytest.raises(InputError, match="the two experts do not match"):
        run(dit["wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"], latent,
            dit_low_noise=dit["wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"])
    with pytest.raises(InputError, match="text embeddings are 32 wide but the model takes 64.*umT5-XXL"):
        run(dit["wan2.1_t2v_1.3B_fp16.safetensors"], latent, width=32)


def test_latents_of_unknown_formats_and_native_image_latents_are_refused(kit):
    dit, vae = kit
    model = dit["wan2.1_t2v_1.3B_fp16.safetensors"]
    tagged = {"samples": torch.zeros(1, 16, 2, 8, 8), "latent_format": "sd3"}
    with pytest.raises(InputError, match="^OpenReel Sampler: the latent format 'sd3' is unknown \\(known: .*wan21"):
        run(model, tagged)
    native = {"samples": torch.zeros(1, 4, 8, 8)}  # what ComfyUI's own Empty Latent Image makes
    with pytest.raises(InputError, match="^OpenReel Sampler: the latent has shape \\(1, 4, 8, 8\\).*OpenReel Empty Latent"):
        run(model, native)
    with pytest.raises(InputError, match="^OpenReel VAE Decode: the latent has 16 channels .* decodes 48-channel"):
        OpenReelVAEDecode().decode(vae["wan22"], OpenReelEmptyLatent().make(vae["wan21"], 64, 64, 5, 1)[0], "off")


def test_ti2v_refuses_clip_and_end_image(kit):
    _, vae = kit
    with pytest.raises(InputError, match="^OpenReel Image To Video: Wan2.2 TI2V-5B .* no last-frame mode"):
        i2v_latent(vae["wan22"], end=image())
    with pytest.raises(InputError, match="TI2V-5B uses no CLIP"):
        i2v_latent(vae["wan22"], clip="clip")


def test_i2v_mask_marks_given_frames():
    from openreel.models.wan.latents import wan_i2v_mask

    mask = wan_i2v_mask(9, 2, 2, last=True)  # 9 pixel frames → 3 latent frames × 4 slots
    assert mask.shape == (1, 4, 3, 2, 2)
    assert mask[0, :, 0].flatten().eq(1).all()                   # the first frame, repeated 4×
    assert mask[0, :, 1].flatten().eq(0).all()
    assert mask[0, :, 2, 0, 0].tolist() == [0.0, 0.0, 0.0, 1.0]  # only the very last pixel frame


def test_interrupt_between_model_calls_leaves_nothing_loaded(kit, monkeypatch):
    dit, _ = kit
    from openreel.model_loaders.core import module_of as dit_module
    from openreel.models.common.family import ModelInputs
    from openreel.samplers.session import Expert
    from openreel.samplers.schedules import wan_unipc_schedule

    module = dit_module(dit["wan2.1_t2v_1.3B_fp16.safetensors"])
    calls, offloaded = [], []
    module.register_forward_pre_hook(lambda *_: calls.append(1) or (runtime.request_interrupt() if len(calls) == 3 else None))
    monkeypatch.setattr("openreel.memory.patches.offload", lambda m: offloaded.append(m))
    with pytest.raises(runtime.Interrupted):
        inputs = ModelInputs({"context": embeds().positive[:, :2]}, {"context": embeds().negative})
        sample_flow([Expert(module, 5.0, inputs)], wan_unipc_schedule(4, 5.0), "unipc",
                    torch.randn(1, 16, 2, 8, 8), batch_cfg=False)
    assert len(calls) == 3 and offloaded == [module]


@pytest.mark.parametrize("sigmas, message", [
    (torch.tensor([14.6, 7.0, 2.0, 0.0]), "the sigmas run from 14.6 to 0, but flow-matching models take noise levels in \\[0, 1\\]"),
    (torch.tensor([0.0, 0.5, 1.0]), "the sigmas rise somewhere"),
    (torch.tensor([1.0]), "the sigmas .* are not a schedule of at least two noise levels"),
])
def test_sigmas_that_are_no_flow_schedule_are_refused_before_sampling(kit, sigmas, message):
    dit, vae = kit
    latent = OpenReelEmptyLatent().make(vae["wan21"], 64, 64, 5, 1)[0]
    with pytest.raises(InputError, match="^OpenReel Sampler: " + message):
        run(dit["wan2.1_t2v_1.3B_fp16.safetensors"], latent, sigmas=sigmas)


def test_flf2v_takes_start_and_end_images_of_different_sizes(kit, monkeypatch):
    _, vae = kit
    seen = []

    def clip_tokens(handle, images):
        seen.append(tuple(images.shape))
        return torch.zeros(len(images), 257, synthetic.TINY_CLIP_DIM)
    monkeypatch.setattr("openreel.nodes.sample.encode_image", clip_tokens)
    latent = OpenReelImageToVideo().make(vae["wan21"], torch.rand(1, 48, 64, 3), 64, 64, 5, clip_vision="clip",
                                         end_image=torch.rand(1, 96, 80, 3))[0]
    assert latent["openreel"].image_tokens.shape == (1, 514, synthetic.TINY_CLIP_DIM)
    assert seen == [(1, 48, 64, 3), (1, 96, 80, 3)]  # each image on its own: the encoder resizes each


def test_a_wan_model_refuses_embeddings_carrying_a_second_encoder(kit):
    """HunyuanVideo-style embeddings (a pooled CLIP vector beside the states) on a Wan model were used silently."""
    dits, vaes = kit
    dit = dits[next(name for name in D if name.startswith("wan2.1_t2v"))]
    latent = OpenReelEmptyLatent().make(vaes["wan21"], 64, 64, 5, 1)[0]
    width = synthetic.TINY_TEXT_DIM
    wrong = TextEmbeds(torch.zeros(1, 4, width), torch.zeros(1, 2, width), positive_pooled=torch.zeros(1, 8),
                       negative_pooled=torch.zeros(1, 8))
    with pytest.raises(InputError, match="second encoder's output .* umT5-XXL text encoder only"):
        OpenReelSampler().run(dit, wrong, latent, 0, 2, 0.0, 0.0, "unipc")


TORCH_OOM = ("CUDA out of memory. Tried to allocate 2.10 GiB. GPU 0 has a total capacity of 23.64 GiB of which 412.00 "
             "MiB is free. Including non-PyTorch memory, this process has 23.20 GiB memory in use. If reserved but "
             "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")


def _oom(*args, **kwargs):
    raise torch.OutOfMemoryError(TORCH_OOM)


def test_running_out_of_gpu_memory_names_the_node_the_sizes_and_the_remedy(monkeypatch):
    """A GPU out of memory in a node reaches the user as that node's error, with the sizes torch gave and what to do
    there (the VRAM Budget node for a sampler, smaller tiles for the VAE). It stays torch's OutOfMemoryError, which
    ComfyUI answers by unloading its models."""
    import openreel.nodes.encode as encode_nodes
    import openreel.nodes.sample as sample_nodes
    from openreel.errors import OutOfMemory

    monkeypatch.setattr(sample_nodes, "sample", _oom)
    with pytest.raises(OutOfMemory) as caught:
        OpenReelSampler().run(None, None, None, 0, 0, 0.0, 0.0, "official")
    assert isinstance(caught.value, torch.OutOfMemoryError)
    assert str(caught.value).startswith(
        "OpenReel Sampler: the GPU ran out of memory (Tried to allocate 2.10 GiB; GPU 0 has a total capacity of "
        "23.64 GiB of which 412.00 MiB is free). Put OpenReel VRAM Budget between the DiT loader and this sampler")
    monkeypatch.setattr(encode_nodes, "check_latent_for", lambda *args: None)
    monkeypatch.setattr(encode_nodes, "decode_latent", _oom)
    with pytest.raises(OutOfMemory, match=r"^OpenReel VAE Decode: the GPU ran out of memory \(Tried .*\)\. Choose a "
                                          r"smaller tiling"):
        OpenReelVAEDecode().decode(None, {"samples": torch.zeros(1, 16, 2, 4, 4)}, "auto")
