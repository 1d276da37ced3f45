"""One-pass kernels (Triton) for the elementwise work between a DiT's matrix products.

`add_layer_norm`: x + gate·y on the float32 residual stream, its LayerNorm, then affine weights or modulation,
cast to the next matmul's dtype.

The blocks of Wan (and of the other families) add each sub-layer's output into the stream and normalize the result
for the next sub-layer. Left to inductor, that is a looped two-pass reduction over 5,120 channels that reads the
float32 stream twice (bench/RESULTS.md, issue 14: our LayerNorm kernels took twice diffusers' time, 1.46 ms more
per Wan-14B block at 480p). Here one program holds one token's whole row in registers: the stream is read once,
written once, and the normalized row written once in the compute dtype.

Rows are tokens of x [B, L, D] (contiguous). Modulation, gate: [B, G, D] with any strides, G groups of L / G
consecutive tokens (G = 1: one vector per sample; G = L: one per token).

`rms_norm_rope`: Wan's queries or keys, RMS-normed over the whole width and rotated pair by pair, in one pass
instead of inductor's looped reduction and a second kernel for the rotation (1.1 ms per Wan-14B block at 480p for
both, where reading and writing them once takes about 0.3).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def _configs():
    if os.environ.get("TRITON_INTERPRET") == "1":   # the CPU interpreter (tests): one configuration
        return [triton.Config({}, num_warps=4)]
    return [triton.Config({}, num_warps=w) for w in (4, 8, 16)]


@triton.autotune(configs=_configs(), key=["d", "ADD", "GATE", "AFFINE", "MODULATE"], cache_results=True)
@triton.jit
def _add_norm_kernel(x_ptr, y_ptr, gate_ptr, w_ptr, b_ptr, shift_ptr, scale_ptr, x_out_ptr, h_ptr,
                     length, per_group, d, eps, sg_b, sg_g, ssh_b, ssh_g, ssc_b, ssc_g,
                     ADD: tl.constexpr, GATE: tl.constexpr, AFFINE: tl.constexpr, MODULATE: tl.constexpr,
                     BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    b = row // length
    g = (row % length) // per_group
    cols = tl.arange(0, BLOCK)
    inside = cols < d
    x = tl.load(x_ptr + row * d + cols, mask=inside, other=0.0).to(tl.float32)
    if ADD:
        y = tl.load(y_ptr + row * d + cols, mask=inside, other=0.0).to(tl.float32)
        if GATE:
            y = y * tl.load(gate_ptr + b * sg_b + g * sg_g + cols, mask=inside, other=0.0).to(tl.float32)
        x = x + y
        tl.store(x_out_ptr + row * d + cols, x, mask=inside)
    mean = tl.sum(x, axis=0) / d
    centred = tl.where(inside, x - mean, 0.0)
    h = centred * tl.math.rsqrt(tl.sum(centred * centred, axis=0) / d + eps)
    if AFFINE:
        h = h * tl.load(w_ptr + cols, mask=inside, other=0.0).to(tl.float32) \
            + tl.load(b_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    if MODULATE:
        scale = tl.load(scale_ptr + b * ssc_b + g * ssc_g + cols, mask=inside, other=0.0).to(tl.float32)
        shift = tl.load(shift_ptr + b * ssh_b + g * ssh_g + cols, mask=inside, other=0.0).to(tl.float32)
        h = h * (1 + scale) + shift
    tl.store(h_ptr + row * d + cols, h.to(h_ptr.dtype.element_ty), mask=inside)


def _strides(t: torch.Tensor | None) -> tuple[int, int]:
    return (0, 0) if t is None else (t.stride(0), t.stride(1))


def add_layer_norm(x: torch.Tensor, y: torch.Tensor | None, gate: torch.Tensor | None, weight: torch.Tensor | None,
                   bias: torch.Tensor | None, shift: torch.Tensor | None, scale: torch.Tensor | None, eps: float,
                   dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(x + gate·y in float32, or None without y; LayerNorm of it with weight/bias or shift/scale, in dtype).
    x, y [B, L, D] contiguous; gate, shift, scale [B, G, D]; weight, bias [D]."""
    x, y = x.contiguous(), (None if y is None else y.contiguous())
    b, length, d = x.shape
    groups = next((t.shape[1] for t in (gate, shift) if t is not None), 1)
    x_out = torch.empty(x.shape, dtype=torch.float32, device=x.device) if y is not None else None
    h = torch.empty(x.shape, dtype=dtype, device=x.device)
    if x.numel():
        with torch.cuda.device(x.device.index if x.is_cuda else -1):   # Triton launches on the current device
            _add_norm_kernel[(b * length,)](
                x, y if y is not None else x, gate if gate is not None else x, weight if weight is not None else x,
                bias if bias is not None else x, shift if shift is not None else x, scale if scale is not None else x,
                x_out if x_out is not None else h, h, length, length // groups, d, eps,
                *_strides(gate), *_strides(shift), *_strides(scale),
                ADD=y is not None, GATE=gate is not None, AFFINE=weight is not None, MODULATE=shift is not None,
                BLOCK=triton.next_power_of_2(d))
    return x_out, h


@triton.autotune(configs=_configs(), key=["d", "half_head"], cache_results=True)
@triton.jit
def _rms_norm_rope_kernel(x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, length, d, half_head, s_cos, s_sin, eps,
                          BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    t = row % length
    cols = tl.arange(0, BLOCK)
    inside = cols < d
    x = tl.load(x_ptr + row * d + cols, mask=inside, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    normed = x * tl.math.rsqrt(tl.sum(x * x, axis=0) / d + eps) * w
    normed = normed.to(out_ptr.dtype.element_ty).to(tl.float32)   # the norm's output dtype, as RMSNorm gives it
    even, odd = tl.split(tl.reshape(normed, [BLOCK // 2, 2]))
    pair = tl.arange(0, BLOCK // 2)
    angle = pair % half_head
    cos = tl.load(cos_ptr + t * s_cos + angle, mask=pair < d // 2, other=0.0)
    sin = tl.load(sin_ptr + t * s_sin + angle, mask=pair < d // 2, other=0.0)
    out = tl.interleave(even * cos - odd * sin, even * sin + odd * cos)
    tl.store(out_ptr + row * d + cols, out.to(out_ptr.dtype.element_ty), mask=inside)


def rms_norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor,
                  heads: int) -> torch.Tensor:
    """x [B, L, D] RMS-normed over D (weight [D]), rounded to x's dtype, rotated by cos/sin [L, 1, D / heads / 2]
    (channel pairs of each head): [B, L, heads, D / heads] in x's dtype."""
    x = x.contiguous()
    b, length, d = x.shape
    out = torch.empty_like(x)
    if x.numel():
        with torch.cuda.device(x.device.index if x.is_cuda else -1):
            _rms_norm_rope_kernel[(b * length,)](x, weight, cos, sin, out, length, d, d // heads // 2, cos.stride(0),
                                                 sin.stride(0), eps, BLOCK=triton.next_power_of_2(d))
    return out.unflatten(2, (heads, -1))
