"""OpenReel Multi-GPU on CPU worker processes over gloo (parallel/pool.py, parallel/model.py): the sampler's latents
equal the single-process sampler's with tokens shared, with CFG parallel and with one expert per worker; a worker
that dies is an error naming its device, not a hang; the workers load the model files themselves."""
from __future__ import annotations

import logging
import re
import time

import pytest
import torch
from safetensors.torch import save_file

from openreel import synthetic
from openreel.errors import InputError
from openreel.handles import TextEmbeds
from openreel import runtime
from openreel.latents import empty_latent, latent_format
from openreel.model_loaders.cache import MODULES
from openreel.model_loaders.core import prepare
from openreel.model_loaders.dit import load_dit
from openreel.models.wan.model import WanConfig
from openreel.nodes.cache import OpenReelStepCache
from openreel.nodes.parallel import OpenReelMultiGPU, parse_devices
from openreel.parallel import pool as pools
from openreel.parallel.model import ParallelDiT
from openreel.samplers.sample import sample

CFG = WanConfig(dim=512, ffn_dim=256, num_heads=4, num_layers=2, text_dim=synthetic.TINY_TEXT_DIM)  # heads of 128, as files say
WORKERS = "cpu,cpu"


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("experts")
    handles = []
    for seed in (0, 1):
        path = folder / f"expert{seed}.safetensors"
        save_file(synthetic.wan_state_dict(CFG, seed=seed), str(path))
        handles.append(load_dit(path, "fp32", "fp32"))
    yield handles
    pools.shutdown()


def embeds() -> TextEmbeds:
    gen = torch.Generator().manual_seed(3)
    return TextEmbeds(torch.randn(1, 6, CFG.text_dim, generator=gen), torch.randn(1, 4, CFG.text_dim, generator=gen))


def run(dit, guidance: float, low=None) -> torch.Tensor:
    latent = empty_latent(latent_format("wan21"), 48, 32, 9)  # 3 × 2 × 3 = 18 tokens
    return sample(dit, embeds(), latent, seed=5, steps=3, guidance=guidance, shift=5.0, solver="euler",
                  dit_low_noise=low, guidance_low_noise=guidance, boundary=0.9 if low is not None else 0.0)["samples"]


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("cfg_parallel", [False, True], ids=["tokens shared", "cfg parallel"])
def test_latents_equal_one_process(experts, cfg_parallel):
    dit = experts[0]
    expected = run(dit, 4.0)
    parallel = OpenReelMultiGPU().apply(dit, WORKERS, cfg_parallel, True)[0]
    assert isinstance(prepare(parallel), ParallelDiT)  # the sampler holds the stand-in: the workers compute
    assert close(run(parallel, 4.0), expected)
    assert dit.weights_key not in MODULES  # this process let its copy go: the workers hold the model
    assert close(run(parallel, 1.0), run(dit, 1.0))  # one branch: the tokens shared whatever the setting


def test_four_workers_two_groups_of_two_equal_one_process(experts):
    """CFG parallel over four workers: the cond and uncond rows go to two groups, whose two workers share the
    tokens."""
    parallel = OpenReelMultiGPU().apply(experts[0], "cpu,cpu,cpu,cpu", True, True)[0]
    try:
        assert close(run(parallel, 4.0), run(experts[0], 4.0))
        assert pools.pool_for(("cpu",) * 4)._groups == {(0, 1), (2, 3)}
    finally:
        pools.pool_for(("cpu",) * 4).close()


def test_three_workers_whose_count_does_not_divide_the_heads_equal_one_process(experts):
    """Three workers, four heads: the tokens are shared with every worker's keys and values gathered."""
    parallel = OpenReelMultiGPU().apply(experts[0], "cpu,cpu,cpu", True, True)[0]
    try:
        assert close(run(parallel, 4.0), run(experts[0], 4.0))
        assert pools.pool_for(("cpu",) * 3)._groups == {(0, 1, 2)}   # two guidance rows, three ranks: one group
    finally:
        pools.pool_for(("cpu",) * 3).close()


@pytest.mark.parametrize("mode", ["merged", "unmerged"])
def test_a_lora_applies_in_the_workers(experts, tmp_path, mode):
    """The LoRA travels with the handle (its file's path): each worker applies it to its own copy."""
    from openreel.model_loaders.lora import LORA_PATCH, lora_spec

    path = tmp_path / "distill.safetensors"
    save_file(synthetic.distillation_lora(CFG, seed=9), str(path))
    dit = experts[0].with_patch(LORA_PATCH, (lora_spec(path, 0.7, mode),))
    parallel = OpenReelMultiGPU().apply(dit, WORKERS, False, True)[0]
    expected = run(dit, 1.0)
    assert not close(expected, run(experts[0], 1.0))  # the LoRA changes the result …
    assert close(run(parallel, 1.0), expected)        # … in the workers as here


