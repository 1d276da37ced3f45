"""The HunyuanVideo DiT: parity (fp32, tiny random weights) with diffusers 0.42.1 and the official code
($HUNYUAN_VIDEO_PATH), every file layout through the DiT loader, detection of each variant, block swap over both
block lists, fp8 storage, and the family's sampling side (defaults, checks, model inputs)."""
import argparse
import json
from pathlib import Path

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
from openreel.model_loaders.identify import identify
from openreel.models.common.ops import CastLinear, cast_ops, weight_linears
from openreel.models.hunyuan.family import HUNYUAN, diffusers_to_official
from openreel.models.hunyuan.model import FP32_PARAMS, HunyuanConfig, HunyuanDiT
from references import load_hunyuan, require

require("diffusers")  # the diffusers reference model; the layout tests also build their inputs from it
from diffusers import HunyuanVideoTransformer3DModel  # noqa: E402

TOL = 1e-5
FP8_TOL = 4e-2   # one rounding of the weights to e4m3 (see tests/test_fp8.py)
COMFY_PREFIX = "model.diffusion_model."
# Parity models: 2 heads of 32 channels, RoPE axes (4, 14, 14) (the 13B's split, scaled).
TINY = HunyuanConfig(hidden=64, heads=2, mlp_width=256, double_blocks=2, single_blocks=2, text_dim=32, pooled_dim=8,
                     refiner_heads=2, refiner_mlp_width=256, rope_axes=(4, 14, 14))
# File models: heads of the real width 128, so detection needs no config.json (RoPE axes (16, 56, 56)).
FILE = HunyuanConfig(hidden=256, heads=2, mlp_width=512, double_blocks=2, single_blocks=2, text_dim=32, pooled_dim=16,
                     refiner_heads=2, refiner_mlp_width=512)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.data = torch.randn(p.shape, generator=gen) * (0.15 if p.dim() > 1 else 0.5)
    return module.eval()


def in_memory(state: dict, config: dict | None = None, name: str = "model.safetensors") -> Checkpoint:
    return Checkpoint((Path(name),), {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in state.items()},
                      {k: (lambda v=v: v) for k, v in state.items()}, config)


def ours_from(state: dict, config: dict | None = None) -> HunyuanDiT:
    """Our network from any layout's state dict, through the family's normalize and describe."""
    ckpt = HUNYUAN.normalize(in_memory(state, config))
    model = HunyuanDiT(HUNYUAN.describe(ckpt).config)
    model.load_state_dict({k: ckpt.get(k) for k in ckpt.keys()}, strict=True)
    return model.eval()


