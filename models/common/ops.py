"""The layer classes a network is built with ("operations"): the one seam for every weight format.

A network takes an `Ops` and builds its large weight linears (attention and FFN projections) with `ops.linear`;
everything else (embeddings, norms, modulation, heads) is plain torch. The loader chooses the ops before the
network exists, so nothing is rewritten after construction:
- `PLAIN`: `nn.Linear` (reference parity, tests);
- `cast_ops(scaled)`: `CastLinear`, stored in any dtype (16-bit, fp8, fp8 with a scale per tensor or per output
  channel) and computed in the activations' dtype. Later weight formats (GGUF) are further ops.

A `CastLinear` may carry unmerged LoRA factors (`lora_down` [R, in], `lora_up` [out, R], `lora_scale` [R]: the
ranks of every LoRA on the layer side by side, each rank's strength·α/r in `lora_scale`; set and cleared by
model_loaders/lora_apply.py). They are buffers, so they move with the layer (block swap streams them with their
block) and a compiled block sees them. A call adds up·diag(scale)·down to the weight it computes with (a transient
copy, never the stored weight) where that moves fewer bytes than the low-rank product of every row, as in any
video-sized call (more rows than about 2/3 of the layer's width); else it adds ((x·downᵀ)·scale)·upᵀ to the output.

A `CastLinear` whose `fp8_matmul` is set ("row" / "tensor" activation scales; the "fp8_matmul" patch sets it)
hands its product to the linear kernel registered under "fp8" (speed/fp8.py) instead of upcasting its weight; the
kernel returns None for a call it cannot take, which then upcasts.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

LinearKernel = Callable[[nn.Module, torch.Tensor, str], "torch.Tensor | None"]
_KERNELS: dict[str, LinearKernel] = {}


def register_linear_kernel(name: str, kernel: LinearKernel) -> None:
    """`kernel(layer, x, mode)` computes a CastLinear's output another way, or returns None where it cannot."""
    _KERNELS[name] = kernel


class CastLinear(nn.Module):
    """y = x · (W·s)ᵀ + b, with W stored as `weight` (any dtype), s as `scale_weight` (scalar or [out, 1]).

    The weight is upcast to the input's dtype for each call: memory holds the compact copy only.
    """

    fp8_matmul: str | None = None

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, scaled: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.register_buffer("scale_weight", torch.ones(()) if scaled else None)
        for name in ("lora_down", "lora_up", "lora_scale"):
            self.register_buffer(name, None)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        w = self.weight.to(dtype)
        if self.scale_weight is not None:
            w = w * self.scale_weight.to(dtype)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        if self.fp8_matmul is not None and "fp8" in _KERNELS:
            out = _KERNELS["fp8"](self, x, self.fp8_matmul)
        lora = self.lora_down is not None
        if out is None:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            weight = self.dequantized_weight(x.dtype)
            if lora and self._lora_in_weight(x):
                weight, lora = torch.addmm(weight, self.lora_up.to(x.dtype), self._scaled_down(x.dtype)), False
            out = F.linear(x, weight, bias)
        if lora:
            low = F.linear(x, self._scaled_down(x.dtype))
            # the up-projection accumulates into the output inside one GEMM: no second pass over the output
            out = torch.addmm(out.flatten(0, -2), low.flatten(0, -2), self.lora_up.to(x.dtype).t()).view_as(out)
        return out

    def _scaled_down(self, dtype: torch.dtype) -> torch.Tensor:
        return self.lora_down.to(dtype) * self.lora_scale.to(dtype)[:, None]

    def _lora_in_weight(self, x: torch.Tensor) -> bool:
        """Whether adding the LoRA product to the weight (reading and writing it once) moves fewer bytes than the
        low-rank product of every row of x (reading x again, reading and writing the output once more)."""
        rows = x.numel() // max(x.shape[-1], 1)
        return rows * (self.in_features + 2 * self.out_features) > 2 * self.in_features * self.out_features

    def extra_repr(self) -> str:
        scale = "none" if self.scale_weight is None else tuple(self.scale_weight.shape)
        lora = "" if self.lora_down is None else f", lora_rank={self.lora_down.shape[0]}"
        return f"in={self.in_features}, out={self.out_features}, weight={self.weight.dtype}, scale={scale}{lora}"


@dataclass(frozen=True)
class Ops:
    """The layer classes of one build: `linear(in_features, out_features, bias=True)` makes a weight linear."""
    linear: Callable[..., nn.Module]


PLAIN = Ops(nn.Linear)


def cast_ops(scaled: bool) -> Ops:
    """Weight linears stored in any dtype; `scaled`: each carries a weight scale (fp8 with scales)."""
    return Ops(functools.partial(CastLinear, scaled=scaled))


def weight_linears(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every weight linear a network was built with `cast_ops` (the layers fp8 applies to)."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, CastLinear)]
