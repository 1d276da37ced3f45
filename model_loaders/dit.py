"""Diffusion-transformer loading: file → identified family and spec → module in the cache, behind a `DiTHandle`."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from .. import runtime
from ..handles import DiTHandle
from ..models.common.family import DiTFamily
from .build import COMPUTE_DTYPES, materialize, resolve_compute_dtype
from .checkpoint import Checkpoint, open_checkpoint
from .core import load, register_builder, stamps
from .identify import expect

WEIGHT_DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e4m3fn_scaled", "fp8_e4m3fn_channel")
COMPUTE_DTYPE_CHOICES = ("auto",) + tuple(COMPUTE_DTYPES)
SUPPORTED = "supported: Wan2.1, Wan2.2, SkyReels-V2, HunyuanVideo T2V (official, ComfyUI or diffusers layouts)"


def inspect_dit(path: str | Path) -> tuple[DiTFamily, Checkpoint, DiTHandle]:
    """Read headers only: what the checkpoint is. Raises a clear error for anything that is not a supported DiT."""
    ckpt = open_checkpoint(path)
    family = expect(ckpt, "dit", SUPPORTED).family
    normalized = family.normalize(ckpt)
    handle = DiTHandle(family.describe(normalized), tuple(str(f) for f in ckpt.files), stamps(ckpt.files),
                       "auto", "auto")
    return family, normalized, handle


def load_dit(path: str | Path, weight_dtype: str = "auto", compute_dtype: str = "auto") -> DiTHandle:
    """Detect and load a DiT into the module cache (on the offload device); return its handle."""
    if weight_dtype not in WEIGHT_DTYPE_CHOICES or compute_dtype not in COMPUTE_DTYPE_CHOICES:
        raise ValueError(f"weight_dtype must be one of {WEIGHT_DTYPE_CHOICES}, compute_dtype one of "
                         f"{COMPUTE_DTYPE_CHOICES}")
    family, ckpt, handle = inspect_dit(path)
    handle = DiTHandle(handle.spec, handle.files, handle.file_stamp, weight_dtype,
                       resolve_compute_dtype(compute_dtype, runtime.torch_device()))
    return load(handle, lambda: _build(family, ckpt, handle))


def _build(family: DiTFamily, ckpt: Checkpoint, handle: DiTHandle) -> nn.Module:
    return materialize(lambda ops: family.build(handle.spec, ops), ckpt, weight_dtype=handle.weight_dtype,
                       compute_dtype=handle.compute_dtype, device=runtime.offload_device(),
                       fp32_params=family.fp32_params)


def _rebuild(handle: DiTHandle) -> nn.Module:
    family, ckpt, _ = inspect_dit(handle.files[0])
    return _build(family, ckpt, handle)


register_builder(DiTHandle.kind, _rebuild)
