"""Step caches (speed/step_cache) on tiny random models through the real samplers.

- Threshold 0 is bitwise the run without a cache, for every method: batched and sequential CFG, a Wan2.2 pair, block
  swap, diffusion forcing, HunyuanVideo (with token chunks), and a toy family with tuple streams.
- The skip decisions of a run equal the published rules computed by hand from what the run recorded (the signals
  the model gave, the inputs and outputs): TeaCache4Wan2.1's and TeaCache4HunyuanVideo's loops (even/odd calls,
  numpy's poly1d, retention and cutoff counted in calls), MagCache4Wan2.1's (ratios with their padding, numpy nearest
  interpolation, retention, K) and EasyCache4Wan2.1's (the conditional call decides, k from the last two computed
  calls); plus small cases of each rule worked out by hand.
- A skipped call's block lists return their input plus the residual of the last computed call of the same branch
  (each segment of a model whose lists do not feed each other directly on its own).
- Per-expert state (a Wan2.2 I2V pair caches only its low-noise expert, as published), per-window state for
  diffusion forcing, regional compile, the reports, the node, the profiles, and the device reads per call.
"""
from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch

from openreel.errors import InputError
from openreel.handles import DiTSpec, TextEmbeds
from openreel.memory.block_swap import OFF, BlockSwap
from openreel.memory.patches import PATCHES
from openreel.model_loaders import core  # noqa: F401  (registers every patch)
from openreel.models.common import calls
from openreel.models.common.family import ModelInputs, SamplingDefaults
from openreel.models.common.step_cache import nearest
from openreel.models.common.wrappers import Wrapper
from openreel.models.hunyuan.family import HUNYUAN
from openreel.models.common.norms import layer_norm
from openreel.models.hunyuan.model import HunyuanConfig, HunyuanDiT
from openreel.models.wan import step_cache as wan_tables
from openreel.models.wan.family import WAN
from openreel.models.wan.model import WanConfig, WanDiT
from openreel.samplers.flow import sample_flow
from openreel.samplers.schedules import linear_schedule, wan_unipc_schedule
from openreel.samplers.session import Expert, SamplingSession
from openreel.speed.compile import CompileSettings
from openreel.speed.step_cache import StepCacheSettings
from openreel.speed.step_cache.rules import EasyCacheRule, MagCacheRule, TeaCacheRule, polynomial

CFG = WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=32)
LATENT = (1, 16, 3, 4, 6)
STEPS = 10


def spec(variant: str = "t2v_14b", cfg=CFG, family: str = "wan") -> DiTSpec:
    return DiTSpec(family, variant, f"a tiny {variant}", "t2v", "hunyuan" if family == "hunyuan" else "wan21", cfg)


def wan(seed: int = 0, cfg: WanConfig = CFG) -> WanDiT:
    gen = torch.Generator().manual_seed(seed)
    model = WanDiT(cfg).eval()
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=gen) * (0.15 if p.dim() > 1 else 0.5)
    return model


def texts(width: int = 32):
    gen = torch.Generator().manual_seed(5)
    return TextEmbeds(torch.randn(1, 9, width, generator=gen), torch.randn(1, 5, width, generator=gen))


def noise(shape=LATENT):
    return torch.randn(shape, generator=torch.Generator().manual_seed(11))


def settings(method: str, threshold: float, variant: str = "t2v_14b", **kw) -> StepCacheSettings:
    return StepCacheSettings(method, threshold, family=kw.pop("family", "wan"), spec=kw.pop("spec", spec(variant)),
                             **kw)


def cache(module, value) -> None:
    PATCHES["step_cache"].apply(module, value)


def expert(module, guidance: float = 5.0, variant: str = "t2v_14b") -> Expert:
    s = spec(variant, module.cfg)
    return Expert(module, guidance, WAN.model_inputs(s, texts(), None, None), WAN, s)


def run_wan(models, *, batch: bool = True, steps: int = STEPS, variant: str = "t2v_14b", guidance: float = 5.0):
    if len(models) == 2:
        schedule = wan_unipc_schedule(steps, 12.0)
        return sample_flow([expert(m, guidance, variant) for m in models], schedule, "unipc", noise(),
                           boundary=0.875, batch_cfg=batch)
    return sample_flow([expert(models[0], guidance, variant)], wan_unipc_schedule(steps, 5.0), "unipc", noise(),
                       batch_cfg=batch)


