"""Layers the text encoders share."""
from __future__ import annotations

import torch
import torch.nn as nn


class RMSNorm(nn.Module):
    """x / rms(x) · weight: no mean subtraction, no bias, statistics in float32 (T5's layer norm, Llama's RMSNorm).

    The normalized activations are cast to the weight's dtype before the product: every encoder parameter takes the
    compute dtype, which is the activations' dtype, as in the reference models."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * x.to(self.weight.dtype)
