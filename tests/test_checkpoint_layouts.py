"""Synthetic checkpoints in every real layout load through the DiT loader node and give the source's output."""
import json

import pytest
import torch
from safetensors.torch import load_file

from openreel import runtime, synthetic
from openreel.models.common.ops import CastLinear
from openreel.model_loaders.cache import MODULES
from openreel.model_loaders.core import module_of as dit_module
from openreel.models.wan.model import WanConfig, WanDiT
from openreel.nodes.loaders import OpenReelDiTLoader, _model_choices
from references import require

CFG = synthetic.TINY_WAN


def dequantized(path, prefix=synthetic.COMFY_PREFIX) -> dict[str, torch.Tensor]:
    """What an fp8 file written by `synthetic.save_fp8` holds, back in float32 with the official names."""
    raw = {k.removeprefix(prefix): v for k, v in load_file(str(path)).items()}
    out = {}
    for key, value in raw.items():
        if key == "scaled_fp8" or key.endswith(".scale_weight"):
            continue
        scale = raw.get(key.removesuffix("weight") + "scale_weight")
        out[key] = value.float() * (scale if scale is not None else 1.0)
    return out


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture
def models_dir(tmp_path):
    runtime.set_models_dir(tmp_path)
    MODULES.clear()
    yield tmp_path / "diffusion_models"
    runtime.set_models_dir(None)
    MODULES.clear()


@pytest.fixture(scope="module")
def source():
    """Random bf16-representable weights, the fp32 model built from them, and fixed inputs with its output."""
    state = {k: v.to(torch.bfloat16).float() for k, v in synthetic.wan_state_dict(CFG).items()}
    model = WanDiT(CFG).eval()
    model.load_state_dict(state)
    x, ctx, t = torch.randn(1, 16, 3, 4, 4), torch.randn(1, 7, CFG.text_dim), torch.tensor([600.0])
    with torch.no_grad():
        out = model(x, t, ctx)
    return state, (x, t, ctx), out


def load_via_node(name, weight_dtype="auto", compute_dtype="fp32"):
    (handle,) = OpenReelDiTLoader().load(name, weight_dtype, compute_dtype)
    return handle, dit_module(handle)


def run(module, inputs):
    x, t, ctx = inputs
    with torch.no_grad():
        return module(x, t, ctx)


@pytest.mark.parametrize("layout", ["official", "comfy_prefixed", "pth", "sharded", "sharded_pick_last_shard"])
def test_bf16_layouts_load_exactly(models_dir, source, layout):
    state, inputs, expected = source
    if layout == "official":
        synthetic.save_single(state, models_dir / "wan_t2v.safetensors")
        name = "wan_t2v.safetensors"
    elif layout == "comfy_prefixed":
        synthetic.save_single(state, models_dir / "wan_t2v.safetensors", prefix=synthetic.COMFY_PREFIX)
        name = "wan_t2v.safetensors"
    elif layout == "pth":
        models_dir.mkdir(parents=True)
        torch.save({k: v.to(torch.bfloat16) for k, v in state.items()}, models_dir / "wan_t2v.pth")
        name = "wan_t2v.pth"
    else:
        first = synthetic.save_sharded(state, models_dir / "Wan-T2V", CFG, shards=3)
        assert _model_choices("diffusion_models") == [f"Wan-T2V/{first.name}"]  # one entry per shard set
        (first.parent / "mp_rank_00_model_states_fp8_map.pt").write_bytes(b"")  # an official fp8 scale map
        assert _model_choices("diffusion_models") == [f"Wan-T2V/{first.name}"]  # is no choice either
        name = f"Wan-T2V/{first.name}"
        if layout == "sharded_pick_last_shard":
            name = name.replace("00001-of", "00003-of")
    handle, module = load_via_node(name)
    assert (handle.spec.family, handle.spec.task, handle.spec.config.num_layers) == ("wan", "t2v", 2)
    assert len(handle.files) == (3 if layout.startswith("sharded") else 1)
    assert rel_err(run(module, inputs), expected) < 1e-6


def test_diffusers_folder_matches_diffusers_output(models_dir):
    require("diffusers")
    from diffusers import WanTransformer3DModel

    ref = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=16,
                                out_channels=16, text_dim=64, freq_dim=256, ffn_dim=512, num_layers=2,
                                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6).eval()
    for p in ref.parameters():
        p.data.normal_(0, 0.1)
    folder = models_dir / "Wan2.1-T2V-Diffusers" / "transformer"
    ref.save_pretrained(folder, max_shard_size="2MB")  # sharded diffusers folder with its index json
    first = sorted(folder.glob("*.safetensors"))[0]
    handle, module = load_via_node(f"Wan2.1-T2V-Diffusers/transformer/{first.name}")
    x, ctx, t = torch.randn(1, 16, 3, 4, 4), torch.randn(1, 7, 64), torch.tensor([250.0])
    padded = torch.zeros(1, 512, 64)
    padded[:, :7] = ctx
    with torch.no_grad():
        expected = ref(x, t, padded, return_dict=False)[0]
        assert rel_err(module(x, t, ctx), expected) < 1e-5


