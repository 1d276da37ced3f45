"""Norms the DiTs share, and the residual update fused with the next norm and its modulation."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .embeddings import apply_rope_interleaved


class RMSNorm(nn.Module):
    """RMS norm over the last dimension, computed in float32 and returned in the input's dtype: Wan's q/k norms (over
    the whole width, all heads together) and HunyuanVideo's (over each head's channels)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS norm over the last dimension in float32, returned in x's dtype."""
    return F.rms_norm(x.float(), x.shape[-1:], weight.float(), eps).to(x.dtype)


def layer_norm(x: torch.Tensor, eps: float, norm: nn.LayerNorm | None = None) -> torch.Tensor:
    """LayerNorm over the last dimension in float32 (with `norm`'s affine weights, or none), as the official DiTs
    compute their block norms."""
    if norm is None:
        return F.layer_norm(x.float(), x.shape[-1:], eps=eps)
    return F.layer_norm(x.float(), x.shape[-1:], norm.weight.float(), norm.bias.float(), eps)


# (operation, device type) → a one-pass kernel for it (registered by speed/fused_norms.py): "residual_norm" and
# "rms_norm_rope", each taking its `unfused_…` function's arguments and giving its result
_FUSED: dict[tuple[str, str], Callable] = {}


def register_fused(operation: str, device_type: str, kernel: Callable | None) -> None:
    """`kernel` serves `operation` on tensors of that device type (float32 streams for "residual_norm"); None
    removes it."""
    if kernel is None:
        _FUSED.pop((operation, device_type), None)
    else:
        _FUSED[(operation, device_type)] = kernel


def _groups(t: torch.Tensor | None, b: int, d: int) -> torch.Tensor | None:
    """A modulation or gate vector [B, D], [B, G, D] or [B, G, 1, D] as [B, G, D] (G groups of consecutive
    tokens)."""
    return None if t is None else t.reshape(b, -1, d)


def _per_group(v: torch.Tensor, t: torch.Tensor, op: Callable) -> torch.Tensor:
    b, length, d = v.shape
    return op(v.view(b, t.shape[1], -1, d), t.unsqueeze(2)).view(b, length, d)


def unfused_residual_norm(x: torch.Tensor, y: torch.Tensor | None, gate: torch.Tensor | None,
                          weight: torch.Tensor | None, bias: torch.Tensor | None, shift: torch.Tensor | None,
                          scale: torch.Tensor | None, eps: float, dtype: torch.dtype
                          ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """`residual_norm`'s work in plain torch, with the kernels' arguments (gate and modulation [B, G, D])."""
    stream = None
    if y is not None:   # new tensors updated in place: no more temporaries alive than the sum and the norm
        stream = y.to(torch.float32, copy=True) if gate is None else _per_group(y.float(), gate, torch.mul)
        x = stream.add_(x)
    h = F.layer_norm(x.float(), x.shape[-1:], None if weight is None else weight.float(),
                     None if bias is None else bias.float(), eps)
    if shift is not None:
        _per_group(_per_group(h, 1 + scale, torch.Tensor.mul_), shift, torch.Tensor.add_)
    return stream, h.to(dtype)


def residual_norm(x: torch.Tensor, y: torch.Tensor | None = None, gate: torch.Tensor | None = None, *, eps: float,
                  norm: nn.LayerNorm | None = None, shift: torch.Tensor | None = None,
                  scale: torch.Tensor | None = None, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A sub-layer's output y added into the residual stream x (times `gate`, in float32), and the next sub-layer's
    input: the LayerNorm of the new stream with `norm`'s affine weights, or modulated (·(1 + scale) + shift), in
    `dtype`. Returns (stream, input); without y the stream is x itself. Gate and modulation: [B, D] per sample or
    [B, G, (1,) D] per group of consecutive tokens.

    On a GPU with Triton, a float32 stream goes through one kernel (speed/norm_kernel.py) that reads and writes it
    once; its values are `unfused_residual_norm`'s within float32 rounding."""
    b, _, d = x.shape
    gate, shift, scale = (_groups(t, b, d) for t in (gate, shift, scale))
    weight, bias = (None, None) if norm is None else (norm.weight, norm.bias)
    kernel = _FUSED.get(("residual_norm", x.device.type))
    if kernel is None or x.dtype != torch.float32 or not x.is_contiguous() or (y is not None
                                                                              and not y.is_contiguous()):
        kernel = unfused_residual_norm
    stream, h = kernel(x, y, gate, weight, bias, shift, scale, eps, dtype)
    return (x if stream is None else stream), h


def unfused_rms_norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor,
                          heads: int) -> torch.Tensor:
    """`rms_norm_rope`'s work in plain torch."""
    return apply_rope_interleaved(rms_norm(x, weight, eps).unflatten(2, (heads, -1)), cos, sin)


def rms_norm_rope(linear: nn.Module, x: torch.Tensor, norm: RMSNorm, rope: tuple[torch.Tensor, torch.Tensor],
                  heads: int) -> torch.Tensor:
    """Queries or keys: `linear`(x) [B, L, D] under `norm` (over the whole width, rounded to the projection's
    dtype, as `RMSNorm`), split into heads and rotated by `rope` (cos, sin [L, 1, head_dim / 2], adjacent channel
    pairs): [B, L, heads, head_dim]. On a GPU with Triton, one kernel (speed/norm_kernel.py) reads the projection
    once and writes the result once; its values are `unfused_rms_norm_rope`'s within float32 rounding."""
    y = linear(x)
    cos, sin = rope
    kernel = _FUSED.get(("rms_norm_rope", y.device.type))
    if kernel is not None and y.is_contiguous() and cos.stride(-1) == 1 and sin.stride(-1) == 1:
        return kernel(y, norm.weight, norm.eps, cos, sin, heads)
    normed = norm(y)
    del y   # not needed under RoPE: one activation less at the self-attention's peak
    return apply_rope_interleaved(normed.unflatten(2, (heads, -1)), cos, sin)
