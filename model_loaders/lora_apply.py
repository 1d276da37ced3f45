"""LoRAs on the shared module of a DiT: merged into its weights or unmerged (run-time factors), and undone exactly.

Cache identity: a handle's LoRAs are its "lora" patch (a tuple of `LoraSpec`s), not part of `weights_key`, so the
module cache holds one module per base weights whatever LoRAs the handles on it carry: a LoRA change never makes a
second copy of a model. Like every patch, the LoRAs are brought to the handle's stack before each use
(`model_loaders.core.prepare` calls `apply` first, so block swap, compile and fp8 matmul are set up on the result);
the module remembers the stack it carries and changes nothing when it is the same.

Modes (per LoRA; "auto" is unmerged when the weights are fp8 or block swap is on, merged otherwise):
- merged: each changed parameter W becomes W + ΔW, computed in float32 on the compute device one tensor at a time
  (host memory never holds a second copy of the model); fp8 weights are re-quantized with new scales of the
  layer's own granularity (per tensor or per output channel). Undone by reading the parameter again from the
  model's file through the loader's own conversion (`build.base_reader`), which gives bitwise the loaded tensor:
  subtracting ΔW again would not be exact in 16 or 8 bits, and keeping the originals would be that second copy.
- unmerged: the low-rank pairs of the large linears (`CastLinear`) become the layer's `lora_down` / `lora_up` /
  `lora_scale` buffers (models/common/ops.py), in the compute dtype: no merge and no restore cost, exact removal,
  and the factors stream with their block under block swap. Full-rank deltas and pairs on other layers (norms,
  biases, modulation, embeddings, the head: small) are merged as above.
Several LoRAs stack: their merged deltas are summed in float32 before one rounding; their factors sit side by side.
A LoRA at strength 0 is left out, so the model is then bitwise its base.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .. import runtime
from ..errors import InputError
from ..handles import ModelHandle
from ..models.common.ops import FP8_DTYPES, CastLinear
from ..models.registry import family_of
from ..speed.fp8 import quantize_weight
from .build import FP8_MAX, base_reader
from .cache import MODULES
from .checkpoint import Checkpoint, open_checkpoint
from .lora import LoraSpec, Resolution, Term, open_lora, resolve

log = logging.getLogger(__name__)

_STATE = "_openreel_lora"


@dataclass
class _State:
    """The LoRA stack a module carries: its key, the parameters merged into (restored from the file) with what was
    merged into each, and the layers holding factors."""
    key: tuple = ()
    merged: dict[str, tuple] = field(default_factory=dict)
    factors: set[str] = field(default_factory=set)


@dataclass
class _Applied:
    spec: LoraSpec
    mode: str
    ckpt: Checkpoint
    resolution: Resolution


def resolved_mode(spec: LoraSpec, handle: ModelHandle, module: nn.Module) -> str:
    """The mode `spec` runs in on `module` for `handle`: its own, or for "auto" unmerged with fp8 weights or block
    swap, merged otherwise."""
    if spec.mode != "auto":
        return spec.mode
    fp8 = any(isinstance(m, CastLinear) and m.weight.dtype in FP8_DTYPES for m in module.modules())
    return "unmerged" if _swapping(handle) or fp8 else "merged"


def carried(module: nn.Module) -> tuple:
    """The key of the LoRA stack `module` carries now (empty: its base weights)."""
    state = module.__dict__.get(_STATE)
    return state.key if state is not None else ()


def apply(handle: ModelHandle, module: nn.Module, stack: tuple[LoraSpec, ...] = ()) -> None:
    """Bring `module` (the shared module of `handle`) to the LoRA stack `stack`."""
    state = module.__dict__.get(_STATE) or _State()
    stack = tuple(s for s in stack if s.strength != 0)
    modes = tuple((s, resolved_mode(s, handle, module)) for s in stack)
    # unmerged factors are made alike over each block list under block swap (see `_uniform`)
    key = modes + ((("uniform", _swapping(handle)),) if any(m == "unmerged" for _, m in modes) else ())
    if key == state.key:
        return
    runtime.forget_host_copies(module)  # weights change in place: copies kept from before a load go stale
    applied = []
    if stack:
        family = family_of(handle.spec)
        shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
        for spec, mode in modes:
            if (Path(spec.path).stat().st_size, Path(spec.path).stat().st_mtime_ns) != spec.stamp:
                raise InputError(f"the LoRA file {spec.name} changed on disk after it was chosen",
                                 "run the workflow again so that the LoRA node reads it anew")
            ckpt = open_lora(spec.path)
            applied.append(_Applied(spec, mode, ckpt, resolve(ckpt, family, handle.spec, shapes, spec.name)))
    try:
        with torch.no_grad():
            new = _apply(handle, module, state, applied)
    except BaseException:
        module.__dict__.pop(_STATE, None)
        MODULES.evict(handle.weights_key)   # left half changed: the next use rebuilds it from the file
        raise
    new.key = key
    module.__dict__[_STATE] = new
    for a in applied:
        log.info("OpenReel %s", a.resolution.report(a.mode))


def _is_factor_term(module: nn.Module, term: Term) -> bool:
    owner, _, attr = term.param.rpartition(".")
    return term.low_rank and attr == "weight" and isinstance(module.get_submodule(owner), CastLinear)


def _apply(handle: ModelHandle, module: nn.Module, state: _State, applied: list[_Applied]) -> _State:
    merges: dict[str, list[tuple[Term, float, Checkpoint]]] = {}
    factors: dict[str, list[tuple[Term, float, Checkpoint]]] = {}
    signatures: dict[str, list] = {}
    for a in applied:
        for term in a.resolution.terms:
            unmerged = a.mode == "unmerged" and _is_factor_term(module, term)
            target = factors.setdefault(term.param.rpartition(".")[0], []) if unmerged else \
                merges.setdefault(term.param, [])
            target.append((term, a.spec.strength, a.ckpt))
            if not unmerged:
                signatures.setdefault(term.param, []).append((a.spec.path, a.spec.stamp, a.spec.strength, term))
    merged = {name: tuple(sig) for name, sig in signatures.items()}
    changed = {name for name in merges if state.merged.get(name) != merged[name]}   # the rest stay as they are
    stale = set(state.merged) - merges.keys()
    read = _reader(handle, module) if stale or changed & state.merged.keys() else None
    device = runtime.torch_device()
    for name in sorted(stale):
        for slot in _slots(module, name):
            _param(module, slot).copy_(read(module, slot))
    for name in sorted(changed):
        base = {slot: (read(module, slot) if name in state.merged else _param(module, slot))
                for slot in _slots(module, name)}
        for slot, value in _merged(module, name, base, merges[name], device).items():
            _param(module, slot).copy_(value)
    dtype = getattr(module, "compute_dtype", torch.float32)
    tensors = {name: _factors(module.get_submodule(name), terms, dtype) for name, terms in factors.items()}
    if _swapping(handle):
        tensors = _uniform(module, tensors, dtype)
    for layer_name in sorted(state.factors - tensors.keys()):
        _set_factors(module.get_submodule(layer_name), None)
    for layer_name, value in tensors.items():
        _set_factors(module.get_submodule(layer_name), value)
    return _State(merged=merged, factors=set(tensors))


def _swapping(handle: ModelHandle) -> bool:
    return getattr(handle.patch("block_swap"), "blocks", 0) > 0


# ----------------------------------------------------------------------------------------- merged
def _param(module: nn.Module, name: str) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, attr)


def _slots(module: nn.Module, name: str) -> list[str]:
    """The tensors a merge into parameter `name` rewrites: a CastLinear's weight and its scale, else the one."""
    owner, _, attr = name.rpartition(".")
    layer = module.get_submodule(owner) if owner else module
    if isinstance(layer, CastLinear) and attr == "weight" and layer.scale_weight is not None:
        return [name, f"{owner}.scale_weight"]
    return [name]


