"""A DiT that runs in the worker pool: what the sampler holds instead of the module when a handle carries the
"multi_gpu" patch (set by OpenReel Multi-GPU).

The sampler calls it as it calls any DiT. Each call goes to the handle's ranks: with `split_batch` the rows of a
batched guidance call (cond and uncond) are dealt to groups of ranks (CFG parallel), and within a group the tokens
are shared (sequence parallel, parallel/sequence.py). The workers keep the model loaded between calls and prompts;
they move it to host memory only when another model needs their GPU, as a standalone run does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import InputError
from ..handles import DiTHandle
from ..model_loaders.cache import MODULES
from ..model_loaders.core import register_stand_in
from .pool import MULTI_GPU_PATCH, pool_for


@dataclass(frozen=True)
class MultiGPU:
    """The "multi_gpu" patch: the pool's devices, the ranks this DiT runs on (an expert of a pair may have its own),
    and whether a batched guidance call's rows are dealt to groups of ranks."""
    devices: tuple[str, ...]
    ranks: tuple[int, ...]
    split_batch: bool = True


def groups_for(ranks: tuple[int, ...], rows: int, split_batch: bool) -> list[tuple[int, ...]]:
    """The rank groups of a call of `rows` batch rows: as many groups as rows allow (a divisor of the ranks), the
    ranks of each group sharing the tokens."""
    count = 1
    if split_batch:
        count = max(d for d in range(1, len(ranks) + 1) if len(ranks) % d == 0 and d <= rows)
    size = len(ranks) // count
    return [ranks[i * size:(i + 1) * size] for i in range(count)]


class _Residency:
    """Loads the model on its ranks' workers; leaves it there on offload (each worker evicts it when another
    model needs the room, and an expert pair on separate GPUs must not move at each switch). This process lets
    its own copy go (the loader node made one): host memory holds the workers' copies only."""

    def __init__(self, model: "ParallelDiT"):
        self.model = model

    def load(self, module: nn.Module, memory_required: int) -> None:
        settings, handle = self.model.settings, self.model.handle
        pool_for(settings.devices).run({r: ("load", handle) for r in settings.ranks})
        MODULES.evict(handle.weights_key)

    def offload(self, module: nn.Module) -> None:
        pass


class ParallelDiT(nn.Module):
    """Stands for the module of `handle` in the sampler; holds no weights."""

    def __init__(self, handle: DiTHandle):
        super().__init__()
        if handle.patch("step_cache") is not None:
            raise InputError("OpenReel Step Cache does not work with OpenReel Multi-GPU yet",
                             "remove one of the two nodes")
        self.handle, self.settings = handle, handle.patch(MULTI_GPU_PATCH)
        self.residency = _Residency(self)
        self.token_chunk = 0
        self.cfg_batching = True if self.settings.split_batch else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        rows = x.shape[0]
        pool = pool_for(self.settings.devices)
        groups = groups_for(self.settings.ranks, rows, self.settings.split_batch)
        for group in groups:
            pool.group(group)
        parts = [torch.arange(rows)[s] for s in _slices(rows, len(groups))]
        commands = {}
        for group, part in zip(groups, parts):
            call = ("call", self.handle, group, _rows((x, t, *args), part, rows), _rows(kwargs, part, rows))
            commands.update({r: call for r in group})
        answers = pool.run(commands)
        out = torch.cat([answers[group[0]] for group in groups])
        return out.to(x.device)


def _slices(rows: int, count: int) -> list[slice]:
    step = math.ceil(rows / count)
    return [slice(i * step, min(rows, (i + 1) * step)) for i in range(count)]


def _rows(value, part: torch.Tensor, rows: int):
    """`value` with every per-sample tensor (batch first) cut to the rows `part`, on the CPU for the pipe."""
    if isinstance(value, torch.Tensor):
        return (value[part.to(value.device)] if value.dim() and value.shape[0] == rows else value).cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(_rows(v, part, rows) for v in value)
    if isinstance(value, dict):
        return {k: _rows(v, part, rows) for k, v in value.items()}
    return value


register_stand_in(MULTI_GPU_PATCH, ParallelDiT)
