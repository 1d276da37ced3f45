"""Registers the one-pass residual + LayerNorm kernel (speed/norm_kernel.py) for CUDA streams where Triton imports.

`models.common.norms.residual_norm` then runs it for every float32 residual stream on a CUDA GPU, eager or compiled:
the kernel is an opaque custom op, so a compiled block calls it as it is rather than tracing into it.
"""
from __future__ import annotations

import importlib.util
import logging
from typing import Optional

import torch
from torch import Tensor

from ..models.common.norms import register_fused_norm, unfused_residual_norm

log = logging.getLogger(__name__)
_FAILED: list[str] = []   # why the kernel could not run here (a Triton that cannot build for this GPU): then torch


def _one_pass(*args):
    if not _FAILED:
        try:
            from .norm_kernel import add_layer_norm
            return add_layer_norm(*args)
        except Exception as exc:  # noqa: BLE001  (any build or launch failure: the same values come from torch)
            _FAILED.append(f"{type(exc).__name__}: {exc}")
            log.warning("OpenReel: the one-pass norm kernel cannot run here (%s); using torch's kernels", _FAILED[0])
    return unfused_residual_norm(*args)


def _add_layer_norm(x: Tensor, y: Tensor, gate: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor],
                    shift: Optional[Tensor], scale: Optional[Tensor], eps: float,
                    dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return _one_pass(x, y, gate, weight, bias, shift, scale, eps, dtype)


def _layer_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], shift: Optional[Tensor],
                scale: Optional[Tensor], eps: float, dtype: torch.dtype) -> Tensor:
    return _one_pass(x, None, None, weight, bias, shift, scale, eps, dtype)[1]


def _opaque(name: str, fn, fake):
    """`fn` as the custom op openreel::name; a second copy of this module in the process finds it made."""
    if hasattr(torch.ops.openreel, name):
        return getattr(torch.ops.openreel, name)
    op = torch.library.custom_op(f"openreel::{name}", fn, mutates_args=())
    op.register_fake(fake)
    return op


_ADD_NORM = _opaque("add_layer_norm", _add_layer_norm, lambda x, y, *rest: (
    torch.empty_like(x, dtype=torch.float32), torch.empty_like(x, dtype=rest[-1])))
_NORM = _opaque("layer_norm_modulate", _layer_norm, lambda x, *rest: torch.empty_like(x, dtype=rest[-1]))


def fused(x: Tensor, y: Tensor | None, gate, weight, bias, shift, scale, eps: float, dtype: torch.dtype):
    """`residual_norm`'s work in one kernel: (new stream or None, normed input)."""
    if y is None:
        return None, _NORM(x, weight, bias, shift, scale, eps, dtype)
    return _ADD_NORM(x, y, gate, weight, bias, shift, scale, eps, dtype)


if importlib.util.find_spec("triton") is not None:
    register_fused_norm("cuda", fused)