class Outer(Wrapper):
    """Outside the cache: every call's step, branches, input, output, and each block list's input and output."""
    order = 40

    def __init__(self):
        self.calls: list[dict] = []

    def forward(self, call, model, *args, **kwargs):
        info = calls.current()
        entry = {"step": info.step, "branches": info.branches, "x": args[0].clone(), "computed": False, "lists": []}
        self.calls.append(entry)
        out = call(*args, **kwargs)
        entry["out"] = out.clone()
        return out

    def blocks(self, call, model, list_name, x, *args):
        out = call(x, *args)
        clone = lambda t: t.clone() if isinstance(t, torch.Tensor) else tuple(v.clone() for v in t)  # noqa: E731
        self.calls[-1]["lists"].append((clone(x), clone(out)))
        return out


class Inner(Wrapper):
    """Between the cache and block swap: marks the calls whose blocks ran."""
    order = 60

    def __init__(self, outer: Outer):
        self.outer = outer

    def blocks(self, call, model, list_name, x, *args):
        self.outer.calls[-1]["computed"] = True
        return call(x, *args)


def record(module) -> Outer:
    outer = Outer()
    module.wrappers.set("test_outer", outer)
    module.wrappers.set("test_inner", Inner(outer))
    return outer


def unrecord(*modules) -> None:
    for m in modules:
        m.wrappers.set("test_outer", None)
        m.wrappers.set("test_inner", None)
        cache(m, None)


def recorded_signals(module) -> list[torch.Tensor]:
    seen, original = [], module.step_cache_signal

    def probe(kind, x, *args):
        signal = original(kind, x, *args)
        seen.append(signal.clone())
        return signal
    module.step_cache_signal = probe
    return seen


# ----------------------------------------------------------------------------------------- the published loops
def published_teacache(signals, coefficients, threshold, calls_total, ret_calls, cutoff, branches=2):
    """TeaCache4Wan2.1 / 4HunyuanVideo: per model call (branches interleaved), compute or not."""
    poly, acc, prev, out = np.poly1d(coefficients), [0.0] * branches, [None] * branches, []
    for cnt, s in enumerate(signals[:calls_total]):
        b = cnt % branches
        if cnt < ret_calls or cnt >= cutoff:
            calc, acc[b] = True, 0.0
        else:
            acc[b] += poly(((s - prev[b]).abs().mean() / prev[b].abs().mean()).cpu().item())
            calc = not acc[b] < threshold
            if calc:
                acc[b] = 0.0
        prev[b] = s
        out.append(calc)
    return out


def numpy_nearest(src, target):
    src = np.asarray(src)
    if target == 1:
        return np.array([src[-1]])
    scale = (len(src) - 1) / (target - 1)
    return src[np.round(np.arange(target) * scale).astype(int)]


def published_magcache(per_call, steps, threshold, k, retention):
    """MagCache4Wan2.1's loop over 2·steps calls (ratios published per call, padded with [1.0]*2)."""
    ratios = np.array([1.0] * 2 + list(per_call))
    if len(ratios) != steps * 2:
        cond, uncond = numpy_nearest(ratios[0::2], steps), numpy_nearest(ratios[1::2], steps)
        ratios = np.concatenate([cond.reshape(-1, 1), uncond.reshape(-1, 1)], axis=1).reshape(-1)
    acc_ratio, acc_err, acc_steps, out = [1.0, 1.0], [0.0, 0.0], [0, 0], []
    for cnt in range(steps * 2):
        b, skip = cnt % 2, False
        if cnt >= int(steps * 2 * retention):
            acc_ratio[b] *= ratios[cnt]
            acc_steps[b] += 1
            acc_err[b] += np.abs(1 - acc_ratio[b])
            if acc_err[b] < threshold and acc_steps[b] <= k:
                skip = True
            else:
                acc_ratio[b], acc_err[b], acc_steps[b] = 1.0, 0.0, 0
        out.append(not skip)
    return out


def published_easycache(records, threshold, ret_calls, cutoff):
    """EasyCache4Wan2.1's loop (sequential CFG): the even (conditional) call decides for the pair. `records`:
    (input, output) per call as the run saw them; returns compute-or-not per call."""
    prev_in = prev_out = prev_prev = k = None
    acc, calc_pair, out = 0.0, True, []
    for cnt, (x, y) in enumerate(records):
        even = cnt % 2 == 0
        if even:
            if cnt < ret_calls or cnt >= cutoff:
                calc_pair, acc = True, 0.0
            elif prev_in is not None and prev_out is not None and k is not None:
                acc += (k * ((x - prev_in).abs().mean() / prev_out.abs().mean())).item()
                calc_pair = not acc < threshold
                if calc_pair:
                    acc = 0.0
            else:
                calc_pair = True
            prev_in = x
        out.append(calc_pair)
        if calc_pair and even:
            if prev_out is not None and prev_prev is not None:
                k = (y - prev_out).abs().mean() / (prev_in - prev_prev).abs().mean()
            prev_prev, prev_out = prev_in, y
    return out