def inputs(batch: int, lengths=(7, 4), cfg: HunyuanConfig = TINY, seed: int = 1):
    """Latents of 3×2×3 tokens; text of 10 rows, the first `lengths[i]` real and the rest random padding."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, 3, 4, 6, generator=gen)
    context = torch.randn(batch, 10, cfg.text_dim, generator=gen)
    mask = (torch.arange(10)[None] < torch.tensor(lengths[:batch])[:, None]).long()
    pooled = torch.randn(batch, cfg.pooled_dim, generator=gen)
    return x, torch.tensor([700.0, 250.0][:batch]), context, mask, pooled


# ----------------------------------------------------------------------------------------- diffusers
def diffusers_model(cfg: HunyuanConfig = TINY) -> HunyuanVideoTransformer3DModel:
    return randomize(HunyuanVideoTransformer3DModel(
        in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_attention_heads=cfg.heads,
        attention_head_dim=cfg.head_dim, num_layers=cfg.double_blocks, num_single_layers=cfg.single_blocks,
        num_refiner_layers=cfg.refiner_blocks, mlp_ratio=cfg.mlp_width / cfg.hidden, text_embed_dim=cfg.text_dim,
        pooled_projection_dim=cfg.pooled_dim, rope_axes_dim=cfg.rope_axes, guidance_embeds=cfg.guidance_embed))


def diffusers_config(cfg: HunyuanConfig = TINY) -> dict:
    return {"num_attention_heads": cfg.heads, "rope_axes_dim": list(cfg.rope_axes)}


@torch.no_grad()
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("distilled", [True, False])
def test_matches_diffusers_with_padded_text(batch, distilled):
    cfg = HunyuanConfig(**{**TINY.__dict__, "guidance_embed": distilled})
    ref = diffusers_model(cfg)
    ours = ours_from(ref.state_dict(), diffusers_config(cfg))  # the key map and the q/k/v joins under test
    x, t, context, mask, pooled = inputs(batch)
    scales = torch.tensor([6.0, 3.5][:batch]) if distilled else None
    expected = ref(x, t, context, mask, pooled, guidance=None if scales is None else scales * 1000,
                   return_dict=False)[0]
    assert rel_err(ours(x, t, context, context_mask=mask, pooled=pooled, guidance=scales), expected) < TOL


@torch.no_grad()
def test_text_padding_is_masked_and_its_content_ignored():
    ours = ours_from(diffusers_model().state_dict(), diffusers_config())
    x, t, context, mask, pooled = inputs(2)
    out = ours(x, t, context, context_mask=mask, pooled=pooled, guidance=6.0)
    other = context.clone()
    other[~mask.bool()] = torch.randn(int((~mask.bool()).sum()), TINY.text_dim)
    assert torch.equal(ours(x, t, other, context_mask=mask, pooled=pooled, guidance=6.0), out)
    assert rel_err(ours(x, t, context, pooled=pooled, guidance=6.0), out) > 1e-3  # the mask matters


# ----------------------------------------------------------------------------------------- official code
def official_model(cfg: HunyuanConfig = TINY):
    models = load_hunyuan("models")
    args = argparse.Namespace(text_states_dim=cfg.text_dim, text_states_dim_2=cfg.pooled_dim)
    return randomize(models.HYVideoDiffusionTransformer(
        args, patch_size=list(cfg.patch_size), in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        hidden_size=cfg.hidden, heads_num=cfg.heads, mlp_width_ratio=cfg.mlp_width / cfg.hidden,
        mm_double_blocks_depth=cfg.double_blocks, mm_single_blocks_depth=cfg.single_blocks,
        rope_dim_list=list(cfg.rope_axes), guidance_embed=cfg.guidance_embed))


@torch.no_grad()
@pytest.mark.parametrize("batch", [1, 2])
def test_matches_official_with_padded_text(batch):
    ref = official_model()
    ours = ours_from(ref.state_dict(), diffusers_config())
    x, t, context, mask, pooled = inputs(batch)
    grid = (x.shape[2], x.shape[3] // 2, x.shape[4] // 2)
    cos, sin = load_hunyuan("posemb_layers").get_nd_rotary_pos_embed(list(TINY.rope_axes), grid, theta=256.0,
                                                                     use_real=True)
    scales = torch.tensor([6.0, 2.5][:batch])
    expected = ref(x, t, context, mask, pooled, cos, sin, guidance=scales * 1000)["x"]
    assert rel_err(ours(x, t, context, context_mask=mask, pooled=pooled, guidance=scales), expected) < TOL


# ----------------------------------------------------------------------------------------- files
@pytest.fixture
def fresh_cache():
    MODULES.clear()
    yield
    MODULES.clear()


@pytest.fixture(scope="module")
def source():
    """bf16-representable weights under the official names, the fp32 network's output on fixed inputs."""
    state = {k: v.to(torch.bfloat16).float() for k, v in randomize(HunyuanDiT(FILE), 3).state_dict().items()}
    x, t, context, mask, pooled = inputs(1, cfg=FILE)
    args = (x, t, context), {"context_mask": mask, "pooled": pooled, "guidance": 6.0}
    return state, args, run(reference(state), args)


