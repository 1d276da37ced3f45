"""ComfyUI's own nodes mixed with ours (issue 13 items 1–5 and 11), each as a user would wire it in the editor."""
from __future__ import annotations

import pytest

from .server import Socket, api_workflow, node_of


def save_latent(node: str, prefix: str) -> dict:
    """ComfyUI's SaveLatent on `node`'s LATENT (a .latent file: safetensors with `latent_tensor`)."""
    return {"class_type": "SaveLatent", "inputs": {"samples": [node, 0], "filename_prefix": prefix}}


def read_latents(comfy, entry: dict, prefix: str = "") -> dict:
    """The tensors SaveLatent wrote, by node id (without `prefix`)."""
    from safetensors.torch import load_file

    return {node.removeprefix(prefix): load_file(str(path))["latent_tensor"]
            for node in entry["outputs"] for path in comfy.saved_files(entry, node) if path.suffix == ".latent"}


def write_image(path, width: int, height: int, seed: int) -> None:
    """A random RGB PNG of the given size."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def sampler_with_sigmas(latent: list, sigmas: list, seed: int = 3, add_noise: str = "enable") -> dict:
    """OpenReel Sampler on the wan21_t2v graph's loaders (nodes 1, 3) with a SIGMAS input and Euler."""
    return {"class_type": "OpenReelSampler", "inputs": {
        "seed": seed, "steps": 0, "cfg": 4.0, "shift": 0.0, "solver": "euler", "cfg_low_noise": 0.0,
        "boundary": 0.0, "denoise": 1.0, "add_noise": add_noise, "return_with_leftover_noise": "enable",
        "dit": ["1", 0], "embeds": ["3", 0], "latent": latent, "sigmas": sigmas}}


def test_flf2v_with_start_and_end_images_of_different_sizes(comfy):
    """Item 1: native LoadImage gives start and end images of different sizes (neither the video's); each is fitted
    to the video size, and FLF2V runs to a video of that size."""
    from openreel.video_io import read_video

    write_image(comfy.base / "input" / "flf_start_96x80.png", 96, 80, seed=1)
    write_image(comfy.base / "input" / "flf_end_48x112.png", 48, 112, seed=2)
    prompt = api_workflow("wan21_flf2v")
    images = {v["_meta"]["title"]: k for k, v in prompt.items() if v["class_type"] == "LoadImage"}
    prompt[images["Start image"]]["inputs"]["image"] = "flf_start_96x80.png"
    prompt[images["End image"]]["inputs"]["image"] = "flf_end_48x112.png"
    (path,) = comfy.saved_files(comfy.run_ok(prompt))
    assert read_video(path)[0].shape == (5, 64, 64, 3)


def test_batch_of_two_with_guidance_gives_two_videos(comfy):
    """Item 2: Empty Latent batch 2 with guidance (cfg 5) samples both videos (video k takes the noise of seed + k:
    each equals a batch of one with that seed) and Save Video (latent + VAE) writes two mp4 files."""
    import torch

    from openreel.video_io import read_video

    prompt = api_workflow("wan21_t2v", OpenReelEmptyLatent={"batch": 2}, OpenReelSampler={"cfg": 5.0, "seed": 11})
    sampler, save = node_of(prompt, "OpenReelSampler"), node_of(prompt, "OpenReelSaveVideo")
    del prompt[node_of(prompt, "OpenReelVAEDecode")]
    prompt[save]["inputs"].pop("images")
    prompt[save]["inputs"].update(latent=[sampler, 0], vae=["4", 0], filename_prefix="batch/two")
    prompt["lat_batch"] = save_latent(sampler, "batch/latent")
    for k in (0, 1):
        prompt[f"one{k}"] = {"class_type": "OpenReelEmptyLatent",
                             "inputs": {**prompt["5"]["inputs"], "batch": 1}}
        prompt[f"s{k}"] = {"class_type": "OpenReelSampler", "inputs": {**prompt[sampler]["inputs"],
                                                                        "seed": 11 + k, "latent": [f"one{k}", 0]}}
        prompt[f"lat_{k}"] = save_latent(f"s{k}", f"batch/latent{k}")
    entry = comfy.run_ok(prompt)
    videos = comfy.saved_files(entry, save)
    assert len(videos) == 2 and all(p.suffix == ".mp4" for p in videos) and videos[0] != videos[1], videos
    frames = [read_video(p)[0] for p in videos]
    assert all(f.shape == (5, 64, 64, 3) for f in frames) and not (frames[0] == frames[1]).all()
    latents = read_latents(comfy, entry, "lat_")
    assert latents["batch"].shape[0] == 2
    for k in (0, 1):
        assert torch.allclose(latents["batch"][k], latents[str(k)][0], rtol=1e-4, atol=1e-4), k


