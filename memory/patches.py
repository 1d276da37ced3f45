"""Run-time patches of a loaded DiT (attention backend, block swap, compile, …): the one place they are applied.

Memory nodes never touch modules: they return `handle.with_patch(name, value)`. The module behind a handle is
shared (see model_loaders.cache), so before each use `prepare(handle)` sets every registered patch to the
handle's value, or to its default when the handle has none: two handles on one module never leak settings.
Patches that change weights (fp8 storage) are not patches: they are the handle's dtype fields and key the cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn

from ..handles import DiTHandle


@dataclass(frozen=True)
class Patch:
    name: str
    default: Any
    apply: Callable[[nn.Module, Any], None]   # set the module up for `value` (idempotent)


PATCHES: dict[str, Patch] = {}


def register_patch(name: str, default: Any, apply: Callable[[nn.Module, Any], None]) -> None:
    PATCHES[name] = Patch(name, default, apply)


def prepare(handle: DiTHandle) -> nn.Module:
    """The module for `handle`, configured by every registered patch."""
    from ..model_loaders.dit import dit_module

    return configure(dit_module(handle), dict(handle.patches))


def configure(module: nn.Module, values: dict[str, Any]) -> nn.Module:
    """Set every registered patch on `module`: the given value, or the patch's default."""
    from . import attention_backends, block_swap, compile, fp8, planner  # noqa: F401  (each registers its patch)

    unknown = set(values) - set(PATCHES)
    if unknown:
        raise ValueError(f"unknown patches {sorted(unknown)}; registered: {sorted(PATCHES)}")
    for patch in PATCHES.values():
        patch.apply(module, values.get(patch.name, patch.default))
    return module


def _set_attention(module: nn.Module, backend: str) -> None:
    module.attention_backend = backend


register_patch("attention", "sdpa", _set_attention)


def load(module: nn.Module, memory_required: int) -> None:
    """Put `module` on the compute device for a run. A patch that keeps part of the model elsewhere (block swap)
    sets `module.residency` to an object with load(module, memory_required) / offload(module)."""
    residency = getattr(module, "residency", None)
    if residency is not None:
        residency.load(module, memory_required)
    else:
        from .. import runtime

        runtime.load_model(module, memory_required)


def offload(module: nn.Module) -> None:
    residency = getattr(module, "residency", None)
    if residency is not None:
        residency.offload(module)
    else:
        from .. import runtime

        runtime.offload_model(module)