# ----------------------------------------------------------------------------------------- rules by hand
def test_rules_on_hand_computed_cases():
    assert polynomial((2.0, -3.0, 0.5), 0.7) == pytest.approx(np.poly1d((2.0, -3.0, 0.5))(0.7))
    tea = TeaCacheRule((1.0, 0.0), 0.25)                      # rescaled = distance
    assert [tea.decide(False, d) for d in (0.1, 0.1, 0.1, 0.3)] == [True, True, False, False]  # 0.1, 0.2, 0.3≥
    assert tea.decide(True, 0.0) is False and tea.accumulated == 0.0
    assert TeaCacheRule((1.0, -1.0), 0.0).decide(False, 0.1) is False   # negative sums never skip at 0
    mag = MagCacheRule(0.1, 2)
    # ratio 0.99 → error 0.01; 0.99·0.98 = 0.9702 → 0.01 + 0.0298 = 0.0398; third in a row > K → computed
    assert [mag.decide(False, r) for r in (0.99, 0.98, 0.97)] == [True, True, False]
    assert (mag.ratio, mag.error, mag.skipped) == (1.0, 0.0, 0)
    assert MagCacheRule(0.05, 5).decide(False, 0.9) is False            # |1 - 0.9| = 0.1 ≥ 0.05
    easy = EasyCacheRule(0.3)
    assert [easy.decide(False, c) for c in (None, 0.2, 0.05, 0.1)] == [False, True, True, False]  # 0.2, 0.25, 0.35
    for values, count in (((1.0, 2.0, 3.0, 4.0, 5.0), 3), (tuple(range(50)), 40), (tuple(range(40)), 50),
                          (tuple(range(7)), 1)):
        assert list(nearest(values, count)) == list(numpy_nearest(values, count))


# ----------------------------------------------------------------------------------------- threshold 0
@pytest.mark.parametrize("method", ["teacache", "magcache", "easycache"])
@pytest.mark.parametrize("layout", ["batched", "sequential", "pair", "block_swap"])
def test_threshold_zero_is_bitwise_no_cache(method, layout):
    models = [wan(1), wan(2)] if layout == "pair" else [wan(1)]
    batch = layout != "sequential"
    reference = run_wan(models, batch=batch)
    extra = {"coefficients": ((1.0, 0.0),)} if method == "teacache" and layout == "pair" else {}
    for m in models:
        cache(m, settings(method, 0.0, **extra))
        if layout == "block_swap":
            PATCHES["block_swap"].apply(m, BlockSwap(2, True))
    try:
        got = run_wan(models, batch=batch)
        assert torch.equal(got, reference)
        assert all(m.wrappers.get("step_cache").calls for m in models)
    finally:
        for m in models:
            PATCHES["block_swap"].apply(m, OFF)
            cache(m, None)


# ----------------------------------------------------------------------------------------- the published rules
@pytest.mark.parametrize("use_ret_steps", [True, False])
@pytest.mark.parametrize("batch", [False, True])
def test_teacache_decisions_are_the_published_rule(use_ret_steps, batch):
    model = wan(3)
    tea = wan_tables.wan_step_cache_profile(spec(), None, False).teacache[use_ret_steps]
    ret_calls, cutoff = (5 * 2, STEPS * 2) if use_ret_steps else (2, STEPS * 2 - 2)
    skipped_any = False
    for threshold in (0.05, 0.3, 1.0):
        signals = recorded_signals(model)
        cache(model, settings("teacache", threshold, use_ret_steps=use_ret_steps))
        outer = record(model)
        try:
            run_wan([model], batch=batch)
        finally:
            unrecord(model)
            del model.step_cache_signal
        if batch:  # one signal per call with both branches' rows: as the sequential calls would give them
            assert all(torch.allclose(s[:1], s[1:], atol=1e-5) for s in signals)  # the timestep's alone
            signals = [part for s in signals for part in (s[:1], s[1:])]
        expected = published_teacache(signals, tea.coefficients, threshold, STEPS * 2, ret_calls, cutoff)
        computed = [c["computed"] for c in outer.calls]
        assert computed == (expected[0::2] if batch else expected)
        if batch:
            assert expected[0::2] == expected[1::2]
        skipped_any |= not all(computed)
    assert skipped_any


