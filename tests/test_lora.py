"""LoRAs on the CPU: every key layout (ComfyUI / kohya, diffusers / PEFT, `diffusion_model.` with lora_A/B or
lora_down/up, without prefix, full-rank diff / diff_b / diff_m, per-layer alpha) merged and unmerged equals a
reference computed by hand from the file (W + s·α/r·up·down, + diffs) on tiny Wan and HunyuanVideo models; fp8
merges within fp8's bound; unmerged + block swap bitwise the unmerged resident model; removing a LoRA or strength 0
gives the base output bitwise; one module per base weights in the cache; the coverage report, the errors for
LoRAs of other models, the node and the loaders' refusal of a LoRA file."""
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from openreel import runtime, synthetic
from openreel.errors import DetectionError, InputError
from openreel.memory import patches
from openreel.memory.block_swap import BlockSwap
from openreel.model_loaders import lora_apply
from openreel.model_loaders.cache import MODULES
from openreel.model_loaders.core import module_of, prepare
from openreel.model_loaders.dit import load_dit
from openreel.model_loaders.lora import LORA_PATCH, check, lora_spec, open_lora
from openreel.models.common.ops import CastLinear
from openreel.models.hunyuan.model import HunyuanConfig, HunyuanDiT
from openreel.models.wan.model import WanConfig, WanDiT
from openreel.nodes.lora import OpenReelLoRA
from openreel.speed.compile import CompileSettings

TOL = 1e-5
FP8_TOL = 4e-2   # one rounding of the weights to e4m3 (tests/test_fp8.py)
STRENGTH = 0.8
WAN = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=3, text_dim=64)
HY = HunyuanConfig(hidden=256, heads=2, mlp_width=512, double_blocks=2, single_blocks=2, text_dim=32, pooled_dim=16,
                   refiner_heads=2, refiner_mlp_width=512)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(runtime.gc, "collect", lambda *args: 0)
    MODULES.clear()
    yield
    MODULES.clear()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def random_state(network, cfg, seed: int) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in network(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) * (0.1 if len(s) > 1 else 0.5) for k, s in shapes.items()}


class Subject:
    """A tiny model file, its state, fixed inputs and a plain-torch reference network."""

    def __init__(self, tmp_path: Path, family: str):
        self.family = family
        network, cfg = (WanDiT, WAN) if family == "wan" else (HunyuanDiT, HY)
        self.network, self.cfg = network, cfg
        self.state = {k: v.to(torch.bfloat16).float() for k, v in random_state(network, cfg, 1).items()}
        self.path = synthetic.save_single(self.state, tmp_path / f"{family}.safetensors", prefix=synthetic.COMFY_PREFIX,
                                          dtype=torch.float32)
        gen = torch.Generator().manual_seed(2)
        if family == "wan":
            self.args = (torch.randn(1, 16, 2, 4, 4, generator=gen), torch.tensor([500.0]),
                         torch.randn(1, 5, cfg.text_dim, generator=gen)), {}
        else:
            self.args = ((torch.randn(1, 16, 2, 4, 4, generator=gen), torch.tensor([500.0]),
                          torch.randn(1, 6, cfg.text_dim, generator=gen)),
                         {"context_mask": torch.ones(1, 6, dtype=torch.long),
                          "pooled": torch.randn(1, cfg.pooled_dim, generator=gen), "guidance": 6.0})

    def handle(self, weight_dtype: str = "auto"):
        """The model loaded; its tensors moved to fresh (64-byte aligned) memory: tensors read from a file sit
        where the file put them, and the CPU's matrix products round differently at other alignments, which
        would tell block swap's (512-byte aligned) host copies from the resident run."""
        handle = load_dit(self.path, weight_dtype, "fp32")
        for layer in module_of(handle).modules():
            for store in (layer._parameters, layer._buffers):
                for name, tensor in store.items():
                    if tensor is not None:
                        tensor.data = tensor.data.clone()
        return handle

    def run(self, handle) -> torch.Tensor:
        module = prepare(handle)
        patches.load(module, 0)
        with torch.no_grad():
            out = module(*self.args[0], **self.args[1])
        patches.offload(module)
        return out

    def reference(self, state: dict) -> torch.Tensor:
        model = self.network(self.cfg).eval()
        model.load_state_dict(state)
        with torch.no_grad():
            return model(*self.args[0], **self.args[1])


