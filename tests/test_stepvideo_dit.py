"""Step-Video-T2V DiT: parity with xfuser 0.7.0's blocks (PyPI) and the official StepVideoModel ($STEPVIDEO_T2V_PATH)
on tiny random fp32 weights, the official and ComfyUI file layouts through the real loader, wrong files, block swap,
fp8, token chunks, the activation figure, and the sampler's timestep and sign conventions against the official
scheduler's Euler step."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from openreel import runtime
from openreel.errors import CheckpointError, DetectionError, InputError
from openreel.handles import TextEmbeds
from openreel.latents import ImageConditioning
from openreel.memory import patches
from openreel.memory.block_swap import OFF, BlockSwap
from openreel.model_loaders.build import materialize
from openreel.model_loaders.cache import MODULES
from openreel.model_loaders.checkpoint import Checkpoint, TensorInfo
from openreel.model_loaders.core import module_of
from openreel.model_loaders.dit import inspect_dit, load_dit
from openreel.models.common.ops import CastLinear, cast_ops, weight_linears
from openreel.models.stepvideo.family import STEPVIDEO, VARIANTS
from openreel.models.stepvideo.model import FP32_PARAMS, StepInputs, StepVideoConfig, StepVideoDiT
from references import load_stepvideo, load_xfuser_step, rel_err

TOL = 1e-5
END_TO_END = 1e-4   # sampling runs: the timesteps agree to float32 rounding of σ·1000 (~1e-4), amplified by CFG 9
FP8_TOL = 4e-2
COMFY_PREFIX = "model.diffusion_model."
# Heads of the real width 128 (the official RoPE split [64, 32, 32] is fixed), so files need no config.json.
TINY = StepVideoConfig(hidden=256, heads=2, layers=2, ffn_width=1024, in_channels=8, out_channels=8, caption_dim=48,
                       clip_dim=24)
CLIP_TOKENS = 77



def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.data = torch.randn(p.shape, generator=gen) * (0.1 if p.dim() > 1 else 0.5)
    return module.eval()


def ours(state: dict, cfg: StepVideoConfig = TINY) -> StepVideoDiT:
    model = StepVideoDiT(cfg).eval()
    model.load_state_dict(state, strict=True)
    return model


def inputs(batch: int, counts=(9, 5), cfg: StepVideoConfig = TINY, seed: int = 1):
    """Latents [B, C, F, H, W] of 3×2×4 tokens, timesteps 0..1000 (0 = noise), 12 LLM rows of which the first
    `counts[i]` are real (the rest random padding), the 77 CLIP rows."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, 3, 2, 4, generator=gen)
    context = torch.randn(batch, 12, cfg.caption_dim, generator=gen)
    mask = (torch.arange(12)[None] < torch.tensor(counts[:batch])[:, None]).long()
    clip = torch.randn(batch, CLIP_TOKENS, cfg.clip_dim, generator=gen)
    return x, torch.tensor([700.0, 250.0][:batch]), context, mask, clip


def run(model, x, t, context, mask, clip):
    with torch.no_grad():
        return model(x, t, context, context_mask=mask, clip=clip)


# ----------------------------------------------------------------------------------------- parity
@torch.no_grad()
@pytest.mark.parametrize("chunk", [0, 5])
def test_block_matches_xfuser_with_a_padded_llm_mask(chunk):
    blocks = load_xfuser_step("blocks")
    ref = randomize(blocks.StepVideoTransformerBlock(dim=TINY.hidden, attention_head_dim=TINY.head_dim,
                                                     attention_type="torch"))
    model = StepVideoDiT(TINY)
    block = model.transformer_blocks[0]
    block.load_state_dict(ref.state_dict(), strict=True)  # the official names
    gen = torch.Generator().manual_seed(2)
    grid, d = (2, 3, 4), TINY.hidden
    x = torch.randn(2, 24, d, generator=gen)
    kv = torch.randn(2, CLIP_TOKENS + 9, d, generator=gen)
    mod = torch.randn(2, 6 * d, generator=gen)
    real = torch.arange(kv.shape[1])[None] < torch.tensor([CLIP_TOKENS + 9, CLIP_TOKENS + 4])[:, None]
    expected = ref(x.clone(), kv, timestep=mod, attn_mask=real[:, None].expand(-1, 24, -1), rope_positions=list(grid))
    inp = StepInputs(mod.view(2, 6, d), kv, real[:, None, None], model._rope(grid, "cpu"), "sdpa", torch.float32,
                     chunk)
    got = block(x.clone(), inp)
    assert rel_err(got, expected) < TOL
    assert (got - expected).abs().max() < 1e-4   # outputs reach ~30


