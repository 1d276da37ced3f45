"""Timestep sinusoids and axial rotary position embeddings shared by the video DiTs."""
from __future__ import annotations

import math

import torch


def timestep_sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[cos | sin] features of `t` (any shape) → [..., dim], computed in `dtype` then returned as float32.

    float64 is Wan's precision. float32 is HunyuanVideo's, whose code forms the frequencies as
    exp(-ln(max_period)·i/half); in float32 that differs from the power in the last bit, so that form is kept."""
    half = dim // 2
    index = torch.arange(half, dtype=dtype, device=t.device)
    if dtype == torch.float64:
        freqs = torch.pow(max_period, -index / half)
    else:
        freqs = torch.exp(-math.log(max_period) * index / half)
    angles = t.to(dtype).unsqueeze(-1) * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).float()


def axial_rope_angles(grid: tuple[int, ...], axis_dims: tuple[int, ...], theta: float,
                      device: torch.device | None = None) -> torch.Tensor:
    """Rotation angles [prod(grid), sum(axis_dims)//2] for tokens laid out row-major over `grid`.

    Axis `a` uses `axis_dims[a]` channels (pairs), frequencies theta^(-2i/axis_dims[a]), positions from 0.
    """
    per_axis = []
    for axis, (size, adim) in enumerate(zip(grid, axis_dims)):
        freqs = torch.pow(theta, -torch.arange(0, adim, 2, dtype=torch.float64, device=device) / adim)
        angles = torch.arange(size, dtype=torch.float64, device=device).unsqueeze(1) * freqs
        view = [1] * len(grid) + [adim // 2]
        view[axis] = size
        per_axis.append(angles.view(view).expand(*grid, adim // 2))
    return torch.cat(per_axis, dim=-1).reshape(-1, sum(axis_dims) // 2)


def rope_cos_sin(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 cos/sin tables [L, 1, D/2] (broadcast over heads) from `axial_rope_angles`."""
    return torch.cos(angles).float().unsqueeze(1), torch.sin(angles).float().unsqueeze(1)


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (x0, x1) of x [B, L, H, D] by the angles; computed in float32."""
    pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)
