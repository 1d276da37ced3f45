"""The diffusion-forcing loop of one window (SkyReels-V2 DF): every latent frame on its own noise level.

A short loop over the sampling session (samplers/session.py), like the flow loop. Per iteration of the window's
timestep matrix (samplers/df_plan.py): the model sees the frames of the iteration's interval at their own
timesteps; the frames whose counter moved are stepped by their own solver (one solver state per latent frame, so
each keeps its own multistep history). Given frames (a start image or a prefix of earlier video at the start, an end
image at the end) stay clean at timestep 0 and are never stepped. With `addnoise_condition` > 0 the model input of
the given start frames is slightly noised (by 0.001·a, fresh noise each iteration) and labelled timestep a, the
stored frames staying clean, as the original does.

`original_solver_quirk` reproduces the original loop's (and diffusers') in-place solver update, which feeds each
frame's first UniPC correction the current instead of the previous sample (see `FlowUniPC`); on by default, since
the default is the original algorithm.
"""
from __future__ import annotations

import torch

from .df_plan import TimestepMatrix
from .schedules import FlowSchedule
from .session import SamplingSession
from .solvers import SOLVERS, FlowUniPC


def sample_window(session: SamplingSession, expert: int, schedule: FlowSchedule, matrix: TimestepMatrix,
                  x: torch.Tensor, *, solver: str = "unipc", prefix: int = 0, end_frames: int = 0,
                  addnoise_condition: int = 0, noise_generator: torch.Generator | None = None,
                  original_solver_quirk: bool = True) -> torch.Tensor:
    """Denoise the window `x` [1, C, F, H, W] (noise, with the `prefix` given frames written at its start and the
    `end_frames` given frames at its end) along `matrix`, which covers all F frames (the original plans the end
    frames like the others and then holds them); returns the window's latent on the compute device.

    Given frames are kept clean even where they do not fill whole causal blocks (the original would denoise a
    start image from t = 999 with block size 5). `noise_generator` draws the addnoise_condition noise (CPU; seeded
    by the caller so that a run can be repeated exactly)."""
    device = session.device
    x = x.to(device, torch.float32).clone()
    frames = x.shape[2]
    if matrix.timesteps.shape[1] != frames:
        raise ValueError(f"the timestep matrix covers {matrix.timesteps.shape[1]} frames, the window holds {frames}")
    held = torch.zeros(frames, dtype=torch.bool)
    held[:prefix] = True
    held[frames - end_frames:] = True
    timesteps = matrix.timesteps.float().masked_fill(held, 0.0)
    update = matrix.update & ~held
    quirk = {"skyreels_inplace_quirk": True} if original_solver_quirk and SOLVERS[solver] is FlowUniPC else {}
    solvers = [SOLVERS[solver](schedule.sigmas, **quirk) for _ in range(frames)]
    session.activate(expert, x)
    session.set_remaining(matrix.iterations * session.calls_per_step(expert))
    for k in range(matrix.iterations):
        start, end = matrix.intervals[k]
        x_in = x[:, :, start:end].clone()
        t = timesteps[k, start:end].clone().unsqueeze(0)
        if addnoise_condition > 0 and start < prefix:
            factor = 0.001 * addnoise_condition
            given = x_in[:, :, : prefix - start]
            noise = torch.randn(given.shape, generator=noise_generator, dtype=torch.float32).to(device)
            x_in[:, :, : prefix - start] = given * (1.0 - factor) + noise * factor
            t[:, : prefix - start] = float(addnoise_condition)
        v = session.velocity(expert, x_in, t.to(device))
        for f in range(start, end):
            if update[k, f]:
                x[:, :, f] = solvers[f].step(v[:, :, f - start], int(matrix.counters[k, f]) - 1, x[:, :, f])
        if session.latent_format is not None:
            session.show(x)
    return x
