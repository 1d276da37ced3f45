"""Sampling from handles: defaults, validation, schedule, noise and experts → the flow sampler → a LATENT."""
from __future__ import annotations

import torch

from ..errors import InputError
from ..handles import DiTHandle, TextEmbeds
from ..memory.patches import prepare
from .conditioning import LATENT_FORMATS, check_fits
from .defaults import defaults_for
from .flow_sampler import Expert, WanConditioning, sample_wan
from .schedules import FlowSchedule, add_noise, linear_schedule, wan_unipc_schedule

SOLVER_CHOICES = ("unipc", "dpm++_2m", "euler")


def make_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Gaussian noise from a CPU generator: the same seed gives the same video on every device."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed) % 2**64), dtype=torch.float32)


def sample(dit: DiTHandle, embeds: TextEmbeds, latent: dict, *, seed: int, steps: int = 0, cfg: float = 0.0,
           shift: float = 0.0, solver: str = "unipc", dit_low_noise: DiTHandle | None = None,
           cfg_low_noise: float = 0.0, boundary: float = 0.0, denoise: float = 1.0,
           sigmas: torch.Tensor | None = None) -> dict:
    """Denoise `latent` with one DiT or a Wan2.2 (high-noise, low-noise) pair. Zeros mean "the official default"
    for steps, cfg, shift, cfg_low_noise and boundary (see samplers/defaults.py)."""
    if solver not in SOLVER_CHOICES:
        raise InputError(f"unknown solver {solver!r}", f"use one of {SOLVER_CHOICES}")
    check_fits(dit.spec, latent, embeds.positive.shape[-1], dit_low_noise.spec if dit_low_noise else None)
    samples = latent["samples"]
    stride = LATENT_FORMATS[dit.spec.latent_format][1]
    height, width = samples.shape[3] * stride, samples.shape[4] * stride
    d = defaults_for(dit.spec, dit_low_noise is not None, width, height)
    steps, cfg, shift = steps or d.steps, cfg or d.cfg, shift or d.shift
    if sigmas is not None:
        schedule = FlowSchedule.from_sigmas(sigmas)
        if denoise != 1.0:
            raise InputError("denoise does not apply when sigmas are connected", "set denoise to 1.0 or cut the "
                             "sigmas themselves (e.g. with a split-sigmas node)")
    elif solver == "dpm++_2m":
        schedule = linear_schedule(steps, shift, denoise)
    else:
        schedule = wan_unipc_schedule(steps, shift, denoise)
    experts = [Expert(prepare(dit), cfg)]
    if dit_low_noise is not None:
        experts.append(Expert(prepare(dit_low_noise), cfg_low_noise or d.cfg_low_noise))
    noise = make_noise(tuple(samples.shape), seed)
    fresh = sigmas is None and denoise == 1.0
    x = noise if fresh else add_noise(samples.float(), noise, float(schedule.sigmas[0]))
    extra = latent.get("openreel") or {}
    cond = WanConditioning(embeds.positive, embeds.negative, y=extra.get("y"), clip_fea=extra.get("clip_fea"),
                           fps=int(d.fps) if dit.spec.config.fps_embedding else None,
                           given_latent=extra.get("given"))
    out = sample_wan(experts, schedule, solver, cond, x, boundary=boundary or d.boundary,
                     latent_format=dit.spec.latent_format)
    return {"samples": out, "latent_format": dit.spec.latent_format}
