"""The VRAM planner on real model sizes (meta-device modules: shapes only) and on tiny loaded models, the
activation estimate's calibration, and the VRAM Budget node."""
import pytest
import torch

from openreel import runtime, synthetic
from openreel.handles import DiTHandle
from openreel.model_loaders.core import module_of, prepare
from openreel.memory.block_swap import BlockSwap
from openreel.models.wan.family import wan_activation_bytes
from openreel.memory.planner import GIB, Budget, plan, plan_for, predict, weight_bytes
from openreel.model_loaders.cache import MODULES
from openreel.model_loaders.dit import load_dit
from openreel.models.wan.model import FP32_PARAMS, WanConfig, WanDiT
from openreel.nodes import NODE_CLASS_MAPPINGS
from openreel.nodes.memory import OpenReelVRAMBudget

WAN14B = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
LATENT_480P = (1, 16, 21, 60, 104)    # 832×480, 81 frames → 32,760 tokens
LATENT_720P = (1, 16, 21, 90, 160)    # 1280×720, 81 frames → 75,600 tokens


def meta_wan(cfg: WanConfig, weights: torch.dtype = torch.bfloat16) -> WanDiT:
    """A full-size model with no memory behind it, stored as the loader stores it (fp32 norms and modulation)."""
    import re

    with torch.device("meta"):
        model = WanDiT(cfg)
    fp32 = re.compile(FP32_PARAMS)
    for name, p in model.named_parameters():
        p.data = p.data.to(torch.float32 if fp32.fullmatch(name) else weights)
    return model


def activations(cfg):
    """The Wan family's activation estimate for `cfg`, as the planner takes it."""
    return lambda tokens, batch: wan_activation_bytes(cfg.dim, cfg.ffn_dim, tokens, batch)


