"""Child process of tests/test_fused_norms.py: runs the one-pass residual + LayerNorm kernel (speed/norm_kernel.py)
through Triton's CPU interpreter (chosen before any kernel is defined) against torch's kernels, and a tiny Wan DiT
with the kernel serving its CPU blocks (eager and compiled) against the same DiT without it. Prints one JSON line
per case."""
import json
import sys
from pathlib import Path

import torch

# (name, batch, tokens, dim, groups, add, gate, norm, modulate, y dtype, out dtype)
CASES = [
    ("add, gate, modulate per sample", 2, 12, 40, 1, True, True, None, True, "bfloat16", "bfloat16"),
    ("add, affine norm", 1, 9, 48, 1, True, False, "affine", False, "bfloat16", "bfloat16"),
    ("modulate per frame, no add", 2, 12, 40, 3, False, False, None, True, None, "bfloat16"),
    ("add, gate, modulate per token, float32", 1, 6, 32, 6, True, True, None, True, "float32", "float32"),
    ("add, plain norm, float16", 1, 5, 24, 1, True, False, None, False, "float16", "float16"),
]

# (name, batch, tokens, heads, head dim, dtype)
ROPE_CASES = [
    ("q/k norm + RoPE, bfloat16", 2, 10, 3, 8, "bfloat16"),
    ("q/k norm + RoPE, width not a power of 2", 1, 7, 5, 8, "bfloat16"),
    ("q/k norm + RoPE, float32", 1, 6, 2, 16, "float32"),
]


def _errors(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.float(), b.float()
    return {"rel": ((a - b).norm() / b.norm()).item(), "equal_fraction": (a == b).float().mean().item(),
            "max_abs": (a - b).abs().max().item()}


def _case(case) -> dict:
    from openreel.models.common.norms import unfused_residual_norm
    from openreel.speed.norm_kernel import add_layer_norm

    name, b, length, d, groups, add, gate, norm, modulate, y_dtype, out_dtype = case
    torch.manual_seed(len(name))
    x = torch.randn(b, length, d) * 3 + 0.5
    y = torch.randn(b, length, d).to(getattr(torch, y_dtype)) if add else None
    mod = torch.randn(b, groups, 1, 6, d).unbind(3)          # strided views, as the blocks pass them
    g, shift, scale = ((m.reshape(b, groups, d) if want else None)
                       for m, want in ((mod[0], gate), (mod[1], modulate), (mod[2], modulate)))
    weight, bias = (torch.randn(d), torch.randn(d)) if norm else (None, None)
    args = (x, y, g, weight, bias, shift, scale, 1e-6, getattr(torch, out_dtype))
    stream, h = add_layer_norm(*args)
    ref_stream, ref_h = unfused_residual_norm(*args)
    out = {"name": name, "h": _errors(h, ref_h), "h_dtype": str(h.dtype), "stream_none": stream is None}
    if add:
        out["stream"] = _errors(stream, ref_stream)
        out["stream_dtype"] = str(stream.dtype)
    return out


def _rope_case(case) -> dict:
    from openreel.models.common.embeddings import axial_rope_angles, rope_cos_sin
    from openreel.models.common.norms import unfused_rms_norm_rope
    from openreel.speed.norm_kernel import rms_norm_rope

    name, b, length, heads, head_dim, dtype = case
    torch.manual_seed(len(name))
    x = (torch.randn(b, length, heads * head_dim) * 2).to(getattr(torch, dtype))
    weight = torch.randn(heads * head_dim)
    cos, sin = rope_cos_sin(axial_rope_angles((length,), (head_dim,), 10000.0))
    out = rms_norm_rope(x, weight, 1e-6, cos, sin, heads)
    ref = unfused_rms_norm_rope(x, weight, 1e-6, cos, sin, heads)
    return {"name": name, "out": _errors(out, ref), "shape": list(out.shape), "dtype": str(out.dtype)}


def _wan() -> list[dict]:
    """A tiny Wan DiT (per-sample and per-frame timesteps) with the kernel serving CPU streams, against torch's."""
    from openreel.models.common import norms
    from openreel.models.wan.model import WanConfig, WanDiT
    from openreel.speed import fused_norms

    torch.manual_seed(0)
    cfg = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32)
    model = WanDiT(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    latents, text = torch.randn(1, 16, 2, 8, 8), torch.randn(1, 512, 32)
    rows = []
    with torch.no_grad():
        for label, t in (("per sample", torch.tensor([700.0])), ("per frame", torch.tensor([[700.0, 300.0]]))):
            ref = model(latents, t, text)
            norms.register_fused("residual_norm", "cpu", fused_norms.residual_norm)
            norms.register_fused("rms_norm_rope", "cpu", fused_norms.rms_norm_rope)
            try:
                eager = model(latents, t, text)
                compiled = torch.compile(model, backend="aot_eager", fullgraph=False)(latents, t, text)
            finally:
                norms.register_fused("residual_norm", "cpu", None)
                norms.register_fused("rms_norm_rope", "cpu", None)
            rows.append({"name": f"Wan DiT, {label}", "eager": _errors(eager, ref),
                         "compiled_equal": torch.equal(compiled, eager), "failed": fused_norms._FAILED})
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    import triton_interpreter  # noqa: F401  (before any kernel is defined)
    import conftest  # noqa: F401  (registers this checkout as `openreel`)

    for case in CASES:
        print(json.dumps(_case(case)), flush=True)
    for case in ROPE_CASES:
        print(json.dumps(_rope_case(case)), flush=True)
    for row in _wan():
        print(json.dumps(row), flush=True)
