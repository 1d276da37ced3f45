"""The loader core every model kind shares: file stamps, the module cache, rebuild-if-evicted, patch preparation.

A loader module (dit.py, vae.py, text_encoder.py, clip_vision.py) registers how to build its kind from a handle's
files; `module_of(handle)` returns the cached module or rebuilds it, and `prepare(handle)` also brings it to the
handle's LoRAs (lora_apply.py: they change weights in place or add run-time factors, so they come first) and
applies every registered run-time patch (memory/patches.py) with the handle's values, or the defaults.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch.nn as nn

from ..handles import ModelHandle
from ..memory import block_swap, planner  # noqa: F401  (each registers its patch)
from ..memory.patches import configure
# each registers its patch (fused_norms: its kernels)
from ..speed import attention_backends, compile, fp8, fused_norms, step_cache  # noqa: F401
from . import lora_apply
from .cache import MODULES
from .lora import LORA_PATCH

_BUILDERS: dict[str, Callable[[ModelHandle], nn.Module]] = {}


_STAND_INS: dict[str, Callable[[ModelHandle], nn.Module]] = {}


def register_stand_in(patch: str, make: Callable[[ModelHandle], nn.Module]) -> None:
    """Handles with `patch` run elsewhere: `prepare` returns `make(handle)`, which the sampler calls as the module
    (parallel/model.py: the worker pool)."""
    _STAND_INS[patch] = make


def register_builder(kind: str, build: Callable[[ModelHandle], nn.Module]) -> None:
    """`build(handle)` reads the handle's files again and builds its module (on the offload device)."""
    _BUILDERS[kind] = build


def stamps(files) -> tuple[tuple[int, int], ...]:
    """(size, mtime_ns) per file: a replaced file gets a new cache key and is reloaded."""
    return tuple((Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in files)


def load(handle: ModelHandle, build: Callable[[], nn.Module] | None = None) -> ModelHandle:
    """Put the module of `handle` in the cache (built by `build`, which may reuse an already open checkpoint)."""
    MODULES.get_or_build(handle.weights_key, build or (lambda: _BUILDERS[handle.kind](handle)))
    return handle


def module_of(handle: ModelHandle) -> nn.Module:
    """The module behind `handle`, rebuilt from its files if the cache let it go."""
    return MODULES.get_or_build(handle.weights_key, lambda: _BUILDERS[handle.kind](handle))


def prepare(handle: ModelHandle) -> nn.Module:
    """The module for `handle`, with the handle's LoRAs and configured by every registered patch; for a handle
    that runs elsewhere (`register_stand_in`), its stand-in."""
    for patch, make in _STAND_INS.items():
        if handle.patch(patch) is not None:
            return make(handle)
    module = module_of(handle)
    values = dict(handle.patches)
    lora_apply.apply(handle, module, tuple(values.pop(LORA_PATCH, ())))
    return configure(module, values)
