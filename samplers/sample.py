"""Sampling from handles: the family's defaults and checks, schedule, noise and experts → a sampling loop (flow, or
diffusion forcing window by window) → a LATENT."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch

from ..encoding.video import check_latent_for, decode_pixels, encode_video, last_frames
from ..errors import InputError
from ..handles import DiTHandle, TextEmbeds, VAEHandle
from ..latents import DecodeWindows, conditioning_of, format_of, latent_format
from ..model_loaders.core import prepare
from ..models.common.images import fit_image
from ..models.common.family import SamplingDefaults
from ..models.registry import family_of
from .batches import batch_indices, broadcast_inputs, check_conditioning_fits
from .df_plan import plan_windows
from .diffusion_forcing import sample_video
from .flow import sample_flow
from .resume import ResumeStore, render_key
from .schedules import FlowSchedule, linear_schedule, wan_unipc_schedule
from .schedules import add_noise as noised
from .session import Expert, SamplingSession

SOLVER_CHOICES = ("official", "unipc", "dpm++_2m", "euler")


def solver_and_schedule(solver: str, steps: int, shift: float, denoise: float,
                        d: SamplingDefaults) -> tuple[str, FlowSchedule]:
    """The solver to run and its noise schedule: "official" is the model's own (Wan: UniPC on Wan's table from
    σ 0.999; HunyuanVideo: Euler on linspace(1, 0) with float timesteps σ·1000); UniPC runs on Wan's table, DPM++
    on linspace(1, 0) (with Wan's integer timesteps for Wan models, as Wan's FlowDPM), Euler on the model's own."""
    if solver not in SOLVER_CHOICES:
        raise InputError(f"unknown solver {solver!r}", f"use one of {SOLVER_CHOICES}")
    solver = d.solver if solver == "official" else solver
    linear = "linear" if d.schedule == "linear" else "wan_linear"
    table = {"unipc": "wan_unipc", "dpm++_2m": linear}.get(solver, d.schedule)
    if table == "wan_unipc":
        return solver, wan_unipc_schedule(steps, shift, denoise)
    return solver, linear_schedule(steps, shift, denoise, integer_timesteps=table == "wan_linear")


def make_noise(shape: tuple[int, ...], seed: int, indices: Sequence[int] | None = None) -> torch.Tensor:
    """Gaussian noise from a CPU generator: the same seed gives the same video on every device. Video k of a batch
    [n, …] draws from seed + indices[k] (default k), so it comes out the same made alone with that seed."""
    indices = range(shape[0]) if indices is None else indices
    return torch.cat([torch.randn((1, *shape[1:]), generator=torch.Generator().manual_seed((int(seed) + i) % 2**64),
                                  dtype=torch.float32) for i in indices])


def check_inputs(dit: DiTHandle, embeds: TextEmbeds, latent: dict, dit_low_noise: DiTHandle | None = None) -> None:
    """Refuse a latent, conditioning, text or expert pair that does not fit the model, before any GPU work."""
    fmt, want = format_of(latent, dit.spec.latent_format), latent_format(dit.spec.latent_format)
    if fmt.name != want.name:
        raise InputError(f"the latent is {fmt.title} but {dit.spec.description} takes {want.title} latents",
                         "make the latent with the VAE this model was trained with")
    if dit_low_noise is not None and dit_low_noise.spec.family != dit.spec.family:
        raise InputError(f"the two experts do not match: {dit.spec.description} and "
                         f"{dit_low_noise.spec.description}", "connect two experts of the same model")
    check_conditioning_fits(latent, fmt)
    family_of(dit.spec).check(dit.spec, fmt, conditioning_of(latent), embeds,
                              dit_low_noise.spec if dit_low_noise is not None else None)


