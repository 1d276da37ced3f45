"""Diffusion-transformer loading: file → identified family and spec → module in the cache, behind a `DiTHandle`."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from .. import runtime
from ..errors import InputError
from ..handles import DiTHandle
from ..models.common.family import DiTFamily
from ..models.registry import dit_families
from .build import COMPUTE_DTYPES, materialize, resolve_compute_dtype
from .checkpoint import Checkpoint, open_checkpoint
from .core import load, register_builder, stamps
from .identify import expect

WEIGHT_DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e4m3fn_scaled", "fp8_e4m3fn_channel")
COMPUTE_DTYPE_CHOICES = ("auto",) + tuple(COMPUTE_DTYPES)
SUPPORTED = ("supported: Wan2.1, Wan2.2, SkyReels-V2, HunyuanVideo T2V, Step-Video-T2V and -Turbo (official, "
             "ComfyUI or diffusers layouts)")


def recipe_choices() -> tuple[str, ...]:
    """"auto" and every family's recipes a person picks (models whose weights cannot tell them apart)."""
    return ("auto",) + tuple(title for family in dit_families() for title in family.recipes())


def inspect_dit(path: str | Path) -> tuple[DiTFamily, Checkpoint, DiTHandle]:
    """Read headers only: what the checkpoint is. Raises a clear error for anything that is not a supported DiT."""
    ckpt = open_checkpoint(path)
    family = expect(ckpt, "dit", SUPPORTED).family
    normalized = family.normalize(ckpt)
    handle = DiTHandle(family.describe(normalized), tuple(str(f) for f in ckpt.files), stamps(ckpt.files),
                       "auto", "auto")
    return family, normalized, handle


def load_dit(path: str | Path, weight_dtype: str = "auto", compute_dtype: str = "auto",
             recipe: str = "auto") -> DiTHandle:
    """Detect and load a DiT into the module cache (on the offload device); return its handle. `recipe`: one of
    `recipe_choices()` for a model whose weights do not say which it is (its defaults follow), or "auto"."""
    if weight_dtype not in WEIGHT_DTYPE_CHOICES or compute_dtype not in COMPUTE_DTYPE_CHOICES:
        raise ValueError(f"weight_dtype must be one of {WEIGHT_DTYPE_CHOICES}, compute_dtype one of "
                         f"{COMPUTE_DTYPE_CHOICES}")
    family, ckpt, handle = inspect_dit(path)
    spec = handle.spec
    if recipe != "auto":
        if recipe not in family.recipes():
            raise InputError(f"recipe {recipe!r} does not apply to {spec.description}",
                             f"set recipe to auto{_recipes_of(family)}")
        spec = family.with_variant(spec, family.recipes()[recipe])
    handle = DiTHandle(spec, handle.files, handle.file_stamp, weight_dtype,
                       resolve_compute_dtype(compute_dtype, runtime.torch_device()))
    return load(handle, lambda: _build(family, ckpt, handle))


def _recipes_of(family: DiTFamily) -> str:
    titles = tuple(family.recipes())
    return f" or one of {', '.join(titles)}" if titles else ""


def _build(family: DiTFamily, ckpt: Checkpoint, handle: DiTHandle) -> nn.Module:
    return materialize(lambda ops: family.build(handle.spec, ops), ckpt, weight_dtype=handle.weight_dtype,
                       compute_dtype=handle.compute_dtype, device=runtime.offload_device(),
                       fp32_params=family.fp32_params)


def _rebuild(handle: DiTHandle) -> nn.Module:
    family, ckpt, _ = inspect_dit(handle.files[0])
    return _build(family, ckpt, handle)


register_builder(DiTHandle.kind, _rebuild)