@pytest.mark.parametrize("threshold, k, retention", [(0.02, 2, 0.2), (0.06, 4, 0.2), (0.3, 2, 0.1)])
def test_magcache_decisions_are_the_published_rule(threshold, k, retention):
    model = wan(4)
    cache(model, settings("magcache", threshold, magcache_k=k, retention=retention))
    outer = record(model)
    try:
        run_wan([model], batch=False)
    finally:
        unrecord(model)
    expected = published_magcache(wan_tables._MAG_T2V_14B, STEPS, threshold, k, retention)
    computed = [c["computed"] for c in outer.calls]
    assert computed == expected and not all(computed)


def test_easycache_decisions_are_the_published_rule():
    model = wan(5)
    skipped_any = False
    for threshold in (0.5, 2.0, 8.0):
        cache(model, settings("easycache", threshold, retention=0.2))
        outer = record(model)
        try:
            run_wan([model], batch=False)
        finally:
            unrecord(model)
        records = [(c["x"], c["out"]) for c in outer.calls]
        expected = published_easycache(records, threshold, int(0.2 * STEPS) * 2, STEPS * 2 - 2)
        computed = [c["computed"] for c in outer.calls]
        assert computed == expected
        skipped_any |= not all(computed)
    assert skipped_any


# ----------------------------------------------------------------------------------------- what a skip returns
ALWAYS = ((1.0,) * STEPS, (1.0,) * STEPS)   # MagCache ratios of 1: every call may skip, up to K in a row


@pytest.mark.parametrize("batch", [True, False])
def test_a_skipped_call_adds_the_last_residual_of_its_branch(batch):
    model = wan(6)
    cache(model, settings("magcache", 0.5, magcache_k=2, retention=0.0, coefficients=ALWAYS))
    outer = record(model)
    try:
        run_wan([model], batch=batch)
    finally:
        unrecord(model)
    assert [c["computed"] for c in outer.calls][:6] == ([True, False, False] * 2 if batch else
                                                        [True, True, False, False, False, False])
    last: dict = {}
    checked = 0
    for c in outer.calls:
        (x, out), = c["lists"]
        rows = x.shape[0] // len(c["branches"])
        for i, branch in enumerate(c["branches"]):
            xs, outs = x[i * rows:(i + 1) * rows], out[i * rows:(i + 1) * rows]
            if c["computed"]:
                last[branch] = outs - xs
            else:
                assert torch.equal(outs, xs + last[branch])
                other = last["negative" if branch == "positive" else "positive"]
                assert not torch.allclose(outs, xs + other)   # the other branch's residual would differ
                checked += 1
    assert checked >= 6


# ----------------------------------------------------------------------------------------- pairs and windows
def test_each_expert_of_a_pair_keeps_its_own_state_and_i2v_caches_the_low_noise_expert_only():
    high, low = wan(7), wan(8)
    for m in (high, low):
        cache(m, settings("magcache", 0.5, "i2v_14b", magcache_k=1, retention=0.2))
    outers = [record(high), record(low)]
    try:
        run_wan([high, low], batch=True, variant="i2v_14b", steps=20)
        wrappers = [m.wrappers.get("step_cache") for m in (high, low)]
        assert wrappers[0]._state is not wrappers[1]._state
        assert wrappers[0]._state.setup.experts == (1,)          # Wan2.2 I2V-A14B: the low-noise expert only
    finally:
        unrecord(high, low)
    high_calls, low_calls = outers
    assert high_calls.calls and low_calls.calls
    assert all(c["computed"] for c in high_calls.calls)
    steps_low = [c["step"] for c in low_calls.calls]
    span = range(steps_low[0], steps_low[-1] + 1)
    kept = int(len(span) * 2 * 0.2) // 2          # calls retained at the low expert's start (both branches)
    computed = [c["computed"] for c in low_calls.calls]
    assert all(computed[:kept]) and not all(computed)


def test_diffusion_forcing_starts_afresh_in_every_window():
    from openreel.samplers.df_plan import plan_windows
    from openreel.samplers.diffusion_forcing import sample_video

    cfg = dataclasses.replace(CFG, fps_embedding=True)
    model, s = wan(9, cfg), spec("df_fps_1.3b", cfg)
    inputs = WAN.model_inputs(s, texts(), None, SamplingDefaults(6, 8.0, 6.0, 6.0, 0.0, 24, "test"))
    windows = plan_windows(25, 13, 5)
    assert len(windows) == 3

    def run(value):
        cache(model, value)
        with SamplingSession([Expert(model, 6.0, inputs, WAN, s)], batch_cfg=False) as session:
            video, _ = sample_video(session, 0, wan_unipc_schedule(6, 8.0), windows, (16, 4, 6), seed=3)
        return video

    reference = run(None)
    assert torch.equal(run(settings("teacache", 0.0, spec=s, use_ret_steps=False)), reference)
    signals = recorded_signals(model)
    outer = record(model)
    try:
        run(settings("teacache", 1500.0, spec=s, use_ret_steps=False))   # steps far apart: large distances
    finally:
        unrecord(model)
        del model.step_cache_signal
    tea = wan_tables.wan_step_cache_profile(s, None, False).teacache[False]   # T2V-1.3B's, as SkyReels-V2
    starts = [i for i, c in enumerate(outer.calls) if c["step"] == 0 and c["branches"] == ("positive",)]
    assert len(starts) == 3
    for a, b in zip(starts, starts[1:] + [len(outer.calls)]):
        window = outer.calls[a:b]
        steps = window[-1]["step"] + 1
        expected = published_teacache(signals[a:b], tea.coefficients, 1500.0, steps * 2, 2, steps * 2 - 2)
        assert [c["computed"] for c in window] == expected
    assert not all(c["computed"] for c in outer.calls)