def test_split_sigmas_between_two_samplers_equals_one_sampler(comfy):
    """Item 3: OpenReel Schedule → native SplitSigmas → a first sampler (high sigmas, leftover noise) → a second
    (low sigmas, add_noise disable) gives exactly one sampler's latent over the whole schedule (Euler)."""
    import torch

    prompt = api_workflow("wan21_t2v")
    for node in ("6", "7", "8"):
        del prompt[node]
    prompt.update({
        "sched": {"class_type": "OpenReelSchedule", "inputs": {"schedule": "wan_unipc", "steps": 6, "shift": 5.0,
                                                               "denoise": 1.0}},
        "split": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["sched", 0], "step": 3}},
        "high": sampler_with_sigmas(["5", 0], ["split", 0]),
        "low": sampler_with_sigmas(["high", 0], ["split", 1], seed=99, add_noise="disable"),
        "full": sampler_with_sigmas(["5", 0], ["sched", 0]),
        "lat_high": save_latent("high", "split/high"), "lat_low": save_latent("low", "split/low"),
        "lat_full": save_latent("full", "split/full")})
    latents = read_latents(comfy, comfy.run_ok(prompt), "lat_")
    assert torch.equal(latents["low"], latents["full"])
    assert not torch.allclose(latents["high"], latents["full"], atol=1e-3)  # the first stage stopped part-way


def sampler_refusal(comfy, prompt: dict, sampler: str) -> str:
    """Queue `prompt`, which our sampler (node `sampler`) must refuse before any model call (no progress from it on
    the websocket); its error message."""
    with Socket(comfy) as ws:
        prompt_id = ws.queue(prompt)
        last = ws.until_done(prompt_id)
        assert last["type"] == "execution_error", last
        error = last["data"]
        assert error["node_id"] == sampler and error["node_type"] == "OpenReelSampler", error
        assert not ws.of(prompt_id, "progress", sampler), "a model ran before the sampler refused the prompt"
    return error["exception_message"]


@pytest.mark.parametrize("sigmas, problem", [
    ({"class_type": "KarrasScheduler", "inputs": {"steps": 4, "sigma_max": 14.614642, "sigma_min": 0.0291675,
                                                  "rho": 7.0}},
     "the sigmas run from 14.61 to 0, but flow-matching models take noise levels in [0, 1]"),
    ({"class_type": "FlipSigmas", "inputs": {"sigmas": ["sched", 0]}}, "the sigmas rise somewhere"),
], ids=["karras", "flipped"])
def test_sigmas_no_flow_model_takes_are_refused_before_any_model_call(comfy, sigmas, problem):
    """Item 4: native Karras sigmas (σ_max 14.6) and FlipSigmas' rising ones end in the sampler's own message, with
    no model call made (no progress from the sampler on the websocket)."""
    prompt = api_workflow("wan21_t2v")
    sampler = node_of(prompt, "OpenReelSampler")
    prompt["sched"] = {"class_type": "OpenReelSchedule", "inputs": {"schedule": "wan_unipc", "steps": 4,
                                                                    "shift": 5.0, "denoise": 1.0}}
    prompt["sigmas"] = sigmas
    prompt[sampler]["inputs"]["sigmas"] = ["sigmas", 0]
    message = sampler_refusal(comfy, prompt, sampler)
    assert message.startswith(f"OpenReel Sampler: {problem}"), message