def official_model(cfg: StepVideoConfig = TINY, seed: int = 0):
    model_module = load_stepvideo("modules.model")
    ref = model_module.StepVideoModel(num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim,
                                      in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                                      num_layers=cfg.layers, caption_channels=[cfg.caption_dim, cfg.clip_dim],
                                      attention_type="torch")
    return randomize(ref.float(), seed)


def official_call(ref, x, t, context, mask, clip):
    """The official forward: (B, F, C, H, W) latents, σ_step in [0, 1], the LLM mask left-padded with 77 ones."""
    full_mask = torch.cat([torch.ones(mask.shape[0], clip.shape[1], dtype=mask.dtype), mask], dim=1)
    out = ref(x.transpose(1, 2), encoder_hidden_states=context, encoder_hidden_states_2=clip,
              timestep=t / 1000, encoder_attention_mask=full_mask, return_dict=False)
    return out.transpose(1, 2).clone()


@pytest.mark.parametrize("batch, counts", [(1, (9,)), (2, (9, 5)), (2, (12, 12))])
def test_whole_model_matches_the_official(batch, counts):
    ref = official_model()
    model = ours(ref.state_dict())
    x, t, context, mask, clip = inputs(batch, counts)
    expected = official_call(ref, x, t, context, mask, clip)
    got = run(model, x, t, context, mask, clip)
    assert rel_err(got, expected) < TOL
    assert (got - expected).abs().max() < TOL * max(1.0, expected.abs().max().item())


def test_padding_content_is_ignored_and_batches_equal_single_calls():
    model = randomize(StepVideoDiT(TINY), 4)
    x, t, context, mask, clip = inputs(2)
    both = run(model, x, t, context, mask, clip)
    noisy = context.clone()
    noisy[mask == 0] = 100.0
    assert rel_err(run(model, x, t, noisy, mask, clip), both) < 1e-6
    single = torch.cat([run(model, x[i:i + 1], t[i:i + 1], context[i:i + 1], mask[i:i + 1], clip[i:i + 1])
                        for i in range(2)])
    assert rel_err(both, single) < 1e-6


# ----------------------------------------------------------------------------------------- files
@pytest.fixture
def fresh_cache():
    MODULES.clear()
    yield
    MODULES.clear()


@pytest.fixture(scope="module")
def source():
    """bf16-representable weights under the official names and the fp32 network's output on fixed inputs."""
    state = {k: v.to(torch.bfloat16).float() for k, v in randomize(StepVideoDiT(TINY), 3).state_dict().items()}
    args = inputs(2)
    return state, args, run(ours(state), *args)


def bf16(state: dict) -> dict:
    return {k: v.to(torch.bfloat16).contiguous() if v.dtype.itemsize > 1 else v.contiguous() for k, v in state.items()}


def official_folder(state: dict, folder: Path, cfg: StepVideoConfig = TINY, shards: int = 3) -> Path:
    """The official HF `transformer/` folder: diffusers-style config.json, shards and their index."""
    folder.mkdir(parents=True)
    weight_map, keys = {}, sorted(state)
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(bf16({k: state[k] for k in keys[i::shards]}), str(folder / name))
        weight_map.update({k: name for k in keys[i::shards]})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "StepVideoModel", "_diffusers_version": "0.31.0", "num_attention_heads": cfg.heads,
        "attention_head_dim": cfg.head_dim, "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
        "num_layers": cfg.layers, "dropout": 0.0, "patch_size": cfg.patch, "norm_type": "ada_norm_single",
        "norm_elementwise_affine": False, "norm_eps": 1e-6, "use_additional_conditions": False,
        "caption_channels": [cfg.caption_dim, cfg.clip_dim], "attention_type": "parallel"}))
    return folder


