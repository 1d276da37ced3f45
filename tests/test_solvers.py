"""Schedules and solvers against Wan's official FlowUniPC / FlowDPM schedulers (PyPI `wan22`), plus analytic cases.

The official scheduler files import only numpy, torch and diffusers, so they are loaded by file path without
running wan's package __init__ (which pulls in every pipeline).
"""
import pytest
import torch

from openreel.errors import InputError
from openreel.samplers.schedules import (FlowSchedule, add_noise, linear_schedule, shift_sigmas,
                                         wan_unipc_schedule)
from openreel.samplers.solvers import SOLVERS, DPMPP2M, Euler, FlowUniPC
from references import load_official_util

# Parity trajectories are float32 with |x| ~ 1: the bound is on the max abs difference.
PARITY_ATOL = 1e-6
CASES = [(50, 5.0), (40, 12.0), (30, 8.0), (4, 5.0), (1, 3.0)]


def sample(solver: str, velocity_fn, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Integrate `x` along `sigmas` with one solver instance; `velocity_fn(x, i)` is the velocity at sigmas[i]."""
    state = SOLVERS[solver](sigmas)
    for i in range(state.steps):
        x = state.step(velocity_fn(x, i), i, x)
    return x


def official_unipc(steps=None, shift=None, sigmas=None):
    """Wan's sampler as text2video.py sets it up for sample_solver='unipc' (or with explicit float64 sigmas)."""
    sched = load_official_util("fm_solvers_unipc.py").FlowUniPCMultistepScheduler(
        num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    sched.set_timesteps(steps, shift=shift, sigmas=sigmas)
    return sched


def official_dpm(steps, shift):
    """Wan's sampler as text2video.py sets it up for sample_solver='dpm++'."""
    mod = load_official_util("fm_solvers.py")
    sched = mod.FlowDPMSolverMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    mod.retrieve_timesteps(sched, sigmas=mod.get_sampling_sigmas(steps, shift))
    return sched


def toy_velocity(x: torch.Tensor, t) -> torch.Tensor:
    """A fixed smooth nonlinear 'model' of x and the model timestep, deterministic and bounded."""
    s = float(t) / 1000
    return 0.8 * x + 0.5 * torch.tanh(2 * x) * s - 0.3 * torch.sin(x + 3 * s) + 0.2 * s * s


def official_trajectory(sched, x):
    out = []
    for t in sched.timesteps:
        x = sched.step(toy_velocity(x, t), t, x, return_dict=False)[0]
        out.append(x)
    return torch.stack(out)


def our_trajectory(solver_cls, schedule: FlowSchedule, x):
    solver, out = solver_cls(schedule.sigmas), []
    for i, t in enumerate(schedule.timesteps):
        x = solver.step(toy_velocity(x, t), i, x)
        out.append(x)
    return torch.stack(out)


def start_latent():
    return torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(7))


# --- schedules --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps,shift", CASES + [(100, 12.0), (200, 17.0), (50, 1.0)])
def test_unipc_schedule_matches_official(steps, shift):
    ours, ref = wan_unipc_schedule(steps, shift), official_unipc(steps, shift)
    assert ours.sigmas.dtype == torch.float32 and ours.timesteps.dtype == torch.int64
    assert len(ours.sigmas) == steps + 1 and ours.sigmas[-1] == 0
    assert torch.equal(ours.sigmas, ref.sigmas)
    assert torch.equal(ours.timesteps, ref.timesteps)


@pytest.mark.parametrize("steps,shift", CASES + [(10, 1.0)])
def test_linear_schedule_matches_official_dpm(steps, shift):
    ours, ref = linear_schedule(steps, shift), official_dpm(steps, shift)
    assert torch.equal(ours.sigmas, ref.sigmas)
    assert torch.equal(ours.timesteps, ref.timesteps)


def test_integer_timesteps_truncate_float64():
    """The official int64 cast truncates float64 σ·1000: 0.3 → 299.99999999999994 → 299."""
    assert linear_schedule(10, 1.0).timesteps.tolist() == [1000, 900, 800, 700, 600, 500, 399, 299, 199, 99]
    hunyuan = linear_schedule(10, 1.0, integer_timesteps=False).timesteps
    assert hunyuan.dtype == torch.float32 and torch.allclose(hunyuan, torch.arange(1000, 0, -100).float())


def test_shift_formula():
    assert shift_sigmas(0.5, 5.0) == pytest.approx(5 / 6)
    assert shift_sigmas(torch.tensor([0.0, 1.0]), 8.0).tolist() == [0.0, 1.0]
    assert wan_unipc_schedule(50, 5.0).sigmas[1].item() == pytest.approx(0.99574, abs=1e-5)


# --- denoise strength ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("build", [wan_unipc_schedule, linear_schedule])
def test_denoise_keeps_the_tail_of_a_longer_schedule(build):
    part, full = build(10, 5.0, denoise=0.5), build(20, 5.0)
    assert part.steps == 10
    assert torch.equal(part.sigmas, full.sigmas[-11:])
    assert torch.equal(part.timesteps, full.timesteps[-10:])
    assert torch.equal(build(10, 5.0, denoise=1.0).sigmas, build(10, 5.0).sigmas)


def test_denoise_total_steps_truncate_like_comfyui():
    # int(7 / 0.8) = 8 total steps; int(3 / 0.3) = int(10.000000000000002) = 10
    assert torch.equal(wan_unipc_schedule(7, 5.0, denoise=0.8).sigmas, wan_unipc_schedule(8, 5.0).sigmas[-8:])
    assert torch.equal(linear_schedule(3, 5.0, denoise=0.3).sigmas, linear_schedule(10, 5.0).sigmas[-4:])


@pytest.mark.parametrize("denoise", [0.0, -0.5, 1.5])
def test_denoise_out_of_range_is_an_input_error(denoise):
    with pytest.raises(InputError, match="denoise"):
        wan_unipc_schedule(10, 5.0, denoise=denoise)


def test_video_to_video_with_exact_model_returns_the_input():
    """Starting from the partly noised input at σ_0 with the exact velocity, every solver lands on x0."""
    x0, noise = torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    schedule = wan_unipc_schedule(6, 5.0, denoise=0.4)
    for name in SOLVERS:
        x = add_noise(x0, noise, schedule.sigmas[0])
        out = sample(name, lambda x, i: (x - x0) / schedule.sigmas[i], x, schedule.sigmas)
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-6)