def test_fp8_scaled_file_keeps_its_weights_and_scales(models_dir, source):
    state, inputs, expected = source
    path = synthetic.save_fp8(state, models_dir / "wan_fp8_scaled.safetensors", scaled=True)
    handle, module = load_via_node(path.name)  # auto: fp8 storage, taken as-is
    q = module.blocks[0].self_attn.q
    raw = load_file(str(path))
    assert isinstance(q, CastLinear) and q.weight.dtype == torch.float8_e4m3fn
    prefix = synthetic.COMFY_PREFIX + "blocks.0.self_attn.q."
    assert torch.equal(q.weight.view(torch.uint8), raw[prefix + "weight"].view(torch.uint8))  # no round trip
    assert torch.equal(q.scale_weight, raw[prefix + "scale_weight"].reshape(()))
    # exactly the dequantized file's model ...
    exact = WanDiT(CFG).eval()
    exact.load_state_dict(dequantized(path))
    got = run(module, inputs)
    assert rel_err(got, run(exact, inputs)) < 1e-5
    # ... and close to the source: e4m3 keeps 3 mantissa bits, a relative rounding error of at most 2^-4
    # (about 2^-4/sqrt(3) = 3.6% RMS on random weights); through two blocks the output stays within 10%.
    assert rel_err(got, expected) < 0.1


def test_plain_fp8_file_and_bf16_to_fp8_at_load(models_dir, source):
    state, inputs, expected = source
    synthetic.save_fp8(state, models_dir / "wan_fp8.safetensors", scaled=False)
    _, module = load_via_node("wan_fp8.safetensors")
    assert module.blocks[1].ffn[0].weight.dtype == torch.float8_e4m3fn
    assert rel_err(run(module, inputs), expected) < 0.1
    MODULES.clear()
    synthetic.save_single(state, models_dir / "wan_bf16.safetensors")
    for choice in ("fp8_e4m3fn", "fp8_e4m3fn_scaled"):
        _, module = load_via_node("wan_bf16.safetensors", weight_dtype=choice)
        assert module.blocks[0].cross_attn.o.weight.dtype == torch.float8_e4m3fn
        assert module.time_embedding[0].weight.dtype == torch.float32  # high-precision parts stay fp32
        assert rel_err(run(module, inputs), expected) < 0.1


def test_fp8_scaled_file_dequantized_to_bf16_on_request(models_dir, source):
    state, inputs, _ = source
    path = synthetic.save_fp8(state, models_dir / "wan_fp8_scaled.safetensors", scaled=True)
    _, module = load_via_node(path.name, weight_dtype="bf16", compute_dtype="fp32")
    assert module.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    exact = WanDiT(CFG).eval()
    exact.load_state_dict(dequantized(path))
    assert rel_err(run(module, inputs), run(exact, inputs)) < 1e-2  # bf16 storage of the fp8 values: exact-ish


def test_weights_are_built_on_meta_and_loaded_once(models_dir, source, monkeypatch):
    state, _, _ = source
    synthetic.save_single(state, models_dir / "wan.safetensors")
    built = []
    original = WanDiT.__init__

    def spy(self, *args):
        original(self, *args)
        built.append(next(self.parameters()).device.type)

    monkeypatch.setattr(WanDiT, "__init__", spy)
    handle, module = load_via_node("wan.safetensors")
    assert built == ["meta"]
    assert all(p.device.type == "cpu" for p in module.parameters())
    assert dit_module(handle) is module  # the cache serves the same module
    assert built == ["meta"]


def test_official_config_json_gives_head_count(models_dir):
    cfg = WanConfig(dim=256, ffn_dim=512, num_heads=4, num_layers=2, text_dim=64)  # head_dim 64: only config tells
    first = synthetic.save_sharded(synthetic.wan_state_dict(cfg), models_dir / "tiny", cfg, shards=2)
    handle, _ = load_via_node(f"tiny/{first.name}")
    assert handle.spec.config.num_heads == 4
    assert json.loads((models_dir / "tiny" / "config.json").read_text())["num_heads"] == 4