def reference(state: dict) -> HunyuanDiT:
    model = HunyuanDiT(FILE).eval()
    model.load_state_dict(state)
    return model


def run(module, args):
    with torch.no_grad():
        return module(*args[0], **args[1])


def block_linears() -> list[str]:
    """The linears the network builds with `ops.linear` (double / single blocks), as fp8 files quantize them."""
    with torch.device("meta"):
        return [name for name, _ in weight_linears(HunyuanDiT(FILE, cast_ops(False)))]


def quantized(state: dict, layers: list[str], scaled: bool) -> tuple[dict, dict, dict]:
    """(state with those layers' weights in float8_e4m3fn, their scales, the dequantized float32 state)."""
    out, scales, exact = dict(state), {}, dict(state)
    for layer in layers:
        w = state[layer + ".weight"].float()
        scale = w.abs().amax() / 448.0 if scaled else torch.tensor(1.0)
        out[layer + ".weight"] = (w / scale).to(torch.float8_e4m3fn)
        scales[layer] = scale
        exact[layer + ".weight"] = out[layer + ".weight"].float() * scale
    return out, scales, exact


def bf16(state: dict) -> dict:
    return {k: v.to(torch.bfloat16) if v.is_floating_point() and v.dtype.itemsize > 1 else v for k, v in state.items()}


@pytest.mark.parametrize("layout", ["official_pt", "comfy_prefixed", "comfy_bare"])
def test_bf16_layouts_load_exactly(tmp_path, fresh_cache, source, layout):
    state, args, expected = source
    if layout == "official_pt":
        path = tmp_path / "mp_rank_00_model_states.pt"
        torch.save({"module": bf16(state)}, path)
    else:
        path = tmp_path / "hunyuan_video_t2v_720p_bf16.safetensors"
        prefix = COMFY_PREFIX if layout == "comfy_prefixed" else ""
        save_file({prefix + k: v.contiguous() for k, v in bf16(state).items()}, str(path))
    handle = load_dit(path, "auto", "fp32")
    assert (handle.spec.family, handle.spec.variant, handle.spec.config) == ("hunyuan", "t2v_cfgdistill", FILE)
    assert rel_err(run(module_of(handle), args), expected) < 1e-6


