"""Registers the one-pass kernels of speed/norm_kernel.py (residual + LayerNorm, RMSNorm + RoPE) for CUDA tensors
where Triton imports.

`models.common.norms.residual_norm` and `rms_norm_rope` then run them on a CUDA GPU, eager or compiled: each kernel
is an opaque custom op, so a compiled block calls it as it is rather than tracing into it. Where a kernel cannot
run (a Triton that cannot build for this GPU), the same values come from torch's kernels, with one warning.
"""
from __future__ import annotations

import importlib.util
import logging
from typing import Callable, Optional

import torch
from torch import Tensor

from ..models.common.norms import register_fused, unfused_residual_norm, unfused_rms_norm_rope
from .custom_ops import opaque

log = logging.getLogger(__name__)
_FAILED: list[str] = []   # why the kernels could not run here: then torch's


def _one_pass(name: str, unfused: Callable, *args):
    if not _FAILED:
        try:
            from . import norm_kernel
            return getattr(norm_kernel, name)(*args)
        except Exception as exc:  # noqa: BLE001  (any build or launch failure: the same values come from torch)
            _FAILED.append(f"{type(exc).__name__}: {exc}")
            log.warning("OpenReel: the one-pass norm kernels cannot run here (%s); using torch's kernels",
                        _FAILED[0])
    return unfused(*args)


def _add_layer_norm(x: Tensor, y: Tensor, gate: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor],
                    shift: Optional[Tensor], scale: Optional[Tensor], eps: float,
                    dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return _one_pass("add_layer_norm", unfused_residual_norm, x, y, gate, weight, bias, shift, scale, eps, dtype)


def _layer_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], shift: Optional[Tensor],
                scale: Optional[Tensor], eps: float, dtype: torch.dtype) -> Tensor:
    return _one_pass("add_layer_norm", unfused_residual_norm, x, None, None, weight, bias, shift, scale, eps,
                     dtype)[1]


def _rms_norm_rope(x: Tensor, weight: Tensor, eps: float, cos: Tensor, sin: Tensor, heads: int) -> Tensor:
    return _one_pass("rms_norm_rope", unfused_rms_norm_rope, x, weight, eps, cos, sin, heads)


_ADD_NORM = opaque("add_layer_norm", _add_layer_norm, lambda x, y, *rest: (
    torch.empty_like(x, dtype=torch.float32), torch.empty_like(x, dtype=rest[-1])))
_NORM = opaque("layer_norm_modulate", _layer_norm, lambda x, *rest: torch.empty_like(x, dtype=rest[-1]))
_RMS_ROPE = opaque("rms_norm_rope", _rms_norm_rope,
                    lambda x, weight, eps, cos, sin, heads: torch.empty_like(x).unflatten(2, (heads, -1)))


# Eager calls go to the kernels directly: the custom ops are for torch.compile, which must not trace into Triton.
def residual_norm(x: Tensor, y: Tensor | None, gate, weight, bias, shift, scale, eps: float, dtype: torch.dtype):
    """`norms.residual_norm`'s work in one kernel: (new stream or None, normed input)."""
    if not torch.compiler.is_compiling():
        return _one_pass("add_layer_norm", unfused_residual_norm, x, y, gate, weight, bias, shift, scale, eps, dtype)
    if y is None:
        return None, _NORM(x, weight, bias, shift, scale, eps, dtype)
    return _ADD_NORM(x, y, gate, weight, bias, shift, scale, eps, dtype)


def rms_norm_rope(x: Tensor, weight: Tensor, eps: float, cos: Tensor, sin: Tensor, heads: int) -> Tensor:
    """`norms.rms_norm_rope`'s work in one kernel."""
    if not torch.compiler.is_compiling():
        return _one_pass("rms_norm_rope", unfused_rms_norm_rope, x, weight, eps, cos, sin, heads)
    return _RMS_ROPE(x, weight, eps, cos, sin, heads)


if importlib.util.find_spec("triton") is not None:
    register_fused("residual_norm", "cuda", residual_norm)
    register_fused("rms_norm_rope", "cuda", rms_norm_rope)
