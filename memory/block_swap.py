"""Block swap: the last N transformer blocks of a DiT wait in page-locked host memory and stream to the GPU.

While block i computes, block i+1's weights are copied on a side CUDA stream into one of two reusable GPU
copies of the block's structure (the ring's "shells"). CUDA events order each copy after the block that last
used its shell, and each block after its copy: no device-wide synchronization. Peak VRAM = the resident part +
two blocks + activations, so swapping N blocks saves N - 2 blocks. Only where the weights live changes: a shell
runs the same module code on tensors of the same dtypes and shapes, so the output is bitwise that of the resident
model (fp8 CastLinear blocks move half the bytes of bf16 ones).

Block swap is the innermost wrapper of the model's block loops (models/common/wrappers.py), over every block
list the model declares, with a ring per list.

With ComfyUI: the resident submodules (embeddings, head, first blocks) and the shells form a small module, the
"view", that goes through `runtime.load_model`; ComfyUI's manager counts, loads and unloads exactly what is on
the GPU, and never sees the host copies of the swapped blocks. Without CUDA it all still runs, the copies being
plain same-device copies: the CPU tests check the results and the bookkeeping that way.
"""
from __future__ import annotations

import copy
import functools
import logging
import os
import sys
import types
import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import runtime
from ..errors import InputError
from ..models.common.wrappers import Wrapper
from .patches import register_patch

log = logging.getLogger(__name__)

_ALIGN = 512  # bytes: each tensor of a host copy starts on this boundary, as blocks of the GPU allocator do


@dataclass(frozen=True)
class BlockSwap:
    """Value of the "block_swap" patch: how many of the last blocks live in host memory, and whether the text and
    image embedders do too (then they are copied to the GPU for their one call per model call)."""
    blocks: int = 0
    offload_embeddings: bool = False

    @property
    def active(self) -> bool:
        return self.blocks > 0 or self.offload_embeddings


OFF = BlockSwap()


# ----------------------------------------------------------------------------------------- page-locked memory
def _pin_limit() -> int:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        ram = 64 << 30
    return int(ram * (0.4 if sys.platform == "win32" else 0.9))  # Windows locks little more than half of RAM


_pinned_bytes = 0


def _pin(buffer: torch.Tensor) -> bool:
    """Page-lock `buffer` in place. cudaHostRegister copies nothing and does not round the size up to a power of
    two as torch's pinned allocator does (+46% for a 14B block). False leaves it pageable: copies still work,
    they just do not overlap compute."""
    global _pinned_bytes
    if not torch.cuda.is_available():
        return False
    size = buffer.numel()
    if _pinned_bytes + size > _pin_limit():
        log.warning("OpenReel block swap: page-locked memory would pass %.1f GiB; the rest stays pageable "
                    "(slower swaps)", _pin_limit() / 2**30)
        return False
    if int(torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), size, 1)) != 0:  # 1: portable to all GPUs
        try:  # the failed call left a CUDA error that the next kernel launch would report: consume it here
            torch.zeros(1, device="cuda").add_(1)
        except RuntimeError:
            pass
        log.warning("OpenReel block swap: the driver refused to page-lock %.2f GiB; it stays pageable", size / 2**30)
        return False
    _pinned_bytes += size
    return True


def _unpin(buffer: torch.Tensor) -> None:
    global _pinned_bytes
    torch.cuda.cudart().cudaHostUnregister(buffer.data_ptr())
    _pinned_bytes -= buffer.numel()


# ----------------------------------------------------------------------------------------- host copies
def _tensor_slots(module: nn.Module) -> list[tuple[nn.Module, str]]:
    """(owner, name) of every parameter and buffer under `module`, in a fixed order."""
    return [(owner, name) for _, owner in module.named_modules()
            for name, t in (*owner._parameters.items(), *owner._buffers.items()) if t is not None]


def _rebind(owner: nn.Module, name: str, tensor: torch.Tensor) -> None:
    if name in owner._parameters:
        owner._parameters[name].data = tensor  # the Parameter object stays: references to it remain valid
    else:
        owner._buffers[name] = tensor


