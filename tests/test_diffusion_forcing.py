"""One diffusion-forcing window against the original SkyReels-V2 loop, on tiny random weights.

The reference is the original pipeline's window loop (`diffusion_forcing_pipeline.py`, `__call__`, the short-video
path), transcribed in the test: the official FlowUniPC scheduler per latent frame, written back in place into the
latent (so its aliasing quirk is in), the timestep matrix from diffusers (equal to the original's, see
test_df_plan.py), end frames held at timestep 0, addnoise_condition on the start frames. Both sides call the same
DiT (its parity with SkyReels' transformer is test_wan_parity.py's), so this checks the loop, the per-frame solver
bookkeeping, the session's guidance and the prefix / end / addnoise handling. The scheduler is wan22's copy (CI) or
the original's own file from SKYREELS_V2_PATH."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from openreel.handles import TextEmbeds
from openreel.models.common.family import SamplingDefaults
from openreel.models.wan.family import WAN
from openreel.models.wan.model import WanConfig, WanDiT
from openreel.samplers.df_plan import timestep_matrix
from openreel.samplers.diffusion_forcing import sample_window
from openreel.samplers.schedules import wan_unipc_schedule
from openreel.samplers.session import Expert, SamplingSession
from references import load_official_util, require

TOL = 1e-4
CFG = WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=32, fps_embedding=True)
DEFAULTS = SamplingDefaults(4, 8.0, 6.0, 6.0, 0.0, 24, "test")
GUIDANCE = 6.0


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def model():
    torch.manual_seed(3)
    dit = WanDiT(CFG).eval()
    for p in dit.parameters():
        p.data = torch.randn(p.shape) * (0.15 if p.dim() > 1 else 0.5)
    return dit


def wan22_scheduler():
    return load_official_util("fm_solvers_unipc.py").FlowUniPCMultistepScheduler


def original_scheduler():
    root = os.environ.get("SKYREELS_V2_PATH")
    if not root:
        pytest.skip("set SKYREELS_V2_PATH to a SkyReels-V2 checkout to use the original scheduler")
    path = Path(root) / "skyreels_v2_infer" / "scheduler" / "fm_solvers_unipc.py"
    spec = importlib.util.spec_from_file_location("skyreels_fm_solvers_unipc", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FlowUniPCMultistepScheduler


@torch.no_grad()
def original_window(dit, scheduler_cls, x, ctx, nctx, steps, shift, ar_step, block, prefix, end, addnoise, gen):
    """The original loop for one window (in our words), on latents [C, F, H, W] as it keeps them."""
    require("diffusers")
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    latents = x[0].clone()
    frames = latents.shape[1]
    scheds = []
    for _ in range(frames):
        sched = scheduler_cls(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
        sched.set_timesteps(steps, shift=shift)
        scheds.append(sched)
    matrix, _, update, intervals = SkyReelsV2DiffusionForcingPipeline.generate_timestep_matrix(
        None, frames, scheds[0].timesteps, frames, ar_step, prefix, block)
    if end:
        matrix[:, -end:] = 0
        update[:, -end:] = False
    fps = {"fps": DEFAULTS.fps}
    for i, row in enumerate(matrix):
        s, e = intervals[i]
        timestep = row[None, s:e].clone().float()
        model_input = latents[:, s:e].clone()
        if addnoise > 0 and s < prefix:
            factor = 0.001 * addnoise
            given = model_input[:, : prefix - s]
            model_input[:, : prefix - s] = given * (1.0 - factor) + torch.randn(given.shape, generator=gen) * factor
            timestep[:, : prefix - s] = addnoise
        cond = dit(model_input[None], timestep, ctx, **fps)[0]
        uncond = dit(model_input[None], timestep, nctx, **fps)[0]
        pred = uncond + GUIDANCE * (cond - uncond)
        for idx in range(s, e):
            if update[i, idx]:
                latents[:, idx] = scheds[idx].step(pred[:, idx - s], row[idx], latents[:, idx], return_dict=False)[0]
    return latents[None]


def ours_window(dit, x, ctx, nctx, steps, shift, ar_step, block, prefix, end, addnoise, gen):
    spec = SimpleNamespace(config=dit.cfg)
    inputs = WAN.model_inputs(spec, TextEmbeds(ctx, nctx), None, DEFAULTS)
    schedule = wan_unipc_schedule(steps, shift)
    matrix = timestep_matrix(x.shape[2], schedule.timesteps, x.shape[2], ar_step, prefix, block)
    with SamplingSession([Expert(dit, GUIDANCE, inputs, WAN, spec)], batch_cfg=False) as session:
        return sample_window(session, 0, schedule, matrix, x, prefix=prefix, end_frames=end,
                             addnoise_condition=addnoise, noise_generator=gen).cpu()


CASES = {  # steps, shift, ar_step, causal block size, prefix frames, end frames, addnoise_condition
    "synchronous": (4, 8.0, 0, 1, 0, 0, 0),
    "asynchronous, block 1": (4, 8.0, 2, 1, 0, 0, 0),
    "asynchronous, block 2": (3, 5.0, 1, 2, 0, 0, 0),
    "image prefix with addnoise_condition": (4, 8.0, 0, 1, 1, 0, 20),
    "video prefix, asynchronous, block 2": (3, 8.0, 2, 2, 2, 0, 20),
    "asynchronous, block 5": (3, 8.0, 1, 5, 0, 0, 0),
    "video prefix, asynchronous, block 5": (3, 8.0, 2, 5, 5, 0, 20),
    "start and end image": (4, 8.0, 0, 1, 1, 1, 0),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("scheduler", ["wan22", "original"])
def test_window_matches_the_original_loop(case, scheduler):
    steps, shift, ar_step, block, prefix, end, addnoise = CASES[case]
    scheduler_cls = wan22_scheduler() if scheduler == "wan22" else original_scheduler()
    dit = model()
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, 16, 10 if block == 5 else 6, 4, 6, generator=gen)
    ctx, nctx = torch.randn(1, 7, CFG.text_dim, generator=gen), torch.randn(1, 4, CFG.text_dim, generator=gen)
    expected = original_window(dit, scheduler_cls, x, ctx, nctx, steps, shift, ar_step, block, prefix, end,
                               addnoise, torch.Generator().manual_seed(5))
    got = ours_window(dit, x, ctx, nctx, steps, shift, ar_step, block, prefix, end, addnoise,
                      torch.Generator().manual_seed(5))
    assert rel_err(got, expected) < TOL
    assert torch.equal(got[:, :, :prefix], x[:, :, :prefix])  # given frames come back untouched
    if end:
        assert torch.equal(got[:, :, -end:], x[:, :, -end:])


def test_given_frames_stay_clean_when_they_do_not_fill_a_causal_block():
    """The original re-denoises a 1-frame image prefix from t = 999 with block size 2; OpenReel keeps it."""
    dit = model()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 16, 4, 4, 6, generator=gen)
    ctx, nctx = torch.randn(1, 7, CFG.text_dim, generator=gen), torch.randn(1, 4, CFG.text_dim, generator=gen)
    seen = []
    dit.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    got = ours_window(dit, x, ctx, nctx, 3, 8.0, 1, 2, 1, 0, 0, None)
    assert torch.equal(got[:, :, :1], x[:, :, :1])
    assert all(t[0, 0].item() == 0.0 for t in seen)  # the model always sees the image frame as clean


# ----------------------------------------------------------------------------------------- long videos
def tiny_vae():
    from dataclasses import replace

    from openreel.models.wan.vae import WAN21, WanVAE

    torch.manual_seed(4)
    vae = WanVAE(replace(WAN21, dim=8, dec_dim=8)).eval()
    for p in vae.parameters():
        p.data = torch.randn(p.shape) * 0.05
    return vae


@torch.no_grad()
def original_video(dit, vae, scheduler_cls, num_frames, base, overlap, seed, ar_step, block, start, end, ctx, nctx,
                   reuse_latents, addnoise=0):
    """The original long-video loop (`__call__`, long path) in our words; `reuse_latents`: diffusers' variant."""
    latent, base_latent, overlap_latent = (num_frames - 1) // 4 + 1, (base - 1) // 4 + 1, (overlap - 1) // 4 + 1
    n_iter = 1 + (latent - base_latent - 1) // (base_latent - overlap_latent) + 1
    noise, extra = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    output, accumulated = None, None
    for i in range(n_iter):
        if i == 0:
            prefix, frames = start, base_latent
        else:
            prefix = accumulated[:, :, -overlap_latent:] if reuse_latents else vae.encode(output[:, :, -overlap:])
            prefix = prefix[:, :, : prefix.shape[2] - prefix.shape[2] % block]
            finished = i * (base_latent - overlap_latent) + overlap_latent
            frames = min(latent - finished + overlap_latent, base_latent)
        x = torch.randn(1, 16, frames, 4, 6, generator=noise)
        given = 0 if prefix is None else prefix.shape[2]
        if given:
            x[:, :, :given] = prefix
        last_end = end is not None and i == n_iter - 1
        if last_end:
            x = torch.cat([x, end], dim=2)
        window = original_window(dit, scheduler_cls, x, ctx, nctx, 3, 8.0, ar_step, block, given,
                                 end.shape[2] if last_end else 0, addnoise, extra)
        if last_end:
            window = window[:, :, : -end.shape[2]]
        accumulated = window if i == 0 else torch.cat([accumulated, window[:, :, overlap_latent:]], dim=2)
        decoded = vae.decode(window).clamp(-1, 1)
        output = decoded if i == 0 else torch.cat([output, decoded[:, :, overlap:]], dim=2)
    return accumulated, output


