"""Our 8-bit attention (speed/int8_attention.py): the Triton kernels themselves, run on the CPU by Triton's
interpreter in a child process (the interpreter must be chosen before any kernel is defined), and their dispatch.
The GPU runs of the same kernels are tests/gpu/test_int8_attention_cuda.py."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from openreel.errors import InputError
from openreel.models.common import attention as attn

pytest.importorskip("triton")

from interpreted_int8_attention import CASES

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def interpreted():
    """Every case through the interpreter in one child process."""
    proc = subprocess.run([sys.executable, HERE / "interpreted_int8_attention.py"], capture_output=True, text=True, timeout=900, cwd=HERE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["name"]: r for r in map(json.loads, proc.stdout.splitlines())}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_kernel_matches_fp32_attention(interpreted, case):
    r = interpreted[case[0]]
    b, lq, h, d = case[1], case[2], case[4], case[5]
    assert r["shape"] == [b, lq, h, d] and r["dtype"] == f"torch.{case[7]}" and r["finite"] and r["fixed_equal"]
    if case[-1] == "fp8":   # FP8 rounds P and V to 3 mantissa bits: about 3.5% on flat random attention
        assert r["rel"] < 4.5e-2 and r["cos"] > 0.999, r
    else:
        assert r["rel"] < 2.5e-2 and r["cos"] > 0.9995, r


# ------------------------------------------------------------------------------------------------ dispatch
@pytest.fixture
def backends(monkeypatch):
    monkeypatch.setattr(attn, "_BACKENDS", dict(attn._BACKENDS))
    calls = []

    def fake(q, k, v, mask):
        calls.append(q.shape)
        return attn._sdpa(q, k, v, mask) + 1.0
    attn.register_backend("approx", fake, self_only=True)
    return calls


def test_self_only_backend_serves_self_attention_and_leaves_cross_attention_exact(backends):
    q, k, v = (torch.randn(1, 6, 2, 8) for _ in range(3))
    text = torch.randn(1, 4, 2, 8)
    exact = attn._sdpa(q, text, text, None)
    assert torch.equal(attn.attention(q, text, text, backend="approx:error"), exact) and backends == []
    assert torch.allclose(attn.self_attention(q, k, v, backend="approx:error"), attn._sdpa(q, k, v, None) + 1.0)
    assert backends == [q.shape]


def test_int8_backends_refuse_what_they_cannot_run():
    from openreel.speed import attention_backends as ab

    assert {"int8_fp8", "int8_fp8_all", "int8_16bit"} <= set(attn.available_backends())
    assert attn._BACKENDS["int8_fp8"].self_only and not attn._BACKENDS["int8_fp8_all"].self_only
    q = torch.randn(1, 8, 2, 64, dtype=torch.bfloat16)
    refuses = attn._BACKENDS["int8_fp8"].refuses
    assert "CUDA" in refuses(q, q, q, None)
    with pytest.raises(InputError, match="int8_fp8.*CUDA"):
        attn.self_attention(q, q, q, backend="int8_fp8:error")
    out = attn.self_attention(q, q, q, backend="int8_fp8:fallback")
    assert torch.equal(out, attn._sdpa(q, q, q, None))
    # head size, mask shape and compute capability are checked after the device: tests/gpu covers them
    # where Triton does not import the backends stay listed (a shared workflow still runs) and say what is missing
    assert "Triton is not installed" in ab._int8_refusal_with((8, 9), False)(q, q, q, None)


def test_speed_preset_runs_what_holds_its_bound_and_sdpa_elsewhere(monkeypatch):
    from openreel.speed import attention_backends  # noqa: F401  (registers the preset)

    assert attn.registered("speed").self_only
    q, k, v = (torch.randn(1, 8, 2, 64) for _ in range(3))
    text = torch.randn(1, 5, 2, 64)
    assert torch.equal(attn.self_attention(q, k, v, backend="speed:error"), attn._sdpa(q, k, v, None))  # CPU
    picked = []
    monkeypatch.setattr(attn, "_BACKENDS", dict(attn._BACKENDS))

    def kernel(name, refuses=lambda *a: None):
        attn.register_backend(name, lambda *a: picked.append(name) or attn._sdpa(*a), refuses)
    kernel("int8_fp8")
    attn.self_attention(q, k, v, backend="speed")
    attn.attention(q, text, text, backend="speed")   # text attention: exact, SDPA without FlashAttention 4
    assert picked == ["int8_fp8"]
    kernel("flash4", refuses=lambda q, k, v, mask: "a mask" if mask is not None else None)
    attn.self_attention(q, k, v, backend="speed")
    attn.attention(q, text, text, backend="speed")
    attn.self_attention(q, k, v, mask=torch.ones(8, 8, dtype=torch.bool), backend="speed")
    assert picked == ["int8_fp8", "flash4", "flash4", "int8_fp8"]   # a masked call: the next in SPEED_ORDER