class HostCopy:
    """A module's parameters and buffers moved into one buffer of host memory, page-locked where CUDA is present.

    The module's tensors become views into the buffer, so the old storage is freed (nothing is held twice) and
    the buffer is made once and reused by every run.
    """

    def __init__(self, module: nn.Module):
        self.slots = _tensor_slots(module)
        tensors = [getattr(owner, name) for owner, name in self.slots]
        offsets, total = [], 0
        for t in tensors:
            offsets.append(total)
            total += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
        self.buffer = torch.empty(total, dtype=torch.uint8)
        self.pinned = _pin(self.buffer)
        self._finalizer = weakref.finalize(self, _unpin, self.buffer) if self.pinned else None
        if self._finalizer is not None:
            self._finalizer.atexit = False  # the process unlocks everything as it ends
        self.views = []
        with torch.no_grad():
            for t, offset in zip(tensors, offsets):
                size = t.numel() * t.element_size()
                view = self.buffer[offset:offset + size].view(t.dtype).view(t.shape)
                view.copy_(t)
                self.views.append(view)
        self.bind()

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()

    def bind(self) -> None:
        """Point the module's tensors (back) at this copy."""
        for (owner, name), view in zip(self.slots, self.views):
            _rebind(owner, name, view)

    def intact(self) -> bool:
        """Whether the module still uses this copy (moving the module elsewhere replaces its tensors)."""
        return all(getattr(owner, name).data_ptr() == view.data_ptr()
                   for (owner, name), view in zip(self.slots, self.views))

    def release(self) -> None:
        """Unlock the memory now; the module's tensors keep it alive as ordinary host memory."""
        if self._finalizer is not None:
            self._finalizer()


# ----------------------------------------------------------------------------------------- the ring
def _shell(block: nn.Module, device: torch.device) -> nn.Module:
    """A copy of `block`'s structure with uninitialized tensors on `device`, to be filled by copies."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False) for p in block.parameters()}
    memo.update((id(b), torch.empty_like(b, device="meta")) for b in block.buffers())
    return copy.deepcopy(block, memo).to_empty(device=device)


def _signature(module: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(name, tuple(t.shape), t.dtype) for name, t in (*module.named_parameters(), *module.named_buffers())]


def _mirror(shell: nn.Module, block: nn.Module, mirrored: dict[int, set[str]]) -> None:
    """Give `shell` the plain attributes patches set on the real blocks (fp8_matmul, a compiled `forward`, …) and
    drop those the blocks no longer have; methods bound to a block are bound to the shell instead. `mirrored`
    remembers what was copied, so attributes ComfyUI's manager sets on the shells themselves are left alone."""
    for s, b in zip(shell.modules(), block.modules()):
        public = {k: v for k, v in vars(b).items() if not k.startswith("_")}
        for key in mirrored.get(id(s), set()) - public.keys():
            s.__dict__.pop(key, None)
        for key, value in public.items():
            if isinstance(value, types.MethodType) and value.__self__ is b:
                value = types.MethodType(value.__func__, s)
            s.__dict__[key] = value
        mirrored[id(s)] = set(public)


class _View(nn.Module):
    """What is on the GPU while block swap is on: the model's own parameters (Step-Video's output
    `scale_shift_table`: the same Parameter objects, which moves change in place), the resident submodules and the
    ring's shells."""

    def __init__(self, own: dict[str, nn.Parameter], resident: list[nn.Module], shells: list[nn.Module]):
        super().__init__()
        for name, parameter in own.items():
            self.register_parameter(name, parameter)
        self.resident = nn.ModuleList(resident)
        self.ring = nn.ModuleList(shells)


class _Sync:
    """The side stream and events of a ring on a CUDA device: ready[s] marks slot s filled, free[s] that the
    block computed in slot s is done with it."""

    def __init__(self, device: torch.device, slots: int):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.ready = [torch.cuda.Event() for _ in range(slots)]
        self.free = [torch.cuda.Event() for _ in range(slots)]


@dataclass(frozen=True)
class _Segment:
    """The swapped tail of one block list: its blocks' run-order numbers and the ring slots it cycles through."""
    list_name: str
    first: int                 # index in the list of its first swapped block
    numbers: range             # run-order numbers (over all block lists) of the swapped blocks
    slots: tuple[int, ...]     # indices into the view's ring


