"""Norms the DiTs share, and the adaptive-norm modulation."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """RMS norm over the last dimension, computed in float32 and returned in the input's dtype: Wan's q/k norms (over
    the whole width, all heads together) and HunyuanVideo's (over each head's channels)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), x.shape[-1:], self.weight.float(), self.eps).to(x.dtype)


def layer_norm(x: torch.Tensor, eps: float, norm: nn.LayerNorm | None = None) -> torch.Tensor:
    """LayerNorm over the last dimension in float32 (with `norm`'s affine weights, or none), as the official DiTs
    compute their block norms."""
    if norm is None:
        return F.layer_norm(x.float(), x.shape[-1:], eps=eps)
    return F.layer_norm(x.float(), x.shape[-1:], norm.weight.float(), norm.bias.float(), eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, L, D] with one shift/scale [B, D] per sample: x·(1 + scale) + shift."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
