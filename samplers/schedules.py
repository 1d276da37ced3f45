"""Flow-matching noise schedules for Wan, SkyReels-V2 and HunyuanVideo.

Convention: x_σ = (1 − σ)·x0 + σ·ε, the model predicts the velocity v = ε − x0 at model timestep σ·1000.
A schedule's noise levels are ComfyUI's SIGMAS: a 1-D float32 tensor of steps + 1 decreasing values ending in 0,
so schedules built here and by native ComfyUI sigma nodes are interchangeable.

Denoise strength (video-to-video) follows ComfyUI's KSampler / BasicScheduler: a strength d < 1 builds the
schedule for int(steps / d) steps and keeps its last steps + 1 noise levels, so `steps` model calls are still
made, starting from a partly noised input (`add_noise(x0, noise, sigmas[0])`) rather than pure noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(sigmas, shift: float):
    """The timestep shift σ' = s·σ / (1 + (s − 1)·σ); works on floats, numpy arrays and tensors."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    """The flow-matching forward process: the point at noise level `sigma` between `x0` and `noise`."""
    return (1 - sigma) * x0 + sigma * noise


@dataclass(frozen=True)
class FlowSchedule:
    """The noise levels of one sampling run and the timestep the model is given at each step.

    `sigmas`: float32 [steps + 1] (ComfyUI SIGMAS). `timesteps`: [steps]; `timesteps[i]` goes with `sigmas[i]`.
    The official Wan samplers give the model int64 timesteps truncated from the float64 σ·1000; those can be
    one lower than float32 σ·1000 would give (e.g. σ = 0.3 → 299), so they are kept rather than recomputed.
    """
    sigmas: torch.Tensor
    timesteps: torch.Tensor

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @classmethod
    def from_sigmas(cls, sigmas: torch.Tensor) -> FlowSchedule:
        """Wrap SIGMAS from elsewhere (e.g. a native ComfyUI scheduler) with float timesteps σ·1000; SIGMAS that are
        no flow-matching schedule (outside [0, 1], not descending, fewer than two levels) are refused, saying why."""
        if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1 or len(sigmas) < 2:
            shape = tuple(sigmas.shape) if isinstance(sigmas, torch.Tensor) else type(sigmas).__name__
            raise InputError(f"the sigmas ({shape}) are not a schedule of at least two noise levels",
                             "connect SIGMAS from a scheduler node, e.g. OpenReel Schedule")
        sigmas = sigmas.detach().to("cpu", torch.float32)
        if sigmas.max() > 1.0 or sigmas.min() < 0.0:
            raise InputError(f"the sigmas run from {sigmas.max():.4g} to {sigmas.min():.4g}, but flow-matching models "
                             f"take noise levels in [0, 1] (Karras or EDM schedules are for other models)",
                             "use OpenReel Schedule, or a scheduler made for flow models (e.g. simple or beta with "
                             "the model's shift)")
        if (sigmas[1:] > sigmas[:-1]).any():
            raise InputError("the sigmas rise somewhere (a flipped schedule?); sampling goes from noise to the image, "
                             "so they must fall", "remove the node that flips or reorders them")
        return cls(sigmas, sigmas[:-1] * NUM_TRAIN_TIMESTEPS)

    def tail(self, steps: int) -> FlowSchedule:
        """The last `steps` steps of this schedule."""
        return FlowSchedule(self.sigmas[-(steps + 1):], self.timesteps[len(self.timesteps) - steps:])


def wan_unipc_schedule(steps: int, shift: float, denoise: float = 1.0) -> FlowSchedule:
    """Wan's `FlowUniPCMultistepScheduler.set_timesteps(steps, shift=shift)` table, int64 timesteps included.

    Its 1000-step training table runs σ = 1 − linspace(1, 1/1000, 1000)[::-1], stored as float32, so
    σ_max = float32(0.999) and σ_min = 0; the sampling levels are linspace(σ_max, σ_min, n + 1)[:-1] in float64,
    shifted, then a final 0.
    """
    total = _total_steps(steps, denoise)
    sigma_max = float(np.float32(1 - 1 / NUM_TRAIN_TIMESTEPS))
    sigmas = shift_sigmas(np.linspace(sigma_max, 0.0, total + 1)[:-1], shift)
    return _integer_schedule(sigmas).tail(steps)


def linear_schedule(steps: int, shift: float, denoise: float = 1.0, integer_timesteps: bool = True) -> FlowSchedule:
    """σ = linspace(1, 0, n + 1) shifted: Wan's FlowDPM `get_sampling_sigmas` and HunyuanVideo's schedule.

    `integer_timesteps`: int64 timesteps truncated from float64 σ·1000 as Wan's 'dpm++' path feeds them;
    False gives HunyuanVideo's float σ·1000.
    """
    total = _total_steps(steps, denoise)
    sigmas = shift_sigmas(np.linspace(1.0, 0.0, total + 1)[:-1], shift)
    schedule = _integer_schedule(sigmas) if integer_timesteps else FlowSchedule.from_sigmas(_with_final_zero(sigmas))
    return schedule.tail(steps)


def _integer_schedule(sigmas: np.ndarray) -> FlowSchedule:
    """float64 sampling levels (without the final 0) → float32 SIGMAS and int64 timesteps, as Wan builds them."""
    timesteps = torch.from_numpy(sigmas * NUM_TRAIN_TIMESTEPS).to(torch.int64)
    return FlowSchedule(_with_final_zero(sigmas), timesteps)


def _with_final_zero(sigmas: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))


def _total_steps(steps: int, denoise: float) -> int:
    """How many steps the full schedule has so that its last `steps` steps are the denoise fraction."""
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}", "set steps to 1 or more")
    if not 0.0 < denoise <= 1.0:
        raise InputError(f"denoise must be in (0, 1], got {denoise}", "use 1.0 to start from pure noise")
    return steps if denoise == 1.0 else int(steps / denoise)
