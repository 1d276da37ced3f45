"""VRAM budget planner: a DiT, a latent size and a budget → block swap, weight precision, token chunks and CFG
batching, with the predicted peak and a plain explanation.

Predicted peak = weights on the GPU + the swap rings (two blocks of each block list that swaps) + activations (the
family's estimate, with or without token chunks, doubled for batched CFG, plus the upcast copy of one linear weight
when weights are stored in 8 bits, plus the cuBLAS / cuDNN workspaces).
Preference: everything resident; else fp8 weights (when allowed); else the fewest swapped blocks; last, the text
and image embedders in host memory too. At each of these steps: CFG batched (fewer, larger model calls) where the
calls are small enough to gain from it (`cfg_batching_helps`), else sequential (the same values), else the same with
token chunks (memory/token_chunks.py), where the network honours
them and they lower the activations. Token chunks come before swapping more blocks or storing weights in fp8: they
cost a small share of time at any size (bench/dit_speed.py's "chunked" variants measure it) and keep the values
up to the rounding of smaller matrix products, while each further swapped block needs host memory and PCIe
bandwidth, and costs time wherever its copy does not hide behind a block's compute (few tokens, slow links,
pageable memory), and fp8 changes the values.
When nothing fits, the plan says so and gives the smallest peak possible.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import torch
import torch.nn as nn

from .. import runtime
from ..handles import DiTHandle
from ..models.common.ops import weight_linears
from ..models.registry import family_of
from .block_swap import BlockSwap
from .patches import register_patch
from .token_chunks import TOKEN_CHUNK, supports_token_chunks

GIB = 1 << 30
FP8_WEIGHT_DTYPE = "fp8_e4m3fn_scaled"
_ITEMSIZE = {"bf16": 2, "fp16": 2, "fp32": 4}
ActivationBytes = Callable[[int, int], int]   # (tokens, batch) → bytes: the family's estimate
WORKSPACE = 64 << 20  # cuBLAS (32 MiB on Hopper) and cuDNN attention workspaces, allocated through torch
# From this many tokens per model call a call fills a GPU alone, so running both CFG branches as one call of twice
# the rows saves no time and doubles the activations (Wan 14B at 32,760 tokens on an H200, compiled: 2.859 s per
# branch batched, 2.834 s sequential; bench/RESULTS.md). Below it, one call of two samples beats two small calls.
BATCH_CFG_TOKENS = 8192


def cfg_batching_helps(tokens: int) -> bool:
    """Whether a model call of `tokens` tokens (all samples of the batch) gains from batching its CFG branches."""
    return tokens < BATCH_CFG_TOKENS


def _set_cfg_batching(module: nn.Module, batched: bool | None) -> None:
    module.cfg_batching = batched


# Value: None (the sampler decides from free VRAM), True (cond and uncond in one batch) or False (two calls).
register_patch("cfg_batching", None, _set_cfg_batching)


@dataclass(frozen=True)
class WeightBytes:
    """A DiT's weights in bytes, by where block swap can put them."""
    other: int                    # always on the GPU: patch and time embeddings, head
    embedders: int                # text and image embedders (block swap can keep them in host memory)
    blocks: tuple[int, ...]       # in run order over the model's block lists
    blocks_fp8: tuple[int, ...]   # the same blocks with their linear weights in fp8 plus one fp32 scale each
    largest_linear: int           # elements of the largest block linear weight
    stored_fp8: bool              # the block linears are already stored in 8 bits
    list_sizes: tuple[int, ...] = ()   # blocks per block list, in run order (empty: one list)

    def ring(self, swap: int, fp8: bool = False) -> int:
        """GPU bytes of block swap's rings when the last `swap` blocks are swapped: two shells of the largest
        swapped block of each list that swaps (one where only one block of it does)."""
        blocks = self.blocks_fp8 if fp8 else self.blocks
        first, start, total = len(blocks) - swap, 0, 0
        for size in self.list_sizes or (len(blocks),):
            swapped = blocks[max(start, first):start + size]
            total += min(len(swapped), 2) * max(swapped, default=0)
            start += size
        return total


