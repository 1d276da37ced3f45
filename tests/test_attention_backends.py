"""Attention backends: registration of what is installed, each backend's refusals, the error / fallback
policy (a fallback gives exactly SDPA's output), the Sage and Flash wrappers with stand-in kernels, the
"attention" patch and node. A GPU section checks the refusal rules against the real kernels."""
import importlib.machinery
import logging
import sys
import types
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from openreel import synthetic
from openreel.errors import InputError
from openreel.speed import attention_backends as ab
from openreel.models.common import attention as attn
from openreel.models.common.attention import attention, available_backends, parse_backend, register_backend
from openreel.models.wan.model import WanDiT
from openreel.nodes.speed import OpenReelAttention


@pytest.fixture
def registry(monkeypatch):
    """Leaves the backend registry and the fallback log as they were."""
    monkeypatch.setattr(attn, "_BACKENDS", dict(attn._BACKENDS))
    monkeypatch.setattr(attn, "_LOGGED", set())


def qkv(lq=12, lk=12, heads=2, head_dim=64, dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    return tuple(torch.randn(2, n, heads, head_dim, generator=gen, dtype=dtype) for n in (lq, lk, lk))


def fake_module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    return module


def sdpa_nhd(q, k, v, **_):
    """A stand-in for sageattn / flash_attn_func: SDPA in their [B, L, H, D] layout."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


# ------------------------------------------------------------------------------------------------ registration
def test_sdpa_kernels_always_registered_and_missing_packages_are_not():
    names = available_backends()
    assert {"sdpa", "sdpa_cudnn", "sdpa_flash"} <= set(names)
    if "flash_attn" not in sys.modules and importlib.util.find_spec("flash_attn") is None:
        assert "flash" not in names


def test_sage_listed_where_missing_and_says_what_to_install(registry):
    """Other packs' workflows name "sage" often: such a workflow loads, and runs on SDPA by its fallback policy."""
    ab.register_installed()
    if importlib.util.find_spec("sageattention") is not None:
        pytest.skip("sageattention is installed here")
    q, k, v = qkv(dtype=torch.bfloat16)
    assert "sage" in available_backends() and "thu-ml/SageAttention" in ab.missing("sage")
    with pytest.raises(InputError, match="'sage' attention backend cannot run this call: SageAttention does not"):
        attention(q, k, v, backend="sage:error")
    assert torch.equal(attention(q, k, v, backend="sage:fallback"), attention(q, k, v))
    handle = SimpleNamespace(with_patch=lambda name, value: (name, value))
    with pytest.raises(InputError, match="'sage' cannot run on this machine.*thu-ml/SageAttention.*fallback"):
        OpenReelAttention().apply(handle, "sage", "error")


def test_installed_packages_register(registry, monkeypatch):
    monkeypatch.setitem(sys.modules, "sageattention", fake_module("sageattention", sageattn=sdpa_nhd))
    monkeypatch.setitem(sys.modules, "flash_attn", fake_module("flash_attn", flash_attn_func=sdpa_nhd))
    ab.register_installed()
    assert {"sage", "flash"} <= set(available_backends())
    assert attn._BACKENDS["flash"].refuses is ab._flash2_refusal and attn._BACKENDS["sage"].fn is ab._sage
    monkeypatch.setitem(sys.modules, "flash_attn_interface", fake_module("flash_attn_interface",
                                                                         flash_attn_func=sdpa_nhd))
    ab.register_installed()
    assert attn._BACKENDS["flash"].refuses is ab._flash3_refusal   # FlashAttention 3 preferred
    package = fake_module("flash_attn", flash_attn_func=sdpa_nhd)
    package.__path__ = []
    monkeypatch.setitem(sys.modules, "flash_attn", package)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", fake_module("flash_attn.cute", flash_attn_func=sdpa_nhd))
    ab.register_installed()
    assert attn._BACKENDS["flash"].refuses is ab._flash4_refusal   # FlashAttention 4 before both
    assert attn._BACKENDS["flash4"].refuses is ab._flash4_refusal   # by its own name too, for the speed preset


def _sage2_module(monkeypatch, sageattn=sdpa_nhd, **built):
    """A stand-in SageAttention 2: its sm90 entry point beside `sageattn`, and a core with the built kernels' flags."""
    package = fake_module("sageattention", sageattn=sageattn, sageattn_qk_int8_pv_fp8_cuda_sm90=sdpa_nhd)
    package.__path__ = []
    monkeypatch.setitem(sys.modules, "sageattention", package)
    monkeypatch.setitem(sys.modules, "sageattention.core", fake_module("sageattention.core", **built))


def test_sage2_registers_its_own_wrapper_and_leads_the_speed_preset(registry, monkeypatch):
    _sage2_module(monkeypatch, SM90_ENABLED=True, SM89_ENABLED=False)
    ab.register_installed()
    sage = attn._BACKENDS["sage"]
    assert sage.fn is ab._sage2 and not sage.self_only
    q = _cuda_q(length=257)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert sage.refuses(q, q, q, None) is None   # odd key counts: SageAttention 2 masks the last block
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    assert "kernels for 8.6, 9.0; rebuild it on this GPU" in sage.refuses(q, q, q, None)
    picked = []
    for name in ("sage", "flash4", "int8_fp8"):
        register_backend(name, lambda *a, name=name: picked.append(name) or attn._sdpa(*a), lambda *a: None)
    q, k, v = qkv()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    attn.self_attention(q, k, v, backend="speed")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    attn.self_attention(q, k, v, backend="speed")
    assert picked == ["sage", "flash4"]   # its accuracy was measured on Hopper only; another GPU: the next


def test_sage1_stays_out_of_the_speed_preset(registry, monkeypatch):
    monkeypatch.setitem(sys.modules, "sageattention", fake_module("sageattention", sageattn=sdpa_nhd))
    ab.register_installed()
    assert attn._BACKENDS["sage"].fn is ab._sage
    picked = []
    for name in ("sage", "int8_fp8"):
        register_backend(name, lambda *a, name=name: picked.append(name) or attn._sdpa(*a), lambda *a: None)
    q, k, v = qkv()
    attn.self_attention(q, k, v, backend="speed")
    assert picked == ["int8_fp8"]   # 1.0.6 is slower than cuDNN on Hopper


def test_flash4_listed_where_missing_and_says_what_to_install(registry):
    ab.register_installed()
    assert "flash4" in available_backends()   # a shared workflow that names it still loads
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    q = _cuda_q()
    assert "pip install flash-attn-4" in attn._BACKENDS["flash4"].refuses(q, q, q, None)
    assert "pip install flash-attn-4" in ab.missing("flash4") and ab.missing("sdpa") is None
    handle = SimpleNamespace(with_patch=lambda name, value: (name, value))
    with pytest.raises(InputError, match="'flash4' cannot run on this machine.*flash-attn-4.*fallback"):
        OpenReelAttention().apply(handle, "flash4", "error")   # at the node, before any sampling
    assert OpenReelAttention().apply(handle, "flash4", "fallback") == (("attention", "flash4:fallback"),)


def test_broken_install_is_reported_not_registered(registry, monkeypatch, caplog):
    monkeypatch.setattr(ab.importlib.util, "find_spec", lambda name: object() if name == "sageattention" else None)

    def broken(name):
        raise RuntimeError("triton version mismatch")
    monkeypatch.setattr(ab.importlib, "import_module", broken)
    attn._BACKENDS.pop("sage", None)   # registered at import where sageattention really is installed
    with caplog.at_level(logging.WARNING, logger=ab.__name__):
        ab.register_installed()
    assert attn._BACKENDS["sage"].refuses(*qkv(), None) == ab.SAGE_MISSING   # listed, refusing, as if missing
    assert "sageattention is installed but cannot be used" in caplog.text and "triton version mismatch" in caplog.text


# ------------------------------------------------------------------------------------------------ refusals
def _cuda_q(dtype=torch.bfloat16, head_dim=128, length=512):
    return SimpleNamespace(device=torch.device("cuda", 0), dtype=dtype, shape=(1, length, 4, head_dim))


SAGE2_H100 = frozenset({(8, 6), (9, 0)})   # a build for Hopper, and its Triton kernel


@pytest.mark.parametrize("check, q, mask, capability, reason", [
    (ab._sage_refusal, _cuda_q(length=257), None, (9, 0), "257 keys, not a multiple of 64"),
    (ab._sage_refusal, _cuda_q(length=32760), None, (9, 0), None),     # 56 padding keys: at most 0.17%
    (ab._sage_refusal, _cuda_q(), None, (9, 0), None),
    (ab._sage_refusal, _cuda_q(), "mask", (9, 0), "attention mask"),
    (ab._sage_refusal, _cuda_q(torch.float32), None, (9, 0), "dtype torch.float32"),
    (ab._sage_refusal, _cuda_q(head_dim=80), None, (9, 0), "head size 80; it takes 64, 96, 128"),
    (ab._sage_refusal, _cuda_q(), None, (7, 5), "compute capability 7.5; it needs 8.0 or newer"),
    (ab._sage2_refusal_with(SAGE2_H100), _cuda_q(length=257), None, (9, 0), None),
    (ab._sage2_refusal_with(SAGE2_H100), _cuda_q(head_dim=80), None, (9, 0), None),   # padded to 128 by it
    (ab._sage2_refusal_with(SAGE2_H100), _cuda_q(head_dim=256), None, (9, 0), "multiples of 8 up to 128"),
    (ab._sage2_refusal_with(SAGE2_H100), _cuda_q(), "mask", (9, 0), "attention mask"),
    (ab._sage2_refusal_with(SAGE2_H100), _cuda_q(), None, (8, 6), None),             # its Triton kernel
    (ab._sage2_refusal_with(SAGE2_H100), _cuda_q(), None, (12, 0), "compute capability 12.0; this SageAttention 2 "
                                                                   "has kernels for 8.6, 9.0; rebuild it"),
    (ab._sage2_refusal_with(SAGE2_H100), _cuda_q(), None, (7, 5), "it needs 8.0 or newer"),
    (ab._flash3_refusal, _cuda_q(), None, (8, 9), "it needs 9.0"),
    (ab._flash3_refusal, _cuda_q(), None, (9, 0), None),
    (ab._flash3_refusal, _cuda_q(), None, (10, 0), "it needs 9.0"),
    (ab._flash4_refusal, _cuda_q(), None, (8, 9), "it needs 9.0 or newer"),
    (ab._flash4_refusal, _cuda_q(), None, (10, 0), None),
    (ab._flash4_refusal, _cuda_q(), "mask", (9, 0), "attention mask"),
    (ab._flash2_refusal, _cuda_q(head_dim=512), None, (9, 0), "multiples of 8 up to 256"),
    (ab._flash_sdpa_refusal, _cuda_q(), "mask", (9, 0), "attention mask"),
    (ab._cudnn_refusal, _cuda_q(), "mask", (9, 0), None),
    (ab._cudnn_refusal, _cuda_q(torch.float32), None, (9, 0), "dtype"),
])
def test_refusal_rules(monkeypatch, check, q, mask, capability, reason):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    got = check(q, q, q, mask)
    assert got is None if reason is None else reason in got


@pytest.mark.parametrize("name", ["sdpa_cudnn", "sdpa_flash", "sage", "flash"])
def test_cpu_calls_are_refused(registry, name):
    register_backend("sage", ab._sage, ab._sage_refusal)
    register_backend("flash", ab._flash_with(ab._flash2_op), ab._flash2_refusal)
    q, k, v = qkv(dtype=torch.bfloat16)
    with pytest.raises(InputError, match=f"the '{name}' attention backend cannot run this call: tensors on cpu"):
        attention(q, k, v, backend=f"{name}:error")
    with pytest.raises(InputError, match="on_unsupported = fallback"):
        attention(q, k, v, backend=name)   # a bare name means policy "error"
    assert torch.equal(attention(q, k, v, backend=f"{name}:fallback"), attention(q, k, v))


def test_policy_error_and_fallback(registry, caplog):
    def must_not_run(*args):
        raise AssertionError("a refused call reached the backend")
    register_backend("picky", must_not_run, lambda q, k, v, mask: "a mask" if mask is not None else "fp32")
    q, k, v = qkv(lq=6, lk=6)
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    with pytest.raises(InputError, match="'picky' attention backend cannot run this call: a mask"):
        attention(q, k, v, mask=mask, backend="picky:error")
    with caplog.at_level(logging.WARNING, logger=attn.__name__):
        for _ in range(3):
            assert torch.equal(attention(q, k, v, mask=mask, backend="picky:fallback"), attention(q, k, v, mask=mask))
        assert torch.equal(attention(q, k, v, backend="picky:fallback"), attention(q, k, v))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "(a mask)" in messages[0] and "(fp32)" in messages[1]   # once per reason


def test_parse_backend():
    assert parse_backend("sdpa") == ("sdpa", "error")
    assert parse_backend("sdpa_flash:fallback") == ("sdpa_flash", "fallback")
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        parse_backend("nope:fallback")
    with pytest.raises(ValueError, match="unknown policy 'maybe'"):
        parse_backend("sdpa:maybe")


def test_block_causal_model_falls_back_to_the_same_output():
    """SkyReels diffusion forcing's block-causal mask: a mask-less backend must not change the result."""
    model = WanDiT(synthetic.TINY_WAN).eval()
    model.load_state_dict(synthetic.wan_state_dict())
    x, t, ctx = torch.randn(1, 16, 4, 4, 4), torch.tensor([[900.0, 900.0, 500.0, 500.0]]), torch.randn(1, 5, 64)
    with torch.no_grad():
        expected = model(x, t, ctx, causal_block_size=2)
        model.attention_backend = "sdpa_flash:fallback"
        assert torch.equal(model(x, t, ctx, causal_block_size=2), expected)
        model.attention_backend = "sdpa_flash:error"
        with pytest.raises(InputError, match="sdpa_flash"):
            model(x, t, ctx, causal_block_size=2)


# ------------------------------------------------------------------------------------------------ wrappers
def test_sage_wrapper_layout_and_no_input_mutation(monkeypatch):
    seen = {}

    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, smooth_k=True, **kwargs):
        seen.update(layout=tensor_layout, smooth_k=smooth_k, contiguous=all(t.is_contiguous() for t in (q, k, v)))
        return sdpa_nhd(q, k, v)
    monkeypatch.setitem(sys.modules, "sageattention", fake_module("sageattention", sageattn=sageattn))
    q, k, v = qkv(lq=10, lk=7, head_dim=64)   # cross-attention: kv length differs from q length
    k_before = k.clone()
    out = ab._sage(q, k.transpose(0, 0), v, None)
    assert seen == {"layout": "NHD", "smooth_k": False, "contiguous": True}
    assert torch.equal(k, k_before)
    assert out.shape == (2, 10, 2 * 64)
    torch.testing.assert_close(out, attention(q, k, v), atol=1e-5, rtol=1e-5)   # mean-shifted keys: same softmax


