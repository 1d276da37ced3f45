"""FP8 storage and FP8 matmul on the CPU: quantization error bounds, per-channel scales, the loader's
fp8_e4m3fn_channel storage, the "fp8_matmul" patch falling back to upcast, and the `torch._scaled_mm` call
checked against the kernel's rules with a stand-in kernel (the real one is in tests/gpu/test_fp8_cuda.py).

Tolerances: e4m3 keeps 3 mantissa bits, so rounding moves each value by at most 2⁻⁴ of itself (half a unit in
the last place); for Gaussian values the relative Frobenius error is about 2.6% (measured), and a matrix product
averages such errors rather than adding them. Hence 4e-2 for anything that rounds one operand to FP8 once.
"""
import dataclasses
import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from openreel import runtime, synthetic
from openreel.errors import InputError
from openreel.speed import fp8
from openreel.models.common.ops import CastLinear
from openreel.speed.fp8 import quantize_activations, quantize_weight, scaled_linear, scaled_mm_refusal
from openreel.model_loaders.core import prepare
from openreel.model_loaders.cache import MODULES
from openreel.model_loaders.core import module_of as dit_module
from openreel.model_loaders.dit import load_dit
from openreel.nodes.speed import OpenReelFP8

FP8_TOL = 4e-2
CFG = synthetic.TINY_WAN


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def fp8_layer(w: torch.Tensor, bias: torch.Tensor | None, granularity: str) -> CastLinear:
    layer = CastLinear(w.shape[1], w.shape[0], bias is not None, scaled=True)
    layer.weight.data, layer.scale_weight = quantize_weight(w, granularity)
    if bias is not None:
        layer.bias.data = bias
    return layer


# ------------------------------------------------------------------------------------------------ storage
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_upcast_linear_within_fp8_rounding(granularity):
    w, b, x = torch.randn(96, 128) * 0.05, torch.randn(96), torch.randn(4, 10, 128)
    layer = fp8_layer(w, b, granularity)
    assert layer.weight.dtype == torch.float8_e4m3fn
    assert layer.scale_weight.shape == (() if granularity == "tensor" else (96, 1))
    exact = F.linear(x, w, b)
    assert rel_err(layer(x), exact) < FP8_TOL                       # fp32 compute
    assert rel_err(layer(x.bfloat16()), exact) < FP8_TOL            # bf16 compute adds bf16's 2⁻⁹
    assert rel_err(F.linear(x, w.bfloat16().float(), b), exact) < 2e-3  # bf16 storage, for scale


def test_per_channel_scales_beat_per_tensor_with_an_outlier_row():
    """One output row 10⁴× larger: a per-tensor scale pushes the other rows into e4m3's subnormal range."""
    w = torch.randn(64, 256)
    w[0] *= 1e4
    errors = {}
    for granularity in ("tensor", "channel"):
        q, scale = quantize_weight(w, granularity)
        row_errors = ((q.float() * scale - w).norm(dim=1) / w.norm(dim=1))[1:]
        errors[granularity] = row_errors.mean().item()
    assert errors["channel"] < 0.03 < errors["tensor"]
    assert errors["channel"] < 0.8 * errors["tensor"]


def test_quantize_weight_edge_cases():
    q, scale = quantize_weight(torch.zeros(16, 32), "channel")
    assert torch.all(q.float() == 0) and torch.all(scale > 0)
    with pytest.raises(ValueError, match="granularity"):
        quantize_weight(torch.ones(4, 4), "block")