def weight_bytes(module: nn.Module) -> WeightBytes:
    """Measure `module` (a meta-device module works too: only shapes and dtypes are read). The weight linears are
    those the network was built with (`ops`); in a network built with plain ops, every block linear counts."""
    lists = module.block_lists
    number = {(name, i): n for n, (name, i) in enumerate((name, i) for name in lists
                                                         for i in range(len(getattr(module, name))))}
    weights = {f"{name}.weight" for name, _ in weight_linears(module)} or \
        {f"{name}.weight" for name, m in module.named_modules() if isinstance(m, nn.Linear)}
    other = embedders = largest = 0
    blocks = [0] * len(number)
    blocks_fp8 = [0] * len(number)
    stored_fp8 = False
    for name, t in module.state_dict().items():
        size = t.numel() * t.element_size()
        head, *rest = name.split(".")
        if head in lists:
            index = number[(head, int(rest[0]))]
            blocks[index] += size
            if name in weights:
                largest = max(largest, t.numel())
                stored_fp8 |= t.element_size() == 1
                blocks_fp8[index] += size if t.element_size() == 1 else t.numel() + 4
            else:
                blocks_fp8[index] += size
        elif head in module.embedders:
            embedders += size
        else:
            other += size
    sizes = tuple(len(getattr(module, name)) for name in lists)
    return WeightBytes(other, embedders, tuple(blocks), tuple(blocks_fp8), largest, stored_fp8, sizes)


@dataclass(frozen=True)
class Peak:
    """The parts of a predicted peak, in bytes."""
    weights: int       # resident weights
    ring: int          # the swap rings' GPU blocks
    activations: int
    cached: int = 0    # what a step cache keeps between calls (its residuals of the blocks' stream)

    @property
    def total(self) -> int:
        return self.weights + self.ring + self.activations + self.cached


def predict(wb: WeightBytes, activation_bytes: ActivationBytes, tokens: int, batch: int, *, swap: int = 0,
            fp8: bool = False, batched_cfg: bool = False, offload_embeddings: bool = False,
            compute_itemsize: int = 2, cached: int = 0) -> Peak:
    """Peak VRAM of one model call of a batch of `batch` latents with these settings; `activation_bytes` is the
    family's estimate of a forward's working memory (models/<family>/family.py); `cached`: what a step cache keeps
    between calls."""
    blocks = wb.blocks_fp8 if fp8 else wb.blocks
    first = len(blocks) - swap
    weights = wb.other + (0 if offload_embeddings else wb.embedders) + sum(blocks[:first])
    ring = wb.ring(swap, fp8)
    activations = activation_bytes(tokens, batch * (2 if batched_cfg else 1)) + WORKSPACE
    if fp8 or wb.stored_fp8:
        activations += 2 * wb.largest_linear * compute_itemsize  # the upcast weight and its scaled copy
    if offload_embeddings:  # staged on the GPU once per call, before the blocks' activations exist
        activations = max(activations, wb.embedders)
    return Peak(weights, ring, activations, cached)


@dataclass(frozen=True)
class TokenChunks:
    """A model's option to run in token chunks: tokens per chunk, and the family's activation estimate that way."""
    tokens: int
    activation_bytes: ActivationBytes


@dataclass(frozen=True)
class Budget:
    """VRAM available to one model call, and where the number comes from (for the explanation)."""
    bytes: int
    source: str


def _held(module: nn.Module, device: torch.device) -> int:
    """VRAM `module` holds now (freed when it is loaded again under a new plan), swap ring included."""
    tensors = list(module.state_dict().values())
    view = getattr(getattr(module, "residency", None), "view", None)
    if view is not None:
        tensors += list(view.state_dict().values())
    seen = {t.data_ptr(): t.numel() * t.element_size() for t in tensors if t.device == device}
    return sum(seen.values())


def auto_budget(modules: list[nn.Module]) -> Budget | None:
    """Free VRAM plus what these models hold now, minus a margin for allocator fragmentation and kernel
    workspaces (1 GiB + 2%). None when the compute device is not a CUDA GPU (no VRAM budget applies)."""
    device = runtime.torch_device()
    if device.type != "cuda":
        return None
    free = runtime.free_vram(device) + sum(_held(m, device) for m in modules)
    margin = GIB + free // 50
    return Budget(max(0, free - margin), f"auto: {_gib(free)} free for this model − {_gib(margin)} margin")


