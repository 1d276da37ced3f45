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

from typing import Callable

import torch

from .df_plan import TimestepMatrix, Window, timestep_matrix
from .resume import ResumeStore
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
    session.begin_run(matrix.iterations)  # a window is a run of its own: step caches start afresh
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
        v = session.velocity(expert, x_in, t.to(device), step=k)
        for f in range(start, end):
            if update[k, f]:
                x[:, :, f] = solvers[f].step(v[:, :, f - start], int(matrix.counters[k, f]) - 1, x[:, :, f])
        if session.latent_format is not None:
            session.show(x)
    return x


def sample_video(session: SamplingSession, expert: int, schedule: FlowSchedule, windows: list[Window],
                 latent_shape: tuple[int, int, int], *, seed: int, ar_step: int = 0, block_size: int = 1,
                 solver: str = "unipc", addnoise_condition: int = 0, start: torch.Tensor | None = None,
                 end: torch.Tensor | None = None, overlap_history: int = 0,
                 roundtrip: tuple[Callable, Callable] | None = None, history: torch.Tensor | None = None,
                 encode: Callable | None = None,
                 on_window: Callable[[int, torch.Tensor, torch.Tensor | None], None] | None = None,
                 resume: ResumeStore | None = None,
                 original_solver_quirk: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Every window of a video (samplers/df_plan.py `plan_windows`), each conditioned on the end of the one before;
    returns the whole video's latent [1, C, L, H, W] (CPU), each window's overlap counted once, and every window's
    own latent (its given start included, its end frames not), as the original decodes them.

    `latent_shape` (C, H, W); `start` / `end`: given latent frames [1, C, n, H, W] at the video's start (window 0)
    and end (last window). How a window starts from the previous one:
    - `roundtrip` None: the last `overlap` latent frames are reused as they are (diffusers' way: no VAE pass, no
      colour drift at joins);
    - `roundtrip` = (decode, encode): the original's way: every window is decoded (`decode(latent)` → frames
      [1, 3, f, H, W] in [-1, 1]), and the video's last `overlap_history` pixel frames, clamped to [-1, 1], are
      encoded again (`encode(frames)` → latent) as the next window's start.
    Either way the given start is cut to whole causal blocks from its end, as the original does. Noise comes from
    one CPU generator seeded with `seed`, window after window (addnoise_condition noise from a second, seed + 1).
    `history`: frames [1, 3, n, H, W] in [-1, 1] of a video to continue (the windows come from
    `plan_windows(..., extend=True)`): the first window starts from its last `overlap_history` frames, encoded by
    `roundtrip[1]` or `encode`, and the result starts with those frames as encoded (so that it decodes to as many
    frames as the plan's `num_frames`: the overlap, then the new ones).
    `on_window(i, window latent, new pixel frames or None)` sees each finished window (to stream it out).
    `resume`: after each window the state goes there; a run that finds a state of the same render continues after
    its last finished window, with the same result as an uninterrupted run."""
    channels, height, width = latent_shape
    noise = torch.Generator().manual_seed(int(seed) % 2**64)
    extra = torch.Generator().manual_seed((int(seed) + 1) % 2**64)
    extend = history is not None
    carried = overlap_latents(overlap_history) - overlap_latents(overlap_history) % block_size
    # the latent so far, the last window's latent, the video's last overlap_history pixel frames (to re-encode)
    video, last, tail, first, done = None, None, None, 0, []
    if extend:
        tail = history[:, :, -overlap_history:].float().cpu()
    state = resume.load() if resume is not None else None
    if state is not None:
        first, video, last, tail, done = (state["next_window"], state["video"], state["last"], state["tail"],
                                          state["windows"])
        noise.set_state(state["noise"])
        extra.set_state(state["extra"])
    prefixes = ([carried] if extend else [0 if start is None else start.shape[2]]) + [carried] * (len(windows) - 1)
    ends = [0] * (len(windows) - 1) + [0 if end is None else end.shape[2]]
    matrices = [timestep_matrix(w.frames + e, schedule.timesteps, w.frames + e, ar_step, p, block_size)
                for w, p, e in zip(windows, prefixes, ends)]
    session.set_remaining(sum(m.iterations for m in matrices[first:]) * session.calls_per_step(expert))
    total_frames = windows[0].frames + sum(w.frames - overlap_latents(overlap_history) for w in windows[1:])
    for i in range(first, len(windows)):
        frames = windows[i].frames
        done_frames = 0 if video is None else video.shape[2]
        session.describe(f"window {i + 1} of {len(windows)} · {done_frames} of {total_frames} latent frames done")
        x = torch.randn(1, channels, frames, height, width, generator=noise, dtype=torch.float32)
        if i == 0 and not extend:
            given = start
        elif roundtrip is None and i > 0:
            given = last[:, :, last.shape[2] - overlap_latents(overlap_history):]
        else:
            given = (roundtrip[1] if roundtrip is not None else encode)(tail)
        prefix, end_frames, matrix = prefixes[i], ends[i], matrices[i]
        if prefix:
            x[:, :, :prefix] = given[:, :, :prefix].to(torch.float32).cpu()
        if end_frames:
            x = torch.cat([x, end.to(torch.float32).cpu()], dim=2)
        latent = sample_window(session, expert, schedule, matrix, x, solver=solver, prefix=prefix,
                               end_frames=end_frames, addnoise_condition=addnoise_condition, noise_generator=extra,
                               original_solver_quirk=original_solver_quirk).cpu()
        latent = latent[:, :, :latent.shape[2] - end_frames]
        overlap = overlap_latents(overlap_history) if i > 0 else 0
        pixels = None
        if roundtrip is not None:
            decoded = roundtrip[0](latent).clamp(-1.0, 1.0)
            pixels = decoded[:, :, overlap_history:] if i > 0 else decoded
            tail = pixels[:, :, -overlap_history:] if tail is None or pixels.shape[2] >= overlap_history else \
                torch.cat([tail, pixels], dim=2)[:, :, -overlap_history:]
        new, last = latent[:, :, overlap:], latent
        done.append(latent)
        video = new if video is None else torch.cat([video, new], dim=2)
        if on_window is not None:
            on_window(i, latent, pixels)
        if resume is not None:
            resume.save({"next_window": i + 1, "video": video, "last": last, "tail": tail, "windows": done,
                         "noise": noise.get_state(), "extra": extra.get_state()})
    if resume is not None:
        resume.finish()
    return video, done


def overlap_latents(overlap_history: int) -> int:
    return (overlap_history - 1) // 4 + 1