# --- solvers vs the official schedulers -----------------------------------------------------------------------

@pytest.mark.parametrize("steps,shift", CASES)
def test_unipc_trajectory_matches_official(steps, shift):
    x = start_latent()
    ours = our_trajectory(FlowUniPC, wan_unipc_schedule(steps, shift), x)
    ref = official_trajectory(official_unipc(steps, shift), x)
    assert (ours - ref).abs().max().item() <= PARITY_ATOL


@pytest.mark.parametrize("steps,shift", [(20, 5.0), (3, 7.0)])
def test_unipc_from_sigma_one_matches_official(steps, shift):
    """A schedule starting at σ = 1 (native ComfyUI flow schedules do) puts λ = -inf in the history."""
    x = start_latent()
    schedule = linear_schedule(steps, shift)
    ref = official_unipc(sigmas=shift_sigmas(torch.linspace(1, 0, steps + 1, dtype=torch.float64)[:-1], shift).numpy())
    assert torch.equal(ref.sigmas, schedule.sigmas)
    ours = our_trajectory(FlowUniPC, schedule, x)
    assert torch.isfinite(ours).all()
    assert (ours - official_trajectory(ref, x)).abs().max().item() <= PARITY_ATOL


@pytest.mark.parametrize("steps,shift", CASES)
def test_dpmpp_2m_trajectory_matches_official(steps, shift):
    x = start_latent()
    ours = our_trajectory(DPMPP2M, linear_schedule(steps, shift), x)
    ref = official_trajectory(official_dpm(steps, shift), x)
    assert (ours - ref).abs().max().item() <= PARITY_ATOL


def test_unipc_is_not_euler():
    """Guards the parity tests against a solver that silently degenerated to first order."""
    x, schedule = start_latent(), wan_unipc_schedule(10, 5.0)
    assert (our_trajectory(FlowUniPC, schedule, x) - our_trajectory(Euler, schedule, x)).abs().max() > 1e-3
    assert (our_trajectory(DPMPP2M, schedule, x) - our_trajectory(Euler, schedule, x)).abs().max() > 1e-3


# --- analytic cases -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigmas", [wan_unipc_schedule(7, 5.0).sigmas, linear_schedule(1, 1.0).sigmas,
                                    torch.tensor([0.9, 0.8, 0.31, 0.3, 0.05, 0.0])])
