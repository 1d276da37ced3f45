"""The sampling session every sampler loop runs on: which model is on the GPU, guidance, progress, previews,
interrupts and patch preparation, so that a sampler itself is a short loop over noise levels.

An `Expert` is one prepared model (its module with the handle's patches applied) with its family adapter, its
inputs for this run and its guidance scale: a single DiT is one expert, a Wan2.2 pair two. The session keeps only
the active expert on the GPU (offloading the other first), asks the family how much working memory a call needs,
decides batched or sequential classifier-free guidance (the VRAM plan's choice, else batched when the calls are
small enough to gain from it and a second sample's activations fit), makes each model call with an interrupt check
before it and a progress tick after it, and shows a preview per step. A guidance-distilled model's embedded scale
is one of its inputs (the family puts it in `ModelInputs.shared`); classifier-free guidance is the expert's
`guidance` and may come on top.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from .. import runtime
from ..handles import DiTSpec
from ..latents import LatentFormat, preview
from ..memory import patches
from ..memory.planner import cfg_batching_helps
from ..models.common import calls
from ..models.common.family import DiTFamily, ModelInputs

log = logging.getLogger(__name__)


@dataclass
class Expert:
    module: nn.Module
    guidance: float
    inputs: ModelInputs
    family: DiTFamily | None = None   # None: classifier-free guidance, no memory estimate (tests, CPU)
    spec: DiTSpec | None = None

    @property
    def unguided(self) -> bool:
        return self.guidance == 1.0 or self.inputs.negative is None


def _on(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _twice(value: Any) -> Any:
    return torch.cat([value, value]) if isinstance(value, torch.Tensor) else value


class _Active:
    """An expert on the compute device with its inputs there too, and the CFG mode chosen for it."""

    def __init__(self, expert: Expert, device: torch.device, batched: bool):
        self.expert, self.batched = expert, batched
        inputs = expert.inputs
        self.shared = {k: _on(v, device) for k, v in inputs.shared.items()}
        self.positive = {k: _on(v, device) for k, v in inputs.positive.items()}
        self.negative = {k: _on(v, device) for k, v in (inputs.negative or {}).items()}
        module, family = expert.module, expert.family
        # every model call's output as the velocity noise − x0 (the family's convention: DiTFamily.model_output)
        self.model = module if family is None else lambda *args, **kw: family.model_output(module(*args, **kw))

    def velocity(self, x: torch.Tensor, t: torch.Tensor, call: Callable) -> torch.Tensor:
        """`call(fn, branches)` makes one model call holding the rows of those guidance branches."""
        module, g = self.model, self.expert.guidance
        if self.expert.unguided:
            return call(lambda: module(x, t, **self.positive, **self.shared), calls.BRANCHES[:1])
        if self.batched:
            both = {k: torch.cat([v, self.negative[k]]) if isinstance(v, torch.Tensor) else v
                    for k, v in self.positive.items()}
            shared = {k: _twice(v) for k, v in self.shared.items()}
            v_cond, v_uncond = call(lambda: module(torch.cat([x, x]), torch.cat([t, t]), **both, **shared),
                                    calls.BRANCHES).chunk(2)
        else:
            v_cond = call(lambda: module(x, t, **self.positive, **self.shared), calls.BRANCHES[:1])
            v_uncond = call(lambda: module(x, t, **self.negative, **self.shared), calls.BRANCHES[1:])
        return v_uncond + g * (v_cond - v_uncond)


class SamplingSession:
    """Use as a context manager around a sampling loop: `velocity(i, x, t)` is expert i's guided prediction."""

    def __init__(self, experts: Sequence[Expert], *, batch_cfg: bool | None = None,
                 latent_format: LatentFormat | None = None, label: str = "OpenReel sampling"):
        self.experts = list(experts)
        self.batch_cfg = batch_cfg
        self.latent_format = latent_format
        self.label = label
        self.device = runtime.torch_device()
        self.active: dict[int, _Active] = {}
        self.loaded: set[int] = set()        # experts whose weights this session put on the GPU
        self.bar: runtime.Progress | None = None
        self.reports = calls.Reports()       # what wrappers keeping state across calls (step caches) report
        self.run: calls.Run | None = None
        self._preview: tuple[torch.Tensor, torch.cuda.Event | None] | None = None   # a frame on its way to the host

    def __enter__(self) -> "SamplingSession":
        self.bar = runtime.Progress(0, self.label).__enter__()
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self._draw_preview()
        self._preview = None
        texts = self.reports.texts() if kind is None else []
        for text in texts:
            log.info("%s: %s", self.label, text)
        if texts:
            self.describe("; ".join(text.splitlines()[0] for text in texts))
        try:
            # After a run the experts stay on the GPU until another model needs the room (ComfyUI's manager, or
            # standalone runtime's least-recently-used rule, moves them then), so the next run moves nothing.
            if kind is not None:
                for index in sorted(self.loaded):
                    patches.offload(self.experts[index].module)
            self.loaded.clear()
        finally:
            self.bar.__exit__(kind, exc, tb)

    # ------------------------------------------------------------------ residency and call counts
    def activate(self, index: int, x: torch.Tensor) -> _Active:
        """Expert `index` on the GPU (another one offloaded first unless both fit), its CFG mode chosen for
        latents like `x`."""
        if index not in self.active:
            self.active.clear()
            expert = self.experts[index]
            one = 0
            if expert.family is not None:
                one = expert.family.activation_bytes(expert.spec, expert.family.tokens(expert.spec, tuple(x.shape)),
                                                     batch=x.shape[0],
                                                     token_chunk=getattr(expert.module, "token_chunk", 0))
            self._make_room(index, one)
            patches.load(expert.module, one)
            self.loaded.add(index)
            batched = self.batch_cfg if self.batch_cfg is not None else getattr(expert.module, "cfg_batching", None)
            if batched is None:  # no plan chose: batch small calls when a second sample's activations fit
                tokens = 0 if expert.family is None else \
                    expert.family.tokens(expert.spec, tuple(x.shape)) * x.shape[0]
                batched = self.device.type == "cpu" or (
                    cfg_batching_helps(tokens) and runtime.free_vram(self.device) > 2.2 * one)
            self.active[index] = _Active(expert, self.device, batched)
        return self.active[index]

    def _make_room(self, index: int, activations: int) -> None:
        """Offload the other loaded experts unless expert `index`, a batched call's activations and a margin fit
        beside them: a GPU that holds both experts of a pair keeps both, so nothing moves when the sampler
        switches (and a run that starts with the low-noise expert finds it there). Experts under block swap, or
        any plan of the VRAM planner, are always offloaded, also when an earlier run left them on the GPU: their
        plan assumed the GPU to themselves (a 24 GB plan on a larger card stays within 24 GB)."""
        modules = [expert.module for expert in self.experts]
        planned = any(getattr(m, "residency", None) is not None or getattr(m, "cfg_batching", None) is not None
                      for m in modules)
        others = (set(range(len(self.experts))) if planned else self.loaded) - {index}
        if not others:
            return
        need = (0 if index in self.loaded else runtime.module_bytes(self.experts[index].module)) \
            + 2.2 * activations + (1 << 30)
        if planned or self.device.type == "cpu" or runtime.free_vram(self.device) < need:
            for other in sorted(others):
                patches.offload(self.experts[other].module)
            self.loaded -= others

    def begin_run(self, steps: int, spans: Sequence[range] | None = None) -> None:
        """A new run of `steps` steps: a sampling loop, or one diffusion-forcing window. Wrappers that keep state
        from call to call (step caches) start afresh. `spans`: the steps each expert takes (all, by default)."""
        spans = tuple(spans) if spans is not None else (range(steps),) * len(self.experts)
        self.run = calls.Run(steps, spans, self.reports)

    def calls_per_step(self, index: int) -> int:
        """Progress ticks one step of expert `index` makes: one per guidance branch it evaluates (a batched CFG
        call ticks for both), so the bar's total is known before any expert is loaded and never changes."""
        return 1 if self.experts[index].unguided else 2

    def describe(self, text: str) -> None:
        """Where the run is, for a person (e.g. "window 2/5"), beside the progress bar where the host shows text."""
        self.bar.describe(f"{self.label}: {text}")

    def set_remaining(self, calls: int) -> None:
        """The progress bar's total: ticks made so far plus `calls` still to come (`calls_per_step`)."""
        self.bar.set_total(self.bar.value + calls)

    # ------------------------------------------------------------------ calls
    def _call(self, fn: Callable[[], torch.Tensor], info: calls.Call | None = None, ticks: int = 1) -> torch.Tensor:
        runtime.throw_if_interrupted()
        with torch.no_grad():
            if info is None:
                out = fn()
            else:
                with calls.calling(info):
                    out = fn()
        self.bar.update(ticks)
        return out

    def velocity(self, index: int, x: torch.Tensor, t: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """Expert `index`'s guided velocity at latents `x` and model timesteps `t` (it must be active); `step`:
        the step of the current run (`begin_run`) it is for, which wrappers keeping state across calls read."""
        active = self.active[index]
        if self.run is None or step is None:
            return active.velocity(x, t, lambda fn, branches: self._call(fn, ticks=len(branches)))
        per_step = 1 if active.expert.unguided else 2  # branches a step evaluates

        def call(fn, branches):
            return self._call(fn, calls.Call(self.run, step, branches, per_step, index), len(branches))
        return active.velocity(x, t, call)

    def show(self, x0: torch.Tensor) -> None:
        """A preview of the current clean-latent estimate, where the latent format has a preview map. Its middle
        frame goes to the host without waiting for the GPU and is drawn at the next preview or the run's end, when
        the copy has long finished: a preview never holds the GPU idle between steps."""
        if self.latent_format is None or self.latent_format.preview_factors is None:
            return
        self._draw_preview()
        middle = x0.shape[2] // 2
        frame = x0[:1, :, middle:middle + 1]
        if frame.device.type == "cuda":
            host = torch.empty(frame.shape, dtype=frame.dtype, pin_memory=True)
            host.copy_(frame, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
            self._preview = (host, copied)
        else:
            self._preview = (frame.clone(), None)

    def _draw_preview(self) -> None:
        if self._preview is None:
            return
        frame, copied = self._preview
        self._preview = None
        if copied is not None:
            copied.synchronize()
        image = preview(frame, self.latent_format)
        if image is not None:
            self.bar.update(0, image)
