"""Wrappers that stack around a network's forward and around each of its block loops.

A DiT declares its block lists (`block_lists`: attribute names of `nn.ModuleList`s of uniform blocks, run in this
order, e.g. Wan's ("blocks",), HunyuanVideo's double- then single-stream blocks) and runs each list through
`run_blocks(name, x, *args)`. Features that change how a model runs without changing its weights — block swap
(streams blocks from host memory), step caches (skip the blocks when their residual is predictable), sequence
parallelism (split the tokens over GPUs) — are `Wrapper`s in the model's `WrapperChain`, applied in their `order`
(lower runs outside). Each wrapper gets the next stage as a callable, so any number of them compose.
"""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn


class Wrapper:
    """Override `forward` to wrap the whole model call, `blocks` to wrap a block loop, or both. `call` runs the
    rest of the chain (and finally the model's own code)."""

    order: int = 0

    def forward(self, call: Callable, model: nn.Module, *args, **kwargs):
        return call(*args, **kwargs)

    def blocks(self, call: Callable, model: nn.Module, list_name: str, x: Any, *args):
        """Wrap one block loop. The blocks may update `x` in place (token chunks do, to hold one stream): a
        wrapper that needs the loop's input after `call` returns (e.g. for a residual) must copy it first."""
        return call(x, *args)


class WrapperChain:
    """The named wrappers of one model, kept sorted by their order (ties by the time they were set)."""

    def __init__(self):
        self._items: list[tuple[str, Wrapper]] = []

    def set(self, name: str, wrapper: Wrapper | None) -> None:
        """Install `wrapper` under `name`, replacing one of that name; None removes it."""
        self._items = [(n, w) for n, w in self._items if n != name]
        if wrapper is not None:
            self._items.append((name, wrapper))
            self._items.sort(key=lambda item: item[1].order)

    def get(self, name: str) -> Wrapper | None:
        return next((w for n, w in self._items if n == name), None)

    def names(self) -> list[str]:
        return [n for n, _ in self._items]

    def run_forward(self, model: nn.Module, inner: Callable, *args, **kwargs):
        call = inner
        for _, wrapper in reversed(self._items):
            call = _bind_forward(wrapper, call, model)
        return call(*args, **kwargs)

    def run_blocks(self, model: nn.Module, list_name: str, inner: Callable, x: Any, *args):
        call = inner
        for _, wrapper in reversed(self._items):
            call = _bind_blocks(wrapper, call, model, list_name)
        return call(x, *args)


def _bind_forward(wrapper: Wrapper, call: Callable, model: nn.Module) -> Callable:
    return lambda *args, **kwargs: wrapper.forward(call, model, *args, **kwargs)


def _bind_blocks(wrapper: Wrapper, call: Callable, model: nn.Module, list_name: str) -> Callable:
    return lambda x, *args: wrapper.blocks(call, model, list_name, x, *args)


class WrappedModel(nn.Module):
    """Base of every DiT: `forward` and each block loop go through the model's wrapper chain.

    Subclasses implement `compute(...)` (the network's forward) and call `self.run_blocks(name, x, *args)` for
    each block list; `embedders` names submodules used once per call that block swap may keep in host memory."""

    block_lists: tuple[str, ...] = ("blocks",)
    embedders: tuple[str, ...] = ()

    def __init__(self):
        super().__init__()
        self.wrappers = WrapperChain()

    def forward(self, *args, **kwargs):
        return self.wrappers.run_forward(self, self.compute, *args, **kwargs)

    def compute(self, *args, **kwargs):
        raise NotImplementedError

    def run_blocks(self, list_name: str, x: Any, *args):
        blocks = getattr(self, list_name)

        def plain(x, *args):
            for block in blocks:
                x = block(x, *args)
            return x
        return self.wrappers.run_blocks(self, list_name, plain, x, *args)

    def all_blocks(self) -> list[nn.Module]:
        return [block for name in self.block_lists for block in getattr(self, name)]