def test_sage2_wrapper_lets_sage_centre_the_keys(monkeypatch):
    seen = {}

    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, **kwargs):
        seen.update(layout=tensor_layout, causal=is_causal, kwargs=kwargs,
                    contiguous=all(t.is_contiguous() for t in (q, k, v)))
        return sdpa_nhd(q, k, v)
    _sage2_module(monkeypatch, sageattn=sageattn)
    q, k, v = qkv(lq=10, lk=7, head_dim=64)
    out = ab._sage2(q, k.transpose(0, 0), v, None)
    assert seen == {"layout": "NHD", "causal": False, "kwargs": {}, "contiguous": True}
    assert out.shape == (2, 10, 2 * 64)
    torch.testing.assert_close(out, attention(q, k, v))


@pytest.mark.parametrize("module, op, result", [
    ("flash_attn.cute", "_flash4_op", lambda q, k, v: (sdpa_nhd(q, k, v), torch.zeros(1))),
    ("flash_attn_interface", "_flash3_op", lambda q, k, v: (sdpa_nhd(q, k, v), torch.zeros(1))),  # with the lse
    ("flash_attn_interface", "_flash3_op", sdpa_nhd),
    ("flash_attn", "_flash2_op", sdpa_nhd),
])
def test_flash_wrappers(monkeypatch, module, op, result):
    def flash_attn_func(q, k, v, causal):
        assert not causal
        return result(q, k, v)
    monkeypatch.setitem(sys.modules, module, fake_module(module, flash_attn_func=flash_attn_func))
    q, k, v = qkv(lq=9, lk=5)
    torch.testing.assert_close(ab._flash_with(getattr(ab, op))(q, k, v, None), attention(q, k, v))


