"""A cache of built modules, keyed by what determines their weights, with explicit eviction.

Rebuilding a module means re-reading its file (umT5-XXL: 11 GB), so modules stay cached while host memory allows:
least recently used ones go first once their total passes `max_bytes` (by default 3/4 of physical memory).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Callable

import torch.nn as nn

from ..runtime import module_bytes


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 64 << 30


class ModuleCache:
    """Least-recently-used cache of modules bounded by their total size."""

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = max_bytes if max_bytes is not None else _physical_memory() * 3 // 4
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
            while len(self._items) > 1 and sum(module_bytes(m) for m in self._items.values()) > self.max_bytes:
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
