"""A linear layer stored in one dtype and computed in another: fp8 (optionally with scales) or 16-bit under fp32."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fp8 import fp8_linear

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


class CastLinear(nn.Module):
    """y = x · (W·s)ᵀ + b, with W stored as `weight` (any dtype), s as `scale_weight` (scalar or [out, 1]).

    The weight is upcast to the input's dtype for each call: memory holds the compact copy only.
    `scale_input` is kept when a file carries it (ComfyUI fp8_scaled), for FP8-matmul paths.
    `fp8_matmul` ("row" / "tensor" activation scales, set by the "fp8_matmul" patch) multiplies in FP8 instead
    where the call allows it (see memory.fp8).
    """

    fp8_matmul: str | None = None

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, scaled: bool = False,
                 input_scaled: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.register_buffer("scale_weight", torch.ones(()) if scaled else None)
        self.register_buffer("scale_input", torch.ones(()) if input_scaled else None)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        w = self.weight.to(dtype)
        if self.scale_weight is not None:
            w = w * self.scale_weight.to(dtype)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8_matmul is not None:
            out = fp8_linear(self, x, self.fp8_matmul)
            if out is not None:
                return out
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        scale = "none" if self.scale_weight is None else tuple(self.scale_weight.shape)
        return f"in={self.in_features}, out={self.out_features}, weight={self.weight.dtype}, scale={scale}"
