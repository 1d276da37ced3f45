"""One flow-matching sampling loop for single models and Wan2.2-style high/low-noise expert pairs.

Per step: pick the expert (official rule: timestep ≥ boundary·1000 → the high-noise expert), take its guided
velocity from the session, advance one solver (shared by both experts, as the official loop does), and keep the
given frames (TI2V-5B's start image) clean at timestep 0.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .schedules import FlowSchedule
from .session import Expert, SamplingSession
from .solvers import SOLVERS


def sample_flow(experts: Sequence[Expert], schedule: FlowSchedule, solver: str, x: torch.Tensor, *,
                boundary: float = 0.0, given: torch.Tensor | None = None, batch_cfg: bool | None = None,
                latent_format=None, label: str = "OpenReel sampling") -> torch.Tensor:
    """Integrate `x` (noise, or a noised latent for denoise < 1) along `schedule`; returns the clean latent (CPU).

    `experts`: one model, or (high-noise, low-noise) with `boundary` as a fraction of the 1000 timesteps.
    `given`: clean latent frames [B, C, F_given, H, W] the video starts with. `batch_cfg`: None decides from the
    VRAM plan or free memory (always batched on the CPU).
    """
    if len(experts) not in (1, 2):
        raise ValueError("sample_flow takes one model or a (high-noise, low-noise) pair")
    session = SamplingSession(experts, batch_cfg=batch_cfg, latent_format=latent_format, label=label)
    device = session.device
    solver_state = SOLVERS[solver](schedule.sigmas)
    frames = x.shape[2]
    keep = None  # 1 where frames are generated, 0 where they are given
    if given is not None:
        keep = torch.ones(1, 1, frames, 1, 1)
        keep[:, :, : given.shape[2]] = 0
        keep = keep.to(device)
        pad = given.new_zeros(*given.shape[:2], frames - given.shape[2], *given.shape[3:])
        given = torch.cat([given, pad], 2).to(device)
    x = x.to(device, torch.float32)
    if keep is not None:
        x = (1 - keep) * given + keep * x

    def expert_index(t: torch.Tensor) -> int:
        return 0 if len(experts) == 1 or t.item() >= boundary * 1000 else 1

    def calls_from(i: int) -> int:
        return sum(session.calls_per_step(e) for e in map(expert_index, schedule.timesteps[i:]))

    order = [expert_index(t) for t in schedule.timesteps]
    spans = [range(order.index(e), len(order) - order[::-1].index(e)) if e in order else range(0)
             for e in range(len(experts))]
    with session:
        session.begin_run(len(order), spans)
        session.set_remaining(calls_from(0))
        for i, t in enumerate(schedule.timesteps):
            index = expert_index(t)
            if index not in session.active:
                session.activate(index, x)
                session.set_remaining(calls_from(i))
            family = experts[index].family
            # one timestep per sample (as the official loops pass it) unless given frames are clean: timestep 0
            t_model = torch.full((x.shape[0], 1), float(t), device=device)
            if keep is not None:
                t_model = t_model * keep.view(1, frames)
            v = session.velocity(index, x, t_model if family is None else family.model_timestep(t_model), step=i)
            x0 = x - schedule.sigmas[i] * v if latent_format is not None else None
            x = solver_state.step(v, i, x)
            if keep is not None:
                x = (1 - keep) * given + keep * x
            if x0 is not None:
                session.show(x0)
    return x.cpu()
