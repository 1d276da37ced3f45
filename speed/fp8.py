"""FP8 weights: quantization at load (per-tensor or per-output-channel scales) and FP8 matrix products.

Storage: `quantize_weight` maps a float weight to float8_e4m3fn with a scale chosen so its largest magnitude (in
the whole tensor, or in each output row) lands on the format's largest value, 448. e4m3 is a floating-point
format (3 mantissa bits: relative rounding ≤ 2⁻⁴ anywhere in its normal range), so a scale shared with a row of
much larger weights costs the other rows precision only where it pushes them into the subnormal range; a
per-channel scale never does.

Compute: `CastLinear` upcasts the fp8 weight to the compute dtype for each call (exact product of the stored
values). The "fp8_matmul" patch instead quantizes the activations to fp8 as well (one scale per row of tokens,
"row", or one for the whole input, "tensor") and multiplies with `torch._scaled_mm` on GPUs of compute
capability 8.9 and above: 1.56x the bf16 rate measured for the product itself (H200, 32760×5120×5120). The
activation quantization costs three elementwise passes in eager mode; a compiled block fuses them (regional
compile: 1.45-1.68x over bf16 for the whole linear layer, 1.05-1.37x eager). A call the kernel cannot take (CPU,
an older GPU, fp32 compute, widths not multiples of 16, a non-e4m3fn weight) runs the upcast path, logged once.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ..memory.patches import register_patch
from ..models.common.ops import register_linear_kernel

log = logging.getLogger(__name__)

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
WEIGHT_GRANULARITIES = ("tensor", "channel")
ACTIVATION_GRANULARITIES = ("row", "tensor")
_TINY = 1e-12  # scale floor: an all-zero weight quantizes to zeros instead of 0/0


def quantize_weight(w: torch.Tensor, granularity: str = "tensor",
                    dtype: torch.dtype = E4M3) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float weight → (fp8 weight, fp32 scale of shape () or [out, 1]) with w ≈ q · scale."""
    if granularity not in WEIGHT_GRANULARITIES:
        raise ValueError(f"weight scale granularity must be one of {WEIGHT_GRANULARITIES}, not {granularity!r}")
    limit = torch.finfo(dtype).max
    w = w.float()
    amax = w.abs().amax() if granularity == "tensor" else w.abs().amax(dim=1, keepdim=True)
    scale = (amax / limit).clamp(min=_TINY)
    return (w / scale).clamp(-limit, limit).to(dtype), scale


def quantize_activations(x: torch.Tensor, granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] activations → (e4m3 values, fp32 scale [M, 1] for "row" or () for "tensor")."""
    dims = {"dim": 1, "keepdim": True} if granularity == "row" else {}
    amax = torch.linalg.vector_norm(x, ord=float("inf"), **dims)
    # The scale is rounded to x's dtype (fp16: kept normal) so that dividing stays in x's dtype, with no float32
    # copy of x; x / scale then rounds to at most 449, below 464 where e4m3 would overflow.
    scale = (amax.float() / E4M3_MAX).clamp(min=torch.finfo(x.dtype).tiny).to(x.dtype)
    return (x / scale).to(E4M3), scale.float()


def scaled_mm_refusal(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """Why `torch._scaled_mm` cannot compute x · weightᵀ here, or None when it can."""
    if x.device.type != "cuda":
        return f"inputs on {x.device.type}, FP8 matmul needs a CUDA GPU"
    capability = torch.cuda.get_device_capability(x.device)
    if capability < (8, 9):
        return f"GPU of compute capability {capability[0]}.{capability[1]}; FP8 matmul needs 8.9 or newer"
    if weight.dtype != E4M3:
        return f"weights stored as {weight.dtype}, FP8 matmul needs float8_e4m3fn"
    if x.dtype not in (torch.bfloat16, torch.float16):
        return f"compute dtype {x.dtype}; FP8 matmul outputs bf16 or fp16"
    out_features, in_features = weight.shape
    if in_features % 16 or out_features % 16:
        return f"a {in_features}→{out_features} layer; FP8 matmul needs widths that are multiples of 16"
    if not weight.is_contiguous():
        return "a non-contiguous weight"
    return None


def scaled_linear(x: torch.Tensor, weight: torch.Tensor, scale_weight: torch.Tensor | None,
                  bias: torch.Tensor | None, activations: str) -> torch.Tensor:
    """x · (weight · scale_weight)ᵀ + bias through `torch._scaled_mm` (call `scaled_mm_refusal` first).

    Tensor-wise scaling needs both scales to be single numbers; any per-row or per-channel scale makes it the
    row-wise recipe, where the kernel takes scales of shapes [M, 1] and [1, N] (a single number is expanded).
    """
    out_features, in_features = weight.shape
    x2 = x.reshape(-1, in_features)
    xq, scale_x = quantize_activations(x2, activations)
    scale_w = torch.ones((), device=x.device) if scale_weight is None else scale_weight.float()
    if scale_x.numel() > 1 or scale_w.numel() > 1:
        scale_x = scale_x.expand(x2.shape[0], 1).contiguous()
        scale_w = scale_w.reshape(-1, 1).expand(out_features, 1).reshape(1, out_features).contiguous()
    out = torch._scaled_mm(xq, weight.t(), scale_a=scale_x, scale_b=scale_w,
                           bias=None if bias is None else bias.to(x.dtype), out_dtype=x.dtype)
    return out.reshape(*x.shape[:-1], out_features)


_LOGGED: set[str] = set()


def fp8_linear(layer: nn.Module, x: torch.Tensor, activations: str) -> torch.Tensor | None:
    """A CastLinear's output by FP8 matmul, or None (logged once per reason) where this call cannot have it."""
    reason = scaled_mm_refusal(x, layer.weight)
    if reason is None:
        return scaled_linear(x, layer.weight, layer.scale_weight, layer.bias, activations)
    if reason not in _LOGGED:
        _LOGGED.add(reason)
        log.warning("OpenReel: FP8 matmul not used (%s); those layers upcast their weights instead", reason)
    return None


def _set_fp8_matmul(module: nn.Module, activations: str | None) -> None:
    if activations is not None and activations not in ACTIVATION_GRANULARITIES:
        raise ValueError(f"fp8_matmul must be None or one of {ACTIVATION_GRANULARITIES}, not {activations!r}")
    for layer in module.modules():
        if hasattr(layer, "fp8_matmul"):
            layer.fp8_matmul = activations


register_linear_kernel("fp8", fp8_linear)
# Value: None (upcast), "row" or "tensor" (FP8 matmul with per-row / per-tensor activation scales).
register_patch("fp8_matmul", None, _set_fp8_matmul)