class BlockSwapResidency(Wrapper):
    """`module.residency` while block swap is on: loads and offloads the model's resident part; as the model's
    "block_swap" wrapper it runs each block list with its swapped blocks streamed through that list's ring.

    Blocks are numbered in run order over the model's block lists (`module.block_lists`); the last
    `settings.blocks` of them are swapped, so for HunyuanVideo's double- then single-stream blocks a large number
    reaches into the double-stream list. Each list's swapped blocks share one structure and a ring of their own."""

    order = 100  # innermost: step caches and sequence parallelism wrap around the streamed blocks

    def __init__(self, module: nn.Module, settings: BlockSwap):
        lists = getattr(module, "block_lists", None)
        if not lists or not hasattr(module, "wrappers"):
            raise InputError(f"block swap does not support {type(module).__name__} models",
                             "use it with OpenReel's diffusion transformers")
        blocks = [(name, i, block) for name in lists for i, block in enumerate(getattr(module, name))]
        count = len(blocks)
        if not 0 <= settings.blocks <= count:
            raise InputError(f"cannot swap {settings.blocks} blocks: this model has {count}",
                             f"choose 0 to {count} blocks to swap")
        self.settings = settings
        self.first = count - settings.blocks   # run-order number of the first swapped block
        self.offloaded = tuple(n for n in getattr(module, "embedders", ()) if settings.offload_embeddings and
                               hasattr(module, n))
        self.block_order = blocks
        self.host: dict[int | str, HostCopy] = {}
        self.device: torch.device | None = None
        self.trace: list[tuple[int, int]] = []  # (block number, slot) of each copy in the last run, in issue order
        self._sync: _Sync | None = None
        self._mirrored: dict[int, set[str]] = {}

        shells, self.segments = [], {}
        for name in lists:
            numbers = [n for n, (list_name, _, _) in enumerate(blocks) if list_name == name and n >= self.first]
            if not numbers:
                continue
            template = blocks[numbers[0]][2]
            for n in numbers:
                if _signature(blocks[n][2]) != _signature(template):
                    raise InputError(f"block {blocks[n][1]} of {name} differs in its tensors from block "
                                     f"{blocks[numbers[0]][1]}", "block swap needs blocks of one structure; swap "
                                     "fewer blocks")
            slots = tuple(range(len(shells), len(shells) + min(len(numbers), 2)))
            shells += [_shell(template, runtime.offload_device()) for _ in slots]
            self.segments[name] = _Segment(name, blocks[numbers[0]][1], range(numbers[0], numbers[-1] + 1), slots)
        resident = [child for name, child in module.named_children()
                    if name not in lists and name not in self.offloaded]
        resident += [block for n, (_, _, block) in enumerate(blocks) if n < self.first]
        if module._buffers:  # a move would rebind the view's entry, not the model's
            raise InputError(f"block swap does not support {type(module).__name__}: it holds buffers of its own",
                             "keep this model resident")
        self.view = _View(dict(module._parameters), resident, shells)
        self._hooks = []
        for name in self.offloaded:
            sub = getattr(module, name)
            self._hooks.append(sub.register_forward_pre_hook(functools.partial(self._stage, name)))
            self._hooks.append(sub.register_forward_hook(functools.partial(self._unstage, name), always_call=True))
        runtime.offload_model(module)  # inside ComfyUI: unload it if its manager holds it whole

    def fits(self) -> bool:
        """Whether the ring still has its blocks' structure (a LoRA's run-time factors add tensors to blocks)."""
        return all(_signature(self.view.ring[slot]) == _signature(self.block_order[segment.numbers[0]][2])
                   for segment in self.segments.values() for slot in segment.slots)

    @property
    def swapped(self) -> range:
        return range(self.first, self.first + self.settings.blocks)

    @property
    def ring(self) -> list[nn.Module]:
        return list(self.view.ring)

    # ------------------------------------------------------------------------------ residency
    def load(self, module: nn.Module, memory_required: int) -> None:
        """Swapped blocks (and offloaded embedders) into host memory once; the view onto the compute device."""
        for key in (*self.swapped, *self.offloaded):
            part = self.block_order[key][2] if isinstance(key, int) else getattr(module, key)
            if key not in self.host or not self.host[key].intact():
                if key in self.host:
                    self.host[key].release()
                self.host[key] = HostCopy(part)
        for segment in self.segments.values():
            for slot in segment.slots:
                _mirror(self.view.ring[slot], self.block_order[segment.numbers[0]][2], self._mirrored)
        staged = sum(self.host[name].nbytes for name in self.offloaded)
        self.device = runtime.load_model(self.view, memory_required + staged)
        stale = self._sync is None or self._sync.device != self.device
        if self.device.type == "cuda" and self.settings.blocks and stale:
            self._sync = _Sync(self.device, len(self.view.ring))

    def offload(self, module: nn.Module) -> None:
        """The resident part back to the host. The ring's shells are emptied, not copied: each call refills them."""
        if self._sync is not None:
            self._sync.stream.synchronize()  # no copy may still write a shell that is about to be freed
        host = runtime.offload_device()
        for shell in self.view.ring:
            if any(t.device != host for t in shell.parameters()):
                shell.to_empty(device=host)
        runtime.offload_model(self.view)

    def release(self, module: nn.Module) -> None:
        """Undo block swap on `module` (settings changed): everything back to ordinary placement."""
        if self._sync is not None:
            self._sync.stream.synchronize()  # no copy may still read memory that is about to be unlocked
        runtime.offload_model(self.view)
        for hook in self._hooks:
            hook.remove()
        for copy_ in self.host.values():
            copy_.release()
        module.residency = None
        module.wrappers.set("block_swap", None)

    # ------------------------------------------------------------------------------ running
    def _device(self) -> torch.device:
        if self.device is None:
            raise RuntimeError("a block-swapped model ran before memory.patches.load(module, ...) put it in place")
        return self.device

    def _stage(self, name: str, submodule: nn.Module, args) -> None:
        device = self._device()
        host = self.host[name]
        for (owner, attr), view in zip(host.slots, host.views):
            _rebind(owner, attr, view.to(device, non_blocking=True))

    def _unstage(self, name: str, submodule: nn.Module, args, output) -> None:
        self.host[name].bind()

    def _prefetch(self, segment: _Segment, j: int) -> None:
        """Start copying the segment's j-th swapped block into its slot j % ring size."""
        number, slot = segment.numbers[j], segment.slots[j % len(segment.slots)]
        shell = self.view.ring[slot]
        targets = [getattr(owner, name) for owner, name in _tensor_slots(shell)]
        sources = self.host[number].views
        with torch.no_grad():
            if self._sync is None:
                for target, source in zip(targets, sources):
                    target.copy_(source)
            else:
                sync = self._sync
                with torch.cuda.stream(sync.stream):
                    sync.stream.wait_event(sync.free[slot])
                    for target, source in zip(targets, sources):
                        target.copy_(source, non_blocking=True)
                    sync.ready[slot].record(sync.stream)
        self.trace.append((number, slot))

    def forward(self, call, model: nn.Module, *args, **kwargs):
        self._device()
        self.trace = []
        return call(*args, **kwargs)

    def blocks(self, call, model: nn.Module, list_name: str, x, *args):
        """The block loop of `list_name` with its swapped blocks streamed through its ring."""
        segment = self.segments.get(list_name)
        if segment is None:
            return call(x, *args)
        count = len(segment.numbers)
        compute = torch.cuda.current_stream(self._device()) if self._sync is not None else None
        if compute is not None:  # e.g. moving the view here may still be writing the shells
            self._sync.stream.wait_stream(compute)
        self._prefetch(segment, 0)  # overlaps the resident blocks
        for block in getattr(model, list_name)[:segment.first]:
            x = block(x, *args)
        for j in range(count):
            if j + 1 < count:
                self._prefetch(segment, j + 1)
            slot = segment.slots[j % len(segment.slots)]
            if compute is not None:
                compute.wait_event(self._sync.ready[slot])
            x = self.view.ring[slot](x, *args)
            if compute is not None:
                self._sync.free[slot].record(compute)
        return x


def _apply(module: nn.Module, settings: BlockSwap) -> None:
    current = getattr(module, "residency", None)
    if isinstance(current, BlockSwapResidency):
        if current.settings == settings and current.fits():
            return
        current.release(module)
    if settings.active:
        residency = BlockSwapResidency(module, settings)
        module.residency = residency
        module.wrappers.set("block_swap", residency if settings.blocks else None)


register_patch("block_swap", OFF, _apply)
