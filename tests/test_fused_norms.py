"""The residual update fused with the next LayerNorm (models/common/norms.py `residual_norm`): its torch path against
the formulas written out, its dispatch to a registered kernel, the fallback when the kernel cannot run, and the
Triton kernel itself (speed/norm_kernel.py) through Triton's CPU interpreter in a child process. The same for the q/k RMSNorm + RoPE
(`rms_norm_rope`). The GPU runs of the kernels are tests/gpu/test_norm_kernel_cuda.py."""
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from openreel.models.common import norms
from openreel.speed import fused_norms

HERE = Path(__file__).parent


def _inputs(b=2, length=12, d=16, groups=3):
    torch.manual_seed(0)
    x = torch.randn(b, length, d)
    y = torch.randn(b, length, d, dtype=torch.bfloat16)
    mod = torch.randn(b, groups, 1, 3, d).unbind(3)
    return x, y, mod


def test_torch_path_is_the_formula_written_out():
    x, y, (gate, shift, scale) = _inputs()
    stream, h = norms.residual_norm(x, y, gate, eps=1e-6, shift=shift, scale=scale, dtype=torch.bfloat16)
    b, length, d = x.shape
    want = x + (y.float().view(b, 3, -1, d) * gate).view(b, length, d)
    normed = F.layer_norm(want, (d,), eps=1e-6).view(b, 3, -1, d)
    assert torch.equal(stream, want)
    assert torch.equal(h, (normed * (1 + scale) + shift).view(b, length, d).to(torch.bfloat16))


def test_affine_norm_and_no_residual():
    x, y, _ = _inputs(groups=1)
    norm = nn.LayerNorm(16, eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    stream, h = norms.residual_norm(x, y, eps=1e-6, norm=norm, dtype=torch.float32)
    assert torch.equal(stream, x + y.float()) and torch.equal(h, norm(x + y.float()))
    same, h = norms.residual_norm(x, eps=1e-6, dtype=torch.bfloat16)
    assert same is x and torch.equal(h, F.layer_norm(x, (16,), eps=1e-6).to(torch.bfloat16))


def test_per_sample_modulation_is_one_group():
    x, _, (_, shift, scale) = _inputs(groups=1)
    per_group = norms.residual_norm(x, eps=1e-6, shift=shift, scale=scale, dtype=torch.float32)[1]
    per_sample = norms.residual_norm(x, eps=1e-6, shift=shift[:, 0, 0], scale=scale[:, 0, 0], dtype=torch.float32)[1]
    assert torch.equal(per_group, per_sample)


@pytest.fixture
def kernel_on_cpu(monkeypatch):
    monkeypatch.setattr(norms, "_FUSED", {})
    calls = []

    def kernel(*args):
        calls.append(args)
        return norms.unfused_residual_norm(*args)
    norms.register_fused("residual_norm", "cpu", kernel)
    return calls


def test_a_registered_kernel_serves_float32_streams_of_its_device(kernel_on_cpu):
    x, y, (gate, shift, scale) = _inputs()
    stream, h = norms.residual_norm(x, y, gate, eps=1e-6, shift=shift, scale=scale, dtype=torch.bfloat16)
    (args,) = kernel_on_cpu
    assert args[2].shape == (2, 3, 16) and args[5].shape == (2, 3, 16)   # [B, G, D] views, not copies
    assert args[2].data_ptr() == gate.data_ptr()
    norms.register_fused("residual_norm", "cpu", None)
    assert torch.equal(norms.residual_norm(x, y, gate, eps=1e-6, shift=shift, scale=scale,
                                           dtype=torch.bfloat16)[1], h)


def test_other_streams_take_the_torch_path(kernel_on_cpu):
    x, y, _ = _inputs()
    norms.residual_norm(x.bfloat16(), y, eps=1e-6, dtype=torch.bfloat16)              # a 16-bit stream
    norms.residual_norm(x.transpose(0, 1).contiguous().transpose(0, 1), y, eps=1e-6, dtype=torch.bfloat16)
    norms.residual_norm(x, y.transpose(0, 1).contiguous().transpose(0, 1), eps=1e-6, dtype=torch.bfloat16)
    assert kernel_on_cpu == []


def test_a_kernel_that_cannot_run_falls_back_to_torch_once(monkeypatch, caplog):
    import openreel.speed as speed

    class Broken:
        @staticmethod
        def add_layer_norm(*args):
            raise RuntimeError("no compiler for this GPU")
    monkeypatch.setitem(sys.modules, "openreel.speed.norm_kernel", Broken)
    monkeypatch.setattr(speed, "norm_kernel", Broken, raising=False)
    monkeypatch.setattr(fused_norms, "_FAILED", [])
    x, y, (gate, shift, scale) = _inputs()
    args = (x, y, gate[:, :, 0], None, None, shift[:, :, 0], scale[:, :, 0], 1e-6, torch.bfloat16)
    with caplog.at_level(logging.WARNING):
        stream, h = fused_norms._one_pass("add_layer_norm", norms.unfused_residual_norm, *args)
        fused_norms._one_pass("add_layer_norm", norms.unfused_residual_norm, *args)
    want_stream, want_h = norms.unfused_residual_norm(*args)
    assert torch.equal(stream, want_stream) and torch.equal(h, want_h)
    assert fused_norms._FAILED == ["RuntimeError: no compiler for this GPU"]
    assert sum("cannot run here" in r.message for r in caplog.records) == 1


# ------------------------------------------------------------------------------------------------ the kernel
@pytest.fixture(scope="module")
def interpreted():
    pytest.importorskip("triton")
    proc = subprocess.run([sys.executable, HERE / "interpreted_norm_kernel.py"], capture_output=True, text=True,
                          timeout=900, cwd=HERE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["name"]: r for r in map(json.loads, proc.stdout.splitlines())}


def _cases(name="CASES"):
    sys.path.insert(0, str(HERE))
    import interpreted_norm_kernel
    return getattr(interpreted_norm_kernel, name)


@pytest.mark.parametrize("case", _cases(), ids=[c[0] for c in _cases()])
def test_kernel_matches_torch(interpreted, case):
    r = interpreted[case[0]]
    out_dtype = case[-1]
    assert r["h_dtype"] == f"torch.{out_dtype}" and r["stream_none"] == (not case[5])
    if out_dtype == "float32":   # float32 rounding of the mean and variance
        assert r["h"]["rel"] < 1e-6, r
    else:                        # the same 16-bit value, or one unit of its last place apart
        assert r["h"]["rel"] < 4e-3 and r["h"]["equal_fraction"] > 0.98, r
    if case[5]:
        assert r["stream_dtype"] == "torch.float32" and r["stream"]["rel"] < 1e-7, r


@pytest.mark.parametrize("case", _cases("ROPE_CASES"), ids=[c[0] for c in _cases("ROPE_CASES")])
def test_rms_norm_rope_kernel_matches_torch(interpreted, case):
    r = interpreted[case[0]]
    assert r["shape"] == [case[1], case[2], case[3], case[4]] and r["dtype"] == f"torch.{case[5]}"
    if case[5] == "float32":
        assert r["out"]["rel"] < 1e-6, r
    else:
        assert r["out"]["rel"] < 4e-3 and r["out"]["equal_fraction"] > 0.98, r


@pytest.mark.parametrize("timesteps", ["per sample", "per frame"])
def test_wan_dit_with_the_kernel_eager_and_compiled(interpreted, timesteps):
    r = interpreted[f"Wan DiT, {timesteps}"]
    assert r["failed"] == [] and r["compiled_equal"], r
    assert r["eager"]["rel"] < 1e-5, r