@dataclass(frozen=True)
class Plan:
    """How to run one DiT within a VRAM budget."""
    blocks_to_swap: int
    fp8: bool                  # switch the weights to fp8_e4m3fn_scaled (False when already 8-bit)
    batched_cfg: bool
    offload_embeddings: bool
    peak: Peak
    budget: Budget | None      # None: no VRAM budget applies (CPU)
    fits: bool
    explanation: str
    token_chunk: int = 0       # tokens per chunk (0: off)

    def apply(self, handle: DiTHandle) -> DiTHandle:
        """`handle` with this plan: its weight dtype and its memory patches."""
        if self.fp8:
            handle = replace(handle, weight_dtype=FP8_WEIGHT_DTYPE)
        handle = handle.with_patch("block_swap", BlockSwap(self.blocks_to_swap, self.offload_embeddings))
        handle = handle.with_patch("token_chunks", self.token_chunk)
        return handle.with_patch("cfg_batching", self.batched_cfg)


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


class _Option(NamedTuple):
    fp8: bool
    swap: int
    offload: bool
    chunk: int
    batched: bool
    peak: Peak


def _candidates(blocks: int, fp8_possible: bool):
    """(fp8, swap, offload_embeddings) in order of preference."""
    yield False, 0, False
    precision = fp8_possible
    if fp8_possible:
        yield True, 0, False
    for swap in range(3, blocks + 1):  # a ring of two: swapping 1 or 2 blocks saves nothing
        yield precision, swap, False
    yield precision, blocks, True


def _without_chunks(plain: _Option | None, fp8: bool, swap: int, offload: bool, batched: bool, count: int) -> str:
    """What the first plan without token chunks that fits (`plain`) changes from the chosen one."""
    if plain is None:
        return "nothing fits without them"
    changes = []
    if plain.swap != swap:
        changes.append(f"swap {plain.swap} of {count} blocks")
    if plain.fp8 and not fp8:
        changes.append("fp8 weights")
    if plain.offload and not offload:
        changes.append("text/image embedders in host memory")
    if batched and not plain.batched:
        changes.append("sequential CFG")
    return "without them: " + ", ".join(changes)


def plan_for(wb: WeightBytes, activation_bytes: ActivationBytes, tokens: int, latent_shape: tuple[int, ...],
             budget: Budget | None, *, allow_fp8: bool = False, compute_itemsize: int = 2,
             name: str = "the model", chunks: TokenChunks | None = None, cached: int = 0) -> Plan:
    """The plan for a model measured as `wb`, for a latent of `latent_shape` that makes `tokens` tokens per video;
    `chunks`: the model can run in token chunks, with these activations; `cached`: what a step cache keeps between
    calls (see `plan` for the usual entry point)."""
    batch, _, frames, height, width = latent_shape
    count = len(wb.blocks)
    head = (f"{name}: {count} blocks, {_gib(sum(wb.blocks) + wb.other + wb.embedders)} of weights; latent "
            f"{batch}×{frames}×{height}×{width} → {tokens:,} tokens per video.")
    if budget is None:
        peak = predict(wb, activation_bytes, tokens, batch, batched_cfg=True, compute_itemsize=compute_itemsize,
                       cached=cached)
        return Plan(0, False, True, False, peak, None, True,
                    f"{head}\nThe compute device is not a CUDA GPU: no VRAM budget applies; everything stays resident.")

    ways = [(0, activation_bytes)]
    if chunks is not None and any(chunks.activation_bytes(tokens, n) < activation_bytes(tokens, n)
                                  for n in (batch, 2 * batch)):
        ways.append((chunks.tokens, chunks.activation_bytes))

    def settings(fp8, swap, offload):
        for chunk, activations in ways:
            for batched in (True, False) if cfg_batching_helps(tokens * batch) else (False,):
                yield _Option(fp8, swap, offload, chunk, batched,
                              predict(wb, activations, tokens, batch, swap=swap, fp8=fp8, batched_cfg=batched,
                                      offload_embeddings=offload, compute_itemsize=compute_itemsize, cached=cached))

    options = [s for c in _candidates(count, allow_fp8 and not wb.stored_fp8) for s in settings(*c)]
    chosen = next((s for s in options if s.peak.total <= budget.bytes), None)
    fits = chosen is not None
    fp8, swap, offload, chunk, batched, peak = chosen or min(options, key=lambda s: s.peak.total)

    blocks = wb.blocks_fp8 if fp8 else wb.blocks
    what = [f"swap {swap} of {count} blocks" if swap else "all blocks resident",
            "fp8 weights (fp8_e4m3fn_scaled)" if fp8 else ("fp8 weights (as loaded)" if wb.stored_fp8 else
                                                           "weights as loaded"),
            "batched CFG" if batched else "sequential CFG"]
    if chunk:
        what.append(f"token chunks of {chunk:,} tokens")
    if offload:
        what.append("text/image embedders in host memory")
    lines = [head, f"Budget {_gib(budget.bytes)} ({budget.source}).",
             ("Plan: " if fits else "Does NOT fit. Smallest possible: ") + ", ".join(what) + ".",
             f"Predicted peak {_gib(peak.total)} = weights {_gib(peak.weights)}"
             + (f" + swap ring {_gib(peak.ring)}" if peak.ring else "") + f" + activations {_gib(peak.activations)}"
             + (f" + step-cache residuals {_gib(peak.cached)}" if peak.cached else "") + "."]
    if chunk:
        unchunked = predict(wb, activation_bytes, tokens, batch, swap=swap, fp8=fp8, batched_cfg=batched,
                            offload_embeddings=offload, compute_itemsize=compute_itemsize).activations
        plain = next((s for s in options if not s.chunk and s.peak.total <= budget.bytes), None)
        lines.append(f"Token chunks: activations {_gib(peak.activations)} instead of {_gib(unchunked)}, for a few "
                     f"percent more time ({_without_chunks(plain, fp8, swap, offload, batched, count)}).")
    if swap:
        host = sum(blocks[count - swap:])
        lines.append(f"Host memory for the swapped blocks: {_gib(host)} (page-locked); every model call copies "
                     f"{_gib(host)} to the GPU, overlapped with compute.")
    if not fits:
        lines.append(f"Even so the peak is {_gib(peak.total - budget.bytes)} over the budget; activations alone "
                     f"are {_gib(peak.activations)}. Lower the resolution or the frame count, or raise the budget"
                     + ("" if allow_fp8 or wb.stored_fp8 else ", or allow fp8") + ".")
    return Plan(swap, fp8, batched, offload, peak, budget, fits, "\n".join(lines), chunk)