# ----------------------------------------------------------------------------------------- composing
def test_regional_compile_and_block_swap_compose_with_skips():
    model = wan(10)
    value = settings("magcache", 0.5, magcache_k=2, retention=0.0, coefficients=ALWAYS)
    cache(model, value)
    reference = run_wan([model])
    PATCHES["block_swap"].apply(model, BlockSwap(1))
    PATCHES["compile"].apply(model, CompileSettings(backend="eager"))
    try:
        outer = record(model)
        assert torch.equal(run_wan([model]), reference)
        assert not all(c["computed"] for c in outer.calls)
    finally:
        PATCHES["compile"].apply(model, None)
        PATCHES["block_swap"].apply(model, OFF)
        unrecord(model)


def test_device_reads_per_call(monkeypatch):
    """The bookkeeping's reads from the device, counted: TeaCache one per call outside its retention steps (both
    branches of a batched call in one), MagCache none, EasyCache one per deciding call once its rate is known."""
    reads = {"n": 0}
    wrapper_file = sys.modules["openreel.speed.step_cache.wrapper"].__file__
    for name in ("item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **kw):
            if sys._getframe(1).f_code.co_filename == wrapper_file:
                reads["n"] += 1
            return _original(self, *a, **kw)
        monkeypatch.setattr(torch.Tensor, name, counted)
    model = wan(11)
    for method, batch, expected in (("teacache", True, STEPS - 5), ("teacache", False, 2 * (STEPS - 5)),
                                    ("magcache", True, 0), ("easycache", False, STEPS - 2 - 1)):
        reads["n"] = 0
        cache(model, settings(method, 0.0 if method != "magcache" else 0.1))
        run_wan([model], batch=batch)
        assert reads["n"] == expected, method
    cache(model, None)


# ----------------------------------------------------------------------------------------- HunyuanVideo
HY = HunyuanConfig(hidden=64, heads=2, mlp_width=128, double_blocks=2, single_blocks=2, text_dim=32, pooled_dim=8,
                   refiner_heads=2, refiner_mlp_width=128, rope_axes=(4, 14, 14))


def hunyuan_expert(model, guidance: float):
    gen = torch.Generator().manual_seed(2)
    embeds = TextEmbeds(torch.randn(1, 6, 32, generator=gen), torch.randn(1, 4, 32, generator=gen),
                        positive_pooled=torch.randn(1, 8, generator=gen),
                        negative_pooled=torch.randn(1, 8, generator=gen))
    s = spec("t2v_13b", HY, "hunyuan")
    d = SamplingDefaults(8, 7.0, guidance, guidance, 0.0, 24, "test", embedded_guidance=6.0)
    return Expert(model, guidance, HUNYUAN.model_inputs(s, embeds, None, d), HUNYUAN, s), s


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_hunyuan_teacache_uses_its_own_coefficients_and_input(guidance):
    gen = torch.Generator().manual_seed(0)
    model = HunyuanDiT(HY).eval()
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=gen) * (0.15 if p.dim() > 1 else 0.5)
    exp, s = hunyuan_expert(model, guidance)
    schedule = linear_schedule(8, 7.0, 1.0, integer_timesteps=False)
    run = lambda: sample_flow([exp], schedule, "euler", noise(), batch_cfg=True)  # noqa: E731
    reference = run()
    cache(model, settings("teacache", 0.0, spec=s, family="hunyuan", use_ret_steps=False))
    assert torch.equal(run(), reference)
    skipping = settings("magcache", 0.5, spec=s, family="hunyuan", magcache_k=2, retention=0.0,
                        coefficients=((1.0,) * 8,))
    cache(model, skipping)
    plain_skips = run()
    assert model.wrappers.get("step_cache")._clone_inputs is False   # learnt: no copies needed
    PATCHES["token_chunks"].apply(model, 7)   # the blocks now add into their input in place
    try:
        run()   # its first call shows the blocks adding into their input: it keeps no residual, and copies follow
        assert model.wrappers.get("step_cache").skipped == 4 and model.wrappers.get("step_cache")._clone_inputs
        chunked = run()
        assert model.wrappers.get("step_cache").skipped == 5
        torch.testing.assert_close(chunked, plain_skips, rtol=1e-5, atol=1e-5)
        cache(model, settings("magcache", 0.0, spec=s, family="hunyuan"))
        chunked = run()
        cache(model, None)
        assert torch.equal(run(), chunked)
    finally:
        PATCHES["token_chunks"].apply(model, 0)
    signals = recorded_signals(model)
    seen = []
    hook = model.double_blocks[0].register_forward_pre_hook(lambda block, args: seen.append(args))
    cache(model, settings("teacache", 0.3, spec=s, family="hunyuan", use_ret_steps=False))
    outer = record(model)
    try:
        run()
    finally:
        unrecord(model)
        hook.remove()
        del model.step_cache_signal
    # the signal: the first double block's modulated image input, over the whole batch (batched CFG as one state)
    x, inp = seen[0]
    block = model.double_blocks[0]
    shift, scale = block.img_mod(inp.vec)[:2]
    normed = layer_norm(x[:, :inp.img_tokens], block.eps)
    assert torch.equal(signals[0], normed * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1))
    assert signals[0].shape[0] == (2 if guidance > 1 else 1)
    assert len(outer.calls[0]["lists"]) == 2   # double- and single-stream lists: one segment (chained)
    tea = HUNYUAN.step_cache_profile(s, LATENT).teacache[False]
    assert tea.coefficients[0] == 7.33226126e+02 and HUNYUAN.step_cache_profile(s).joint_branches
    expected = published_teacache(signals, tea.coefficients, 0.3, 8, 1, 7, branches=1)
    computed = [c["computed"] for c in outer.calls]
    assert computed == expected and computed[0] and computed[-1]