@pytest.mark.parametrize("workflow, pixels", [("wan21_i2v", 128), ("wan22_ti2v_5b_i2v", 256)])
def test_native_latent_upscale_on_an_image_to_video_latent_is_refused(comfy, workflow, pixels):
    """Item 5: native LatentUpscale between Image To Video and the sampler resizes the latent but not the image
    conditioning beside it: the sampler refuses it with its own message (no torch size error), before sampling.
    (LatentUpscale takes its size as 8 × the latent's; the Wan2.2 VAE's stride is 16, so 128 means 256 pixels.)"""
    prompt = api_workflow(workflow)
    sampler, i2v = node_of(prompt, "OpenReelSampler"), node_of(prompt, "OpenReelImageToVideo")
    prompt["up"] = {"class_type": "LatentUpscale", "inputs": {"samples": [i2v, 0], "upscale_method": "nearest-exact",
                                                              "width": 128, "height": 128, "crop": "disabled"}}
    prompt[sampler]["inputs"]["latent"] = ["up", 0]
    message = sampler_refusal(comfy, prompt, sampler)
    assert message.startswith(f"OpenReel Sampler: the latent is {pixels}×{pixels} but its image conditioning is "
                              f"64×64"), message
    assert "OpenReel Image To Video" in message, message


def test_conditioning_bridge_in_comfyui(comfy):
    """Item 11: OpenReel To Conditioning's CONDITIONING travels through real ComfyUI links (and ComfyUI's own
    ConditioningZeroOut) into OpenReel From Conditioning, and the sampler gives the latent it gives from the
    embeddings directly; an absent negative equals ConditioningZeroOut's. (CLIPLoader type wan cannot load the
    synthetic umT5: ComfyUI takes a T5 without `encoder.block.23` for a T5-base and refuses its shapes.)"""
    import torch

    from openreel.encoding.conditioning import ENCODERS
    from openreel.synthetic import TEXT_ENCODER

    def sampler(embeds: str, prefix: str) -> dict:
        return {f"s_{prefix}": {"class_type": "OpenReelSampler", "inputs": {
                    "seed": 1, "steps": 2, "cfg": 0.0, "shift": 0.0, "solver": "unipc", "cfg_low_noise": 0.0,
                    "boundary": 0.0, "denoise": 1.0, "add_noise": "enable", "return_with_leftover_noise": "enable",
                    "dit": ["dit", 0], "embeds": [embeds, 0], "latent": ["latent", 0]}},
                f"save_{prefix}": save_latent(f"s_{prefix}", f"bridge/{prefix}")}

    def from_conditioning(negative: list | None) -> dict:
        inputs = {"positive": ["to_cond", 0], "encoder": ENCODERS["umt5"]}
        return {"class_type": "OpenReelConditioningToEmbeds",
                "inputs": inputs if negative is None else {**inputs, "negative": negative}}

    prompt = {
        "dit": {"class_type": "OpenReelDiTLoader", "inputs": {"model_name": "wan2.1_t2v_1.3B_fp16.safetensors",
                                                               "weight_dtype": "auto", "compute_dtype": "auto",
                                                               "recipe": "auto"}},
        "te": {"class_type": "OpenReelTextEncoderLoader", "inputs": {"model_name": TEXT_ENCODER, "dtype": "auto"}},
        "vae": {"class_type": "OpenReelVAELoader", "inputs": {"model_name": "wan_2.1_vae.safetensors",
                                                              "dtype": "auto"}},
        "text": {"class_type": "OpenReelTextEncode", "inputs": {"prompt": "a red fox walks on the snow",
                                                                "negative_prompt": "static", "text_encoder": ["te", 0]}},
        "latent": {"class_type": "OpenReelEmptyLatent", "inputs": {"width": 64, "height": 64, "frames": 5,
                                                                   "batch": 1, "vae": ["vae", 0]}},
        "to_cond": {"class_type": "OpenReelEmbedsToConditioning", "inputs": {"embeds": ["text", 0]}},
        "zero": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["to_cond", 1]}},
        "bridged": from_conditioning(["to_cond", 1]),
        "zeroed": from_conditioning(["zero", 0]),
        "absent": from_conditioning(None),
        **sampler("text", "direct"), **sampler("bridged", "bridged"), **sampler("zeroed", "zeroed"),
        **sampler("absent", "absent"),
    }
    latents = read_latents(comfy, comfy.run_ok(prompt), "save_")
    assert latents["direct"].abs().sum() > 0
    assert torch.equal(latents["bridged"], latents["direct"])
    assert torch.equal(latents["absent"], latents["zeroed"])
    assert not torch.equal(latents["zeroed"], latents["direct"])  # the negative prompt really reaches the sampler