def _delta(term: Term, strength: float, ckpt: Checkpoint, shape: tuple[int, ...], device) -> torch.Tensor:
    """strength · scale · ΔW of `term` in float32 on `device`, shaped as the rows of the parameter it changes."""
    if term.low_rank:
        down = ckpt.get(term.keys[0]).to(device, torch.float32).flatten(1)
        up = ckpt.get(term.keys[1]).to(device, torch.float32).flatten(1)
        delta = up @ down
    else:
        delta = ckpt.get(term.keys[0]).to(device, torch.float32)
    if term.reorder is not None:
        delta = term.reorder(delta)
    rows = shape if term.rows is None else (term.rows[1] - term.rows[0], *shape[1:])
    return (delta * (strength * term.scale)).reshape(rows)


def _merged(module: nn.Module, name: str, base: dict[str, torch.Tensor], terms, device) -> dict[str, torch.Tensor]:
    """The new values of `_slots(name)`: base + the deltas, re-quantized like the base where it is fp8."""
    weight = base[name]
    scale = next((base[s] for s in base if s != name), None)
    w = weight.to(device, torch.float32, copy=True)
    if scale is not None:
        w = w * scale.to(device, torch.float32)
    for term, strength, ckpt in terms:
        delta = _delta(term, strength, ckpt, tuple(w.shape), device)
        if term.rows is None:
            w += delta
        else:
            w[term.rows[0]:term.rows[1]] += delta
    if weight.dtype in FP8_DTYPES:
        if scale is None:   # a plain cast (weight dtype fp8_e4m3fn): the same, clamped to the format's range
            return {name: w.clamp(-FP8_MAX[weight.dtype], FP8_MAX[weight.dtype]).to(weight.dtype)}
        q, s = quantize_weight(w, "tensor" if scale.dim() == 0 else "channel", weight.dtype)
        return {name: q, f"{name.rpartition('.')[0]}.scale_weight": s.reshape(scale.shape)}
    if scale is not None:   # 16/32-bit weights of a build that keeps scales carry scale 1
        return {name: (w / scale.to(device, torch.float32)).to(weight.dtype),
                f"{name.rpartition('.')[0]}.scale_weight": scale}
    return {name: w.to(weight.dtype)}


