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

from ..handles import DiTHandle
from ..model_loaders.cache import MODULES
from ..model_loaders.core import register_stand_in
from ..models.common import calls
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
    """Stands for the module of `handle` in the sampler; holds no weights.

    Each call goes with its `calls.Ticket` (the sampling session's step, guidance branches, run), so wrappers that
    keep state across calls (a step cache) run in the workers as in one process. A step cache decides per guidance
    branch over all of that branch's rows, so under it a group of ranks takes whole branches (and all of them where
    the branches follow one decision: EasyCache); every rank of a group sees the whole token stream there (the
    cache sits outside the token sharing) and decides alike. The workers' reports come back with each call and
    join the session's."""

    def __init__(self, handle: DiTHandle):
        super().__init__()
        self.handle, self.settings = handle, handle.patch(MULTI_GPU_PATCH)
        self.residency = _Residency(self)
        self.token_chunk = 0
        self.cfg_batching = True if self.settings.split_batch else None
        self._session: int | None = None
        self._texts: dict[tuple[int, ...], str] = {}   # the latest report of each group of ranks, this session

    def forward(self, x: torch.Tensor, t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        rows = x.shape[0]
        pool = pool_for(self.settings.devices)
        info, cache = calls.current(), self.handle.patch("step_cache")
        parts_of = rows if cache is None or info is None else \
            len(info.branches) if cache.branches_decide_alone else 1
        groups = groups_for(self.settings.ranks, parts_of, self.settings.split_batch)
        for group in groups:
            pool.group(group)
        parts = [torch.arange(rows)[s] for s in _slices(rows, len(groups))]
        commands, branches = {}, {}
        for group, part in zip(groups, parts):
            ticket = None
            if info is not None:
                branches[group] = _branches(info.branches, part, rows)
                ticket = calls.Ticket.of(info, branches[group])
            call = ("call", self.handle, group, _rows((x, t, *args), part, rows), _rows(kwargs, part, rows), ticket)
            commands.update({r: call for r in group})
        answers = pool.run(commands)   # by rank: (output, report texts) from each group's first rank
        out = torch.cat([answers[group[0]][0] for group in groups])
        if info is not None:
            self._report(info, {group: (branches[group], answers[group[0]][1]) for group in groups})
        return out.to(x.device)

    def _report(self, info: calls.Call, texts: dict[tuple[int, ...], tuple[tuple[str, ...], list[str]]]) -> None:
        """The workers' reports, as the session's report of this model (one per group of ranks)."""
        if info.run.reports.serial != self._session:
            self._session, self._texts = info.run.reports.serial, {}
        devices = self.settings.devices
        for group, (branches, found) in texts.items():
            if found:
                where = "" if len(texts) == 1 else \
                    f"[{' and '.join(branches)} on {', '.join(devices[r] for r in group)}] "
                self._texts[group] = "\n".join(where + text for text in found)
        if self._texts:
            info.run.reports.post(self, lambda: "\n".join(self._texts.values()))


def _slices(rows: int, count: int) -> list[slice]:
    step = math.ceil(rows / count)
    return [slice(i * step, min(rows, (i + 1) * step)) for i in range(count)]


def _branches(branches: tuple[str, ...], part: torch.Tensor, rows: int) -> tuple[str, ...]:
    """The guidance branches whose rows (an equal share of the call's `rows` each, in order) `part` holds."""
    per = max(1, rows // len(branches))
    return branches[int(part[0]) // per:int(part[-1]) // per + 1]


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