# ----------------------------------------------------------------------------------------- tiny LoRAs by hand
class Change:
    """One change a LoRA makes, in our parameter names: a pair on `param` (a weight, or `rows` of it) or a delta."""

    def __init__(self, param: str, kind: str, shape, rank: int = 0, alpha: float | None = None, rows=None,
                 reorder=False, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.param, self.kind, self.rows, self.reorder, self.alpha = param, kind, rows, reorder, alpha
        if kind == "pair":
            out, rest = shape[0], shape[1:]
            self.down = torch.randn(rank, *rest, generator=gen) * 0.05
            self.up = torch.randn(out, rank, *([1] * (len(rest) - 1)), generator=gen) * 0.05
            self.scale = (alpha / rank) if alpha is not None else 1.0
        else:
            self.delta = torch.randn(shape, generator=gen) * 0.05
            self.scale = 1.0

    def apply(self, state: dict, strength: float) -> None:
        if self.kind == "pair":
            delta = self.up.flatten(1) @ self.down.flatten(1)
        else:
            delta = self.delta
        if self.reorder:
            half = delta.shape[0] // 2
            delta = torch.cat([delta[half:], delta[:half]])
        delta = delta * (strength * self.scale)
        target = state[self.param]
        if self.rows is None:
            state[self.param] = target + delta.reshape(target.shape)
        else:
            target = target.clone()
            target[self.rows[0]:self.rows[1]] += delta.reshape(target[self.rows[0]:self.rows[1]].shape)
            state[self.param] = target


def write(path: Path, changes: list[tuple[str, Change]], down_up=("lora_down.weight", "lora_up.weight")) -> Path:
    """A LoRA file: each change under its layer name (`name`) with the chosen pair part names."""
    out = {}
    for name, c in changes:
        if c.kind == "pair":
            out[f"{name}.{down_up[0]}"], out[f"{name}.{down_up[1]}"] = c.down, c.up
            if c.alpha is not None:
                out[f"{name}.alpha"] = torch.tensor(c.alpha)
        else:
            out[f"{name}.{c.kind}"] = c.delta
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return path


def reference_state(subject: Subject, changes, strength: float) -> dict:
    state = dict(subject.state)
    for _, c in changes:
        c.apply(state, strength)
    return state


def wan_changes(layout: str) -> list[tuple[str, Change]]:
    """A Wan LoRA in one layout: (layer name in the file, change in our names)."""
    d, f = WAN.dim, WAN.ffn_dim
    pairs = [("blocks.0.self_attn.q", "blocks.0.attn1.to_q", (d, d), 8, 4.0),
             ("blocks.1.cross_attn.o", "blocks.1.attn2.to_out.0", (d, d), 4, None),
             ("blocks.2.ffn.0", "blocks.2.ffn.net.0.proj", (f, d), 16, 32.0),
             ("head.head", "proj_out", (64, d), 4, 2.0),
             ("text_embedding.0", "condition_embedder.text_embedder.linear_1", (d, WAN.text_dim), 4, 4.0),
             ("patch_embedding", "patch_embedding", (d, 16, 1, 2, 2), 4, 8.0)]
    changes = []
    for i, (ours, diffusers, shape, rank, alpha) in enumerate(pairs):
        if layout in ("diffusers", "peft"):
            alpha = None   # diffusers / PEFT files carry no alpha (PEFT's lora_alpha = r)
        name = {"kohya": "lora_unet_" + ours.replace(".", "_"), "comfy": "diffusion_model." + ours,
                "comfy_AB": "diffusion_model." + ours, "bare": ours, "bare_AB": ours,
                "diffusers": "transformer." + diffusers, "peft": "base_model.model." + diffusers}[layout]
        changes.append((name, Change(ours + ".weight", "pair", shape, rank, alpha, seed=10 + i)))
    if layout == "diffusers":   # a bias delta as diffusers writes LightX2V's diff_b (PEFT's lora_bias)
        changes.append(("transformer.blocks.0.attn1.to_q", Change("blocks.0.self_attn.q.bias", "lora_B.bias", (d,),
                                                                  seed=26)))
    if layout in ("kohya", "comfy", "bare"):   # LightX2V-style full-rank deltas beside the pairs
        prefix = {"kohya": "lora_unet_", "comfy": "diffusion_model.", "bare": ""}[layout]
        name = (lambda n: prefix + n.replace(".", "_")) if layout == "kohya" else (lambda n: prefix + n)
        changes += [(name("blocks.0.norm3"), Change("blocks.0.norm3.weight", "diff", (d,), seed=20)),
                    (name("blocks.0.self_attn.q"), Change("blocks.0.self_attn.q.bias", "diff_b", (d,), seed=21)),
                    (name("blocks.1.cross_attn.norm_k"), Change("blocks.1.cross_attn.norm_k.weight", "diff", (d,),
                                                                seed=22)),
                    (name("blocks.2"), Change("blocks.2.modulation", "diff_m", (1, 6, d), seed=23)),
                    (name("head.head"), Change("head.head.bias", "diff_b", (64,), seed=24)),
                    (name("time_projection.1"), Change("time_projection.1.weight", "diff", (6 * d, d), seed=25))]
    return changes


def hunyuan_changes(layout: str) -> list[tuple[str, Change]]:
    d, m = HY.hidden, HY.mlp_width
    if layout == "diffusers":   # q-only / single parts of fused layers land on their rows
        rows = [("transformer_blocks.0.attn.to_q", "double_blocks.0.img_attn_qkv", (0, d), d),
                ("transformer_blocks.1.attn.add_v_proj", "double_blocks.1.txt_attn_qkv", (2 * d, 3 * d), d),
                ("single_transformer_blocks.0.proj_mlp", "single_blocks.0.linear1", (3 * d, 3 * d + m), d),
                ("single_transformer_blocks.1.attn.to_k", "single_blocks.1.linear1", (d, 2 * d), d),
                ("context_embedder.token_refiner.refiner_blocks.0.attn.to_k",
                 "txt_in.individual_token_refiner.blocks.0.self_attn_qkv", (d, 2 * d), d)]
        changes = [("transformer." + name, Change(ours + ".weight", "pair", (r[1] - r[0], width), 4, 2.0, rows=r,
                                                  seed=30 + i))
                   for i, (name, ours, r, width) in enumerate(rows)]
        changes += [("transformer.transformer_blocks.0.norm1.linear",
                     Change("double_blocks.0.img_mod.linear.weight", "pair", (6 * d, d), 8, None, seed=40)),
                    ("transformer.norm_out.linear",
                     Change("final_layer.adaLN_modulation.1.weight", "pair", (2 * d, d), 4, 4.0, reorder=True,
                            seed=41)),
                    ("transformer.x_embedder.proj", Change("img_in.proj.weight", "pair", (d, 16, 1, 2, 2), 4, 4.0,
                                                           seed=42)),
                    ("transformer.single_transformer_blocks.0.proj_out",
                     Change("single_blocks.0.linear2.weight", "pair", (d, d + m), 8, 8.0, seed=43)),
                    ("transformer.transformer_blocks.0.attn.to_q",
                     Change("double_blocks.0.img_attn_qkv.bias", "diff_b", (d,), rows=(0, d), seed=44))]
        return changes
    name = (lambda n: "lora_unet_" + n.replace(".", "_")) if layout == "kohya" else (lambda n: "diffusion_model." + n)
    return [(name("double_blocks.0.img_attn_qkv"), Change("double_blocks.0.img_attn_qkv.weight", "pair",
                                                           (3 * d, d), 8, 4.0, seed=50)),
            (name("single_blocks.1.linear2"), Change("single_blocks.1.linear2.weight", "pair", (d, d + m), 4, 4.0,
                                                     seed=51)),
            (name("double_blocks.1.txt_mlp.fc1"), Change("double_blocks.1.txt_mlp.fc1.weight", "pair", (m, d), 4,
                                                         None, seed=52)),
            (name("final_layer.linear"), Change("final_layer.linear.weight", "pair", (64, d), 4, 1.0, seed=53)),
            (name("single_blocks.0.linear1"), Change("single_blocks.0.linear1.bias", "diff_b", (3 * d + m,),
                                                     seed=54)),
            (name("double_blocks.0.img_attn_q_norm"), Change("double_blocks.0.img_attn_q_norm.weight", "diff",
                                                             (128,), seed=55))]


WAN_LAYOUTS = {"kohya": None, "comfy": None, "comfy_AB": ("lora_A.weight", "lora_B.weight"), "bare": None,
               "bare_AB": ("lora_A.weight", "lora_B.weight"), "diffusers": ("lora_A.weight", "lora_B.weight"),
               "peft": ("lora_A.default.weight", "lora_B.default.weight")}
CASES = [("wan", layout) for layout in WAN_LAYOUTS] + [("hunyuan", layout) for layout in ("diffusers", "kohya",
                                                                                         "comfy")]


def lora_file(tmp_path: Path, family: str, layout: str) -> tuple[Path, list]:
    changes = wan_changes(layout) if family == "wan" else hunyuan_changes(layout)
    parts = (WAN_LAYOUTS.get(layout) if family == "wan" else
             ("lora_A.weight", "lora_B.weight") if layout == "diffusers" else None)
    return write(tmp_path / "loras" / f"{family}_{layout}.safetensors", changes,
                 parts or ("lora_down.weight", "lora_up.weight")), changes


def with_lora(handle, path: Path, strength: float = STRENGTH, mode: str = "auto"):
    return handle.with_patch(LORA_PATCH, tuple(handle.patch(LORA_PATCH, ())) + (lora_spec(path, strength, mode),))


# ----------------------------------------------------------------------------------------- proofs
@pytest.mark.parametrize("family, layout", CASES)
def test_every_layout_merged_and_unmerged_equals_the_reference_and_comes_off_exactly(tmp_path, family, layout):
    subject = Subject(tmp_path, family)
    path, changes = lora_file(tmp_path, family, layout)
    handle = subject.handle()
    base = subject.run(handle)
    expected = subject.reference(reference_state(subject, changes, STRENGTH))
    resolution = check(handle.spec, lora_spec(path))
    assert not resolution.unmatched, resolution.report()
    file_bytes = subject.path.read_bytes()
    for mode in ("merged", "unmerged"):
        out = subject.run(with_lora(handle, path, STRENGTH, mode))
        assert rel(out, expected) <= TOL, (mode, rel(out, expected))
        assert rel(out, base) > 1e-3   # the LoRA did something
        assert torch.equal(subject.run(handle), base), mode   # taken out: bitwise the base
    assert len(MODULES._items) == 1 and subject.path.read_bytes() == file_bytes   # no second model, file untouched


def test_unmerged_factors_live_on_the_large_linears_only(tmp_path):
    subject = Subject(tmp_path, "wan")
    path, _ = lora_file(tmp_path, "wan", "comfy")
    handle = with_lora(subject.handle(), path, mode="unmerged")
    module = prepare(handle)
    q = module.blocks[0].self_attn.q
    assert isinstance(q, CastLinear) and q.lora_down.shape == (8, WAN.dim) and q.lora_up.shape == (WAN.dim, 8)
    assert torch.allclose(q.lora_scale, torch.full((8,), STRENGTH * 4.0 / 8))
    assert "lora_down" in dict(q.named_buffers()) and not isinstance(module.head.head, CastLinear)
    merged = lora_apply.carried(module)[0][1]
    assert merged == "unmerged" and module_of(handle) is module_of(subject.handle())


def test_changing_one_lora_rewrites_only_the_weights_it_merges_into(tmp_path, monkeypatch):
    subject = Subject(tmp_path, "wan")
    first, a = lora_file(tmp_path, "wan", "comfy_AB")
    second, b = lora_file(tmp_path, "wan", "peft")
    handle = with_lora(subject.handle(), first, 0.5, "merged")
    subject.run(with_lora(handle, second, 1.0, "unmerged"))
    reader, read = lora_apply._reader, []

    def recording(handle, module):
        real = reader(handle, module)
        return lambda module, name: read.append(name) or real(module, name)

    monkeypatch.setattr(lora_apply, "_reader", recording)
    out = subject.run(with_lora(handle, second, 2.0, "unmerged").with_patch("block_swap", BlockSwap(2)))
    state = reference_state(subject, a, 0.5)
    for _, c in b:
        c.apply(state, 2.0)
    assert rel(out, subject.reference(state)) <= TOL
    # read back: only the small layers the unmerged LoRA merges into (its strength changed); the large linears
    # the first one merged into stay as they are
    assert sorted(read) == ["head.head.weight", "patch_embedding.weight", "text_embedding.0.weight"]


def test_strength_zero_and_stacks(tmp_path):
    subject = Subject(tmp_path, "wan")
    first, a = lora_file(tmp_path, "wan", "comfy")
    second, b = lora_file(tmp_path, "wan", "diffusers")
    handle = subject.handle()
    base = subject.run(handle)
    assert torch.equal(subject.run(with_lora(handle, first, 0.0)), base)
    assert lora_apply.carried(module_of(handle)) == ()
    state = reference_state(subject, a, 0.5)
    for _, c in b:
        c.apply(state, -1.5)
    expected = subject.reference(state)
    for modes in (("merged", "unmerged"), ("unmerged", "merged"), ("merged", "merged")):
        stacked = with_lora(with_lora(handle, first, 0.5, modes[0]), second, -1.5, modes[1])
        assert rel(subject.run(stacked), expected) <= TOL, modes
    # a change of strength on unmerged factors rewrites them in place
    one = subject.run(with_lora(handle, first, 0.5, "unmerged"))
    module = module_of(handle)
    down = module.blocks[0].self_attn.q.lora_down
    two = subject.run(with_lora(handle, first, 1.0, "unmerged"))
    assert module.blocks[0].self_attn.q.lora_down is down and not torch.equal(one, two)
    assert rel(two, subject.reference(reference_state(subject, a, 1.0))) <= TOL
    assert torch.equal(subject.run(handle), base)


@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn_channel", "fp8_e4m3fn_scaled", "fp8_e4m3fn"])
def test_fp8_merge_requantizes_within_the_fp8_bound(tmp_path, weight_dtype):
    subject = Subject(tmp_path, "wan")
    path, _ = lora_file(tmp_path, "wan", "comfy")
    bf16 = subject.run(with_lora(subject.handle("bf16"), path, mode="merged"))
    handle = subject.handle(weight_dtype)
    module = module_of(handle)
    q = module.blocks[0].self_attn.q
    scale = None if q.scale_weight is None else q.scale_weight.clone()
    base = subject.run(handle)
    merged = subject.run(with_lora(handle, path, mode="merged"))
    assert rel(merged, bf16) < FP8_TOL and rel(merged, base) > 1e-2
    assert q.weight.dtype == torch.float8_e4m3fn
    if scale is not None:
        assert q.scale_weight.shape == scale.shape and not torch.equal(q.scale_weight, scale)  # new scales
    assert lora_apply.carried(module)[0][1] == "merged"
    auto = subject.run(with_lora(handle, path))   # auto: unmerged on fp8 weights
    assert lora_apply.carried(module)[0][1] == "unmerged" and rel(auto, bf16) < FP8_TOL
    assert torch.equal(subject.run(handle), base)   # fp8 weights and scales read back exactly


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_unmerged_with_block_swap_is_bitwise_the_resident_run(tmp_path, family):
    subject = Subject(tmp_path, family)
    path, _ = lora_file(tmp_path, family, "kohya")
    handle = subject.handle()
    base = subject.run(handle)
    lora = with_lora(handle, path, mode="unmerged")
    resident = subject.run(lora)
    blocks = len(module_of(handle).all_blocks())
    for swapped in (1, blocks - 1, blocks):
        assert torch.equal(subject.run(lora.with_patch("block_swap", BlockSwap(swapped))), resident), swapped
    swap = BlockSwap(blocks - 1)
    stronger = with_lora(handle, path, 2.0, "unmerged")
    assert torch.equal(subject.run(stronger.with_patch("block_swap", swap)), subject.run(stronger))
    assert torch.equal(subject.run(handle.with_patch("block_swap", swap)), base)   # factors gone, ring rebuilt
    assert torch.equal(subject.run(lora.with_patch("block_swap", swap)), resident)
    auto = with_lora(handle, path).with_patch("block_swap", swap)   # auto: unmerged under block swap
    assert torch.equal(subject.run(auto), resident)
    assert lora_apply.carried(module_of(handle))[0][1] == "unmerged"


def test_merged_under_block_swap_writes_into_the_host_copies(tmp_path):
    subject = Subject(tmp_path, "wan")
    path, changes = lora_file(tmp_path, "wan", "bare")
    handle = subject.handle()
    base = subject.run(handle)
    swap = BlockSwap(2)
    out = subject.run(with_lora(handle, path, mode="merged").with_patch("block_swap", swap))
    assert rel(out, subject.reference(reference_state(subject, changes, STRENGTH))) <= TOL
    assert torch.equal(subject.run(handle.with_patch("block_swap", swap)), base)


def test_unmerged_factors_add_to_the_fp8_matmul_kernel(monkeypatch):
    """A layer whose product the FP8 kernel computes still adds its factors (the kernel stood in for on the CPU by
    tests/test_fp8.py's model of torch._scaled_mm)."""
    from test_fp8 import fake_scaled_mm, fp8_layer

    from openreel.speed import fp8

    calls = []
    monkeypatch.setattr(torch, "_scaled_mm", fake_scaled_mm(calls))
    monkeypatch.setattr(fp8, "scaled_mm_refusal", lambda x, weight: None)
    gen = torch.Generator().manual_seed(4)
    w, x = torch.randn(32, 64, generator=gen) * 0.05, torch.randn(5, 64, generator=gen).bfloat16()
    down, up = torch.randn(4, 64, generator=gen) * 0.1, torch.randn(32, 4, generator=gen) * 0.1
    layer = fp8_layer(w, None, "channel")
    layer.lora_down, layer.lora_up, layer.lora_scale = down.bfloat16(), up.bfloat16(), torch.full((4,), 0.5)
    layer.fp8_matmul = "row"
    out = layer(x)
    exact = x.float() @ (w + 0.5 * up @ down).t()
    assert calls == ["rowwise"] and rel(out.float(), exact) < 2 * FP8_TOL
    assert rel(out.float(), x.float() @ w.t()) > 2 * FP8_TOL   # the factors' term is there


def test_unmerged_factors_go_into_the_weight_for_many_rows_and_into_the_output_for_few():
    """Both forms of an unmerged LoRA give W + s·up·down's product; the stored weight is never changed."""
    from openreel.models.common.ops import CastLinear

    gen = torch.Generator().manual_seed(5)
    layer = CastLinear(48, 24)
    layer.weight.copy_(torch.randn(24, 48, generator=gen))
    layer.bias.copy_(torch.randn(24, generator=gen))
    down, up = torch.randn(4, 48, generator=gen), torch.randn(24, 4, generator=gen)
    layer.lora_down, layer.lora_up, layer.lora_scale = down, up, torch.full((4,), 0.25)
    stored = layer.weight.clone()
    for rows in (3, 40):   # 2·48·24 / (48 + 2·24) = 24 rows: below, the output form; above, the weight form
        x = torch.randn(1, rows, 48, generator=gen)
        assert layer._lora_in_weight(x) == (rows > 24)
        want = x @ (stored + 0.25 * up @ down).t() + layer.bias
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(layer.weight, stored)


def test_unmerged_with_regional_compile(tmp_path):
    subject = Subject(tmp_path, "wan")
    path, _ = lora_file(tmp_path, "wan", "comfy")
    lora = with_lora(subject.handle(), path, mode="unmerged")
    eager = subject.run(lora)
    try:
        compiled = subject.run(lora.with_patch("compile", CompileSettings(backend="eager")))
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    finally:
        prepare(subject.handle())
        torch._dynamo.reset()


# ----------------------------------------------------------------------------------------- report, errors, node
def test_coverage_report_lists_what_did_not_match(tmp_path):
    subject = Subject(tmp_path, "wan")
    changes = wan_changes("kohya")[:3]
    junk = {"lora_unet_blocks_0_self_attn_zz.lora_down.weight": torch.zeros(4, 8),
            "lora_unet_blocks_0_self_attn_zz.lora_up.weight": torch.zeros(8, 4),
            "lora_unet_blocks_1_ffn_0.lora_down.weight": torch.zeros(4, WAN.dim),   # half a pair
            "lora_unet_blocks_2_ffn_2.lora_down.weight": torch.zeros(4, 999),
            "lora_unet_blocks_2_ffn_2.lora_up.weight": torch.zeros(WAN.dim, 4),
            "model_info.version": torch.zeros(1)}
    path = write(tmp_path / "partial.safetensors", changes)
    from safetensors.torch import load_file
    save_file({**load_file(str(path)), **junk}, str(path))
    resolution = check(subject.handle().spec, lora_spec(path))
    assert resolution.matched == 8 and len(resolution.unmatched) == 6   # 2 pairs with alpha, one without
    assert resolution.ranks == {4, 8, 16} and len(resolution.terms) == 3
    text = resolution.report()
    assert "kohya names (lora_unet_), lora_down/lora_up + alpha, rank 4-16" in text
    assert "matched 8 of 14 keys; layers touched: 3 (low-rank pairs: 3, full-rank deltas: 0)" in text
    assert "lora_unet_blocks_0_self_attn_zz.lora_down.weight (no such layer in this model)" in text
    assert "lora_unet_blocks_1_ffn_0.lora_down.weight (half of a low-rank pair)" in text
    assert "lora_unet_blocks_2_ffn_2.lora_up.weight (shape 256×999, the model's is 256×512)" in text
    assert "model_info.version (not a LoRA part)" in text


def test_a_lora_for_another_model_is_an_error_saying_what_it_is_for(tmp_path):
    wan, hunyuan = Subject(tmp_path / "w", "wan"), Subject(tmp_path / "h", "hunyuan")
    wan_lora, _ = lora_file(tmp_path, "wan", "comfy")
    kohya_hunyuan, _ = lora_file(tmp_path, "hunyuan", "kohya")
    with pytest.raises(InputError, match="changes nothing in HunyuanVideo T2V .*: it seems to be a Wan LoRA. Connect "
                                         "it to a Wan model, or pick a LoRA made for this model"):
        check(hunyuan.handle().spec, lora_spec(wan_lora))
    with pytest.raises(InputError, match="it seems to be a HunyuanVideo LoRA"):
        check(wan.handle().spec, lora_spec(kohya_hunyuan))
    sd = write(tmp_path / "sdxl.safetensors", [("lora_unet_down_blocks_0_attentions_0_proj_in",
                                                Change("x.weight", "pair", (320, 320), 4, 4.0))])
    with pytest.raises(InputError, match="Stable Diffusion 1.x / SDXL LoRA"):
        check(wan.handle().spec, lora_spec(sd))
    wide = write(tmp_path / "wide.safetensors", [("diffusion_model.blocks.0.self_attn.q",
                                                  Change("x.weight", "pair", (512, 512), 4, 4.0))])
    with pytest.raises(InputError, match=r"another size of Wan model \(its blocks.0.self_attn.q.weight is 512×512 "
                                         r"where this model's is 256×256\)"):
        check(wan.handle().spec, lora_spec(wide))
    with pytest.raises(InputError, match="^OpenReel LoRA: .*seems to be a Wan LoRA"):
        runtime.set_models_dir(tmp_path)
        try:
            OpenReelLoRA().apply(hunyuan.handle(), "wan_comfy.safetensors", 1.0, "auto")
        finally:
            runtime.set_models_dir(None)


def test_node_chains_and_reports(tmp_path):
    subject = Subject(tmp_path, "wan")
    lora_file(tmp_path, "wan", "comfy")
    lora_file(tmp_path, "wan", "diffusers")
    runtime.set_models_dir(tmp_path)
    try:
        required = OpenReelLoRA.INPUT_TYPES()["required"]
        assert required["lora_name"][0] == ["wan_comfy.safetensors", "wan_diffusers.safetensors"]
        assert required["strength"][1]["min"] == -10 and required["mode"][0] == ["auto", "merged", "unmerged"]
        handle = subject.handle()
        first = OpenReelLoRA().apply(handle, "wan_comfy.safetensors", 0.5, "auto")
        second = OpenReelLoRA().apply(first["result"][0], "wan_diffusers.safetensors", 1.0, "unmerged")
        stamp = OpenReelLoRA.IS_CHANGED(lora_name="wan_comfy.safetensors")
        lora_file(tmp_path, "wan", "comfy")   # written again: ComfyUI must run the node again
        assert stamp and OpenReelLoRA.IS_CHANGED(lora_name="wan_comfy.safetensors") != stamp
    finally:
        runtime.set_models_dir(None)
    out, report = second["result"]
    assert [s.name for s in out.patch(LORA_PATCH)] == ["wan_comfy.safetensors", "wan_diffusers.safetensors"]
    assert [s.mode for s in out.patch(LORA_PATCH)] == ["auto", "unmerged"] and handle.patch(LORA_PATCH) is None
    assert out.weights_key == handle.weights_key   # one module per base weights
    assert second["ui"]["text"] == [report]
    assert "diffusers/official names (transformer.), lora_A/lora_B, rank 4-16" in report
    assert "matched 13 of 13 keys; layers touched: 6 (low-rank pairs: 6, full-rank deltas: 1)" in report


def test_loaders_refuse_a_lora_file_and_the_lora_node_refuses_a_model(tmp_path):
    path, _ = lora_file(tmp_path, "wan", "comfy")
    with pytest.raises(DetectionError, match="is a LoRA, not a diffusion transformer.*OpenReel LoRA node"):
        load_dit(path)
    with pytest.raises(DetectionError, match="is a Wan diffusion transformer, not a LoRA"):
        open_lora(Subject(tmp_path, "wan").path)


def test_restore_refuses_a_model_file_changed_on_disk(tmp_path):
    subject = Subject(tmp_path, "wan")
    path, _ = lora_file(tmp_path, "wan", "comfy")
    handle = subject.handle()
    subject.run(with_lora(handle, path, mode="merged"))
    synthetic.save_single(subject.state, subject.path, prefix=synthetic.COMFY_PREFIX, dtype=torch.float32)
    with pytest.raises(InputError, match="changed on disk"):
        prepare(handle)
    assert handle.weights_key not in MODULES   # the half-known module is let go: rebuilt on next use
    assert math.isfinite(subject.run(load_dit(subject.path, "auto", "fp32")).abs().max().item())


def _high_water_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _rss_peak() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))