@pytest.mark.parametrize("num_frames, ar_step, block, with_start, with_end, reuse_latents, addnoise", [
    (25, 0, 1, False, False, False, 0),
    (25, 1, 1, True, False, False, 20),
    (25, 1, 1, False, True, False, 0),
    (29, 1, 2, False, False, False, 20),
    (25, 0, 1, True, True, True, 0),
    (29, 1, 2, False, False, True, 20),
])
def test_long_video_matches_the_original_window_loop(num_frames, ar_step, block, with_start, with_end,
                                                     reuse_latents, addnoise):
    from openreel.samplers.df_plan import plan_windows
    from openreel.samplers.diffusion_forcing import sample_video

    base, overlap, seed = 13, 5, 21
    dit, vae = model(), tiny_vae()
    gen = torch.Generator().manual_seed(8)
    ctx, nctx = torch.randn(1, 7, CFG.text_dim, generator=gen), torch.randn(1, 4, CFG.text_dim, generator=gen)
    start = torch.randn(1, 16, 1, 4, 6, generator=gen) if with_start else None
    end = torch.randn(1, 16, 1, 4, 6, generator=gen) if with_end else None
    expected_latent, expected_pixels = original_video(dit, vae, wan22_scheduler(), num_frames, base, overlap, seed,
                                                      ar_step, block, start, end, ctx, nctx, reuse_latents, addnoise)

    spec = SimpleNamespace(config=dit.cfg)
    inputs = WAN.model_inputs(spec, TextEmbeds(ctx, nctx), None, DEFAULTS)
    windows = plan_windows(num_frames, base, overlap, block, ar_step, image_prefix=1 if with_start else 0,
                           end_frames=1 if with_end else 0)
    assert len(windows) == 3
    pixels = []
    with SamplingSession([Expert(dit, GUIDANCE, inputs, WAN, spec)], batch_cfg=False) as session:
        got, _ = sample_video(session, 0, wan_unipc_schedule(3, 8.0), windows, (16, 4, 6), seed=seed, ar_step=ar_step,
                           block_size=block, start=start, end=end, overlap_history=overlap, addnoise_condition=addnoise,
                           roundtrip=None if reuse_latents else (vae.decode, vae.encode),
                           on_window=lambda i, latent, new: pixels.append(new))
    assert got.shape == expected_latent.shape == (1, 16, (num_frames - 1) // 4 + 1, 4, 6)
    assert rel_err(got, expected_latent) < TOL
    if not reuse_latents:
        assert rel_err(torch.cat(pixels, dim=2), expected_pixels) < TOL


@torch.no_grad()
def original_extension(dit, vae, scheduler_cls, given, num_frames, base, overlap, seed, ctx, nctx):
    """The original `extend_video` loop in our words: every window starts from the re-encoded end of the video."""
    latent, base_latent, overlap_latent = (num_frames - 1) // 4 + 1, (base - 1) // 4 + 1, (overlap - 1) // 4 + 1
    n_iter = 1 + (latent - base_latent - 1) // (base_latent - overlap_latent) + 1
    noise, extra = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    output = given.clone()
    for i in range(n_iter):
        prefix = vae.encode(output[:, :, -overlap:])
        finished = i * (base_latent - overlap_latent) + overlap_latent
        frames = min(latent - finished + overlap_latent, base_latent)
        x = torch.randn(1, 16, frames, 4, 6, generator=noise)
        x[:, :, : prefix.shape[2]] = prefix
        window = original_window(dit, scheduler_cls, x, ctx, nctx, 3, 8.0, 0, 1, prefix.shape[2], 0, 20, extra)
        output = torch.cat([output, vae.decode(window).clamp(-1, 1)[:, :, overlap:]], dim=2)
    return output[:, :, given.shape[2]:]


def test_extending_a_video_matches_the_original_extend_video():
    from openreel.samplers.df_plan import plan_windows
    from openreel.samplers.diffusion_forcing import sample_video

    dit, vae = model(), tiny_vae()
    gen = torch.Generator().manual_seed(9)
    ctx, nctx = torch.randn(1, 7, CFG.text_dim, generator=gen), torch.randn(1, 4, CFG.text_dim, generator=gen)
    given = torch.rand(1, 3, 9, 32, 48, generator=gen) * 2 - 1
    expected = original_extension(dit, vae, wan22_scheduler(), given, 21, 13, 5, 21, ctx, nctx)
    spec = SimpleNamespace(config=dit.cfg)
    inputs = WAN.model_inputs(spec, TextEmbeds(ctx, nctx), None, DEFAULTS)
    windows = plan_windows(21, 13, 5, extend=True)
    pixels = []
    with SamplingSession([Expert(dit, GUIDANCE, inputs, WAN, spec)], batch_cfg=False) as session:
        latent, _ = sample_video(session, 0, wan_unipc_schedule(3, 8.0), windows, (16, 4, 6), seed=21,
                              addnoise_condition=20, overlap_history=5, roundtrip=(vae.decode, vae.encode),
                              history=given, on_window=lambda i, w, new: pixels.append(new))
    assert len(windows) == 2 and latent.shape[2] == 6  # the overlap taken over, then the new frames
    assert rel_err(torch.cat(pixels, dim=2)[:, :, 5:], expected) < TOL
