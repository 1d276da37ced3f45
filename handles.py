"""What flows between nodes for models: small immutable descriptions, never the heavy modules themselves.

A node never mutates a handle; it returns a new one (`with_patch`, `dataclasses.replace`), so ComfyUI's output
cache stays correct. The module behind a handle is built once per `weights_key` (kind, files, their stamps, weight
and compute dtype) and shared through `model_loaders.cache`; `model_loaders.core.module_of` rebuilds it from the
files if the cache let it go. Patches (attention backend, block swap, compile, …) change no weight: they are
applied to the shared module before each use (`model_loaders.core.prepare`). The "lora" patch is the exception
that keeps the same identity: it changes the shared module's weights (or adds run-time factors) before each use and
is undone exactly for a handle without it (model_loaders/lora_apply.py), so LoRAs never make a second module.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class DiTSpec:
    """What detection found in a DiT checkpoint."""
    family: str          # the family adapter's name (models/registry.py)
    variant: str         # e.g. "t2v_14b", "i2v_clip_14b", "flf2v_14b", "i2v_14b", "ti2v_5b", "df_fps_1.3b"
    description: str     # the models this can be, for messages and the UI
    task: str            # "t2v", "i2v", "flf2v", "ti2v"
    latent_format: str   # the latents.py registry key of the latent space it works in
    config: Any          # the family's frozen config dataclass
    needs_clip: bool = False


@dataclass(frozen=True)
class ModelHandle:
    """A detected model: its spec, source files and dtypes, and the run-time patches memory/speed nodes added."""
    kind: ClassVar[str] = ""
    spec: Any
    files: tuple[str, ...]
    file_stamp: tuple[tuple[int, int], ...]   # (size, mtime_ns) per file: a replaced file is reloaded
    weight_dtype: str                         # storage of the large weights ("auto" resolved at load: see core)
    compute_dtype: str                        # "bf16", "fp16" or "fp32"
    patches: tuple[tuple[str, Any], ...] = field(default=())

    def with_patch(self, name: str, value: Any) -> "ModelHandle":
        """A copy with patch `name` set to `value` (replacing an earlier one of the same name)."""
        kept = tuple((n, v) for n, v in self.patches if n != name)
        return replace(self, patches=kept + ((name, value),))

    def patch(self, name: str, default: Any = None) -> Any:
        return dict(self.patches).get(name, default)

    @property
    def weights_key(self) -> tuple:
        """Identity of the weights in memory (patches, which change no weight, are not part of it)."""
        return (self.kind, self.files, self.file_stamp, self.weight_dtype, self.compute_dtype)


@dataclass(frozen=True)
class DiTHandle(ModelHandle):
    """OPENREEL_DIT: `spec` is a `DiTSpec`."""
    kind: ClassVar[str] = "dit"


@dataclass(frozen=True)
class VAEHandle(ModelHandle):
    """OPENREEL_VAE: `spec` is the VAE family's config; `family` its adapter's name; `latent_format` the registry
    key of the latents it encodes to and decodes."""
    kind: ClassVar[str] = "vae"
    family: str = ""
    latent_format: str = ""


@dataclass(frozen=True)
class TextEncoderHandle(ModelHandle):
    """OPENREEL_TEXT_ENCODER: `spec` is the encoder's spec; `tokenizer` where its tokenizer comes from."""
    kind: ClassVar[str] = "text_encoder"
    tokenizer: Any = None
    layout: str = ""                          # "official" or "hf" (transformers / ComfyUI names)


@dataclass(frozen=True)
class ClipVisionHandle(ModelHandle):
    """OPENREEL_CLIP_VISION: `spec` is a CLIP vision spec."""
    kind: ClassVar[str] = "clip_vision"
    layout: str = ""                          # "official" (open-clip `visual.*`) or "hf"


@dataclass(frozen=True, eq=False)
class TextEmbeds:
    """OPENREEL_EMBEDS: encoded positive and negative prompts, real tokens only (the DiT pads to its text length).

    `*_mask` [1, L] marks real tokens for encoders whose models attend with a mask; `*_pooled` [1, width] is a
    pooled vector for models that take one (e.g. HunyuanVideo's CLIP-L). umT5 embeddings have neither.
    `*_2` [1, L2, width2] are a second text encoder's token states for models that attend to two encoders' tokens
    (Step-Video: HunyuanCLIP's last hidden states, 77 rows, beside Step-LLM's in `positive` / `negative`), with
    `*_2_mask` [1, L2] marking its real tokens where the encoder has padding (a model may attend to every row).
    `embedded_guidance` is the guidance scale a guidance-distilled model takes as an input (HunyuanVideo's
    cfg-distilled DiT); None: the model's official value (OpenReel Embedded Guidance sets it)."""
    positive: torch.Tensor   # [1, L, width]
    negative: torch.Tensor   # [1, L', width]
    positive_mask: torch.Tensor | None = None
    negative_mask: torch.Tensor | None = None
    positive_pooled: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None
    embedded_guidance: float | None = None
    positive_2: torch.Tensor | None = None
    negative_2: torch.Tensor | None = None
    positive_2_mask: torch.Tensor | None = None
    negative_2_mask: torch.Tensor | None = None