def test_a_merge_holds_one_tensor_at_a_time_in_host_memory(tmp_path, monkeypatch):
    """Host memory while merging a LoRA into every block linear (and restoring them) grows by a few tensors, not
    by a copy of the model: the kernel's high-water mark, reset before each step. The restore maps the model file
    anew every REOPEN_BYTES (1 GiB; 16 MiB here for a small model), so the pages it read leave the RSS."""
    monkeypatch.setattr(lora_apply, "REOPEN_BYTES", 16 << 20)
    if not _high_water_reset():
        pytest.skip("this kernel does not let a process reset its peak RSS")
    cfg = WanConfig(dim=512, ffn_dim=2048, num_heads=4, num_layers=8, text_dim=64)
    state = {k: v for k, v in synthetic.wan_state_dict(cfg).items()}
    path = synthetic.save_single(state, tmp_path / "wan.safetensors", dtype=torch.float32)
    handle = load_dit(path, "auto", "fp32")
    module = module_of(handle)
    model_bytes = runtime.module_bytes(module)
    names = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.o", "ffn.0",
             "ffn.2"]
    changes = [(f"diffusion_model.blocks.{i}.{n}", Change(f"blocks.{i}.{n}.weight", "pair",
                                                          tuple(state[f"blocks.{i}.{n}.weight"].shape), 8, 8.0))
               for i in range(cfg.num_layers) for n in names]
    lora = write(tmp_path / "lora.safetensors", changes)
    grown = {}
    merged = (lora_spec(lora, 1.0, "merged"),)
    for step, stack in (("merge", merged), ("restore", ())):
        for warm in (merged, (), merged):   # the allocator's own pools, the files' first reads
            lora_apply.apply(handle, module, warm)
        if step == "merge":
            lora_apply.apply(handle, module, ())
        _high_water_reset()
        before = _rss_peak()
        lora_apply.apply(handle, module, stack)
        grown[step] = _rss_peak() - before
    assert max(grown.values()) < 0.25 * model_bytes, (grown, model_bytes)