def test_hunyuan_signal_runs_the_modulation_on_copies_where_the_first_block_is_elsewhere():
    """Block swap may keep every block in host memory: the probe then copies the first block's modulation to the
    stream's device for its one product (the meta device stands in for a GPU here)."""
    from openreel.models.hunyuan.model import StepInputs

    model = HunyuanDiT(HY).eval()
    x = torch.empty(2, 18 + 5, HY.hidden, device="meta")
    inp = StepInputs(torch.empty(2, HY.hidden, device="meta"), 18, (None, None), None, "sdpa", torch.float32)
    signal = model.step_cache_signal("teacache", x, inp)
    assert signal.device.type == "meta" and tuple(signal.shape) == (2, 18, HY.hidden)
    assert model.double_blocks[0].img_mod.linear.weight.device.type == "cpu"


# ----------------------------------------------------------------------------------------- a family of its own
from test_family_plugin import ToyConfig, ToyDiT  # noqa: E402  (the toy two-stream DiT: tuple streams, 2 lists)


class ProbedToy(ToyDiT):
    def step_cache_signal(self, kind, pair, vec):
        return vec


def toy_run(model):
    gen = torch.Generator().manual_seed(4)
    inputs = ModelInputs({"context": torch.randn(1, 5, 24, generator=gen)}, None, {"guidance": 6.0})
    return sample_flow([Expert(model, 1.0, inputs)], linear_schedule(8, 3.0, 1.0), "euler",
                       torch.randn(1, 8, 2, 3, 4, generator=gen))


def toy(cls=ToyDiT):
    model = cls(ToyConfig()).eval()
    gen = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.3
    return model


def toy_settings(method, threshold, **kw):
    return StepCacheSettings(method, threshold, **kw)