def plan(handle: DiTHandle, module: nn.Module, latent_shape: tuple[int, ...],
         budget_bytes: int | Budget | None = None, *, allow_fp8: bool = False) -> Plan:
    """Plan `handle` (its loaded `module`) for a latent of `latent_shape` [B, C, F, H, W] within `budget_bytes`
    (None: auto); the family supplies tokens and activation memory, with token chunks where the module honours
    them (the family's `activation_bytes(..., token_chunk=n)`)."""
    family, spec = family_of(handle.spec), handle.spec
    if isinstance(budget_bytes, int):
        budget = Budget(budget_bytes, "given")
    else:
        budget = budget_bytes if budget_bytes is not None else auto_budget([module])
    chunks = None
    if supports_token_chunks(module):
        chunks = TokenChunks(TOKEN_CHUNK, lambda tokens, batch: family.activation_bytes(spec, tokens, batch,
                                                                                        token_chunk=TOKEN_CHUNK))
    tokens = family.tokens(spec, tuple(latent_shape))
    return plan_for(weight_bytes(module), lambda tokens, batch: family.activation_bytes(spec, tokens, batch),
                    tokens, tuple(latent_shape), budget, allow_fp8=allow_fp8,
                    compute_itemsize=_ITEMSIZE.get(handle.compute_dtype, 2), name=spec.description, chunks=chunks,
                    cached=step_cache_bytes(handle, tokens, latent_shape[0]))


def step_cache_bytes(handle: DiTHandle, tokens: int, batch: int) -> int:
    """What the handle's step cache keeps between calls: TeaCache and MagCache a residual of the blocks' stream per
    guidance branch (two: the plan does not know the guidance, and classifier-free guidance is the rule);
    EasyCache only a latent-sized difference. Put the Step Cache before the VRAM Budget so the plan sees it."""
    settings = handle.patch("step_cache")
    if settings is None or getattr(settings, "method", "easycache") == "easycache" or settings.threshold <= 0:
        return 0
    return 2 * family_of(handle.spec).stream_bytes(handle.spec, tokens, batch)
