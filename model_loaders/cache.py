"""A small cache of built modules, keyed by what determines their weights, with explicit eviction."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import torch.nn as nn


class ModuleCache:
    """Least-recently-used cache of modules; `capacity` counts modules (a Wan2.2 expert pair needs 2)."""

    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self._items: OrderedDict[tuple, nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_build(self, key: tuple, build: Callable[[], nn.Module]) -> nn.Module:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        module = build()
        with self._lock:
            self._items[key] = module
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return module

    def __contains__(self, key: tuple) -> bool:
        return key in self._items

    def evict(self, key: tuple) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


MODULES = ModuleCache()