@pytest.mark.parametrize("granularity", ["row", "tensor"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_quantize_activations(granularity, dtype):
    x = torch.randn(33, 64) * torch.logspace(-4, 2, 33).unsqueeze(1)   # rows of very different sizes
    x[5] = 0
    x = x.to(dtype)
    q, scale = quantize_activations(x, granularity)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    assert scale.shape == ((33, 1) if granularity == "row" else ())
    back = q.float() * scale
    assert torch.isfinite(back).all() and q.float().abs().max() <= 448
    big = slice(20, None)   # rows that a per-tensor scale still represents well
    assert rel_err(back[big], x[big]) < FP8_TOL
    if granularity == "row":
        assert rel_err(back, x) < FP8_TOL


# ------------------------------------------------------------------------------------------------ loader
@pytest.fixture
def bf16_file(tmp_path):
    MODULES.clear()
    state = {k: v.to(torch.bfloat16).float() for k, v in synthetic.wan_state_dict(CFG).items()}
    path = synthetic.save_single(state, tmp_path / "wan_bf16.safetensors")
    yield path, state
    MODULES.clear()


def _inputs():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(1, 16, 3, 4, 4, generator=gen), torch.tensor([600.0]), torch.randn(1, 7, CFG.text_dim,
                                                                                            generator=gen)


def _run(handle):
    with torch.no_grad():
        return prepare(handle)(*_inputs())


def test_channel_storage_at_load(bf16_file):
    path, _ = bf16_file
    handle = load_dit(path, "bf16", "fp32")
    exact = _run(handle)
    channel = dataclasses.replace(handle, weight_dtype="fp8_e4m3fn_channel")
    module = dit_module(channel)
    q = module.blocks[0].self_attn.q
    assert isinstance(q, CastLinear) and q.weight.dtype == torch.float8_e4m3fn and q.scale_weight.shape == (CFG.dim, 1)
    assert module.blocks[0].norm3.weight.dtype == torch.float32      # norms stay high precision
    assert module.text_embedding[0].weight.dtype == torch.float32    # embeddings too (compute dtype here)
    assert rel_err(_run(channel), exact) < FP8_TOL


def test_fp8_scaled_file_is_taken_as_is_whatever_the_granularity(tmp_path):
    MODULES.clear()
    path = synthetic.save_fp8(synthetic.wan_state_dict(CFG), tmp_path / "wan_fp8_scaled.safetensors", scaled=True)
    runtime.set_models_dir(tmp_path)
    try:
        handle = load_dit(path, "auto", "fp32")
        as_file = dit_module(handle).blocks[0].ffn[0]
        channel = dit_module(dataclasses.replace(handle, weight_dtype="fp8_e4m3fn_channel")).blocks[0].ffn[0]
        assert torch.equal(channel.weight.view(torch.uint8), as_file.weight.view(torch.uint8))
        assert channel.scale_weight.shape == () and torch.equal(channel.scale_weight, as_file.scale_weight)
    finally:
        runtime.set_models_dir(None)
        MODULES.clear()


# ------------------------------------------------------------------------------------------------ fp8_matmul patch
def test_fp8_matmul_on_cpu_falls_back_to_upcast_exactly(bf16_file, caplog):
    path, _ = bf16_file
    handle = dataclasses.replace(load_dit(path, "bf16", "fp32"), weight_dtype="fp8_e4m3fn_channel")
    upcast = _run(handle)
    fp8._LOGGED.clear()
    with caplog.at_level(logging.WARNING, logger="openreel.memory.fp8"):
        for activations in ("row", "tensor"):
            assert torch.equal(_run(handle.with_patch("fp8_matmul", activations)), upcast)
    assert len(caplog.records) == 1 and "needs a CUDA GPU" in caplog.records[0].getMessage()
    prepare(handle)
    assert all(m.fp8_matmul is None for m in dit_module(handle).modules() if isinstance(m, CastLinear))


def test_fp8_matmul_patch_rejects_unknown_values(bf16_file):
    path, _ = bf16_file
    with pytest.raises(ValueError, match="fp8_matmul"):
        prepare(load_dit(path, "bf16", "fp32").with_patch("fp8_matmul", "block"))


# ------------------------------------------------------------------------------------------------ _scaled_mm wrapper
def _cuda_like(dtype=torch.bfloat16):
    return SimpleNamespace(device=torch.device("cuda", 0), dtype=dtype)


@pytest.mark.parametrize("capability, dtype, shape, wdtype, reason", [
    ((9, 0), torch.bfloat16, (64, 32), torch.float8_e4m3fn, None),
    ((8, 9), torch.float16, (64, 32), torch.float8_e4m3fn, None),
    ((8, 6), torch.bfloat16, (64, 32), torch.float8_e4m3fn, "8.9 or newer"),
    ((9, 0), torch.float32, (64, 32), torch.float8_e4m3fn, "compute dtype"),
    ((9, 0), torch.bfloat16, (64, 40), torch.float8_e4m3fn, "multiples of 16"),
    ((9, 0), torch.bfloat16, (40, 32), torch.float8_e4m3fn, "multiples of 16"),
    ((9, 0), torch.bfloat16, (64, 32), torch.float8_e5m2, "float8_e4m3fn"),
])
def test_scaled_mm_refusal(monkeypatch, capability, dtype, shape, wdtype, reason):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    weight = torch.zeros(shape).to(wdtype)
    got = scaled_mm_refusal(_cuda_like(dtype), weight)
    assert got is None if reason is None else reason in got


def test_scaled_mm_refusal_cpu_and_layout(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    weight = torch.zeros(64, 32).to(torch.float8_e4m3fn)
    assert "needs a CUDA GPU" in scaled_mm_refusal(torch.zeros(2, 32, dtype=torch.bfloat16), weight)
    assert "non-contiguous" in scaled_mm_refusal(_cuda_like(), torch.zeros(64, 64).to(torch.float8_e4m3fn).t())


def fake_scaled_mm(calls):
    """torch._scaled_mm as the CUDA kernel behaves (rules seen on an H100/H200 with torch 2.11), in float32."""
    def run(a, b, *, scale_a, scale_b, bias=None, out_dtype=None):
        (m, k), n = a.shape, b.shape[1]
        assert a.dtype == b.dtype == torch.float8_e4m3fn
        assert a.stride(1) == 1 and b.stride(0) == 1, "a row-major, b column-major"
        assert k % 16 == 0 and n % 16 == 0
        assert scale_a.dtype == scale_b.dtype == torch.float32
        if not (scale_a.numel() == 1 and scale_b.numel() == 1):  # else tensor-wise
            assert scale_a.shape == (m, 1) and scale_b.shape == (1, n), "Invalid scaling configuration"
            assert scale_a.is_contiguous() and scale_b.is_contiguous()
        assert bias is None or bias.dtype == out_dtype in (torch.bfloat16, torch.float16)
        calls.append("rowwise" if scale_a.numel() > 1 else "tensorwise")
        out = (a.float() * scale_a) @ (b.float() * scale_b)
        return (out if bias is None else out + bias.float()).to(out_dtype)
    return run


@pytest.mark.parametrize("weights", ["tensor", "channel"])
@pytest.mark.parametrize("activations", ["row", "tensor"])
@pytest.mark.parametrize("bias", [True, False])
def test_scaled_linear_follows_the_kernel_rules(monkeypatch, weights, activations, bias):
    calls = []
    monkeypatch.setattr(torch, "_scaled_mm", fake_scaled_mm(calls))
    w, b = torch.randn(48, 64) * 0.05, torch.randn(48).bfloat16() if bias else None
    x = torch.randn(2, 7, 64).bfloat16()
    layer = fp8_layer(w, b, weights)
    out = scaled_linear(x, layer.weight, layer.scale_weight, b, activations)
    assert out.shape == (2, 7, 48) and out.dtype == torch.bfloat16
    assert calls == ["tensorwise" if weights == activations == "tensor" else "rowwise"]
    exact = F.linear(x.float(), w, None if b is None else b.float())
    assert rel_err(out, exact) < 2 * FP8_TOL   # both operands rounded to FP8


def test_cast_linear_routes_through_scaled_mm_when_allowed(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "_scaled_mm", fake_scaled_mm(calls))
    monkeypatch.setattr(fp8, "scaled_mm_refusal", lambda x, weight: None)
    layer = fp8_layer(torch.randn(32, 32), None, "channel")
    x = torch.randn(5, 32).bfloat16()
    upcast = layer(x)
    layer.fp8_matmul = "row"
    assert rel_err(layer(x), upcast) < FP8_TOL and calls == ["rowwise"]


# ------------------------------------------------------------------------------------------------ node
def test_fp8_node(bf16_file):
    path, _ = bf16_file
    handle = load_dit(path, "bf16", "bf16")
    assert handle.weights_key in MODULES
    (out,) = OpenReelFP8().apply(handle, "fp8_per_channel", "fp8_matmul", "per_row")
    assert out.weight_dtype == "fp8_e4m3fn_channel" and out.patch("fp8_matmul") == "row"
    assert handle.weights_key not in MODULES    # the loader's bf16 copy is let go
    (out,) = OpenReelFP8().apply(handle, "fp8_per_tensor", "upcast", "per_row")
    assert out.weight_dtype == "fp8_e4m3fn_scaled" and out.patch("fp8_matmul", "unset") is None
    (same,) = OpenReelFP8().apply(out, "as_loaded", "fp8_matmul", "per_tensor")
    assert same.weights_key == out.weights_key and same.patch("fp8_matmul") == "tensor"
    with pytest.raises(InputError, match="needs FP8 weights"):
        OpenReelFP8().apply(handle, "as_loaded", "fp8_matmul", "per_row")
