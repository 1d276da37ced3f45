"""Regional compile: the "compile" patch compiles each block in place, shares one graph between identical
blocks, switches off (eager blocks again) and on again without recompiling, and keeps the output.

The wiring is checked with torch.compile's "eager" backend (Dynamo tracing, no code generation) and
"aot_eager" (plus AOTAutograd), which take seconds on a CPU; inductor's kernels are checked on the GPU
(tests/gpu/test_fp8_cuda.py).
"""
import pytest
import torch
from torch._dynamo.utils import counters

from openreel import synthetic
from openreel.speed import compile as regional
from openreel.speed.compile import CompileSettings, is_compiled
from openreel.memory.patches import PATCHES
from openreel.models.wan.model import WanConfig, WanDiT
from openreel.nodes.speed import OpenReelCompile

CFG = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=4, text_dim=32)


@pytest.fixture(scope="module")
def model():
    model = WanDiT(CFG).eval()
    model.load_state_dict(synthetic.wan_state_dict(CFG))
    yield model
    apply(model, None)
    torch._dynamo.reset()


def apply(model, settings):
    PATCHES["compile"].apply(model, settings)


def inputs():
    gen = torch.Generator().manual_seed(2)
    return torch.randn(1, 16, 2, 4, 4, generator=gen), torch.tensor([400.0]), torch.randn(1, 5, 32, generator=gen)


def graphs():
    return counters["stats"]["unique_graphs"]


@torch.no_grad()
def test_apply_remove_reapply_without_recompiling(model):
    expected = model(*inputs())
    settings = CompileSettings(backend="eager")
    apply(model, settings)
    forwards = [block.forward for block in model.blocks]
    assert all(is_compiled(b) for b in model.blocks)
    before = graphs()
    assert torch.equal(model(*inputs()), expected)
    assert graphs() == before + 1          # four blocks, one graph
    apply(model, settings)                 # idempotent: the same bound functions stay
    assert [block.forward for block in model.blocks] == forwards
    apply(model, None)
    assert not any(is_compiled(b) for b in model.blocks)
    assert torch.equal(model(*inputs()), expected)
    apply(model, settings)
    assert torch.equal(model(*inputs()), expected)
    assert graphs() == before + 1          # off and on again: the graph made before serves


@torch.no_grad()
def test_aot_eager_matches_eager(model):
    apply(model, None)
    expected = model(*inputs())
    apply(model, CompileSettings(backend="aot_eager"))
    torch.testing.assert_close(model(*inputs()), expected, rtol=1e-5, atol=1e-5)


def test_recompile_limit_raised(model):
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    with config.patch(name, 8):  # dynamo's own patcher restores the entry (monkeypatch's undo deletes it)
        apply(model, CompileSettings(backend="eager"))
        assert getattr(config, name) == regional.RECOMPILE_LIMIT


def test_settings_and_node():
    with pytest.raises(ValueError, match="compile mode"):
        CompileSettings(mode="reduce-overhead")
    handle = type("H", (), {"with_patch": lambda self, name, value: (name, value)})()
    assert OpenReelCompile().apply(handle, "max-autotune-no-cudagraphs", "auto") == \
        (("compile", CompileSettings(mode="max-autotune-no-cudagraphs", dynamic=None)),)
    assert OpenReelCompile().apply(handle, "default", "false") == (("compile", CompileSettings()),)


def test_inductor_settings_go_to_torch_compile_on_top_of_the_mode(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    monkeypatch.setattr(regional, "_COMPILED", {})

    class Block(torch.nn.Module):
        def forward(self, x):
            return x

    regional.compiled_forward(Block, CompileSettings())
    regional.compiled_forward(Block, CompileSettings("max-autotune-no-cudagraphs",
                                                     inductor=(("triton.multi_kernel", 1),)))
    assert seen[0] == {"backend": "inductor", "dynamic": False, "mode": "default"}
    assert seen[1] == {"backend": "inductor", "dynamic": False, "options": {
        "max_autotune": True, "coordinate_descent_tuning": True, "triton.multi_kernel": 1}}