def block_linears() -> list[str]:
    with torch.device("meta"):
        return [name for name, _ in weight_linears(StepVideoDiT(TINY, cast_ops(False)))]


def fp8_scaled(state: dict, layers: list[str]) -> tuple[dict, dict]:
    """(ComfyUI fp8_scaled file contents, prefixed; the dequantized float32 state)."""
    out, exact = {COMFY_PREFIX + k: v for k, v in bf16(state).items()}, dict(state)
    for layer in layers:
        w = state[layer + ".weight"].float()
        scale = w.abs().amax() / 448.0
        out[f"{COMFY_PREFIX}{layer}.weight"] = (w / scale).to(torch.float8_e4m3fn)
        out[f"{COMFY_PREFIX}{layer}.scale_weight"] = scale.reshape(1)
        exact[layer + ".weight"] = out[f"{COMFY_PREFIX}{layer}.weight"].float() * scale
    out[COMFY_PREFIX + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out, exact


def test_official_folder_and_prefixed_single_file_load_alike(tmp_path, fresh_cache, source):
    state, args, expected = source
    folder = official_folder(state, tmp_path / "transformer")
    single = tmp_path / "step_video_t2v_bf16.safetensors"
    save_file({COMFY_PREFIX + k: v for k, v in bf16(state).items()}, str(single))
    for path in (folder, folder / "diffusion_pytorch_model-00002-of-00003.safetensors",
                 folder / "diffusion_pytorch_model.safetensors.index.json", single):
        handle = load_dit(path, "auto", "fp32")
        assert (handle.spec.family, handle.spec.variant, handle.spec.config) == ("stepvideo", "stepvideo_t2v", TINY)
        assert handle.spec.latent_format == "stepvideo_8ch"  # 8 channels: a format of the same rules
        assert rel_err(run(module_of(handle), *args), expected) < 1e-6, path


def test_comfy_fp8_scaled_file_keeps_its_weights(tmp_path, fresh_cache, source):
    state, args, _ = source
    layers = block_linears() + ["caption_projection.linear_1"]  # a plain Linear in fp8 is dequantized at load
    out, exact = fp8_scaled(state, layers)
    save_file(out, str(tmp_path / "step_video_fp8_scaled.safetensors"))
    module = module_of(load_dit(tmp_path / "step_video_fp8_scaled.safetensors", "auto", "fp32"))
    wqkv = module.transformer_blocks[1].attn1.wqkv
    assert isinstance(wqkv, CastLinear) and wqkv.weight.dtype == torch.float8_e4m3fn
    assert module.adaln_single.linear.weight.dtype == torch.float8_e4m3fn
    assert module.caption_projection.linear_1.weight.dtype == torch.float32
    assert rel_err(run(module, *args), run(ours(exact), *args)) < 1e-6


def test_fp8_storage_at_load(tmp_path, fresh_cache, source):
    state, args, expected = source
    path = tmp_path / "step_video_bf16.safetensors"
    save_file(bf16(state), str(path))
    module = module_of(load_dit(path, "fp8_e4m3fn_scaled", "fp32"))
    stored = dict(state)
    assert [n for n, _ in weight_linears(module)] == block_linears()
    for name, layer in weight_linears(module):
        assert layer.weight.dtype == torch.float8_e4m3fn, name
        stored[name + ".weight"] = layer.dequantized_weight(torch.float32)
    assert module.transformer_blocks[0].scale_shift_table.dtype == torch.float32
    assert module.adaln_single.emb["timestep_embedder"].linear_1.weight.dtype == torch.float32
    assert rel_err(run(module, *args), run(ours(stored), *args)) < 1e-6
    assert rel_err(run(module, *args), expected) < 3 * FP8_TOL


def test_wrong_and_incomplete_files_are_refused(tmp_path, fresh_cache, source):
    state, _, _ = source
    partial = {k: v for k, v in state.items() if k != "proj_out.weight"}
    save_file(bf16(partial), str(tmp_path / "partial.safetensors"))
    with pytest.raises(DetectionError, match="looks like a Step-Video-T2V model but lacks proj_out.weight"):
        inspect_dit(tmp_path / "partial.safetensors")
    ti2v = dict(state, **{"pos_embed.proj.weight": torch.zeros(TINY.hidden, 2 * TINY.in_channels, 1, 1)})
    save_file(bf16(ti2v), str(tmp_path / "ti2v.safetensors"))
    with pytest.raises(DetectionError, match="16 input and 8 output channels.*Step-Video-TI2V"):
        inspect_dit(tmp_path / "ti2v.safetensors")
    extra = dict(state, **{"transformer_blocks.0.attn1.extra.weight": torch.zeros(4, 4)})
    save_file(bf16(extra), str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected tensors.*attn1.extra"):
        load_dit(tmp_path / "extra.safetensors", "auto", "fp32")
    folder = official_folder(state, tmp_path / "transformer")
    (folder / "diffusion_pytorch_model-00003-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing.*00003-of-00003"):
        inspect_dit(folder)


def header(cfg: StepVideoConfig, prefix: str = "", config: dict | None = None) -> Checkpoint:
    with torch.device("meta"):
        shapes = {prefix + k: tuple(v.shape) for k, v in StepVideoDiT(cfg).state_dict().items()}
    return Checkpoint((Path("model.safetensors"),), {k: TensorInfo(s, torch.bfloat16) for k, s in shapes.items()},
                      {}, config)


def describe(ckpt: Checkpoint):
    return STEPVIDEO.describe(STEPVIDEO.normalize(ckpt))


def test_30b_is_detected_from_shapes_with_its_recipes():
    spec = describe(header(StepVideoConfig(), COMFY_PREFIX))
    assert spec.config == StepVideoConfig() and spec.description == "Step-Video-T2V (30B)"
    d = STEPVIDEO.defaults(spec, False, 992, 544)
    assert (d.steps, d.shift, d.guidance, d.fps, d.solver, d.schedule) == (50, 13.0, 9.0, 25, "euler", "linear")
    turbo = STEPVIDEO.with_variant(spec, "stepvideo_t2v_turbo")
    assert turbo.config == spec.config and turbo.description == "Step-Video-T2V-Turbo (30B)"
    d = STEPVIDEO.defaults(turbo, False, 992, 544)
    assert (d.steps, d.shift, d.guidance, d.fps) == (15, 17.0, 5.0, 25) and set(VARIANTS) == {
        "stepvideo_t2v", "stepvideo_t2v_turbo"}
    with pytest.raises(InputError, match="unknown Step-Video variant"):
        STEPVIDEO.with_variant(spec, "ti2v")
    odd = StepVideoConfig(hidden=192, heads=3, layers=1, ffn_width=256, rope_axes=(32, 16, 16))
    with pytest.raises(DetectionError, match="RoPE axes.*heads are 128 channels wide"):
        describe(header(odd))
    config = {"num_attention_heads": TINY.heads, "attention_head_dim": TINY.head_dim}
    assert describe(header(TINY, config=config)).config == TINY


def test_lora_names_are_the_official_ones():
    assert STEPVIDEO.lora_target("transformer_blocks.3.attn1.wqkv.weight").param == \
        "transformer_blocks.3.attn1.wqkv.weight"
    assert STEPVIDEO.lora_target("transformer_blocks.3.ff.net.0.proj.weight") is not None
    assert STEPVIDEO.lora_target("blocks.0.self_attn.q.weight") is None


# ----------------------------------------------------------------------------------------- memory and speed
@pytest.fixture
def _no_gc_collect(monkeypatch):
    monkeypatch.setattr(runtime.gc, "collect", lambda *args: 0)


@pytest.mark.parametrize("weight_dtype", ["fp32", "fp8_e4m3fn_scaled"])
def test_block_swap_is_bitwise(_no_gc_collect, source, weight_dtype):
    state, args, _ = source
    ckpt = Checkpoint((Path("m.safetensors"),), {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in state.items()},
                      {k: (lambda v=v: v) for k, v in state.items()})
    model = materialize(lambda ops: StepVideoDiT(TINY, ops), ckpt, weight_dtype=weight_dtype, compute_dtype="fp32",
                        device=torch.device("cpu"), fp32_params=FP32_PARAMS)
    expected = run(model, *args)
    for blocks in range(TINY.layers + 1):
        patches.PATCHES["block_swap"].apply(model, BlockSwap(blocks, offload_embeddings=blocks % 2 == 1))
        patches.load(model, 0)
        assert torch.equal(run(model, *args), expected), blocks
        if blocks % 2:
            assert set(model.embedders) <= set(model.residency.host)
        patches.offload(model)
    patches.PATCHES["block_swap"].apply(model, OFF)
    assert torch.equal(run(model, *args), expected)


def with_chunks(model, chunk: int, args):
    patches.configure(model, {"token_chunks": chunk})
    try:
        return run(model, *args)
    finally:
        patches.configure(model, {})


def test_token_chunks_give_the_values_of_the_default_path(source):
    state, args, expected = source
    model = ours(state)
    for chunk in (1, 5, 7, 23):  # 24 tokens: shorter last chunks
        assert rel_err(with_chunks(model, chunk, args), expected) <= 1e-6, chunk
    assert torch.equal(with_chunks(model, 24, args), expected)


def test_step_cache_signal_is_the_first_blocks_modulated_input(source):
    state, args, _ = source
    model, seen = ours(state), {}
    model.transformer_blocks[0].attn1.wqkv.register_forward_pre_hook(lambda m, a: seen.setdefault("h", a[0]))
    signals = []
    model.run_blocks = lambda name, x, inp: signals.append(model.step_cache_signal("teacache", x, inp)) or \
        StepVideoDiT.run_blocks(model, name, x, inp)
    run(model, *args)
    assert torch.equal(signals[0], seen["h"])


def test_activation_figure_is_within_2_percent_above_the_tensors_alive(monkeypatch):
    from test_token_chunks import LiveBytes
    import torch.nn.functional as F
    from torch.utils._python_dispatch import _disable_current_modes

    original = F.rms_norm

    def fused(x, shape, weight=None, eps=None):  # only the output, as CUDA's fused kernel
        with _disable_current_modes():
            result = original(x, shape, weight, eps)
        return torch.empty_like(x).copy_(result)

    monkeypatch.setattr(F, "rms_norm", fused)
    tokens = 4 * 32 * 64
    x = torch.randn(1, 64, 4, 32, 64, dtype=torch.bfloat16)
    context, clip = torch.randn(1, 320, 64, dtype=torch.bfloat16), torch.randn(1, 77, 32, dtype=torch.bfloat16)
    mask = torch.ones(1, 320, dtype=torch.long)  # the longest text the figure counts
    for chunk, w in ((0, 1024), (0, 2048), (1000, 1024)):  # the peak in self-attention, the MLP, a chunk
        cfg = StepVideoConfig(hidden=256, heads=2, layers=2, ffn_width=w, caption_dim=64, clip_dim=32)
        model = StepVideoDiT(cfg).eval()
        for name, p in model.named_parameters():
            p.data = (torch.randn_like(p) * 0.02).to(torch.float32 if re.fullmatch(FP32_PARAMS, name)
                                                      else torch.bfloat16)
        model.compute_dtype, model.token_chunk = torch.bfloat16, chunk
        inputs = (x, context, clip, mask)  # held by the caller, as the weights
        live = LiveBytes({t.untyped_storage().data_ptr() for t in (*model.parameters(), *inputs)})
        with torch.no_grad(), live:
            model(x, torch.tensor([500.0]), context, context_mask=mask, clip=clip)
        figure = STEPVIDEO.activation_bytes(type("Spec", (), {"config": cfg}), tokens, token_chunk=chunk)
        assert live.peak <= figure <= live.peak * 1.02, (chunk, live.peak, figure)


# ----------------------------------------------------------------------------------------- sampling side
def embeds(width: int = TINY.caption_dim, clip_width: int | None = TINY.clip_dim, seed: int = 5) -> TextEmbeds:
    gen = torch.Generator().manual_seed(seed)
    clip = None if clip_width is None else [torch.randn(1, CLIP_TOKENS, clip_width, generator=gen) for _ in "pn"]
    return TextEmbeds(torch.randn(1, 7, width, generator=gen), torch.randn(1, 3, width, generator=gen),
                      positive_mask=torch.ones(1, 7, dtype=torch.long),
                      positive_2=None if clip is None else clip[0], negative_2=None if clip is None else clip[1])


def test_check_refuses_what_does_not_fit():
    spec = describe(header(TINY))
    with pytest.raises(InputError, match="48 wide.*Step-LLM"):
        STEPVIDEO.check(spec, None, None, embeds(width=32), None)
    with pytest.raises(InputError, match="HunyuanCLIP token states as well"):
        STEPVIDEO.check(spec, None, None, embeds(clip_width=None), None)
    with pytest.raises(InputError, match="HunyuanCLIP states 24 wide"):
        STEPVIDEO.check(spec, None, None, embeds(clip_width=16), None)
    uneven = embeds()
    uneven = TextEmbeds(uneven.positive, uneven.negative, positive_2=uneven.positive_2,
                        negative_2=uneven.negative_2[:, :70])
    with pytest.raises(InputError, match="77 and 70 tokens"):
        STEPVIDEO.check(spec, None, None, uneven, None)
    with pytest.raises(InputError, match="image conditioning"):
        STEPVIDEO.check(spec, None, ImageConditioning("i2v", concat=torch.zeros(1, 4, 1, 2, 2)), embeds(), None)
    with pytest.raises(InputError, match="not a pair of experts"):
        STEPVIDEO.check(spec, None, None, embeds(), spec)
    STEPVIDEO.check(spec, None, None, embeds(), None)


@torch.no_grad()
def test_network_input_errors_say_what_to_do():
    model = StepVideoDiT(TINY).eval()
    x, t, context, mask, clip = inputs(1)
    cases = [
        (lambda: model(x, t, context, context_mask=mask), "HunyuanCLIP token states"),
        (lambda: model(x, t, context[..., :16], clip=clip), "Step-LLM"),
        (lambda: model(x[:, :4], t, context, clip=clip), "takes \\[batch, 8"),
        (lambda: model(x, t, context, context_mask=mask[:, :3], clip=clip), "one mask entry per text token"),
        (lambda: model(x, torch.tensor([1.0, 2.0]), context, clip=clip), "one timestep per sample"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message):
            call()


def official_sigmas(steps: int, shift: float) -> torch.Tensor:
    """The official FlowMatchDiscreteScheduler.set_timesteps table (reverse=False): 1 − shift(linspace(1, 0))."""
    sigmas = torch.linspace(1, 0, steps + 1)
    return 1 - shift * sigmas / (1 + (shift - 1) * sigmas)


@torch.no_grad()
@pytest.mark.parametrize("batched", [True, False])
def test_euler_steps_equal_the_official_scheduler(source, batched):
    """Two steps of our sampler (σ from 1, velocity noise − x0) equal two official Euler steps (σ_step from 0, the
    network's x0 − noise, x += v·(σ_step[i+1] − σ_step[i])) with CFG 9."""
    from openreel.samplers.flow import sample_flow
    from openreel.samplers.sample import solver_and_schedule
    from openreel.samplers.session import Expert

    state, _, _ = source
    model, spec = ours(state), describe(header(TINY))
    d = STEPVIDEO.defaults(spec, False, 64, 32)
    solver, schedule = solver_and_schedule("official", 2, d.shift, 1.0, d)
    official = official_sigmas(2, d.shift)
    assert solver == "euler" and np.allclose(1 - schedule.sigmas.numpy(), official.numpy(), atol=1e-6)
    e = embeds()
    inputs_ = STEPVIDEO.model_inputs(spec, e, None, d)
    noise = torch.randn(1, TINY.in_channels, 2, 2, 3, generator=torch.Generator().manual_seed(4))
    got = sample_flow([Expert(model, d.guidance, inputs_, STEPVIDEO, spec)], schedule, solver, noise,
                      batch_cfg=batched)

    x = noise.clone()
    pos = dict(context=e.positive, context_mask=e.positive_mask, clip=e.positive_2)
    neg = dict(context=e.negative, context_mask=None, clip=e.negative_2)
    for i in range(2):
        t = official[i:i + 1] * 1000
        cond, uncond = model(x, t, **pos), model(x, t, **neg)
        x = x + (uncond + d.guidance * (cond - uncond)) * (official[i + 1] - official[i])
    assert rel_err(got, x) < END_TO_END


@torch.no_grad()
def test_sampler_equals_the_official_model_and_scheduler():
    """Three steps of our sampler on our network equal the official pipeline's loop: StepVideoModel with batched
    CFG 9 ([positive; negative], the LLM masks padded alike) and FlowMatchDiscreteScheduler's Euler steps."""
    from openreel.samplers.flow import sample_flow
    from openreel.samplers.sample import solver_and_schedule
    from openreel.samplers.session import Expert

    scheduler = load_stepvideo("diffusion.scheduler").FlowMatchDiscreteScheduler()
    ref = official_model(seed=6)
    model, spec = ours(ref.state_dict()), describe(header(TINY))
    d = STEPVIDEO.defaults(spec, False, 64, 32)
    e = embeds()
    noise = torch.randn(1, TINY.in_channels, 2, 2, 3, generator=torch.Generator().manual_seed(4))
    scheduler.set_timesteps(3, time_shift=d.shift)
    context = torch.cat([e.positive, torch.cat([e.negative, torch.zeros(1, 4, TINY.caption_dim)], 1)])
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4])
    clip = torch.cat([e.positive_2, e.negative_2])
    x = noise.clone()
    for t in scheduler.timesteps:
        cond, uncond = official_call(ref, torch.cat([x, x]), t.expand(2) * 1000, context, mask, clip).chunk(2)
        x = scheduler.step(model_output=(uncond + d.guidance * (cond - uncond)).transpose(1, 2), timestep=t,
                           sample=x.transpose(1, 2)).transpose(1, 2)
    solver, schedule = solver_and_schedule("official", 3, d.shift, 1.0, d)
    got = sample_flow([Expert(model, d.guidance, STEPVIDEO.model_inputs(spec, e, None, d), STEPVIDEO, spec)],
                      schedule, solver, noise)
    assert torch.allclose(1 - schedule.sigmas, scheduler.sigmas, atol=1e-6)
    assert rel_err(got, x) < END_TO_END


def test_the_loaders_recipe_picks_turbo_and_is_refused_for_other_models(tmp_path, fresh_cache, source):
    """T2V and Turbo share their shapes: the DiT Loader's recipe says which, and the sampler's defaults follow it;
    a recipe of another family is an error naming what to pick."""
    from openreel.models.registry import family_of
    from openreel.nodes.loaders import OpenReelDiTLoader
    from openreel.synthetic import TINY_WAN, save_single, wan_state_dict

    state, _, _ = source
    path = tmp_path / "step.safetensors"
    save_file(bf16(state), str(path))
    choices = OpenReelDiTLoader.INPUT_TYPES()["optional"]["recipe"][0]
    assert choices == ["auto", "Step-Video-T2V", "Step-Video-T2V-Turbo"]
    auto, turbo = (load_dit(path, "auto", "fp32", recipe) for recipe in ("auto", "Step-Video-T2V-Turbo"))
    assert auto.weights_key == turbo.weights_key  # one module in memory for both
    d = family_of(turbo.spec).defaults(turbo.spec, False, 992, 544)
    assert (turbo.spec.variant, d.steps, d.shift, d.guidance) == ("stepvideo_t2v_turbo", 15, 17.0, 5.0)
    assert "Turbo" in turbo.spec.description and auto.spec.variant == "stepvideo_t2v"
    wan = save_single(wan_state_dict(TINY_WAN), tmp_path / "wan.safetensors")
    with pytest.raises(InputError, match="recipe 'Step-Video-T2V-Turbo' does not apply to .*Set recipe to auto"):
        load_dit(wan, "auto", "fp32", "Step-Video-T2V-Turbo")
