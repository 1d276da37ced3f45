"""The one-pass kernels (speed/norm_kernel.py: residual + LayerNorm, q/k RMSNorm + RoPE) on a CUDA GPU against
torch's kernels, at Wan's widths, and a Wan DiT using them, eager and compiled with inductor, against the same DiT on
torch's kernels.

Skipped without CUDA or Triton. Run: `python -m pytest tests/gpu/test_norm_kernel_cuda.py -v -s`.
"""
import pytest
import torch

from openreel.models.common import norms

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
triton = pytest.importorskip("triton")

from openreel.speed import fused_norms  # noqa: E402  (registers the kernel)
from openreel.speed.norm_kernel import add_layer_norm, rms_norm_rope  # noqa: E402


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("dim", [1536, 3072, 5120])
@pytest.mark.parametrize("what", ["gate+modulate", "affine", "modulate only", "per frame"])
def test_kernel_matches_torch(dim, what):
    torch.manual_seed(dim)
    b, length, groups = 2, 4680, (21 if what == "per frame" else 1)
    length -= length % groups
    x = torch.randn(b, length, dim, device="cuda") * 4 + 1
    y = torch.randn(b, length, dim, device="cuda", dtype=torch.bfloat16) if what != "modulate only" else None
    gate, shift, scale = (t.reshape(b, groups, dim) for t in torch.randn(b, groups, 1, 3, dim, device="cuda").unbind(3))
    weight, bias = (torch.randn(dim, device="cuda"), torch.randn(dim, device="cuda")) if what == "affine" else (None, None)
    args = (x, y, gate if what in ("gate+modulate", "per frame") else None, weight, bias,
            None if what == "affine" else shift, None if what == "affine" else scale, 1e-6, torch.bfloat16)
    stream, h = add_layer_norm(*args)
    ref_stream, ref_h = norms.unfused_residual_norm(*args)
    e = _rel(h, ref_h)
    print(f"\n{what} D={dim}: normed rel {e:.2e}, equal {(h == ref_h).float().mean().item():.4f}")
    assert h.dtype == torch.bfloat16 and e < 4e-3 and (h == ref_h).float().mean() > 0.98
    if y is not None:
        assert stream.dtype == torch.float32 and _rel(stream, ref_stream) < 1e-7
    else:
        assert stream is None
    assert fused_norms._FAILED == []


@pytest.mark.parametrize("dim,heads", [(1536, 12), (3072, 24), (5120, 40)])
def test_rms_norm_rope_matches_torch(dim, heads):
    from openreel.models.common.embeddings import axial_rope_angles, rope_cos_sin

    torch.manual_seed(dim)
    head_dim = dim // heads
    axes = (head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6))
    cos, sin = rope_cos_sin(axial_rope_angles((5, 30, 52), axes, 10000.0, device="cuda"))
    x = torch.randn(2, 5 * 30 * 52, dim, device="cuda", dtype=torch.bfloat16) * 3
    weight = torch.randn(dim, device="cuda")
    out = rms_norm_rope(x, weight, 1e-6, cos, sin, heads)
    ref = norms.unfused_rms_norm_rope(x, weight, 1e-6, cos, sin, heads)
    e = _rel(out, ref)
    print(f"\nRMSNorm + RoPE D={dim}: rel {e:.2e}, equal {(out == ref).float().mean().item():.4f}")
    assert out.shape == ref.shape and out.dtype == torch.bfloat16 and e < 4e-3 and (out == ref).float().mean() > 0.98


@torch.no_grad()
def test_wan_dit_eager_and_compiled():
    from openreel.memory.patches import PATCHES
    from openreel.models.wan.model import WanConfig, WanDiT
    from openreel.speed.compile import CompileSettings

    torch.manual_seed(0)
    cfg = WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=4)
    model = WanDiT(cfg).cuda()   # float32 weights and compute: the differences are the kernels' alone
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    inputs = (torch.randn(1, 16, 5, 30, 52, device="cuda"), torch.tensor([700.0], device="cuda"),
              torch.randn(1, 512, 4096, device="cuda"))
    fused = model(*inputs)
    kernels = dict(norms._FUSED)
    norms._FUSED.clear()
    try:
        unfused = model(*inputs)
    finally:
        norms._FUSED.update(kernels)
    PATCHES["compile"].apply(model, CompileSettings())
    try:
        compiled = model(*inputs)
    finally:
        PATCHES["compile"].apply(model, None)
    print(f"\nWan DiT: fused vs torch {_rel(fused, unfused):.2e}, compiled vs eager {_rel(compiled, fused):.2e}")
    assert _rel(fused, unfused) < 1e-4 and _rel(compiled, fused) < 1e-4
    assert fused_norms._FAILED == []


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensors_on_a_gpu_other_than_the_current_one():
    """Triton launches on the current device: the kernels must launch on their tensors' GPU."""
    torch.manual_seed(1)
    x = torch.randn(1, 300, 1536, device="cuda:1")
    y = torch.randn(1, 300, 1536, device="cuda:1", dtype=torch.bfloat16)
    shift, scale = (t.reshape(1, 1, 1536) for t in torch.randn(1, 2, 1536, device="cuda:1").unbind(1))
    args = (x, y, None, None, None, shift, scale, 1e-6, torch.bfloat16)
    with torch.cuda.device(0):
        stream, h = add_layer_norm(*args)
    ref_stream, ref_h = norms.unfused_residual_norm(*args)
    assert h.device == torch.device("cuda:1") and _rel(h, ref_h) < 4e-3 and _rel(stream, ref_stream) < 1e-7