# ------------------------------------------------------------------------------------------------ patch and node
@pytest.mark.parametrize("enabled, registered_flash, expected", [
    ({}, False, "sdpa"),
    ({"sage_attention_enabled": True}, False, "sage:fallback"),   # listed everywhere: runs, or falls back and logs
    ({"flash_attention_enabled": True}, True, "flash:fallback"),
    ({"flash_attention_enabled": True}, False, "sdpa"),           # no FlashAttention that we can run
])
def test_default_backend_follows_comfyui_attention_flags(registry, monkeypatch, enabled, registered_flash, expected):
    model_management = SimpleNamespace(**{name: (lambda value=value: value) for name, value in enabled.items()})
    monkeypatch.setattr(ab.runtime, "IN_COMFYUI", True)
    monkeypatch.setattr(ab.runtime, "_mm", model_management)
    attn._BACKENDS.pop("flash", None)
    if registered_flash:
        register_backend("flash", ab._flash_with(ab._flash2_op), ab._flash2_refusal)
    assert ab.default_backend() == expected


def test_default_backend_standalone_is_sdpa():
    assert ab.runtime.attention_flag() is None and ab.default_backend() == "sdpa"
def test_node_sets_backend_and_policy():
    handle = SimpleNamespace(with_patch=lambda name, value: (name, value))
    assert OpenReelAttention().apply(handle, "sdpa_cudnn", "fallback") == (("attention", "sdpa_cudnn:fallback"),)
    assert OpenReelAttention().apply(handle, "sdpa", "error") == (("attention", "sdpa:error"),)
    with pytest.raises(InputError, match="not installed"):
        OpenReelAttention().apply(handle, "sage_v9", "error")
    choices, options = OpenReelAttention.INPUT_TYPES()["required"]["backend"]
    assert choices == available_backends() and "437 vs 582 TFLOP/s" in options["tooltip"]
    assert "speed" in choices and "speed: a preset" in options["tooltip"]