REOPEN_BYTES = 1 << 30   # the model file is mapped anew after this many bytes read back (see `_Rereader`)


def _reader(handle: ModelHandle, module: nn.Module) -> "_Rereader":
    """Reads parameters of `module` again from the handle's files, as its build stored them."""
    stamps = tuple((Path(f).stat().st_size, Path(f).stat().st_mtime_ns) if Path(f).exists() else None
                   for f in handle.files)
    if stamps != handle.file_stamp:
        raise InputError(f"{Path(handle.files[0]).name} changed on disk since it was loaded, so a merged LoRA cannot "
                         f"be taken out of it exactly", "run again: the model is read anew from its file")
    return _Rereader(handle)


class _Rereader:
    """`build.base_reader` over the handle's files, opened anew every REOPEN_BYTES: the pages of a memory-mapped
    file that were read count in the process's resident memory until it is unmapped, so reading a whole 14B model
    back through one mapping would show as a second model in RSS (page cache, but counted)."""

    def __init__(self, handle: ModelHandle):
        self.handle, self.read, self.count = handle, None, 0

    def __call__(self, module: nn.Module, name: str) -> torch.Tensor:
        if self.read is None or self.count > REOPEN_BYTES:
            self.read = None   # the previous mapping goes with its last reference
            family = family_of(self.handle.spec)
            ckpt = family.normalize(open_checkpoint(self.handle.files[0]))
            self.read = base_reader(ckpt, weight_dtype=self.handle.weight_dtype,
                                    compute_dtype=self.handle.compute_dtype, fp32_params=family.fp32_params)
            self.count = 0
        tensor = self.read(module, name)
        self.count += tensor.numel() * tensor.element_size()
        return tensor


# ----------------------------------------------------------------------------------------- unmerged
def _factors(layer: CastLinear, terms, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(down [R, in], up [out, R], scale [R]) of the pairs on `layer`, side by side; a pair that makes some rows
    of the layer (a part of a fused layer) has zeros in the others."""
    downs, ups, scales = [], [], []
    for term, strength, ckpt in terms:
        down = ckpt.get(term.keys[0]).to(torch.float32).flatten(1)
        up = ckpt.get(term.keys[1]).to(torch.float32).flatten(1)
        if term.reorder is not None:
            up = term.reorder(up)
        if term.rows is not None:
            full = up.new_zeros(layer.out_features, up.shape[1])
            full[term.rows[0]:term.rows[1]] = up
            up = full
        downs.append(down)
        ups.append(up)
        scales.append(torch.full((down.shape[0],), strength * term.scale))
    return torch.cat(downs).to(dtype), torch.cat(ups, dim=1).to(dtype), torch.cat(scales)


def _uniform(module: nn.Module, tensors: dict[str, tuple], dtype: torch.dtype) -> dict[str, tuple]:
    """The factors made alike over each block list (what block swap needs: the swapped blocks of a list share the
    structure of the ring's shells): a layer of a block gets the largest rank its namesakes in the other blocks
    have, padded with zeros, and a layer without factors whose namesakes have some gets all-zero ones. Zero ranks
    add exactly nothing to a layer's output."""
    out = dict(tensors)
    for list_name in getattr(module, "block_lists", ()):
        ranks: dict[str, int] = {}
        for name, (down, _, _) in tensors.items():
            head, _, rest = name.partition(f"{list_name}.")
            index, _, path = rest.partition(".")
            if head == "" and index.isdigit() and path:
                ranks[path] = max(ranks.get(path, 0), down.shape[0])
        for path, rank in ranks.items():
            for i in range(len(getattr(module, list_name))):
                name = f"{list_name}.{i}.{path}"
                out[name] = _padded(module.get_submodule(name), out.get(name), rank, dtype)
    return out


def _padded(layer: CastLinear, factors: tuple | None, rank: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    down = torch.zeros(rank, layer.in_features, dtype=dtype)
    up = torch.zeros(layer.out_features, rank, dtype=dtype)
    scale = torch.zeros(rank)
    if factors is not None:
        r = factors[0].shape[0]
        down[:r], up[:, :r], scale[:r] = factors
    return down, up, scale


def _set_factors(layer: CastLinear, factors: tuple[torch.Tensor, ...] | None) -> None:
    """Install (or with None remove) a layer's factors; same-shaped ones are overwritten in place, so a change of
    strength keeps the layer's structure (block swap's host copies and ring stay valid)."""
    names = ("lora_down", "lora_up", "lora_scale")
    if factors is None:
        for name in names:
            setattr(layer, name, None)
        return
    device = layer.weight.device
    current = [getattr(layer, n) for n in names]
    if all(c is not None and c.shape == f.shape and c.dtype == f.dtype for c, f in zip(current, factors)):
        for c, f in zip(current, factors):
            c.copy_(f)
        return
    for name, f in zip(names, factors):
        setattr(layer, name, f.to(device))