def test_a_family_of_its_own_needs_a_probe_for_teacache_only():
    model = toy()
    reference = toy_run(model)
    cache(model, toy_settings("teacache", 0.1, coefficients=((1.0, 0.0),)))
    with pytest.raises(InputError, match="TeaCache compares one of the model's inputs.*ToyDiT exposes none"):
        toy_run(model)
    cache(model, toy_settings("magcache", 0.1))
    with pytest.raises(InputError, match="MagCache has no published magnitude ratios.*EasyCache, which needs no "
                                         "calibration"):
        toy_run(model)
    for value in (toy_settings("easycache", 0.0), toy_settings("magcache", 0.0, coefficients=((1.0,) * 8,))):
        cache(model, value)
        assert torch.equal(toy_run(model), reference)
    probed = toy(ProbedToy)
    cache(probed, toy_settings("teacache", 0.0, coefficients=((1.0, 0.0),)))
    assert torch.equal(toy_run(probed), reference)
    # skips: each block list (a tuple stream, then a joined one: two segments) returns input + its own residual
    cache(probed, toy_settings("teacache", 10.0, coefficients=((1.0, 0.0),), use_ret_steps=False))
    outer = record(probed)
    try:
        toy_run(probed)
    finally:
        unrecord(probed)
    assert [c["computed"] for c in outer.calls] == [True] + [False] * 6 + [True]   # first and last retained
    (x0, out0), (x1, out1) = outer.calls[0]["lists"]
    for c in outer.calls[1:-1]:
        (a, a_out), (b, b_out) = c["lists"]
        assert all(torch.equal(o, i + (p - q)) for o, i, p, q in zip(a_out, a, out0, x0))
        assert torch.equal(b_out, b + (out1 - x1))


# ----------------------------------------------------------------------------------------- reports and node
def test_the_session_logs_and_shows_each_experts_report(monkeypatch, caplog):
    shown = []
    monkeypatch.setattr(SamplingSession, "describe", lambda self, text: shown.append(text))
    high, low = wan(12), wan(13)
    for m in (high, low):
        cache(m, settings("magcache", 0.5, magcache_k=2, retention=0.0, coefficients=ALWAYS))
    with caplog.at_level("INFO"):
        run_wan([high, low], steps=STEPS)
    for m in (high, low):
        cache(m, None)
    assert len(shown) == 1 and "MagCache (high-noise expert):" in shown[0] and "(low-noise expert)" in shown[0]
    assert "model calls reused the cache instead of running its blocks" in shown[0]
    assert sum("reused the cache" in r.message for r in caplog.records) == 2
    assert sum("MagCache for Wan2.2 T2V-A14B (ratios given)" in r.message for r in caplog.records) == 2


def test_magcache_at_threshold_zero_measures_ratios_to_give_back():
    model = wan(14)
    cache(model, settings("magcache", 0.0))
    run_wan([model], batch=True)
    text = model.wrappers.get("step_cache").report()
    cache(model, None)
    first, measured = text.splitlines()
    assert first.startswith("MagCache: 0 of 10 model calls")
    rows = measured.split(": ", 1)[1].split("; ")
    assert len(rows) == 2 and all(len(r.split(", ")) == STEPS and r.startswith("1.00000") for r in rows)


def test_step_cache_node(tmp_path):
    from openreel import synthetic
    from openreel.model_loaders.cache import MODULES
    from openreel.model_loaders.dit import load_dit
    from openreel.nodes.cache import OpenReelStepCache
    from openreel.nodes.sample import OpenReelSampler

    cfg = dataclasses.replace(synthetic.TINY_WAN, text_dim=synthetic.TINY_TEXT_DIM)
    dit = load_dit(synthetic.save_single(synthetic.wan_state_dict(cfg), tmp_path / "wan.safetensors"), "auto", "fp32")
    node = OpenReelStepCache()
    try:
        args = dict(threshold=0.0, start_step=0, end_step=-1, use_ret_steps=True, magcache_K=2, retention=0.2)
        with pytest.raises(InputError, match="^OpenReel Step Cache: MagCache has no published calibration"):
            node.apply(dit, "magcache", **args)   # a custom size: no published ratios
        out = node.apply(dit, "easycache", **args)
        cached = out["result"][0]
        assert cached.patch("step_cache").method == "easycache" and "no calibration" in out["ui"]["text"][0]
        as_14b = dataclasses.replace(dit, spec=dataclasses.replace(dit.spec, variant="t2v_14b"))
        text = node.apply(as_14b, "magcache", **args)["ui"]["text"][0]
        assert "as a single model: Wan2.1 T2V-14B" in text and "in a pair of experts: Wan2.2 T2V-A14B" in text
        text = node.apply(as_14b, "teacache", **args)["ui"]["text"][0]
        assert "as a single model: Wan2.1 T2V-14B" in text and "none in a pair of experts (Wan2.2 T2V-A14B" in text
        flf = dataclasses.replace(dit, spec=dataclasses.replace(dit.spec, variant="flf2v_14b"))
        with pytest.raises(InputError, match="TeaCache has no published calibration"):
            node.apply(flf, "teacache", **args)
        with pytest.raises(InputError, match="one comma-separated row"):
            node.apply(dit, "teacache", **args, coefficients="1, 2; 3, 4")
        with pytest.raises(InputError, match="not comma-separated numbers"):
            node.apply(dit, "magcache", **args, coefficients="1, x")
        with pytest.raises(InputError, match="EasyCache takes no coefficients"):
            node.apply(dit, "easycache", **args, coefficients="1, 2")
        with pytest.raises(InputError, match="end_step 2 is not after start_step 3"):
            node.apply(dit, "easycache", **{**args, "start_step": 3, "end_step": 2})
        given = node.apply(dit, "magcache", **args, coefficients="1, 0.9, 0.8; 1, 0.9, 0.7")["result"][0]
        assert given.patch("step_cache").coefficients == ((1.0, 0.9, 0.8), (1.0, 0.9, 0.7))
        # through the sampler node: threshold 0 is bitwise the plain run
        embeds = TextEmbeds(torch.randn(1, 6, cfg.text_dim), torch.randn(1, 3, cfg.text_dim))
        latent = {"samples": torch.zeros(1, 16, 2, 4, 4), "latent_format": "wan21"}
        sample = lambda h: OpenReelSampler().run(h, embeds, latent, 3, 4, 5.0, 5.0, "euler")[0]["samples"]  # noqa
        assert torch.equal(sample(cached), sample(dit))
        required = OpenReelStepCache.INPUT_TYPES()["required"]
        assert all(options.get("tooltip") for _, options in required.values())
    finally:
        MODULES.clear()


