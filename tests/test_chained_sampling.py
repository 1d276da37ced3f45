"""ComfyUI's split and chained sampling with OpenReel Sampler (issue 13 item 3): add_noise disabled takes the latent
as it is, return_with_leftover_noise keeps a schedule that ends above 0 noisy, so SplitSigmas stages (and a Wan2.2
pair built as two samplers) equal one sampler over the whole schedule with Euler; the multistep solvers restart
their history at a split, which the test bounds rather than equates."""
import pytest
import torch

from openreel import runtime, synthetic
from openreel.handles import TextEmbeds
from openreel.model_loaders.cache import MODULES
from openreel.nodes.loaders import OpenReelDiTLoader, OpenReelVAELoader
from openreel.nodes.sample import OpenReelEmptyLatent, OpenReelImageToVideo, OpenReelSampler, OpenReelSchedule

T2V = "wan2.1_t2v_1.3B_fp16.safetensors"
HIGH = "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"
LOW = "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    synthetic.write_model_set(folder)
    runtime.set_models_dir(folder)
    dit = {name: OpenReelDiTLoader().load(name, "auto", "fp32")[0] for name in (T2V, HIGH, LOW)}
    vae = OpenReelVAELoader().load("wan_2.1_vae.safetensors", "fp32")[0]
    yield dit, vae
    runtime.set_models_dir(None)
    MODULES.clear()


def embeds():
    torch.manual_seed(0)
    return TextEmbeds(torch.randn(1, 4, synthetic.TINY_TEXT_DIM), torch.randn(1, 3, synthetic.TINY_TEXT_DIM))


def sigmas(steps=6):
    return OpenReelSchedule().make("wan_unipc", steps, 5.0, 1.0)[0]


def run(dit, latent, sigmas, seed=3, cfg=4.0, solver="euler", **kw):
    return OpenReelSampler().run(dit, embeds(), latent, seed, 0, cfg, 0.0, solver, sigmas=sigmas, **kw)[0]


def empty(vae):
    return OpenReelEmptyLatent().make(vae, 64, 64, 5, 1)[0]


def chain(dit, latent, cuts, full, solver="euler", seed=3):
    """SplitSigmas at each of `cuts`: the first stage adds noise, every later one takes the leftover as it is."""
    bounds = [0, *cuts, len(full) - 1]
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        latent = run(dit, latent, full[a:b + 1], seed=seed + i, solver=solver,
                     add_noise="enable" if i == 0 else "disable")
    return latent


def test_split_and_chained_euler_sampling_equals_one_sampler(kit):
    dit, vae = kit
    full = sigmas()
    one = run(dit[T2V], empty(vae), full)["samples"]
    assert torch.equal(chain(dit[T2V], empty(vae), [3], full)["samples"], one)
    assert torch.equal(chain(dit[T2V], empty(vae), [1, 2, 4], full)["samples"], one)


def test_wan22_pair_as_two_native_samplers_equals_one_sampler_with_both_experts(kit):
    dit, vae = kit
    latent = OpenReelImageToVideo().make(vae, torch.rand(1, 64, 64, 3), 64, 64, 5)[0]
    full, k = sigmas(), 2
    boundary = float(full[k - 1] + full[k]) / 2  # the pair switches experts where SplitSigmas cuts
    one = OpenReelSampler().run(dit[HIGH], embeds(), latent, 3, 0, 4.0, 0.0, "euler", dit_low_noise=dit[LOW],
                                cfg_low_noise=3.0, boundary=boundary, sigmas=full)[0]
    high = run(dit[HIGH], latent, full[:k + 1], cfg=4.0, return_with_leftover_noise="enable")
    assert "openreel" in high  # the image conditioning travels on to the second sampler
    low = run(dit[LOW], high, full[k:], seed=99, cfg=3.0, add_noise="disable")
    assert torch.equal(low["samples"], one["samples"])


@pytest.mark.parametrize("solver", ["euler", "unipc", "dpm++_2m"])
def test_a_zero_length_step_without_added_noise_leaves_the_latent_as_it_is(kit, solver):
    dit, vae = kit
    latent = {**empty(vae), "samples": torch.randn(1, 16, 2, 8, 8)}
    same = torch.tensor([0.5, 0.5])
    kept = run(dit[T2V], latent, same, solver=solver, add_noise="disable")["samples"]
    assert torch.equal(kept, latent["samples"])
    assert not torch.equal(run(dit[T2V], latent, same, solver=solver)["samples"], latent["samples"])


def test_without_leftover_noise_the_last_step_goes_to_zero(kit):
    dit, vae = kit
    full, k = sigmas(), 3
    to_zero = torch.cat([full[:k], torch.zeros(1)])
    forced = run(dit[T2V], empty(vae), full[:k + 1], return_with_leftover_noise="disable")["samples"]
    assert torch.equal(forced, run(dit[T2V], empty(vae), to_zero)["samples"])
    leftover = run(dit[T2V], empty(vae), full[:k + 1])["samples"]  # the default keeps the noise, as before
    assert not torch.equal(leftover, forced)


def test_multistep_solvers_split_nearer_one_run_than_euler_and_later_stages_ignore_the_seed(kit):
    """UniPC and DPM++ 2M restart their history at a split (the stage before ends first order, the stage after
    starts so): not one run's result, but nearer it than first-order Euler over the whole schedule (8 steps, a
    tiny random model: about 5 % against 16 %)."""
    dit, vae = kit
    full, k = sigmas(8), 4
    for solver in ("unipc", "dpm++_2m"):
        one = run(dit[T2V], empty(vae), full, solver=solver)["samples"]
        euler = run(dit[T2V], empty(vae), full)["samples"]
        first = run(dit[T2V], empty(vae), full[:k + 1], solver=solver)
        split = [run(dit[T2V], first, full[k:], seed=seed, solver=solver, add_noise="disable")["samples"]
                 for seed in (5, 77)]
        assert torch.equal(split[0], split[1])
        assert (split[0] - one).norm() < 0.5 * (euler - one).norm()
