"""What a model family plugs in, and the registries the loaders, samplers, planner and nodes ask.

A family (models/<family>/family.py) registers a `DiTFamily` adapter and, where it brings its own VAE, a
`VAEFamily`. Everything that differs per family lives behind these two small interfaces: how its files are named
and read (anchors, normalize, describe, build), what its sampling needs (defaults, checks, how conditioning becomes
model inputs, an embedded guidance scale among them, the timestep convention) and what the planner must know
(tokens, activation memory). Nothing outside a family's own folder asks which family a model is.

Checkpoints reach the adapters as `model_loaders.checkpoint.Checkpoint` objects; the adapters use only what
`Checkpoint` (the protocol below) names, so this layer does not import the loaders.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn

from ...errors import DetectionError, InputError
from ...handles import DiTSpec, TextEmbeds
from ...latents import ImageConditioning, LatentFormat
from .ops import Ops
from .step_cache import StepCacheProfile



class Checkpoint(Protocol):
    """What a family adapter may ask of a checkpoint: its tensors' names and shapes, renamed views of it, views
    with tensors joined from several sources (`combined`: e.g. fused q/k/v), the config.json beside it, and a name
    for messages (model_loaders.checkpoint.Checkpoint is the implementation)."""
    name: str
    config: dict | None

    def keys(self) -> list[str]: ...
    def __contains__(self, key: str) -> bool: ...
    def shape(self, key: str) -> tuple[int, ...]: ...
    def renamed(self, rename: Callable[[str], "str | None"]) -> "Checkpoint": ...
    def strip_prefix(self, prefix: str) -> "Checkpoint": ...
    def combined(self, plan: dict[str, tuple[tuple[str, ...], Callable[..., torch.Tensor]]]) -> "Checkpoint": ...


def find_prefix(ckpt: Checkpoint, anchors: tuple[str, ...]) -> str | None:
    """The prefix in front of an anchor key ('' when bare), or None if no anchor is present."""
    for anchor in anchors:
        for key in ckpt.keys():
            if key.endswith(anchor) and (len(key) == len(anchor) or key[-len(anchor) - 1] == "."):
                return key[: len(key) - len(anchor)]
    return None


def keep_under(ckpt: Checkpoint, prefix: str) -> Checkpoint:
    """Keys under `prefix`, with it removed; other keys (other models in a combined file) are dropped."""
    return ckpt.renamed(lambda k: k[len(prefix):] if k.startswith(prefix) else None)


def require_keys(ckpt: Checkpoint, needed: tuple[str, ...], what: str) -> None:
    """A DetectionError naming the keys of `needed` that a checkpoint of `what` (e.g. "a Wan model") lacks."""
    missing = [k for k in needed if k not in ckpt]
    if missing:
        raise DetectionError(f"{ckpt.name} looks like {what} but lacks {', '.join(missing)}",
                             "the file is incomplete or not a full model; download it again")


def padded_text(text: torch.Tensor, mask: torch.Tensor | None, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Text token states [B, L, W] zero-padded to `length` tokens, and their mask (True: a real token) padded alike,
    so two prompts' states batch for classifier-free guidance."""
    real = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device) if mask is None else mask.bool()
    pad = length - text.shape[1]
    return (torch.cat([text, text.new_zeros(text.shape[0], pad, *text.shape[2:])], dim=1),
            torch.cat([real, real.new_zeros(real.shape[0], pad)], dim=1))


@dataclass(frozen=True)
class SamplingDefaults:
    """A model's official sampling recipe."""
    steps: int
    shift: float
    guidance: float             # single model, or the high-noise expert of a pair
    guidance_low_noise: float   # the low-noise expert of a pair
    boundary: float             # switch point of a pair as a fraction of the 1000 timesteps (0: no pair)
    fps: float
    source: str                 # which official recipe these come from
    embedded_guidance: float = 0.0  # the scale a guidance-distilled model takes as an input (0: it takes none)
    solver: str = "unipc"           # the official solver ("unipc", "dpm++_2m", "euler") …
    schedule: str = "wan_unipc"     # … and noise table: "wan_unipc" (Wan's, σ from 0.999), "wan_linear" (linspace
                                    # 1 → 0, integer timesteps) or "linear" (linspace 1 → 0, float timesteps σ·1000)


