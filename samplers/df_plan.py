"""Diffusion forcing plans (SkyReels-V2): the per-frame timestep matrix of one window and the windows of a long video.

Written from the published algorithm (SkyReels-V2 `skyreels_v2_infer/pipelines/diffusion_forcing_pipeline.py`,
`generate_timestep_matrix` and the long-video loop of `__call__`); everything is in latent frames.

Timestep matrix: frames are grouped in causal blocks. Each block has a counter: 0 = untouched noise, k = after k
solver steps, `len(steps) + 1` = clean prefix. Per iteration the first block, and every block whose left neighbour
is finished, advances by one; any other block trails its left neighbour by `ar_step` (0: all blocks move together,
"synchronous"). A block's timestep is the schedule read at its counter (counter 0 reads 999). A frame is updated in
an iteration when its counter moved and it is not a clean prefix. Iterations: `steps + (blocks − 1)·min(ar_step,
steps)` once prefix blocks are left out. Frames past the last whole block get no row (the original drops them too).

Windows (videos longer than `base_num_frames`): L latent frames, windows of B, overlap O. Window 0 holds B frames
(from noise, after an optional image prefix); window i > 0 starts from the last `overlap_history` frames of the
video so far (the original decodes and re-encodes them: O latent frames, cut to whole causal blocks) and adds
min(L − finished, B − O) new frames, finished = i·(B − O) + O; there are 1 + ⌈(L − B)/(B − O)⌉ windows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError


@dataclass(frozen=True)
class TimestepMatrix:
    """One window's plan: `timesteps` [iterations, frames] (int64, 0..999), `counters` [iterations, frames] (the
    schedule index, see the module notes), `update` [iterations, frames] (bool: step this frame's solver), and
    `intervals` (first, end) per iteration: the frames the model sees."""
    timesteps: torch.Tensor
    counters: torch.Tensor
    update: torch.Tensor
    intervals: list[tuple[int, int]]

    @property
    def iterations(self) -> int:
        return self.timesteps.shape[0]


def timestep_matrix(frames: int, schedule_timesteps: torch.Tensor, base_frames: int, ar_step: int = 0,
                    prefix_frames: int = 0, block_size: int = 1) -> TimestepMatrix:
    """The timestep matrix of a window of `frames` latent frames (module notes). `schedule_timesteps`: the solver's
    model timesteps, descending; `base_frames`: the most frames one model call may see (a sliding interval over
    longer windows); `prefix_frames`: clean frames at the start (whole blocks of them stay clean)."""
    steps = len(schedule_timesteps)
    done, clean = steps, steps + 1       # counter of a finished frame, of a clean prefix
    blocks, base_blocks = frames // block_size, base_frames // block_size
    if base_blocks < blocks and ar_step < steps / base_blocks:
        raise InputError(f"ar_step {ar_step} is too small for {blocks} causal blocks in windows of {base_blocks}",
                         f"use ar_step ≥ {-(-steps // base_blocks)}, or a longer base window")
    template = torch.cat([torch.tensor([999]), schedule_timesteps.long().cpu(), torch.tensor([0])])
    row = torch.zeros(blocks, dtype=torch.long)
    row[: prefix_frames // block_size] = clean
    counters, update = [], []
    while not bool((row >= done).all()):
        new = torch.zeros(blocks, dtype=torch.long)
        for b in range(blocks):
            new[b] = row[b] + 1 if b == 0 or row[b - 1] >= done else new[b - 1] - ar_step
        new = new.clamp(0, clean)
        update.append((new != row) & (new != clean))
        counters.append(new)
        row = new
    intervals, end = [], base_blocks
    for mask in update:  # the interval slides right as the block at its end starts moving
        if end < blocks and bool(mask[end]):
            end += 1
        intervals.append((max(end - base_blocks, 0) * block_size, end * block_size))
    counters_t = torch.stack(counters).repeat_interleave(block_size, dim=1) if counters else \
        torch.zeros(0, blocks * block_size, dtype=torch.long)
    update_t = torch.stack(update).repeat_interleave(block_size, dim=1) if update else \
        torch.zeros(0, blocks * block_size, dtype=torch.bool)
    return TimestepMatrix(template[counters_t], counters_t, update_t, intervals)


def iteration_count(steps: int, blocks: int, ar_step: int) -> int:
    """Iterations of a window of `blocks` blocks to generate (prefix blocks excluded)."""
    return steps + (blocks - 1) * min(ar_step, steps) if blocks > 0 else 0


@dataclass(frozen=True)
class Window:
    """One window of a long video: `frames` latent frames, the first `prefix` of them given (clean)."""
    frames: int
    prefix: int
    first_new: int      # index in the whole video's latent frames of the window's first new frame


def latent_count(pixel_frames: int, name: str) -> int:
    if pixel_frames < 1 or (pixel_frames - 1) % 4:
        lower = max(1, (pixel_frames - 1) // 4 * 4 + 1)
        raise InputError(f"{name} is {pixel_frames}, not of the form 4n+1", f"use {lower} or {lower + 4}")
    return (pixel_frames - 1) // 4 + 1


def plan_windows(num_frames: int, base_num_frames: int, overlap_history: int, block_size: int = 1,
                 ar_step: int = 0, image_prefix: int = 0, end_frames: int = 0, extend: bool = False) -> list[Window]:
    """The windows of a video of `num_frames` pixel frames, checked before any compute: every window must be whole
    causal blocks (the original leaves the frames past the last whole block as noise) with at least one to
    generate (the original crashes on a window of given frames only). `end_frames` given frames (an end image)
    follow the last window and count in its blocks. `extend`: the video continues a given one (the original's
    `extend_video`): every window, the first too, starts from the last `overlap_history` frames before it, and
    `num_frames` counts those of the given video too."""
    total = latent_count(num_frames, "num_frames")
    base = latent_count(base_num_frames, "base_num_frames")
    if total > base or extend:
        latent_count(overlap_history, "overlap_history")
        if overlap_history >= base_num_frames:
            raise InputError(f"overlap_history {overlap_history} is not shorter than base_num_frames "
                             f"{base_num_frames}", "use an overlap of about a sixth of the window, e.g. 17 or 37")
    windows = _windows(total, base, (overlap_history - 1) // 4 + 1, block_size, image_prefix, extend)
    problem = _problem(windows, block_size, ar_step, end_frames)
    if problem is not None:
        if len(windows) > 1 and windows[0].frames % block_size:
            whole = [n for n in range(base_num_frames - 4 * block_size, base_num_frames + 4 * block_size + 1, 4)
                     if n > 0 and ((n - 1) // 4 + 1) % block_size == 0]  # one below and one above
            raise InputError(problem, f"use a base_num_frames whose latent frames are whole blocks, e.g. "
                                      f"{' or '.join(map(str, whole))}")
        valid = _valid_neighbours(num_frames, base, overlap_history, block_size, ar_step, image_prefix, end_frames,
                                  extend)
        raise InputError(problem, f"use num_frames {' or '.join(map(str, valid))}" if valid else
                         "use another num_frames, base_num_frames or causal_block_size")
    return windows


def _windows(total: int, base: int, overlap: int, block_size: int, image_prefix: int,
             extend: bool = False) -> list[Window]:
    if total <= base and not extend:
        return [Window(total, image_prefix, image_prefix)]
    prefix = overlap - overlap % block_size  # the re-encoded history, cut to whole blocks as the original does
    windows = [] if extend else [Window(base, image_prefix, image_prefix)]
    for i in range(0 if extend else 1, 1 + (total - base - 1) // (base - overlap) + 1):
        finished = i * (base - overlap) + overlap
        windows.append(Window(min(total - finished + overlap, base), prefix, finished))
    return windows


def _problem(windows: list[Window], block_size: int, ar_step: int, end_frames: int = 0) -> str | None:
    for i, w in enumerate(windows):
        name = f"window {i + 1} of {len(windows)}"
        end = end_frames if i == len(windows) - 1 else 0
        if w.frames <= w.prefix or (w.frames + end) // block_size <= w.prefix // block_size:
            return (f"{name} would hold only given frames ({w.frames} latent frames, of which {w.prefix} given, in "
                    f"causal blocks of {block_size})")
        if (w.frames + end) % block_size:  # the original would leave the frames past the last whole block as noise
            held = f" + {end} (the end image)" if end else ""
            return (f"every window must be whole causal blocks, but {name} has {w.frames}{held} latent frames and "
                    f"causal_block_size is {block_size}")
    return None


def _valid_neighbours(num_frames: int, base: int, overlap_history: int, block_size: int, ar_step: int,
                      image_prefix: int, end_frames: int, extend: bool) -> list[int]:
    """The nearest valid frame counts below and above `num_frames` (4n+1), for the error message."""
    found = []
    for direction in (-4, 4):
        n = num_frames + direction
        while 1 <= n <= num_frames + 4000:
            windows = _windows((n - 1) // 4 + 1, base, (overlap_history - 1) // 4 + 1, block_size, image_prefix,
                               extend)
            if _problem(windows, block_size, ar_step, end_frames) is None:
                found.append(n)
                break
            n += direction
    return sorted(found)
