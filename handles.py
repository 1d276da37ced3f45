"""What flows between nodes for models: small immutable descriptions, never the heavy modules themselves.

A node never mutates a handle; it returns a new one (`with_patch`), so ComfyUI's output cache stays correct.
The module behind a handle is built once per (files, dtypes, weight-changing patches) and shared through
`model_loaders.cache`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch


@dataclass(frozen=True)
class DiTSpec:
    """What detection found in a DiT checkpoint."""
    family: str          # "wan" (later: "hunyuan", "stepvideo")
    variant: str         # e.g. "t2v_14b", "i2v_clip_14b", "flf2v_14b", "i2v_14b", "ti2v_5b", "df_fps_1.3b"
    description: str     # the models this can be, for messages and the UI
    task: str            # "t2v", "i2v", "flf2v", "ti2v"
    latent_format: str   # "wan21" (16 ch) or "wan22" (48 ch)
    config: Any          # the family's frozen config dataclass
    needs_clip: bool = False


@dataclass(frozen=True)
class DiTHandle:
    """OPENREEL_DIT: a detected DiT, its source files and dtypes, and the patches memory nodes added."""
    spec: DiTSpec
    files: tuple[str, ...]
    file_stamp: tuple[tuple[int, int], ...]   # (size, mtime_ns) per file: a replaced file is reloaded
    weight_dtype: str
    compute_dtype: str
    patches: tuple[tuple[str, Any], ...] = field(default=())

    def with_patch(self, name: str, value: Any) -> "DiTHandle":
        """A copy with patch `name` set to `value` (replacing an earlier one of the same name)."""
        kept = tuple((n, v) for n, v in self.patches if n != name)
        return replace(self, patches=kept + ((name, value),))

    def patch(self, name: str, default: Any = None) -> Any:
        return dict(self.patches).get(name, default)

    @property
    def weights_key(self) -> tuple:
        """Identity of the weights in memory (patches that change no weight are not part of it)."""
        return ("dit", self.files, self.file_stamp, self.weight_dtype, self.compute_dtype)


@dataclass(frozen=True, eq=False)
class TextEmbeds:
    """OPENREEL_EMBEDS: encoded positive and negative prompts, real tokens only (the DiT pads to its text length)."""
    positive: torch.Tensor   # [1, L, width]
    negative: torch.Tensor   # [1, L', width]
    encoder: str             # what made them (e.g. "umt5-xxl"), for messages