def sample(dit: DiTHandle, embeds: TextEmbeds, latent: dict, *, seed: int, steps: int = 0, guidance: float = 0.0,
           shift: float = 0.0, solver: str = "official", dit_low_noise: DiTHandle | None = None,
           guidance_low_noise: float = 0.0, boundary: float = 0.0, denoise: float = 1.0,
           sigmas: torch.Tensor | None = None, add_noise: bool = True, leftover_noise: bool = True) -> dict:
    """Denoise `latent` (a batch of videos) with one DiT or a (high-noise, low-noise) expert pair. Zeros mean "the
    official default" for steps, guidance, shift, guidance_low_noise and boundary (the family's `defaults`).

    ComfyUI's conventions for split and chained sampling (KSamplerAdvanced): `add_noise` False takes the latent
    as already at the schedule's first noise level (a previous sampler's leftover noise); `leftover_noise` False
    ends a schedule that stops above σ 0 at 0 instead, denoising to the end. The result keeps the latent's other
    keys (its image conditioning), so the next sampler of a chain sees them."""
    check_inputs(dit, embeds, latent, dit_low_noise)
    family, fmt, cond = family_of(dit.spec), format_of(latent, dit.spec.latent_format), conditioning_of(latent)
    samples = latent["samples"]
    height, width = samples.shape[3] * fmt.spatial_stride, samples.shape[4] * fmt.spatial_stride
    d = family.defaults(dit.spec, dit_low_noise is not None, width, height)
    steps, guidance, shift = steps or d.steps, guidance or d.guidance, shift or d.shift
    solver, schedule = solver_and_schedule(solver, steps, shift, denoise, d)
    if sigmas is not None:
        schedule = FlowSchedule.from_sigmas(sigmas)
        if denoise != 1.0:
            raise InputError("denoise does not apply when sigmas are connected", "set denoise to 1.0 or cut the "
                             "sigmas themselves (e.g. with a split-sigmas node)")
    if not leftover_noise:
        schedule = replace(schedule, sigmas=torch.cat([schedule.sigmas[:-1], schedule.sigmas.new_zeros(1)]))
    pairs = [(dit, guidance)]
    if dit_low_noise is not None:
        pairs.append((dit_low_noise, guidance_low_noise or d.guidance_low_noise))
    count = samples.shape[0]
    experts = [Expert(prepare(h), g, broadcast_inputs(family.model_inputs(h.spec, embeds, cond, d), count), family,
                      h.spec) for h, g in pairs]
    x = samples.float()
    if add_noise:
        noise = make_noise(tuple(samples.shape), seed, batch_indices(latent))
        fresh = sigmas is None and denoise == 1.0
        x = noise if fresh else noised(x, noise, float(schedule.sigmas[0]))
    out = sample_flow(experts, schedule, solver, x, boundary=boundary or d.boundary,
                      given=cond.given if cond is not None else None, latent_format=fmt)
    kept = {k: v for k, v in latent.items() if k != "windows"}  # windows describe the input's video, not this one
    return {**kept, "samples": out, "latent_format": fmt.name}


JOINS = ("vae_roundtrip", "reuse_latents")