@pytest.mark.parametrize("layout", ["official_fp8_pair", "comfy_fp8_scaled", "comfy_fp8_e4m3fn"])
def test_fp8_layouts_keep_their_weights_and_match_the_dequantized_state(tmp_path, fresh_cache, source, layout):
    state, args, _ = source
    layers = block_linears()
    if layout == "comfy_fp8_scaled":  # ComfyUI may quantize the refiner's linears too: a plain Linear dequantizes
        layers += [k[: -len(".weight")] for k in state if k.startswith("txt_in.individual_token_refiner.") and
                   k.endswith("attn_qkv.weight")]
    fp8, scales, exact = quantized(state, layers, scaled=layout != "comfy_fp8_e4m3fn")
    if layout == "official_fp8_pair":
        path = tmp_path / "mp_rank_00_model_states_fp8.pt"
        torch.save({"module": bf16(fp8)}, path)
        torch.save(scales, tmp_path / "mp_rank_00_model_states_fp8_map.pt")  # {layer: 0-d scale}
    else:
        path = tmp_path / f"hunyuan_video_t2v_720p_{layout[6:]}.safetensors"
        out = {COMFY_PREFIX + k: v.contiguous() for k, v in bf16(fp8).items()}
        if layout == "comfy_fp8_scaled":
            out.update({f"{COMFY_PREFIX}{layer}.scale_weight": s.reshape(1).float() for layer, s in scales.items()})
            out[COMFY_PREFIX + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
        save_file(out, str(path))
    module = module_of(load_dit(path, "auto", "fp32"))
    qkv = module.double_blocks[0].img_attn_qkv
    assert isinstance(qkv, CastLinear) and qkv.weight.dtype == torch.float8_e4m3fn
    assert module.single_blocks[1].modulation.linear.weight.dtype == torch.float8_e4m3fn
    assert rel_err(run(module, args), run(reference(exact), args)) < 1e-6


@torch.no_grad()
def test_diffusers_folder_matches_diffusers(tmp_path, fresh_cache):
    ref = diffusers_model()
    ref.save_pretrained(tmp_path / "transformer", max_shard_size="300KB")  # sharded, with config.json
    assert len(list((tmp_path / "transformer").glob("*.safetensors"))) > 1
    handle = load_dit(tmp_path / "transformer", "auto", "fp32")
    assert handle.spec.config == TINY  # heads and RoPE axes from config.json
    x, t, context, mask, pooled = inputs(2)
    expected = ref(x, t, context, mask, pooled, guidance=torch.tensor([6000.0, 6000.0]), return_dict=False)[0]
    got = module_of(handle)(x, t, context, context_mask=mask, pooled=pooled, guidance=6.0)
    assert rel_err(got, expected) < TOL


def test_fp8_storage_at_load(tmp_path, fresh_cache, source):
    state, args, expected = source
    path = tmp_path / "hunyuan_bf16.safetensors"
    save_file({k: v.contiguous() for k, v in bf16(state).items()}, str(path))
    for weight_dtype in ("fp8_e4m3fn_scaled", "fp8_e4m3fn_channel"):
        module = module_of(load_dit(path, weight_dtype, "fp32"))
        assert len(weight_linears(module)) == len(block_linears())
        stored = dict(state)
        for name, layer in weight_linears(module):
            assert layer.weight.dtype == torch.float8_e4m3fn, name
            stored[name + ".weight"] = layer.dequantized_weight(torch.float32)
            assert rel_err(stored[name + ".weight"], state[name + ".weight"]) < FP8_TOL
        assert module.double_blocks[0].img_attn_q_norm.weight.dtype == torch.float32
        assert module.time_in.mlp[0].weight.dtype == torch.float32
        assert rel_err(run(module, args), run(reference(stored), args)) < 1e-6
        # random weights compound each layer's rounding over the blocks: the whole network only stays near
        assert rel_err(run(module, args), expected) < 3 * FP8_TOL


# ----------------------------------------------------------------------------------------- detection
def header(cfg: HunyuanConfig, prefix: str = "", dtype=torch.bfloat16, config: dict | None = None) -> Checkpoint:
    """Names and shapes only (detection reads nothing else), from the network built on meta."""
    with torch.device("meta"):
        shapes = {prefix + k: tuple(v.shape) for k, v in HunyuanDiT(cfg).state_dict().items()}
    return Checkpoint((Path("model.safetensors"),), {k: TensorInfo(s, dtype) for k, s in shapes.items()}, {}, config)


def describe(ckpt: Checkpoint):
    family = identify(ckpt, "dit").family
    return family.describe(family.normalize(ckpt))


def test_13b_is_detected_from_shapes_with_its_official_recipe():
    spec = describe(header(HunyuanConfig(), COMFY_PREFIX))
    assert spec.config == HunyuanConfig()   # 24 heads of 128, RoPE (16, 56, 56), 20 + 40 blocks
    assert (spec.family, spec.variant, spec.task, spec.latent_format) == ("hunyuan", "t2v_cfgdistill", "t2v", "hunyuan")
    assert "13B" in spec.description and "guidance-distilled" in spec.description
    d = HUNYUAN.defaults(spec, False, 1280, 720)
    assert (d.steps, d.shift, d.guidance, d.embedded_guidance, d.fps, d.solver, d.schedule) == \
        (50, 7.0, 1.0, 6.0, 24, "euler", "linear")


def test_not_distilled_model_uses_classifier_free_guidance():
    spec = describe(header(HunyuanConfig(guidance_embed=False)))
    assert spec.variant == "t2v" and not spec.config.guidance_embed
    d = HUNYUAN.defaults(spec, False, 1280, 720)
    assert (d.guidance, d.embedded_guidance) == (6.0, 0.0)


@pytest.mark.parametrize("channels, message", [
    (33, "is HunyuanVideo-I2V .*does not support yet"), (32, "is SkyReels-V1 Hunyuan I2V .*does not support yet"),
    (20, "20 input and 16 output channels, which matches no supported variant")])
def test_image_to_video_variants_are_refused_by_name(channels, message):
    with pytest.raises(DetectionError, match=f"{message}.*Use a HunyuanVideo text-to-video model"):
        describe(header(HunyuanConfig(in_channels=channels)))


@pytest.mark.parametrize("extra, name", [("vision_in.proj.0.bias", "HunyuanVideo 1.5"),
                                         ("byt5_in.fc1.weight", "HunyuanImage 2.1")])
def test_later_models_on_this_architecture_are_named(extra, name):
    ckpt = header(HunyuanConfig(in_channels=65))
    ckpt = Checkpoint(ckpt.files, {**{k: ckpt.info(k) for k in ckpt.keys()}, extra: TensorInfo((8,), torch.float32)},
                      {})
    with pytest.raises(DetectionError, match=f"is a {name} model, which OpenReel does not support yet"):
        describe(ckpt)


def test_diffusers_token_replace_i2v_is_refused():
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in HunyuanVideoTransformer3DModel(
            num_attention_heads=2, attention_head_dim=32, num_layers=1, num_single_layers=1, text_embed_dim=32,
            pooled_projection_dim=8, rope_axes_dim=(4, 14, 14)).state_dict().items()}
    ckpt = Checkpoint((Path("transformer/diffusion_pytorch_model.safetensors"),),
                      {k: TensorInfo(s, torch.bfloat16) for k, s in shapes.items()}, {},
                      {**diffusers_config(), "image_condition_type": "token_replace"})
    with pytest.raises(DetectionError, match="HunyuanVideo-I2V \\(token_replace"):
        describe(ckpt)