# ------------------------------------------------------------------------------------------------ GPU
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("head_dim", [64, 80, 128])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("keys", [200, 256])
def test_gpu_refusals_match_the_kernels(dtype, head_dim, masked, keys):
    """Every installed backend: a call it accepts runs and stays close to SDPA; a refused one, with policy
    fallback, gives SDPA's output exactly."""
    q, k, v = (t.cuda() for t in qkv(lq=256, lk=keys, heads=4, head_dim=head_dim, dtype=dtype))
    mask = torch.rand(256, keys, device="cuda") > 0.2 if masked else None
    reference = attention(q, k, v, mask=mask)
    for name in available_backends():
        refuses = attn._BACKENDS[name].refuses
        reason = None if refuses is None else refuses(q, k, v, mask)
        out = attention(q, k, v, mask=mask, backend=f"{name}:fallback")
        if reason is None:
            # 8-bit kernels run through `attention` (int8_fp8 and int8_16bit give it to SDPA: self-attention only):
            # INT8 Q·Kᵀ and FP8 P·V err ~4% on Gaussian inputs (Sage 1.0.6's FP16 P·V less)
            tolerance = 4.5e-2 if name in ("sage", "int8_fp8_all") else 1e-2
            assert ((out.float() - reference.float()).norm() / reference.float().norm()).item() < tolerance, name
        else:
            assert torch.equal(out, reference), (name, reason)


@gpu
def test_gpu_external_kernels_compile_as_opaque_ops():
    """Sage / Flash run inside a compiled region as one custom op each: no graph break into Triton/CUDA code."""
    names = [n for n in ("sage", "flash") if n in available_backends() and ab.missing(n) is None]
    if not names:
        pytest.skip("neither sageattention nor flash-attn is installed")
    q, k, v = (t.cuda() for t in qkv(lq=256, lk=128, heads=4, head_dim=128, dtype=torch.bfloat16))
    for name in names:
        eager = attention(q, k, v, backend=name)
        compiled = torch.compile(lambda q, k, v: attention(q, k, v, backend=name), fullgraph=True)(q, k, v)
        # Compiled, Sage's key centring rounds differently before its INT8 quantization: close, not equal.
        assert ((compiled.float() - eager.float()).norm() / eager.float().norm()).item() < 1e-2, name