def test_an_expert_per_worker_equals_one_process(experts):
    high, low = OpenReelMultiGPU().apply(experts[0], WORKERS, True, True, experts[1])
    assert high.patch("multi_gpu").ranks == (0,) and low.patch("multi_gpu").ranks == (1,)
    assert close(run(high, 3.0, low), run(experts[0], 3.0, experts[1]))


STEP_CACHES = {"magcache": ("magcache", 0.1, 0, -1, True, 2, 0.0, "1, 0"),   # thresholds at which the tiny
               "teacache": ("teacache", 3.0, 0, -1, False, 2, 0.0, "1, 0"),  # model skips some calls
               "easycache": ("easycache", 2.0, 0, -1, True, 2, 0.0, "")}


def cached_run(dit, caplog, guidance: float = 4.0, low=None) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Latents of an 8-step run and its step cache reports as (calls that reused the cache, calls)."""
    latent = empty_latent(latent_format("wan21"), 48, 32, 9)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="openreel.samplers.session"):
        out = sample(dit, embeds(), latent, seed=5, steps=8, guidance=guidance, shift=5.0, solver="euler",
                     dit_low_noise=low, guidance_low_noise=guidance, boundary=0.9 if low is not None else 0.0)
    found = re.findall(r"(\d+) of (\d+) model calls reused", caplog.text)
    return out["samples"], [(int(a), int(b)) for a, b in found]


@pytest.mark.parametrize("method", STEP_CACHES)
@pytest.mark.parametrize("cfg_parallel", [False, True], ids=["tokens shared", "cfg parallel"])
def test_a_step_cache_runs_in_the_workers_as_in_one_process(experts, method, cfg_parallel, caplog):
    """Each worker's cache sees the whole stream and the session's steps and branches, so it decides as one process
    does, and its report comes back. CFG parallel gives each branch a worker of its own where a branch decides
    alone (TeaCache, MagCache), as one process does with the branches called one after the other; EasyCache's
    branches follow one decision, so they stay together and the workers share the tokens."""
    cached = OpenReelStepCache().apply(experts[0], *STEP_CACHES[method])["result"][0]
    apart = cfg_parallel and cached.patch("step_cache").branches_decide_alone
    expected, reports = cached_run(cached.with_patch("cfg_batching", False) if apart else cached, caplog)
    (skipped, calls), = reports
    assert skipped > 0
    parallel = OpenReelMultiGPU().apply(cached, WORKERS, cfg_parallel, True)[0]
    got, parts = cached_run(parallel, caplog)
    assert close(got, expected)
    assert len(parts) == (2 if apart else 1)   # one report per branch's worker
    assert tuple(map(sum, zip(*parts))) == (skipped, calls)
    assert close(cached_run(parallel, caplog)[0], expected)  # the next run starts afresh in the workers too


def test_a_step_cache_on_each_expert_of_a_pair_on_its_own_worker(experts, caplog):
    cached = [OpenReelStepCache().apply(e, *STEP_CACHES["magcache"])["result"][0] for e in experts]
    expected, reports = cached_run(cached[0], caplog, 3.0, cached[1])
    high, low = OpenReelMultiGPU().apply(cached[0], WORKERS, True, True, cached[1])
    got, parts = cached_run(high, caplog, 3.0, low)
    assert close(got, expected) and sorted(parts) == sorted(reports) and len(parts) == 2


def test_a_dead_worker_is_an_error_naming_its_device_and_the_next_run_starts_afresh(experts):
    parallel = OpenReelMultiGPU().apply(experts[0], WORKERS, False, True)[0]
    run(parallel, 1.0)
    pool = pools.pool_for(("cpu", "cpu"))
    pool.procs[1].kill()
    start = time.monotonic()
    with pytest.raises(pools.WorkerError, match="the worker on cpu stopped"):
        run(parallel, 1.0)
    assert time.monotonic() - start < 30 and not pool.alive()
    assert close(run(parallel, 1.0), run(experts[0], 1.0))


def test_an_interrupt_stops_the_run_between_calls_and_the_workers_stay(experts, monkeypatch):
    parallel = OpenReelMultiGPU().apply(experts[0], WORKERS, False, True)[0]
    run(parallel, 1.0)
    pool = pools.pool_for(("cpu", "cpu"))
    forward = ParallelDiT.forward

    def then_interrupt(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        runtime.request_interrupt()
        return out
    monkeypatch.setattr(ParallelDiT, "forward", then_interrupt)
    with pytest.raises(runtime.Interrupted):
        run(parallel, 1.0)
    monkeypatch.setattr(ParallelDiT, "forward", forward)
    assert pools.pool_for(("cpu", "cpu")) is pool and pool.alive()
    assert close(run(parallel, 1.0), run(experts[0], 1.0))
    assert pool.memory() == [(0, 0), (0, 0)] and pool.alive()   # a report by rank; CUDA counts on GPUs only


def test_a_profiled_call_reports_its_collectives_share(experts):
    parallel = OpenReelMultiGPU().apply(experts[0], WORKERS, False, True)[0]
    run(parallel, 1.0)
    pool = pools.pool_for(("cpu", "cpu"))
    pool.profile_next_call()
    before = run(parallel, 1.0)   # three calls: the first is profiled
    found = pool.profiled()
    assert len(found) == 2 and all(0 < f["collective_ms"] <= f["total_ms"] for f in found)
    assert pool.profiled() == found   # kept until the next profiled call
    assert torch.equal(run(parallel, 1.0), before)   # profiling changes nothing


@pytest.mark.parametrize("cache", [False, True], ids=["plain", "step cache"])
def test_diffusion_forcing_windows_equal_one_process(tmp_path, cache, caplog):
    """Three windows, asynchronous (per-frame timesteps) with causal attention, on the synthetic SkyReels-V2 DF
    model: the workers run every window's calls (with a step cache, each window a run of its own there too)."""
    from openreel.nodes.diffusion_forcing import OpenReelDiffusionForcingSampler
    from openreel.nodes.loaders import OpenReelDiTLoader, OpenReelVAELoader

    synthetic.write_model_set(tmp_path / "models")
    runtime.set_models_dir(tmp_path / "models")
    runtime.set_output_dir(tmp_path / "output")
    try:
        dit = OpenReelDiTLoader().load("SkyReels-V2-DF-1.3B-540P/model.safetensors", "auto", "fp32")[0]
        if cache:
            dit = OpenReelStepCache().apply(dit, *STEP_CACHES["teacache"])["result"][0]
        vae = OpenReelVAELoader().load(next(iter(synthetic.VAES)), "fp32")[0]
        args = dict(width=64, height=64, num_frames=25, base_num_frames=13, overlap_history=5, ar_step=2,
                    causal_block_size=1, addnoise_condition=0, seed=7, steps=2, cfg=0.0, shift=0.0, fps="24",
                    join="vae_roundtrip", solver="unipc", causal_attention=True)
        gen = torch.Generator().manual_seed(3)
        prompts = TextEmbeds(*(torch.randn(1, n, synthetic.TINY_TEXT_DIM, generator=gen) for n in (6, 3)))
        if cache:
            args["steps"] = 6
        with caplog.at_level(logging.INFO, logger="openreel.samplers.session"):
            expected = OpenReelDiffusionForcingSampler().run(dit, prompts, vae, **args)[0]["samples"]
            parallel = OpenReelMultiGPU().apply(dit, WORKERS, True, True)[0]
            runtime.set_output_dir(tmp_path / "output_2")  # no resume from the first render's saved windows
            got = OpenReelDiffusionForcingSampler().run(parallel, prompts, vae, **args)[0]["samples"]
        assert close(got, expected)
        reused = [int(n) for n in re.findall(r"(\d+) of \d+ model calls reused", caplog.text)]
        assert len(reused) == (3 if cache else 0) and all(reused)   # here, then a worker per guidance branch
    finally:
        runtime.set_models_dir(None)
        runtime.set_output_dir(None)
        MODULES.clear()


def test_device_lists_are_checked():
    with pytest.raises(InputError, match="two or more"):
        parse_devices("0")
    with pytest.raises(InputError, match="not a GPU number"):
        parse_devices("0,x")
    with pytest.raises(InputError, match="twice"):
        parse_devices("0, 0")
    count = torch.cuda.device_count()
    with pytest.raises(InputError, match="not exist"):
        parse_devices(f"{count},{count + 1}")
    assert parse_devices("cpu,cpu") == ("cpu", "cpu")
    assert "two or more" in OpenReelMultiGPU.VALIDATE_INPUTS("1") and OpenReelMultiGPU.VALIDATE_INPUTS("cpu,cpu")
