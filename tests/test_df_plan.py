"""Diffusion-forcing plans: the timestep matrix against diffusers' and the original SkyReels-V2 code over a grid,
the iteration count, the long-video windows of the original loop, and every refusal before compute.

The original code is read from a SkyReels-V2 checkout named by SKYREELS_V2_PATH (skipped without it); diffusers
0.42.1 is the reference on PyPI."""
from __future__ import annotations

import ast
import itertools
import os
import textwrap
from pathlib import Path

import pytest
import torch

from openreel.errors import InputError
from openreel.samplers.df_plan import Window, iteration_count, plan_windows, timestep_matrix
from openreel.samplers.schedules import wan_unipc_schedule
from references import require

def prefix_ok(frames: int, block: int, prefix: int) -> bool:
    return prefix <= frames and prefix // block < frames // block


# (frames, base frames, steps, ar_step, block size, prefix frames)
# (only windows with a block to generate: the original and diffusers crash on the others, the planner refuses them)
GRID = [(f, b, s, a, c, p) for f, b, s, a, c, p in itertools.product(
    (1, 8, 21, 25, 31), (5, 25), (1, 4, 10), (0, 1, 5), (1, 5), (0, 1, 5))
    if prefix_ok(f, c, p) and not (b // c < f // c and a < s / max(1, b // c))]


def schedule(steps: int) -> torch.Tensor:
    return wan_unipc_schedule(steps, 8.0).timesteps


def same(ours, theirs) -> None:
    matrix, counters, update, intervals = theirs
    assert torch.equal(ours.timesteps, matrix.long())
    assert torch.equal(ours.counters, counters.long())
    assert torch.equal(ours.update, update.bool())
    assert ours.intervals == [tuple(map(int, i)) for i in intervals]


@pytest.mark.parametrize("frames, base, steps, ar_step, block, prefix", GRID)
def test_timestep_matrix_equals_diffusers(frames, base, steps, ar_step, block, prefix):
    require("diffusers")
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    theirs = SkyReelsV2DiffusionForcingPipeline.generate_timestep_matrix(
        None, frames, schedule(steps), base, ar_step, prefix, block)
    same(timestep_matrix(frames, schedule(steps), base, ar_step, prefix, block), theirs)


def _original_generate_timestep_matrix():
    """`generate_timestep_matrix` from the original pipeline file, compiled alone (the file imports what this machine
    lacks: decord, the original's modules)."""
    root = os.environ.get("SKYREELS_V2_PATH")
    if not root:
        pytest.skip("set SKYREELS_V2_PATH to a SkyReels-V2 checkout to compare with the original code")
    source = (Path(root) / "skyreels_v2_infer" / "pipelines" / "diffusion_forcing_pipeline.py").read_text()
    function = next(node for node in ast.walk(ast.parse(source))
                    if isinstance(node, ast.FunctionDef) and node.name == "generate_timestep_matrix")
    namespace = {"torch": torch, "math": __import__("math"), "Tuple": tuple, "List": list}
    exec(textwrap.dedent(ast.get_source_segment(source, function)), namespace)
    return namespace["generate_timestep_matrix"]


@pytest.mark.parametrize("frames, base, steps, ar_step, block, prefix", GRID[::7])
def test_timestep_matrix_equals_the_original(frames, base, steps, ar_step, block, prefix):
    original = _original_generate_timestep_matrix()
    theirs = original(None, frames, schedule(steps), base, ar_step, prefix, block)
    same(timestep_matrix(frames, schedule(steps), base, ar_step, prefix, block), theirs)


@pytest.mark.parametrize("frames, steps, ar_step, block, prefix", [
    (25, 30, 5, 1, 0), (25, 30, 5, 5, 0), (25, 10, 0, 1, 0), (20, 4, 7, 5, 5), (21, 30, 40, 1, 1), (1, 3, 5, 1, 0)])
def test_iteration_count_formula(frames, steps, ar_step, block, prefix):
    blocks = frames // block - prefix // block
    m = timestep_matrix(frames, schedule(steps), frames, ar_step, prefix, block)
    assert m.iterations == iteration_count(steps, blocks, ar_step)
    assert m.update.sum(0).tolist() == [0] * (prefix // block * block) + [steps] * (blocks * block)  # steps each


def test_published_iteration_counts():
    # SkyReels-V2: 25 latent frames, 30 steps, ar_step 5: 150 iterations with block size 1, 50 with block size 5
    assert timestep_matrix(25, schedule(30), 25, 5, 0, 1).iterations == 150
    assert timestep_matrix(25, schedule(30), 25, 5, 0, 5).iterations == 50


def test_synchronous_rows_are_the_schedule_and_prefix_stays_clean():
    m = timestep_matrix(6, schedule(4), 6, 0, prefix_frames=2)
    assert m.timesteps[:, :2].eq(0).all() and not m.update[:, :2].any()
    assert torch.equal(m.timesteps[:, 2], schedule(4))
    assert m.intervals == [(0, 6)] * 4


def test_frames_past_the_last_whole_block_get_no_row():
    assert timestep_matrix(12, schedule(3), 12, 2, 0, 5).timesteps.shape[1] == 10  # as the original


# ----------------------------------------------------------------------------------------- windows
def original_windows(num_frames, base_num_frames, overlap_history, block, image_prefix=0):
    """The window sizes of the original long-video loop, transcribed from its arithmetic."""
    latent = (num_frames - 1) // 4 + 1
    base = (base_num_frames - 1) // 4 + 1
    if num_frames <= base_num_frames:
        return [(latent, image_prefix)]
    overlap = (overlap_history - 1) // 4 + 1
    out = [(base, image_prefix)]
    for i in range(1, 1 + (latent - base - 1) // (base - overlap) + 1):
        finished = i * (base - overlap) + overlap
        out.append((min(latent - finished + overlap, base), overlap - overlap % block))
    return out


@pytest.mark.parametrize("num_frames, base, overlap, block", [
    (97, 97, 17, 1), (257, 97, 17, 1), (377, 121, 37, 1), (737, 97, 17, 1), (1457, 97, 17, 1), (737, 117, 17, 5),
    (257, 97, 37, 5), (1457, 121, 37, 1), (737, 117, 37, 5)])
def test_windows_follow_the_original_loop(num_frames, base, overlap, block):
    windows = plan_windows(num_frames, base, overlap, block)
    assert [(w.frames, w.prefix) for w in windows] == original_windows(num_frames, base, overlap, block)
    latent = (num_frames - 1) // 4 + 1
    assert windows[0].frames + sum(w.frames - ((overlap - 1) // 4 + 1) for w in windows[1:]) == latent


def test_a_short_video_is_one_window_with_its_image_prefix():
    assert plan_windows(97, 97, 17, image_prefix=1) == [Window(25, 1, 1)]


@pytest.mark.parametrize("args, message, todo", [
    ((96, 97, 17), "num_frames is 96, not of the form 4n\\+1", "93 or 97"),
    ((257, 98, 17), "base_num_frames is 98", "97 or 101"),
    ((257, 97, 97), "overlap_history 97 is not shorter than base_num_frames 97", "17 or 37"),
    ((237, 121, 17, 5, 5), "window 1 of 3 has 31 latent frames and causal_block_size is 5",
     "base_num_frames .* 117 or 137"),
    ((101, 121, 17, 5), "window 1 of 1 has 26 latent frames and causal_block_size is 5", "num_frames 97 or 117"),
    ((245, 117, 17, 5), "window 3 of 3 has 12 latent frames", "num_frames 237 or 257"),
    ((1, 97, 17, 1, 0, 1), "window 1 of 1 would hold only given frames", "num_frames 5"),
    ((29, 13, 5, 2, 1, 0, 1), "window 3 of 3 has 4 \\+ 1 \\(the end image\\) latent frames", "num_frames 25 or 33"),
])
def test_impossible_plans_are_refused_with_the_nearest_working_numbers(args, message, todo):
    with pytest.raises(InputError, match=message) as caught:
        plan_windows(*args)
    assert __import__("re").search(todo, caught.value.todo), caught.value.todo


@pytest.mark.parametrize("args", [(237, 121, 17, 5), (377, 121, 37, 5)])
def test_plans_the_original_crashes_on_are_refused(args):
    # the original stacks an empty list when a window has no whole block to generate 
    with pytest.raises(InputError, match="must be whole causal blocks"):
        plan_windows(*args)


def test_ar_step_too_small_for_a_sliding_window_is_refused():
    with pytest.raises(InputError, match="ar_step 1 is too small.*Use ar_step ≥ 3"):
        timestep_matrix(10, schedule(10), 4, ar_step=1)
