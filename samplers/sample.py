"""Sampling from handles: the family's defaults and checks, schedule, noise and experts → the flow loop → a LATENT."""
from __future__ import annotations

import torch

from ..errors import InputError
from ..handles import DiTHandle, TextEmbeds
from ..latents import conditioning_of, format_of, latent_format
from ..model_loaders.core import prepare
from ..models.registry import family_of
from .flow import sample_flow
from .schedules import FlowSchedule, add_noise, linear_schedule, wan_unipc_schedule
from .session import Expert

SOLVER_CHOICES = ("unipc", "dpm++_2m", "euler")


def make_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Gaussian noise from a CPU generator: the same seed gives the same video on every device."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed) % 2**64), dtype=torch.float32)


def check_inputs(dit: DiTHandle, embeds: TextEmbeds, latent: dict, dit_low_noise: DiTHandle | None = None) -> None:
    """Refuse a latent, conditioning, text or expert pair that does not fit the model, before any GPU work."""
    fmt, want = format_of(latent), latent_format(dit.spec.latent_format)
    if fmt.name != want.name:
        raise InputError(f"the latent is {fmt.title} but {dit.spec.description} takes {want.title} latents",
                         "make the latent with the VAE this model was trained with")
    if dit_low_noise is not None and dit_low_noise.spec.family != dit.spec.family:
        raise InputError(f"the two experts do not match: {dit.spec.description} and "
                         f"{dit_low_noise.spec.description}", "connect two experts of the same model")
    family_of(dit.spec).check(dit.spec, fmt, conditioning_of(latent), embeds,
                              dit_low_noise.spec if dit_low_noise is not None else None)


def sample(dit: DiTHandle, embeds: TextEmbeds, latent: dict, *, seed: int, steps: int = 0, guidance: float = 0.0,
           shift: float = 0.0, solver: str = "unipc", dit_low_noise: DiTHandle | None = None,
           guidance_low_noise: float = 0.0, boundary: float = 0.0, denoise: float = 1.0,
           sigmas: torch.Tensor | None = None) -> dict:
    """Denoise `latent` with one DiT or a (high-noise, low-noise) expert pair. Zeros mean "the official default"
    for steps, guidance, shift, guidance_low_noise and boundary (the family's `defaults`)."""
    if solver not in SOLVER_CHOICES:
        raise InputError(f"unknown solver {solver!r}", f"use one of {SOLVER_CHOICES}")
    check_inputs(dit, embeds, latent, dit_low_noise)
    family, fmt, cond = family_of(dit.spec), format_of(latent), conditioning_of(latent)
    samples = latent["samples"]
    height, width = samples.shape[3] * fmt.spatial_stride, samples.shape[4] * fmt.spatial_stride
    d = family.defaults(dit.spec, dit_low_noise is not None, width, height)
    steps, guidance, shift = steps or d.steps, guidance or d.guidance, shift or d.shift
    if sigmas is not None:
        schedule = FlowSchedule.from_sigmas(sigmas)
        if denoise != 1.0:
            raise InputError("denoise does not apply when sigmas are connected", "set denoise to 1.0 or cut the "
                             "sigmas themselves (e.g. with a split-sigmas node)")
    elif solver == "dpm++_2m":
        schedule = linear_schedule(steps, shift, denoise)
    else:
        schedule = wan_unipc_schedule(steps, shift, denoise)
    pairs = [(dit, guidance)]
    if dit_low_noise is not None:
        pairs.append((dit_low_noise, guidance_low_noise or d.guidance_low_noise))
    experts = [Expert(prepare(h), g, family.model_inputs(h.spec, embeds, cond, d), family, h.spec) for h, g in pairs]
    noise = make_noise(tuple(samples.shape), seed)
    fresh = sigmas is None and denoise == 1.0
    x = noise if fresh else add_noise(samples.float(), noise, float(schedule.sigmas[0]))
    out = sample_flow(experts, schedule, solver, x, boundary=boundary or d.boundary,
                      given=cond.given if cond is not None else None, latent_format=fmt)
    return {"samples": out, "latent_format": fmt.name}
