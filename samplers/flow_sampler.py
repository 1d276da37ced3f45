"""One flow-matching sampling loop for every Wan-family DiT: single models and Wan2.2 high/low-noise expert pairs.

Per step: pick the expert (official rule: timestep ≥ boundary·1000 → the high-noise expert), make its guided
velocity prediction (CFG with the negative prompt; cond and uncond batched when memory allows), advance one
solver (shared by both experts, as the official loop does), and for TI2V-5B re-paste the given first frame.
Only the active expert is on the GPU. One progress tick per model call, a preview per step, and an interrupt
check before every model call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from .. import runtime
from ..memory import patches
from ..memory.estimate import wan_activation_bytes
from .preview import latent_preview
from .schedules import FlowSchedule
from .solvers import SOLVERS


@dataclass
class Expert:
    module: nn.Module
    cfg: float


@dataclass
class WanConditioning:
    """Everything the DiT sees besides the noisy latent and the timestep."""
    positive: torch.Tensor                      # [1, L, text_dim] text embeddings (real tokens; the DiT pads)
    negative: torch.Tensor                      # [1, L', text_dim]
    y: torch.Tensor | None = None               # [1, 20, F, H, W] I2V mask + image latent
    clip_fea: torch.Tensor | None = None        # [1, 257 | 514, 1280]
    fps: int | None = None                      # SkyReels DF-1.3B's fps embedding
    given_latent: torch.Tensor | None = None    # TI2V: [1, C, F_given, H, W] clean latent frames at the start


def _pad_to(t: torch.Tensor, length: int) -> torch.Tensor:
    return torch.cat([t, t.new_zeros(t.shape[0], length - t.shape[1], t.shape[2])], dim=1) if t.shape[1] < length else t


class _GuidedModel:
    """The classifier-free-guided velocity of one DiT for fixed conditioning."""

    def __init__(self, module: nn.Module, cond: WanConditioning, cfg: float, batched: bool, device: torch.device):
        self.module, self.cfg, self.batched = module, cfg, batched
        self.kwargs = {k: (None if v is None else v.to(device)) for k, v in (("y", cond.y), ("clip_fea", cond.clip_fea))}
        self.kwargs["fps"] = cond.fps
        length = max(cond.positive.shape[1], cond.negative.shape[1])
        self.positive = _pad_to(cond.positive, length).to(device)  # zero rows = padding: the DiT pads with zeros too
        self.negative = _pad_to(cond.negative, length).to(device)

    @property
    def calls_per_step(self) -> int:
        return 1 if self.cfg == 1.0 or self.batched else 2

    def __call__(self, x: torch.Tensor, t: torch.Tensor, call) -> torch.Tensor:
        """`call(fn)` runs one model call (the sampler wraps it with interrupt checks and progress ticks)."""
        if self.cfg == 1.0:
            return call(lambda: self.module(x, t, self.positive, **self.kwargs))
        if self.batched:
            kwargs = {k: (torch.cat([v, v]) if isinstance(v, torch.Tensor) else v) for k, v in self.kwargs.items()}
            both = call(lambda: self.module(torch.cat([x, x]), torch.cat([t, t]),
                                            torch.cat([self.positive, self.negative]), **kwargs))
            v_cond, v_uncond = both.chunk(2)
        else:
            v_cond = call(lambda: self.module(x, t, self.positive, **self.kwargs))
            v_uncond = call(lambda: self.module(x, t, self.negative, **self.kwargs))
        return v_uncond + self.cfg * (v_cond - v_uncond)


def sample_wan(experts: Sequence[Expert], schedule: FlowSchedule, solver: str, cond: WanConditioning,
               x: torch.Tensor, *, boundary: float = 0.0, batch_cfg: bool | None = None,
               latent_format: str | None = None, progress_label: str = "OpenReel sampling") -> torch.Tensor:
    """Integrate `x` (noise, or a noised latent for denoise < 1) along `schedule`; returns the clean latent (CPU).

    `experts`: one model, or (high-noise, low-noise) with `boundary` as a fraction of the 1000 timesteps.
    `batch_cfg`: None decides from free memory (always batched on the CPU).
    """
    if len(experts) not in (1, 2):
        raise ValueError("sample_wan takes one model or a (high-noise, low-noise) pair")
    device = runtime.torch_device()
    solver_state = SOLVERS[solver](schedule.sigmas)
    frames = x.shape[2]
    given = cond.given_latent
    keep = None  # TI2V: 1 where frames are generated, 0 where they are given
    if given is not None:
        keep = torch.ones(1, 1, frames, 1, 1)
        keep[:, :, : given.shape[2]] = 0
        keep = keep.to(device)
        given = torch.cat([given, given.new_zeros(*given.shape[:2], frames - given.shape[2], *given.shape[3:])], 2).to(device)
    x = x.to(device, torch.float32)
    if keep is not None:
        x = (1 - keep) * given + keep * x

    def expert_index(t: torch.Tensor) -> int:
        return 0 if len(experts) == 1 or t.item() >= boundary * 1000 else 1

    active: dict[int, _GuidedModel] = {}

    def activate(i: int) -> _GuidedModel:
        if i not in active:
            for other in list(active):
                patches.offload(experts[other].module)
                del active[other]
            module = experts[i].module
            cfg = module.cfg
            tokens = frames * (x.shape[3] // cfg.patch_size[1]) * (x.shape[4] // cfg.patch_size[2])
            one = wan_activation_bytes(cfg.dim, cfg.ffn_dim, tokens)
            patches.load(module, one)
            batched = batch_cfg if batch_cfg is not None else getattr(module, "cfg_batching", None)
            if batched is None:  # no plan chose: batch when a second sample's activations fit
                batched = device.type == "cpu" or runtime.free_vram(device) > 2.2 * one
            active[i] = _GuidedModel(module, cond, experts[i].cfg, batched, device)
        return active[i]

    def calls_from(i: int) -> int:  # model calls left from step i; experts not loaded yet count as unbatched
        return sum(active[e].calls_per_step if e in active else (1 if experts[e].cfg == 1.0 else 2)
                   for e in map(expert_index, schedule.timesteps[i:]))

    completed = False
    with runtime.Progress(calls_from(0), progress_label) as bar:
        try:
            for i, t in enumerate(schedule.timesteps):
                index = expert_index(t)
                if index not in active:
                    activate(index)
                    bar.set_total(bar.value + calls_from(i))
                model = active[index]
                t_model = torch.full((x.shape[0], frames), float(t), device=device)
                if keep is not None:
                    t_model = t_model * keep.view(1, frames)  # given frames are clean: timestep 0

                def call(fn):
                    runtime.throw_if_interrupted()
                    with torch.no_grad():
                        out = fn()
                    bar.update(1)
                    return out

                v = model(x, t_model, call)
                sigma = schedule.sigmas[i]
                preview = latent_preview(x - sigma * v, latent_format) if latent_format else None
                x = solver_state.step(v, i, x)
                if keep is not None:
                    x = (1 - keep) * given + keep * x
                if preview is not None:
                    bar.update(0, preview)
            completed = True
        finally:
            if not completed or not runtime.IN_COMFYUI:  # inside ComfyUI the memory manager owns residency
                for index in list(active):
                    patches.offload(experts[index].module)
    return x.cpu()
