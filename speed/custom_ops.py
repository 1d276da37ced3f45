"""Kernels as opaque custom ops: torch.compile calls them as they are instead of tracing into their Triton/CUDA code."""
from __future__ import annotations

from typing import Callable

import torch


def opaque(name: str, kernel: Callable, fake: Callable) -> Callable:
    """`kernel` as the custom op openreel::name, with `fake` giving its outputs' shapes under tracing. A second copy
    of the calling module in the process (pytest imports the package under two names) finds the op made."""
    if hasattr(torch.ops.openreel, name):
        return getattr(torch.ops.openreel, name)
    op = torch.library.custom_op(f"openreel::{name}", kernel, mutates_args=())
    op.register_fake(fake)
    return op
