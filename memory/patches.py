"""Run-time patches of a loaded DiT (attention backend, block swap, compile, …): the one place they are applied.

Memory and speed nodes never touch modules: they return `handle.with_patch(name, value)`. The module behind a
handle is shared (see model_loaders.cache), so before each use `model_loaders.core.prepare(handle)` sets every
registered patch to the handle's value, or to its default when the handle has none: two handles on one module
never leak settings. Storage changes (fp8) are not patches: they are the handle's dtype fields and key the cache.
The one patch that touches weights is "lora" (model_loaders/lora_apply.py): it merges into the shared module or adds
low-rank factors, and restores the base weights exactly when the handle's LoRA stack changes, so the cache holds one
copy per base model. The others: "attention", "compile", "fp8_matmul", "block_swap", "token_chunks", "step_cache".
The modules that register patches are imported by model_loaders/core.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn

from .. import runtime


@dataclass(frozen=True)
class Patch:
    name: str
    default: Any
    apply: Callable[[nn.Module, Any], None]   # set the module up for `value` (idempotent)


PATCHES: dict[str, Patch] = {}


def register_patch(name: str, default: Any, apply: Callable[[nn.Module, Any], None]) -> None:
    PATCHES[name] = Patch(name, default, apply)


def configure(module: nn.Module, values: dict[str, Any]) -> nn.Module:
    """Set every registered patch on `module`: the given value, or the patch's default."""
    unknown = set(values) - set(PATCHES)
    if unknown:
        raise ValueError(f"unknown patches {sorted(unknown)}; registered: {sorted(PATCHES)}")
    for patch in PATCHES.values():
        patch.apply(module, values.get(patch.name, patch.default))
    return module


def load(module: nn.Module, memory_required: int) -> None:
    """Put `module` on the compute device for a run. A patch that keeps part of the model elsewhere (block swap)
    sets `module.residency` to an object with load(module, memory_required) / offload(module)."""
    residency = getattr(module, "residency", None)
    if residency is not None:
        residency.load(module, memory_required)
    else:
        runtime.load_model(module, memory_required)


def offload(module: nn.Module) -> None:
    residency = getattr(module, "residency", None)
    if residency is not None:
        residency.offload(module)
    else:
        runtime.offload_model(module)