def test_published_profiles_per_model():
    profile = wan_tables.wan_step_cache_profile
    t2v = profile(spec(), None, False)
    assert t2v.model == "Wan2.1 T2V-14B" and t2v.teacache[True].coefficients[0] == -3.03318725e+05
    assert t2v.teacache[False].coefficients[-1] == -13.02252404 and t2v.teacache[True].first == 5
    assert [len(c) for c in t2v.magcache.ratios] == [50, 50] and t2v.magcache.ratios[0][:2] == (1.0, 1.02504)
    assert profile(spec("t2v_1.3b"), None, False).teacache[False].coefficients[0] == 2.39676752e+03
    pair = profile(spec(), None, True)
    assert pair.model == "Wan2.2 T2V-A14B" and not pair.teacache and len(pair.magcache.ratios[0]) == 40
    assert profile(spec("i2v_14b"), None, True).magcache.experts == (1,)
    assert not profile(spec("i2v_14b"), None, False).magcache
    i2v = spec("i2v_clip_14b")
    small, large = profile(i2v, (1, 16, 21, 60, 104), False), profile(i2v, (1, 16, 21, 90, 160), False)
    assert small.model == "Wan2.1 I2V 480P" and small.teacache[True].coefficients[0] == 2.57151496e+05
    assert large.model == "Wan2.1 I2V 720P" and large.teacache[False].coefficients[0] == -114.36346466
    assert len(small.magcache.ratios[1]) == 40 and small.magcache.ratios != large.magcache.ratios
    assert not profile(spec("i2v_clip_1.3b"), None, False).magcache   # SkyReels-V2 I2V-1.3B: TeaCache only
    assert profile(spec("ti2v_5b"), None, False).magcache.ratios[0][1] == 0.99505
    assert profile(spec("flf2v_14b"), None, False) == profile(spec("t2v_64-wide"), None, False)
    hy = spec("t2v_13b", HY, "hunyuan")
    h544 = HUNYUAN.step_cache_profile(hy, (1, 16, 33, 68, 120))
    h720 = HUNYUAN.step_cache_profile(hy, (1, 16, 33, 90, 160))
    assert h544.model == "HunyuanVideo T2V 544p" and h720.model == "HunyuanVideo T2V 720p"
    assert h544.magcache.ratios[0][1] == 1.06971 and h720.magcache.ratios[0][1] == 1.0754
    assert len(h720.magcache.ratios) == 1 and len(h720.magcache.ratios[0]) == 50 and True not in h720.teacache


def test_a_run_under_inference_mode_skips_and_adds_the_right_residual():
    """ComfyUI runs nodes under torch.inference_mode, whose tensors keep no version counter (before: "Inference
    tensors do not track version counter" at the first cached call). The cache then assumes the blocks may write
    into their input: the first computed call keeps no residual, later ones keep a copy of their input."""
    model = wan(6)
    cache(model, settings("magcache", 0.5, magcache_k=2, retention=0.0, coefficients=ALWAYS))
    outer = record(model)
    try:
        with torch.inference_mode():
            run_wan([model], batch=True)
    finally:
        unrecord(model)
    computed = [c["computed"] for c in outer.calls]
    assert computed[:2] == [True, True] and False in computed   # no residual after the first call: the second runs
    last = None
    for c in outer.calls:
        (x, out), = c["lists"]
        if c["computed"]:
            last = out - x
        elif last is not None:
            assert torch.equal(out, x + last)