def sample_diffusion_forcing(dit: DiTHandle, embeds: TextEmbeds, vae: VAEHandle, *, width: int, height: int,
                             num_frames: int, base_num_frames: int, overlap_history: int, seed: int,
                             ar_step: int = 0, causal_block_size: int = 1, addnoise_condition: int = 0,
                             steps: int = 0, guidance: float = 0.0, shift: float = 0.0, fps: int = 24,
                             solver: str = "unipc", join: str = "vae_roundtrip", causal_attention: bool = False,
                             start_image: torch.Tensor | None = None, end_image: torch.Tensor | None = None,
                             extend_video: torch.Tensor | None = None, extend_latent: dict | None = None) -> dict:
    """A video of any length with a diffusion-forcing model (SkyReels-V2 DF), window by window; returns the whole
    video's LATENT (with `extend_video` frames, IMAGE [n, H, W, C]: its continuation, `num_frames` frames that start
    with the video's last `overlap_history` frames, as encoded, then the new ones). Zeros mean the official DF
    recipe. Everything is checked before any model runs. After each window the render's state is saved in the output
    folder (samplers/resume.py): the same graph run again after an interrupt or a crash continues after the last
    finished window, with the same result."""
    if join not in JOINS:
        raise InputError(f"unknown window join {join!r}", f"use one of {JOINS}")
    family, fmt = family_of(dit.spec), latent_format(dit.spec.latent_format)
    d = replace(family.diffusion_forcing(dit.spec), fps=fps)
    if vae.latent_format != fmt.name:
        raise InputError(f"this VAE makes {latent_format(vae.latent_format).title} latents but "
                         f"{dit.spec.description} takes {fmt.title} latents", "connect the VAE of this model")
    _, _, h, w = fmt.latent_size(width, height, 1)
    for name, image in (("start_image", start_image), ("end_image", end_image)):
        if image is not None and image.shape[0] > 1:
            raise InputError(f"{name} holds {image.shape[0]} images but diffusion forcing makes one video from one",
                             "pick one image (e.g. with ImageFromBatch), or run the sampler once per image")
    if extend_video is not None and extend_latent is not None:
        raise InputError("both a video and a latent to extend are connected", "connect one of them")
    if extend_latent is not None:
        check_latent_for(vae, extend_latent)
        frames = fmt.pixel_frames(extend_latent["samples"].shape[2])
        if extend_latent["samples"].shape[3:] != (h, w):
            raise InputError(f"the latent to extend is {extend_latent['samples'].shape[4] * fmt.spatial_stride}×"
                             f"{extend_latent['samples'].shape[3] * fmt.spatial_stride}, the video {width}×{height}",
                             "give the same width and height")
        if frames < overlap_history:
            raise InputError(f"the latent to extend holds {frames} frames, fewer than overlap_history "
                             f"{overlap_history}", "give a longer video or a smaller overlap_history")
    if extend_video is not None:
        if start_image is not None:
            raise InputError("a start image and a video to extend are both connected",
                             "connect one: the video to extend already gives the first frames")
        if extend_video.shape[0] < overlap_history:
            raise InputError(f"the video to extend has {extend_video.shape[0]} frames, fewer than overlap_history "
                             f"{overlap_history}", "give a longer video or a smaller overlap_history")
    windows = plan_windows(num_frames, base_num_frames, overlap_history, causal_block_size, ar_step,
                           image_prefix=0 if start_image is None else 1, end_frames=0 if end_image is None else 1,
                           extend=extend_video is not None or extend_latent is not None)
    family.check(dit.spec, fmt, None, embeds, None)
    steps, guidance, shift = steps or d.steps, guidance or d.guidance, shift or d.shift
    solver, schedule = solver_and_schedule(solver, steps, shift, 1.0, d)
    frame = lambda image: encode_video(vae, fit_image(image[:1], width, height).unsqueeze(2))  # noqa: E731
    start = None if start_image is None else frame(start_image)
    end = None if end_image is None else frame(end_image)
    key = render_key("diffusion forcing", dit.weights_key, dit.patches, vae.weights_key, embeds.positive,
                     embeds.negative, start_image, end_image, extend_video,
                     None if extend_latent is None else extend_latent["samples"], width, height, num_frames, base_num_frames,
                     overlap_history, seed, ar_step, causal_block_size, addnoise_condition, steps, guidance, shift,
                     fps, solver, join, causal_attention)
    inputs = family.model_inputs(dit.spec, embeds, None, d)
    if causal_attention:
        inputs.shared.update(family.causal_attention(dit.spec, causal_block_size))
    expert = Expert(prepare(dit), guidance, inputs, family, dit.spec)
    history = None
    if extend_video is not None:  # only the frames a window starts from: the rest of the video is not needed
        history = fit_image(extend_video[-overlap_history:], width, height).permute(1, 0, 2, 3).unsqueeze(0)
    elif extend_latent is not None:
        history = last_frames(vae, extend_latent, overlap_history)
    roundtrip = None
    if join == "vae_roundtrip":
        roundtrip = (lambda latent: decode_pixels(vae, latent), lambda pixels: encode_video(vae, pixels))
    with SamplingSession([expert], latent_format=fmt,
                         label=f"OpenReel diffusion forcing ({len(windows)} windows)") as session:
        video, parts = sample_video(session, 0, schedule, windows, (fmt.channels, h, w), seed=seed, ar_step=ar_step,
                             block_size=causal_block_size, solver=solver, addnoise_condition=addnoise_condition,
                             start=start, end=end, overlap_history=overlap_history, roundtrip=roundtrip,
                             history=history, encode=lambda pixels: encode_video(vae, pixels),
                             resume=ResumeStore(key))
    latent = {"samples": video, "latent_format": fmt.name}
    if join == "vae_roundtrip" and len(parts) > 1:  # decoded as the original does: window by window
        latent["windows"] = DecodeWindows(tuple(parts), overlap_history)
    return latent
