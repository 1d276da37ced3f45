"""SageAttention 2's Hopper kernel (optional: not on PyPI, built from its sources) on a CUDA GPU against fp32
attention, at the shapes our backend would give it: odd key counts (I2V's 257 CLIP keys, 1001), text keys, head
dims 128 and 64, random and real-distribution inputs. Odd key counts err no more than the others: SageAttention 2
masks the last key block (1.0.6 weighs its padding into the softmax), so OpenReel's "sage" backend takes any key
count from it.

Skipped without a Hopper GPU or without SageAttention 2. Run: `python -m pytest tests/gpu/test_sage2_cuda.py -v -s`.
"""
import pytest
import torch

from attention_inputs import SHAPES, errors, inputs, reference

try:
    from sageattention import sageattn_qk_int8_pv_fp8_cuda_sm90
except Exception:  # noqa: BLE001  (absent, or built for another GPU)
    sageattn_qk_int8_pv_fp8_cuda_sm90 = None

pytestmark = pytest.mark.skipif(
    sageattn_qk_int8_pv_fp8_cuda_sm90 is None or not torch.cuda.is_available()
    or torch.cuda.get_device_capability() != (9, 0), reason="needs a Hopper GPU and SageAttention 2")

# Issue 14's cosine bound. Relative error: as for our own INT8 + FP8 kernel on random inputs; on real-distribution ones
# SageAttention 2 errs up to 3.4% (H200, 2026-11-30) where ours errs up to 2.5% (its own test holds it to 3.5%).
BOUNDS = {"random": (4.5e-2, 0.999), "real": (4e-2, 0.999)}


@pytest.mark.parametrize("kind", ["random", "real"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_matches_fp32_attention(shape, kind):
    q, k, v = inputs(*SHAPES[shape], kind, torch.bfloat16, "cuda")
    out = sageattn_qk_int8_pv_fp8_cuda_sm90(q, k, v, tensor_layout="NHD", pv_accum_dtype="fp32+fp32")
    e = errors(out, reference(q, k, v))
    rel, cos = BOUNDS[kind]
    print(f"\n{shape} {kind}: rel {e['rel']:.4f} cos {e['cos']:.6f}")
    assert e["finite"] and e["rel"] <= rel and e["cos"] >= cos, e