def test_diffusers_names_map_to_every_official_name():
    state = diffusers_model().state_dict()
    normalized = HUNYUAN.normalize(in_memory(state, diffusers_config()))
    assert sorted(normalized.keys()) == sorted(HunyuanDiT(TINY).state_dict())
    assert diffusers_to_official("proj_out.weight") == "final_layer.linear.weight"
    assert diffusers_to_official("single_transformer_blocks.3.proj_out.bias") == "single_blocks.3.linear2.bias"


def test_wrong_and_incomplete_files_are_refused(tmp_path, fresh_cache, source):
    state, _, _ = source
    fp8, scales, _ = quantized(state, block_linears(), scaled=True)
    torch.save({"module": fp8}, tmp_path / "mp_rank_00_model_states_fp8.pt")
    with pytest.raises(CheckpointError, match="scales are in mp_rank_00_model_states_fp8_map.pt.*Download"):
        inspect_dit(tmp_path / "mp_rank_00_model_states_fp8.pt")
    torch.save(scales, tmp_path / "mp_rank_00_model_states_fp8_map.pt")
    with pytest.raises(CheckpointError, match="only the weight scales.*Pick mp_rank_00_model_states_fp8.pt"):
        inspect_dit(tmp_path / "mp_rank_00_model_states_fp8_map.pt")
    torch.save({"module": state}, tmp_path / "mp_rank_00_model_states.pt")
    with pytest.raises(CheckpointError, match="two versions of one model.*Pick one"):
        inspect_dit(tmp_path)
    partial = {k: v for k, v in state.items() if not k.startswith("final_layer.")}
    save_file({k: v.contiguous() for k, v in partial.items()}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(DetectionError, match="looks like a HunyuanVideo model but lacks final_layer.linear.weight"):
        inspect_dit(tmp_path / "partial.safetensors")


# ----------------------------------------------------------------------------------------- block swap
@pytest.fixture
def _no_gc_collect(monkeypatch):
    monkeypatch.setattr(runtime.gc, "collect", lambda *args: 0)


@pytest.mark.parametrize("weight_dtype", ["fp32", "fp8_e4m3fn_scaled"])
def test_block_swap_over_both_block_lists_is_bitwise(_no_gc_collect, source, weight_dtype):
    state, args, _ = source
    model = materialize(lambda ops: HunyuanDiT(FILE, ops), in_memory(state), weight_dtype=weight_dtype,
                        compute_dtype="fp32", device=torch.device("cpu"), fp32_params=FP32_PARAMS)
    expected = run(model, args)
    total = FILE.double_blocks + FILE.single_blocks
    for blocks in range(total + 1) if weight_dtype == "fp32" else (0, 3):
        patches.PATCHES["block_swap"].apply(model, BlockSwap(blocks, offload_embeddings=blocks % 2 == 1))
        patches.load(model, 0)
        residency = getattr(model, "residency", None)
        assert torch.equal(run(model, args), expected), blocks
        if blocks > FILE.single_blocks:  # reaches into the double-stream list: a ring for each list
            assert set(residency.segments) == {"double_blocks", "single_blocks"}
            assert [n for n, _ in residency.trace] == list(range(total - blocks, total))
        if blocks % 2:
            assert {"txt_in", "time_in", "vector_in", "guidance_in"} <= set(residency.host)
        patches.offload(model)
    patches.PATCHES["block_swap"].apply(model, OFF)
    assert torch.equal(run(model, args), expected)


# ----------------------------------------------------------------------------------------- sampling side
def embeds(width: int = TINY.text_dim, pooled: bool = True, guidance: float | None = None) -> TextEmbeds:
    gen = torch.Generator().manual_seed(5)
    return TextEmbeds(torch.randn(1, 5, width, generator=gen), torch.randn(1, 8, width, generator=gen),
                      positive_pooled=torch.randn(1, TINY.pooled_dim, generator=gen) if pooled else None,
                      negative_pooled=torch.randn(1, TINY.pooled_dim, generator=gen) if pooled else None,
                      embedded_guidance=guidance)


def tiny_spec(distilled: bool = True):
    return describe(header(HunyuanConfig(**{**TINY.__dict__, "guidance_embed": distilled}),
                           config=diffusers_config()))


@torch.no_grad()
def test_model_inputs_batch_for_cfg_and_equal_single_calls():
    spec = tiny_spec()
    defaults = HUNYUAN.defaults(spec, False, 96, 64)
    inputs_ = HUNYUAN.model_inputs(spec, embeds(), None, defaults)
    pos, neg = inputs_.positive, inputs_.negative
    assert pos["context"].shape == neg["context"].shape == (1, 8, TINY.text_dim)
    assert pos["context_mask"].tolist() == [[True] * 5 + [False] * 3] and neg["context_mask"].all()
    assert inputs_.shared == {"guidance": 6.0}
    assert HUNYUAN.model_inputs(spec, embeds(guidance=3.5), None, defaults).shared == {"guidance": 3.5}
    assert HUNYUAN.model_inputs(tiny_spec(False), embeds(), None, defaults).shared == {}

    model = ours_from(diffusers_model().state_dict(), diffusers_config())
    x, t = torch.randn(1, 16, 2, 4, 4), HUNYUAN.model_timestep(torch.tensor([[800.0, 800.0]]))
    assert t.tolist() == [800.0]
    both = {k: torch.cat([pos[k], neg[k]]) for k in pos}
    batched = model(torch.cat([x, x]), torch.cat([t, t]), **both, **inputs_.shared)
    single = torch.cat([model(x, t, **pos, **inputs_.shared), model(x, t, **neg, **inputs_.shared)])
    assert rel_err(batched, single) < 1e-6


def test_check_refuses_what_does_not_fit():
    spec, fmt = tiny_spec(), None
    with pytest.raises(InputError, match="LLaVA-Llama-3"):
        HUNYUAN.check(spec, fmt, None, embeds(width=16), None)
    with pytest.raises(InputError, match="Connect CLIP-L \\(clip_l.safetensors\\) as text_encoder_2"):
        HUNYUAN.check(spec, fmt, None, embeds(pooled=False), None)
    with pytest.raises(InputError, match="image conditioning"):
        HUNYUAN.check(spec, fmt, ImageConditioning("i2v", concat=torch.zeros(1, 20, 1, 4, 4)), embeds(), None)
    with pytest.raises(InputError, match="not a pair of experts"):
        HUNYUAN.check(spec, fmt, None, embeds(), spec)
    HUNYUAN.check(spec, fmt, None, embeds(), None)


@torch.no_grad()
def test_network_input_errors_say_what_to_do():
    model = HunyuanDiT(TINY).eval()
    undistilled = HunyuanDiT(HunyuanConfig(**{**TINY.__dict__, "guidance_embed": False})).eval()
    x, t, context, mask, pooled = inputs(1)
    cases = [
        (lambda: model(x, t, context, context_mask=mask, guidance=6.0), "CLIP-L"),
        (lambda: model(x, t, context, context_mask=mask, pooled=pooled), "needs an embedded guidance scale"),
        (lambda: undistilled(x, t, context, pooled=pooled, guidance=6.0), "not guidance-distilled"),
        (lambda: model(x, t, context[..., :16], pooled=pooled, guidance=6.0), "LLaVA-Llama-3"),
        (lambda: model(x[:, :8], t, context, pooled=pooled, guidance=6.0), "takes \\[batch, 16"),
        (lambda: model(x[..., :5], t, context, pooled=pooled, guidance=6.0), "multiple of the patch size"),
        (lambda: model(x, torch.tensor([1.0, 2.0]), context, pooled=pooled, guidance=6.0), "one timestep per"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message):
            call()


@torch.no_grad()
def test_edge_cases_stay_finite_and_concat_conditioning_joins_channels():
    model = randomize(HunyuanDiT(HunyuanConfig(**{**TINY.__dict__, "in_channels": 20})))
    x, t, context, _, pooled = inputs(2)
    y = torch.randn(2, 4, *x.shape[2:])
    no_text = torch.zeros(2, 10, dtype=torch.long)
    no_text[0, :3] = 1  # one sample with text, one without any
    out = model(x, t, context, context_mask=no_text, pooled=pooled, guidance=6.0, y=y)
    assert out.shape == x.shape and out.isfinite().all()
    assert model(x[:1], t[:1], context[:1, :0], pooled=pooled[:1], guidance=6.0, y=y[:1]).isfinite().all()


def test_activation_estimate_scales_with_tokens_and_batch():
    spec = describe(header(HunyuanConfig()))
    one = HUNYUAN.activation_bytes(spec, 118_800)  # 1280×720, 129 frames
    assert HUNYUAN.activation_bytes(spec, 118_800, 2) == 2 * one
    assert 10 * 2**30 < one < 20 * 2**30


@torch.no_grad()
def test_sampler_runs_it_with_batched_or_sequential_cfg_alike():
    from openreel.samplers.flow import sample_flow
    from openreel.samplers.schedules import linear_schedule
    from openreel.samplers.session import Expert

    spec = tiny_spec()
    model = ours_from(diffusers_model().state_dict(), diffusers_config())
    inputs_ = HUNYUAN.model_inputs(spec, embeds(), None, HUNYUAN.defaults(spec, False, 96, 64))
    noise = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    schedule = linear_schedule(3, 7.0, integer_timesteps=False)
    runs = [sample_flow([Expert(model, 6.0, inputs_, HUNYUAN, spec)], schedule, "euler", noise, batch_cfg=batched)
            for batched in (True, False)]
    assert runs[0].isfinite().all() and rel_err(runs[0], runs[1]) < 1e-5
