"""Our 8-bit attention (speed/int8_attention.py) on a CUDA GPU against fp32 attention: Wan shapes, random and
real-distribution inputs (tests/attention_inputs.py), odd key counts, block-causal masks, through the backend
dispatch and under torch.compile.

Skipped without CUDA; FP8 P·V needs compute capability 8.9+ (RTX 40xx, H100), INT8 with 16-bit P·V 8.0+.
Run: `python -m pytest tests/gpu/test_int8_attention_cuda.py -v -s` (-s prints the measured errors).
"""
import pytest
import torch

from attention_inputs import SHAPES, block_causal, errors, inputs, reference
from openreel.models.common import attention as attn
from openreel.speed import attention_backends  # noqa: F401  (registers the backends)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                                reason="needs a CUDA GPU of compute capability 8.9+")

# Bounds per call against fp32 attention. FP8 P·V rounds P and V to 3 mantissa bits: flat random attention (its
# output a cancellation of thousands of values) is the worst case. "real": keys with channel offsets and outliers.
BOUNDS = {"fp8": {"random": (4.5e-2, 0.999), "real": (3.5e-2, 0.9995)},
          "16bit": {"random": (1.5e-2, 0.9998), "real": (3e-2, 0.9995)}}


def _check(name, out, ref, pv, kind):
    e = errors(out, ref)
    rel, cos = BOUNDS[pv][kind]
    print(f"\n{name} {pv} {kind}: rel {e['rel']:.4f} cos {e['cos']:.6f}")
    assert e["finite"] and e["rel"] <= rel and e["cos"] >= cos, e


@pytest.mark.parametrize("pv", ["fp8", "16bit"])
@pytest.mark.parametrize("kind", ["random", "real"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_matches_fp32_attention(shape, kind, pv):
    from openreel.speed.int8_attention import int8_attention

    q, k, v = inputs(*SHAPES[shape], kind, torch.bfloat16, "cuda")
    _check(shape, int8_attention(q, k, v, None, pv), reference(q, k, v), pv, kind)


@pytest.mark.parametrize("layout", ["2d", "4d"])
def test_block_causal_masks(layout):
    from openreel.speed.int8_attention import int8_attention

    q, k, v = inputs(2, 3120, 3120, 4, 128, "real", torch.bfloat16, "cuda")
    mask = block_causal(3120, 3120, 4, "cuda")
    if layout == "4d":
        mask = torch.stack([mask, block_causal(3120, 3120, 2, "cuda")])[:, None]
    _check(f"block-causal {layout}", int8_attention(q, k, v, mask, "fp8"), reference(q, k, v, mask), "fp8", "real")


def test_through_the_dispatch_compiled_and_not():
    q, k, v = inputs(1, 4680, 4680, 4, 128, "real", torch.bfloat16, "cuda")
    eager = attn.self_attention(q, k, v, backend="int8_fp8:error")
    compiled = torch.compile(lambda a, b, c: attn.self_attention(a, b, c, backend="int8_fp8:error"), fullgraph=True)
    assert torch.equal(compiled(q, k, v), eager)
    _check("dispatch", eager, reference(q, k, v), "fp8", "real")
    text = torch.randn(1, 512, 4, 128, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(attn.attention(q, text, text, backend="int8_fp8:error"), attn._sdpa(q, text, text, None))
