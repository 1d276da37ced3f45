"""Diffusion-transformer loading: file → detected spec → module in the cache, behind a `DiTHandle`."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from .. import runtime
from ..handles import DiTHandle
from . import hunyuan, stepvideo, wan  # noqa: F401  (each registers its family)
from .build import COMPUTE_DTYPES, materialize, resolve_compute_dtype
from .cache import MODULES
from .checkpoint import Checkpoint, open_checkpoint
from .families import Family, identify

WEIGHT_DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e4m3fn_scaled", "fp8_e4m3fn_channel")
COMPUTE_DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")


def inspect_dit(path: str | Path) -> tuple[Family, Checkpoint, DiTHandle]:
    """Read headers only: what the checkpoint is. Raises a clear error for anything that is not a supported DiT."""
    ckpt = open_checkpoint(path)
    family, normalized, spec = identify(ckpt)
    stamps = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in ckpt.files)
    handle = DiTHandle(spec, tuple(str(f) for f in ckpt.files), stamps, "auto", "auto")
    return family, normalized, handle


def load_dit(path: str | Path, weight_dtype: str = "auto", compute_dtype: str = "auto") -> DiTHandle:
    """Detect and load a DiT into the module cache (on the offload device); return its handle."""
    if weight_dtype not in WEIGHT_DTYPE_CHOICES or compute_dtype not in COMPUTE_DTYPE_CHOICES:
        raise ValueError(f"weight_dtype must be one of {WEIGHT_DTYPE_CHOICES}, compute_dtype one of "
                         f"{COMPUTE_DTYPE_CHOICES}")
    family, ckpt, handle = inspect_dit(path)
    dtype = resolve_compute_dtype(compute_dtype, runtime.torch_device())
    dtype_name = next(n for n, d in COMPUTE_DTYPES.items() if d == dtype)
    handle = DiTHandle(handle.spec, handle.files, handle.file_stamp, weight_dtype, dtype_name)
    MODULES.get_or_build(handle.weights_key, lambda: _build(family, ckpt, handle))
    return handle


def dit_module(handle: DiTHandle) -> nn.Module:
    """The module behind `handle`, rebuilt from its files if the cache let it go."""
    def rebuild():
        family, ckpt, _ = inspect_dit(handle.files[0])
        return _build(family, ckpt, handle)
    return MODULES.get_or_build(handle.weights_key, rebuild)


def _build(family: Family, ckpt: Checkpoint, handle: DiTHandle) -> nn.Module:
    dtype = COMPUTE_DTYPES[handle.compute_dtype]
    module = materialize(lambda: family.build(handle.spec), ckpt, weight_dtype=handle.weight_dtype,
                         compute_dtype=dtype, device=runtime.offload_device(),
                         weight_params=family.weight_params, fp32_params=family.fp32_params)
    module.compute_dtype = dtype
    return module