def tokens(cfg, latent):
    return (latent[2] // cfg.patch_size[0]) * (latent[3] // cfg.patch_size[1]) * (latent[4] // cfg.patch_size[2])


@pytest.fixture(scope="module")
def wb14():
    return weight_bytes(meta_wan(WAN14B))


def plan14(wb, budget_gib: float, latent=LATENT_480P, **kw):
    return plan_for(wb, activations(WAN14B), tokens(WAN14B, latent), latent, Budget(int(budget_gib * GIB), "given"),
                    **kw)


def test_activation_estimate_is_a_tight_upper_bound_of_the_h200_measurements():
    for tokens, measured_gib in ((32_760, 4.1), (75_600, 9.4)):
        estimate = wan_activation_bytes(5120, 13824, tokens) / GIB
        assert measured_gib <= estimate <= measured_gib * 1.05


def test_weight_bytes_of_wan_14b(wb14):
    assert len(wb14.blocks) == 40 and wb14.blocks[0] == wb14.blocks[39]
    assert 0.69e9 < wb14.blocks[0] < 0.72e9 and 0.35e9 < wb14.blocks_fp8[0] < 0.37e9  # 351.4M params per block
    assert 28e9 < sum(wb14.blocks) + wb14.other + wb14.embedders < 29e9 and not wb14.stored_fp8


def test_everything_resident_when_it_fits(wb14):
    small = (1, 16, 5, 48, 64)   # 3,840 tokens: one call of both CFG branches beats two
    p = plan14(wb14, 60, latent=small)
    assert (p.blocks_to_swap, p.fp8, p.batched_cfg, p.fits) == (0, False, True, True)
    assert "all blocks resident" in p.explanation and "batched CFG" in p.explanation
    p = plan14(wb14, 27.8, latent=small)  # resident, but the two CFG halves must run one after the other
    assert (p.blocks_to_swap, p.fp8, p.batched_cfg, p.fits) == (0, False, False, True)
    p = plan14(wb14, 80)  # 480p: a call of 32,760 tokens fills the GPU alone, so batching would only cost memory
    assert (p.blocks_to_swap, p.fp8, p.batched_cfg, p.fits) == (0, False, False, True)
    assert "sequential CFG" in p.explanation


def test_tight_budget_takes_fp8_when_allowed_else_the_fewest_blocks(wb14):
    p = plan14(wb14, 24, allow_fp8=True)
    assert (p.blocks_to_swap, p.fp8, p.fits) == (0, True, True) and p.peak.total <= 24 * GIB
    p = plan14(wb14, 24)
    assert not p.fp8 and p.fits and p.peak.total <= 24 * GIB and p.peak.ring == 2 * wb14.blocks[0]
    fewer = max(p.blocks_to_swap - 1, 0) if p.blocks_to_swap - 1 >= 3 else 0
    for batched in (True, False):  # one block fewer would not fit
        assert predict(wb14, activations(WAN14B), 32_760, 1, swap=fewer, batched_cfg=batched).total > 24 * GIB
    assert f"swap {p.blocks_to_swap} of 40 blocks" in p.explanation
    assert "Host memory for the swapped blocks" in p.explanation
    small = plan14(wb14, 12, allow_fp8=True)  # fp8 and swapping together
    assert small.fp8 and small.blocks_to_swap > 0 and small.fits


def test_impossible_budget_says_so_with_the_smallest_peak(wb14):
    p = plan14(wb14, 4, latent=LATENT_720P, allow_fp8=True)
    assert not p.fits and p.peak.total > 4 * GIB
    assert (p.blocks_to_swap, p.fp8, p.batched_cfg, p.offload_embeddings) == (40, True, False, True)
    assert "Does NOT fit" in p.explanation and "Lower the resolution" in p.explanation
    options = [predict(wb14, activations(WAN14B), 75_600, 1, swap=s, fp8=f, batched_cfg=b, offload_embeddings=o)
               for s in range(41) for f in (False, True) for b in (False, True) for o in (False, True)]
    assert p.peak.total == min(o.total for o in options)
    assert "or allow fp8" in plan14(wb14, 4, latent=LATENT_720P).explanation


def test_predictions_grow_with_tokens_and_plans_swap_more(wb14):
    swapped, peaks = [], []
    for frames in (5, 9, 21, 33, 41):
        latent = (1, 16, frames, 90, 160)
        peaks.append(predict(wb14, activations(WAN14B), frames * 45 * 80, 1).total)
        swapped.append(plan14(wb14, 30, latent=latent).blocks_to_swap)
    assert peaks == sorted(peaks) and len(set(peaks)) == len(peaks)
    assert swapped == sorted(swapped) and swapped[0] == 0 and swapped[-1] > 0


def test_fp8_prediction_matches_a_model_loaded_in_fp8(tmp_path):
    cfg = WanConfig(**{**synthetic.TINY_WAN.__dict__, "num_layers": 3})
    path = synthetic.save_single(synthetic.wan_state_dict(cfg), tmp_path / "wan.safetensors")
    try:
        bf16 = weight_bytes(prepare(load_dit(path, "bf16", "bf16")))
        fp8 = weight_bytes(prepare(load_dit(path, "fp8_e4m3fn_scaled", "bf16")))
    finally:
        MODULES.clear()
    assert fp8.blocks == bf16.blocks_fp8 and fp8.stored_fp8 and not bf16.stored_fp8
    assert (fp8.other, fp8.embedders) == (bf16.other, bf16.embedders)


def test_on_the_cpu_no_budget_applies(wb14):
    p = plan_for(wb14, activations(WAN14B), tokens(WAN14B, LATENT_480P), LATENT_480P, None)
    assert p.fits and p.blocks_to_swap == 0 and p.budget is None and "not a CUDA GPU" in p.explanation


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    synthetic.write_model_set(folder)
    runtime.set_models_dir(folder)
    load = lambda name: load_dit(folder / "diffusion_models" / name, "auto", "fp32")  # noqa: E731
    yield {"t2v": load("wan2.1_t2v_1.3B_fp16.safetensors"),
           "high": load("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"),
           "low": load("wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors")}
    runtime.set_models_dir(None)
    MODULES.clear()


def test_plan_applies_as_weight_dtype_and_patches(kit):
    dit: DiTHandle = kit["t2v"]
    latent = (1, 16, 5, 8, 8)
    cfg = dit.spec.config
    wb = weight_bytes(prepare(dit))
    fp8_peak = predict(wb, activations(cfg), 5 * 4 * 4, 1, fp8=True, compute_itemsize=4).total
    tight = plan(dit, module_of(dit), latent, fp8_peak, allow_fp8=True)  # too small for the fp32 weights as loaded
    assert (tight.fp8, tight.blocks_to_swap, tight.batched_cfg, tight.fits) == (True, 0, False, True)
    handle = tight.apply(dit)
    assert handle.weight_dtype == "fp8_e4m3fn_scaled" and handle.weights_key != dit.weights_key
    assert handle.patch("block_swap") == BlockSwap(0, False) and handle.patch("cfg_batching") is tight.batched_cfg
    module = prepare(handle)
    assert module.cfg_batching is tight.batched_cfg and getattr(module, "residency", None) is None


def test_vram_budget_node(kit):
    assert NODE_CLASS_MAPPINGS["OpenReelVRAMBudget"] is OpenReelVRAMBudget
    node = OpenReelVRAMBudget()
    latent = {"samples": torch.zeros(1, 16, 5, 8, 8)}
    out = node.apply(kit["t2v"], latent, 0.0, False)  # auto on the CPU: nothing to plan
    dit, low, text = out["result"]
    assert out["ui"]["text"] == [text] and low is None and "not a CUDA GPU" in text
    assert dit.patch("block_swap") == BlockSwap() and dit.weight_dtype == kit["t2v"].weight_dtype

    out = node.apply(kit["high"], latent, 1e-6, True, dit_low_noise=kit["low"])  # a budget nothing fits
    dit, low, text = out["result"]
    assert text.startswith("High-noise expert") and "Low-noise expert" in text and text.count("Does NOT fit") == 2
    count = kit["high"].spec.config.num_layers
    for handle in (dit, low):  # already fp8 files: no second fp8 conversion, every block swapped
        assert handle.weight_dtype == "auto" and handle.patch("block_swap") == BlockSwap(count, True)
    inputs = OpenReelVRAMBudget.INPUT_TYPES()
    assert all(options.get("tooltip") for group in inputs.values() for _, options in group.values())


def test_each_planned_expert_carries_its_own_settings(kit):
    latent = {"samples": torch.zeros(1, 16, 5, 8, 8)}
    high, low, _ = OpenReelVRAMBudget().apply(kit["high"], latent, 1e-6, False, dit_low_noise=kit["low"])["result"]
    everything = BlockSwap(kit["high"].spec.config.num_layers, True)
    assert prepare(high).residency.settings == everything
    assert prepare(low).residency.settings == everything
    assert getattr(prepare(kit["high"]), "residency", None) is None  # the unplanned handle: off again


# Peaks measured on an H200 at full size (bench/RESULTS.md, 2026-11-21, eager): (tokens, swapped blocks, fp8) → GiB
MEASURED_PEAKS_GIB = {(32760, 0, False): 31.2, (32760, 0, True): 18.0, (32760, 40, False): 6.2, (32760, 40, True): 5.8,
                      (75600, 0, False): 36.5}


@pytest.mark.parametrize("case", sorted(MEASURED_PEAKS_GIB))
def test_predictions_match_the_measured_14b_peaks_within_10_percent(case):
    import re

    from openreel.models.wan.model import FP32_PARAMS, WanConfig, WanDiT

    cfg = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
    with torch.device("meta"):
        model = WanDiT(cfg)
    for name, p in model.named_parameters():  # stored as the loader stores a bf16 file
        if not re.fullmatch(FP32_PARAMS, name):
            p.data = p.data.to(torch.bfloat16)
    tokens, swap, fp8 = case
    predicted = predict(weight_bytes(model), activations(cfg), tokens, 1, swap=swap, fp8=fp8).total / 2**30
    measured = MEASURED_PEAKS_GIB[case]
    assert measured <= predicted <= 1.10 * measured  # never under, at most 10% over


# ----------------------------------------------------------------------------------------- token chunks
def meta_dit(family: str, cfg, network, fp32_params: str):
    """A full-size DiT with no memory behind it, stored as a bf16 file loads, and its handle."""
    import re

    from openreel.handles import DiTSpec

    with torch.device("meta"):
        model = network(cfg)
    for name, p in model.named_parameters():
        p.data = p.data.to(torch.float32 if re.fullmatch(fp32_params, name) else torch.bfloat16)
    spec = DiTSpec(family, "test", f"a full-size {family} model", "t2v", family, cfg)
    return DiTHandle(spec, (), (), "bf16", "bf16"), model


@pytest.fixture(scope="module")
def hunyuan13b():
    from openreel.models.hunyuan import model as hunyuan

    return meta_dit("hunyuan", hunyuan.HunyuanConfig(), hunyuan.HunyuanDiT, hunyuan.FP32_PARAMS)


LATENT_544P = (1, 16, 33, 68, 120)   # 960×544, 129 frames → 67,320 tokens


def test_token_chunks_come_before_block_swap_when_the_activations_do_not_fit(hunyuan13b):
    from openreel.memory.planner import TokenChunks
    from openreel.memory.token_chunks import TOKEN_CHUNK
    from openreel.models.hunyuan.family import HUNYUAN

    handle, model = hunyuan13b
    wb, count = weight_bytes(model), len(model.all_blocks())
    figure = lambda chunk: lambda n, b: HUNYUAN.activation_bytes(handle.spec, n, b, token_chunk=chunk)  # noqa: E731
    resident = {chunk: predict(wb, figure(chunk), 67_320, 1).total for chunk in (0, TOKEN_CHUNK)}
    assert resident[TOKEN_CHUNK] < resident[0] - 4 * GIB

    between = plan(handle, model, LATENT_544P, (resident[TOKEN_CHUNK] + resident[0]) // 2)
    assert (between.token_chunk, between.blocks_to_swap, between.fp8, between.fits) == (TOKEN_CHUNK, 0, False, True)
    assert "token chunks of 4,096 tokens" in between.explanation
    assert "Token chunks: activations 4.0 GiB instead of 8.6 GiB" in between.explanation
    assert "without them: swap 11 of 60 blocks" in between.explanation
    assert between.apply(handle).patch("token_chunks") == TOKEN_CHUNK
    assert plan(handle, model, LATENT_544P, resident[0] + GIB).token_chunk == 0  # fits without: no chunks

    small = plan(handle, model, LATENT_544P, 12 * GIB)  # both: swapping, fewer blocks than without chunks
    without = plan_for(wb, figure(0), 67_320, LATENT_544P, Budget(12 * GIB, "given"))
    assert small.token_chunk == TOKEN_CHUNK and small.fits and 0 < small.blocks_to_swap < without.blocks_to_swap
    assert f"without them: swap {without.blocks_to_swap} of {count} blocks" in small.explanation
    tiny = plan(handle, model, LATENT_544P, 7 * GIB)  # full swap fits only with chunks (the 8 GB target)
    assert (tiny.token_chunk, tiny.blocks_to_swap, tiny.fits) == (TOKEN_CHUNK, count, True)
    assert "nothing fits without them" in tiny.explanation
    offered = plan_for(wb, figure(0), 67_320, LATENT_544P, Budget(7 * GIB, "given"),
                       chunks=TokenChunks(TOKEN_CHUNK, figure(TOKEN_CHUNK)), name=handle.spec.description)
    assert offered == tiny  # plan asks the family for both figures


def test_block_swap_keeps_a_ring_for_each_block_list_it_reaches(hunyuan13b):
    wb = weight_bytes(hunyuan13b[1])
    double, single = wb.blocks[0], wb.blocks[-1]
    assert wb.list_sizes == (20, 40) and double > 2 * single
    assert [wb.ring(swap) for swap in (0, 1, 40, 41, 42, 60)] == [0, single, 2 * single, 2 * single + double,
                                                                   2 * (single + double), 2 * (single + double)]
    assert predict(wb, lambda n, b: 0, 1, 1, swap=60).ring == 2 * (single + double)


def test_token_chunks_are_not_chosen_where_they_free_nothing(wb14):
    from openreel.memory.token_chunks import TOKEN_CHUNK

    handle, model = meta_dit("wan", WAN14B, WanDiT, FP32_PARAMS)  # attention's peak is above the FFN's
    for budget_gib in (30, 10, 4):
        assert plan(handle, model, LATENT_480P, int(budget_gib * GIB)).token_chunk == 0
    cfg = WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)  # 1.3B: the FFN peaks highest
    handle, model = meta_dit("wan", cfg, WanDiT, FP32_PARAMS)
    figure = lambda chunk: lambda n, b: wan_activation_bytes(cfg.dim, cfg.ffn_dim, n, b, token_chunk=chunk)  # noqa
    wb = weight_bytes(model)
    peaks = [predict(wb, figure(chunk), 75_600, 1) for chunk in (TOKEN_CHUNK, 0)]
    assert peaks[0].activations < 0.75 * peaks[1].activations
    assert plan(handle, model, LATENT_720P, (peaks[0].total + peaks[1].total) // 2).token_chunk == TOKEN_CHUNK


@pytest.mark.parametrize("batch_cfg", [True, False])
def test_the_plan_reserves_what_a_step_cache_keeps(kit, batch_cfg):
    """TeaCache / MagCache keep a float32 residual of the blocks' stream per guidance branch between calls: the
    plan counts it (before: nothing), and it is what a run leaves in the cache, whether CFG is batched or not."""
    from openreel.handles import TextEmbeds
    from openreel.latents import empty_latent, latent_format
    from openreel.nodes.cache import OpenReelStepCache
    from openreel.samplers.sample import sample

    dit = kit["t2v"]
    cached = OpenReelStepCache().apply(dit, "magcache", 0.1, 0, -1, True, 2, 0.0, "1, 0")["result"][0]
    latent = empty_latent(latent_format("wan21"), 64, 64, 5)
    shape = tuple(latent["samples"].shape)
    tokens = 2 * 4 * 4  # 2 latent frames of 8×8 cells in 2×2 patches
    expected = 2 * tokens * dit.spec.config.dim * 4
    plain, with_cache = (plan(h, module_of(h), shape, 1 << 40) for h in (dit, cached))
    assert plain.peak.cached == 0 and with_cache.peak.cached == expected
    assert with_cache.peak.total == plain.peak.total + expected and "step-cache residuals" in with_cache.explanation

    embeds = TextEmbeds(torch.randn(1, 6, 64), torch.randn(1, 4, 64))
    module = prepare(cached)
    module.cfg_batching = batch_cfg
    try:
        sample(cached, embeds, latent, seed=1, steps=3, guidance=5.0)
    finally:
        module.cfg_batching = None
    state = module.wrappers.get("step_cache")._state
    kept = [t for layout in state.residuals.values() for t in torch.utils._pytree.tree_leaves(layout)
            if isinstance(t, torch.Tensor)]
    assert sum(t.numel() * t.element_size() for t in kept) == expected