@dataclass(frozen=True)
class LoraTarget:
    """Where a LoRA's tensor for one parameter lands in a family's network: the parameter `param` (official name),
    the output rows `rows` (start, stop) of it that the LoRA's layer makes when the network fuses several of the
    file's layers into one (HunyuanVideo's q, k, v), and `reorder`, applied to the LoRA's output rows when the
    network orders them differently from the file's layer."""
    param: str
    rows: tuple[int, int] | None = None
    reorder: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True, eq=False)
class ModelInputs:
    """One model's keyword inputs for a sampling run besides the latent and the timestep: `shared` by every call,
    and per guidance branch ("positive", and "negative" for classifier-free guidance). Tensors in the branches have
    equal shapes, so a batched CFG call concatenates them."""
    positive: dict[str, Any]
    negative: dict[str, Any] | None = None
    shared: dict[str, Any] = field(default_factory=dict)


class DiTFamily:
    """The adapter of one family of diffusion transformers. Subclasses set the class attributes and override the
    methods their family needs; the defaults suit a text-to-video flow model with classifier-free guidance."""

    name: str = ""
    title: str = ""
    anchors: tuple[str, ...] = ()      # any one of these keys (after a prefix) proves the family
    runnable: bool = True              # False: recognized (for clear messages), not yet runnable
    fp32_params: str = ""              # regex of parameters kept in float32

    # ------------------------------------------------------------------ files
    def normalize(self, ckpt: Checkpoint) -> Checkpoint:
        """The checkpoint under this family's parameter names, prefix removed."""
        return ckpt.strip_prefix(find_prefix(ckpt, self.anchors) or "")

    def describe(self, ckpt: Checkpoint) -> DiTSpec:
        """The spec from shapes (raises DetectionError for a file of this family it cannot run)."""
        raise NotImplementedError

    def recipes(self) -> dict[str, str]:
        """The official recipes a person picks where the weights cannot tell two models apart (Step-Video-T2V and
        its step-distilled Turbo): title → variant, for the DiT loader's `recipe` choice. None by default."""
        return {}

    def with_variant(self, spec: DiTSpec, variant: str) -> DiTSpec:
        """The same model as the variant `variant` of `recipes()` (its defaults and description)."""
        raise InputError(f"{spec.description} has no recipes to choose from", "set recipe to auto")

    def lora_target(self, name: str, spec: DiTSpec | None = None) -> LoraTarget | None:
        """Where the parameter `name` a LoRA changes (its prefix removed; this family's official, ComfyUI or
        diffusers naming) lands in this family's network, or None when `name` is no name of this family. With
        `spec` None only recognition is asked (a LoRA made for another family is named in errors), and rows of
        fused layers are left out. The default takes names as the network's own and recognizes nothing."""
        return LoraTarget(name) if spec is not None else None

    def build(self, spec: DiTSpec, ops: Ops) -> nn.Module:
        raise NotImplementedError

    # ------------------------------------------------------------------ sampling
    def defaults(self, spec: DiTSpec, pair: bool, width: int, height: int) -> SamplingDefaults:
        raise NotImplementedError

    def check(self, spec: DiTSpec, fmt: LatentFormat, cond: ImageConditioning | None, embeds: TextEmbeds,
              pair: DiTSpec | None) -> None:
        """Refuse a latent, conditioning, text or expert pair that does not fit, before any GPU work."""

    def model_inputs(self, spec: DiTSpec, embeds: TextEmbeds, cond: ImageConditioning | None,
                     defaults: SamplingDefaults) -> ModelInputs:
        """The network's inputs. Classifier-free guidance runs the negative branch (skipped at guidance 1); a
        guidance-distilled model takes its scale as a shared input (`embedded_scale`)."""
        raise NotImplementedError

    @staticmethod
    def embedded_scale(embeds: TextEmbeds, defaults: SamplingDefaults) -> float:
        """The embedded guidance scale of a run: OpenReel Embedded Guidance's value, else the official one."""
        return defaults.embedded_guidance if embeds.embedded_guidance is None else embeds.embedded_guidance

    def diffusion_forcing(self, spec: DiTSpec) -> SamplingDefaults:
        """The official diffusion-forcing recipe for `spec`, or an InputError when it is no diffusion-forcing model."""
        raise InputError(f"{spec.description} is not a diffusion-forcing model", "use OpenReel Sampler")

    def causal_attention(self, spec: DiTSpec, block_size: int) -> dict[str, Any]:
        """Model inputs that make attention block-causal over groups of `block_size` latent frames."""
        raise InputError(f"{spec.description} has no block-causal attention", "switch causal_attention off")

    def step_cache_profile(self, spec: DiTSpec, latent_shape: tuple[int, ...] | None = None,
                           pair: bool = False) -> StepCacheProfile:
        """The published step-cache calibrations for `spec` (speed/step_cache), for latents of `latent_shape`
        [B, C, F, H, W] (None: any size) and as a single model or one of a `pair` of experts. None by default."""
        return StepCacheProfile()

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The sampler's per-latent-frame timesteps [B, F] (0..1000; given frames 0) in the form the network
        takes, e.g. `t[:, 0]` for a network with one timestep per sample."""
        return t

    def model_output(self, output: torch.Tensor) -> torch.Tensor:
        """The network's output as the velocity noise − x0 the samplers integrate (samplers/session.py applies it
        to every model call): the output itself by default; e.g. its negation for a network predicting x0 − noise
        (Step-Video)."""
        return output

    # ------------------------------------------------------------------ memory
    def tokens(self, spec: DiTSpec, latent_shape: tuple[int, ...]) -> int:
        """Tokens of one video of `latent_shape` [B, C, F, H, W] (the config's patch_size: (t, h, w))."""
        return math.prod(n // p for n, p in zip(latent_shape[2:], spec.config.patch_size))

    def activation_bytes(self, spec: DiTSpec, tokens: int, batch: int = 1, token_chunk: int = 0) -> int:
        """Upper estimate of one forward's working memory beyond the weights (16-bit compute), with the blocks run
        in `token_chunk`-token slices where the network supports it (0: whole)."""
        raise NotImplementedError

    def stream_bytes(self, spec: DiTSpec, tokens: int, batch: int = 1) -> int:
        """Bytes of the blocks' stream for `tokens` video tokens (what a step cache keeps per guidance branch as a
        residual): by default float32 of the config's `hidden` width per token."""
        return batch * tokens * spec.config.hidden * 4


class VAEFamily:
    """The adapter of one family of video VAEs: recognition, config from shapes, build, and its latent format.
    The module it builds has `encode(video, tile_size)`, `decode(latent, tile_size)`, `decode_iter(latent)` working
    in the normalized latent space, and `cfg.spatial_stride`."""

    name: str = ""
    title: str = ""
    anchors: tuple[str, ...] = ()

    def normalize(self, ckpt: Checkpoint) -> Checkpoint:
        """The VAE's keys under this family's names: those under the anchor's prefix, with it removed (other
        models in a combined file are dropped)."""
        return keep_under(ckpt, find_prefix(ckpt, self.anchors) or "")

    def describe(self, ckpt: Checkpoint) -> Any:
        raise NotImplementedError

    def build(self, config: Any) -> nn.Module:
        raise NotImplementedError

    def latent_format(self, config: Any) -> str:
        raise NotImplementedError

    def image_to_video(self, config: Any, encode: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
                       width: int, height: int, frames: int, end: torch.Tensor | None = None,
                       clip_tokens: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
        """The LATENT (with its `ImageConditioning`) that starts a video from `start` (and ends it at `end`)."""
        raise InputError(f"{self.title} VAEs make no image-to-video conditioning",
                         "use OpenReel Empty Latent (text-to-video)")


DIT_FAMILIES: dict[str, DiTFamily] = {}
VAE_FAMILIES: dict[str, VAEFamily] = {}


def register_family(family: DiTFamily) -> DiTFamily:
    DIT_FAMILIES[family.name] = family
    return family


def register_vae_family(family: VAEFamily) -> VAEFamily:
    VAE_FAMILIES[family.name] = family
    return family