def test_euler_is_exact_on_a_straight_flow(sigmas):
    x0, noise = torch.randn(3, 5), torch.randn(3, 5)
    x = add_noise(x0, noise, sigmas[0])
    out = sample("euler", lambda x, i: (x - x0) / sigmas[i], x, sigmas)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-6)


# --- independent per-frame states (diffusion forcing) ---------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_per_frame_states_reproduce_one_solver(name):
    frames, schedule = 4, wan_unipc_schedule(12, 8.0)
    x = torch.randn(1, 16, frames, 3, 3)
    whole, per_frame = SOLVERS[name](schedule.sigmas), [SOLVERS[name](schedule.sigmas) for _ in range(frames)]
    xa, xb = x.clone(), x.clone()
    for i, t in enumerate(schedule.timesteps):
        xa = whole.step(toy_velocity(xa, t), i, xa)
        v = toy_velocity(xb, t)
        xb = torch.stack([per_frame[f].step(v[:, :, f], i, xb[:, :, f]) for f in range(frames)], dim=2)
    assert torch.equal(xa, xb)


def test_staggered_frames_keep_their_own_history():
    """Frames starting at different iterations (asynchronous diffusion forcing) match solo runs."""
    frames, lag, schedule = 3, 4, wan_unipc_schedule(10, 8.0)
    x = torch.randn(frames, 6)
    solo = torch.stack([our_trajectory(FlowUniPC, schedule, x[f])[-1] for f in range(frames)])
    states, pos, cur = [FlowUniPC(schedule.sigmas) for _ in range(frames)], [0] * frames, x.clone()
    for it in range(schedule.steps + lag * (frames - 1)):
        for f in range(frames):
            if it >= f * lag and pos[f] < schedule.steps:
                cur[f] = states[f].step(toy_velocity(cur[f], schedule.timesteps[pos[f]]), pos[f], cur[f])
                pos[f] += 1
    assert torch.equal(cur, solo)


@pytest.mark.parametrize("steps,shift", [(30, 8.0), (4, 5.0)])
def test_skyreels_inplace_quirk_matches_the_official_df_loop(steps, shift):
    """SkyReels' DF loop writes `latents[:, :, f] = sched[f].step(..., latents[:, :, f])`, an aliased update."""
    frames, x = 3, torch.randn(1, 16, 3, 4, 4)
    ref, official = x.clone(), [official_unipc(steps, shift) for _ in range(frames)]
    for t in official[0].timesteps:
        v = toy_velocity(ref, t)
        for f in range(frames):
            ref[:, :, f] = official[f].step(v[:, :, f], t, ref[:, :, f], return_dict=False)[0]
    schedule = wan_unipc_schedule(steps, shift)
    ours, plain = x.clone(), x.clone()
    quirky = [FlowUniPC(schedule.sigmas, skyreels_inplace_quirk=True) for _ in range(frames)]
    clean = [FlowUniPC(schedule.sigmas) for _ in range(frames)]
    for i, t in enumerate(schedule.timesteps):
        v, w = toy_velocity(ours, t), toy_velocity(plain, t)
        for f in range(frames):
            ours[:, :, f] = quirky[f].step(v[:, :, f], i, ours[:, :, f])
            plain[:, :, f] = clean[f].step(w[:, :, f], i, plain[:, :, f])
    assert (ours - ref).abs().max().item() <= PARITY_ATOL
    assert (plain - ref).abs().max().item() > 1e-3  # writing in place does not reach the clean solver's history
    assert (plain - our_trajectory(FlowUniPC, schedule, x)[-1]).abs().max().item() <= PARITY_ATOL


def test_step_indices_must_follow_one_another():
    solver = FlowUniPC(wan_unipc_schedule(5, 5.0).sigmas)
    x = torch.randn(4)
    x = solver.step(torch.zeros(4), 1, x)  # starting mid-schedule is allowed
    with pytest.raises(ValueError, match="out of sequence"):
        solver.step(torch.zeros(4), 3, x)
    with pytest.raises(ValueError, match="out of sequence"):
        FlowUniPC(wan_unipc_schedule(5, 5.0).sigmas).step(torch.zeros(4), 5, x)


def test_solver_keeps_input_dtype_and_computes_in_float32():
    schedule = wan_unipc_schedule(4, 5.0)
    x = torch.randn(2, 8).to(torch.bfloat16)
    out = sample("unipc", lambda x, i: toy_velocity(x, schedule.timesteps[i]), x, schedule.sigmas)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
