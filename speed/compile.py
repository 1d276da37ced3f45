"""Regional torch.compile: each transformer block's forward compiled in place, the loop around them eager.

The "compile" patch (value: `CompileSettings` or None) gives every block of the DiT an instance `forward` that
calls one compiled function per (block class, settings); None deletes it, restoring the class's eager forward.
Blocks of one class share that function, and so torch's compiled graphs: 40 identical blocks compile once, and
re-applying settings used before (switching compile off and on, a second model of the same family) reuses
the graphs already made. Block hooks and the parameters stay where they were, so block swap is unaffected.

A change of input shape (resolution, frame count, batch), of attention backend or of FP8 mode recompiles;
torch keeps a limited number of graphs per function (`torch._dynamo.config.recompile_limit`, 8 by default) and
runs the function eagerly beyond it, so applying the patch raises that limit to `RECOMPILE_LIMIT`.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..memory.patches import register_patch

MODES = ("default", "max-autotune-no-cudagraphs")
RECOMPILE_LIMIT = 64


@dataclass(frozen=True)
class CompileSettings:
    """How blocks are compiled. `dynamic`: False compiles one graph per shape; None lets torch make a graph
    with dynamic shapes once a second shape appears. `backend` other than "inductor" is for tests. `inductor`:
    inductor settings on top of the mode's, as (name, value) pairs (benches try them before a mode adopts them)."""
    mode: str = "default"
    dynamic: bool | None = False
    backend: str = "inductor"
    inductor: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"compile mode must be one of {MODES}, not {self.mode!r}")


_COMPILED: dict[tuple[type, CompileSettings], Callable] = {}


def compiled_forward(cls: type[nn.Module], settings: CompileSettings) -> Callable:
    """The compiled `cls.forward` for `settings` (made once per process)."""
    key = (cls, settings)
    if key not in _COMPILED:
        options = {}
        if settings.backend == "inductor":   # torch.compile takes a mode or options, not both
            options = {"mode": settings.mode} if not settings.inductor else {"options": {
                **torch._inductor.list_mode_options(settings.mode), **dict(settings.inductor)}}
        _COMPILED[key] = torch.compile(cls.forward, backend=settings.backend, dynamic=settings.dynamic, **options)
    return _COMPILED[key]


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """The blocks of every block list of a DiT (the regions that are compiled)."""
    return [block for name in getattr(module, "block_lists", ()) for block in getattr(module, name)]


def is_compiled(block: nn.Module) -> bool:
    return "forward" in block.__dict__


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))


def _set_compile(module: nn.Module, settings: CompileSettings | None) -> None:
    if settings is not None:
        _raise_recompile_limit()
    for block in transformer_blocks(module):
        if settings is None:
            if is_compiled(block):
                del block.forward
            continue
        fn = compiled_forward(type(block), settings)
        if getattr(block.__dict__.get("forward"), "__func__", None) is not fn:
            block.forward = types.MethodType(fn, block)


register_patch("compile", None, _set_compile)
