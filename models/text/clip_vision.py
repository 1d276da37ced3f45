"""CLIP ViT-H/14, Wan's image encoder (I2V, FLF2V), on transformers' CLIP vision tower, with Wan's preprocessing.

Architecture (official `wan/modules/clip.py`, open-clip XLM-RoBERTa ViT-H/14 visual tower): 224 px, patch 14 (no
bias), width 1280, 32 blocks of 16 heads, MLP 5120 with exact GELU, LayerNorm eps 1e-5 before the blocks. Wan reads
the tokens after the penultimate block with no post-norm (official `use_31_block=True`, transformers'
`hidden_states[-2]`): 257 x 1280 per image. So only the first L-1 blocks are built and loaded; the last block and
the projection head would never be used.

Preprocessing (official `CLIPModel.visual`): the whole frame resized to 224 x 224 by bicubic interpolation (no crop,
no antialiasing), then normalized with CLIP's mean and std. The official code resizes the [-1, 1] frame and then
maps it to [0, 1]; resizing is linear with weights summing to one, so resizing the [0, 1] IMAGE is the same.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from ...errors import InputError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

WEIGHT_PARAMS = r"tower\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])\.weight"
FP32_PARAMS = ""


@dataclass(frozen=True)
class CLIPVisionSpec:
    """A CLIP vision tower's shapes (read from a checkpoint; `num_layers` counts every block in the file)."""
    hidden_size: int = 1280
    intermediate_size: int = 5120
    num_layers: int = 32
    num_heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    eps: float = 1e-5
    hidden_act: str = "gelu"

    @property
    def description(self) -> str:
        if self == CLIPVisionSpec():
            return "CLIP ViT-H/14"
        return (f"a CLIP ViT ({self.num_layers} blocks, width {self.hidden_size}, patch {self.patch_size}, "
                f"{self.image_size} px)")

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    def hf_config(self, num_layers: int) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            hidden_size=self.hidden_size, intermediate_size=self.intermediate_size, num_hidden_layers=num_layers,
            num_attention_heads=self.num_heads, patch_size=self.patch_size, image_size=self.image_size,
            layer_norm_eps=self.eps, hidden_act=self.hidden_act, attention_dropout=0.0)


class CLIPVisionEncoder(nn.Module):
    """IMAGE [B, H, W, C] in 0..1 → penultimate-block tokens [B, 257, 1280] (ViT-H/14), as Wan encodes images.

    `tower` is transformers' vision transformer with L-1 blocks (parameter names without the `vision_model.`
    prefix whatever the transformers version). Its `position_ids` buffer is derived, not stored: it is left empty
    while the weights load and rebuilt by `restore_position_ids`.
    """

    def __init__(self, spec: CLIPVisionSpec):
        super().__init__()
        self.spec = spec
        model = CLIPVisionModel(spec.hf_config(spec.num_layers - 1))
        self.tower = getattr(model, "vision_model", model)  # transformers 4 nests the tower, 5 does not
        self.tower.embeddings.position_ids = None

    def restore_position_ids(self) -> None:
        """Recreate the position-id buffer next to the loaded weights (call once after loading)."""
        embeddings = self.tower.embeddings
        device = embeddings.position_embedding.weight.device
        embeddings.position_ids = torch.arange(self.spec.tokens, device=device)[None, :]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """IMAGE [B, H, W, C] (C = 1, 3 or 4; alpha ignored) in 0..1 → normalized pixels [B, 3, S, S] float32."""
        if images.dim() != 4 or images.shape[-1] not in (1, 3, 4):
            raise InputError(f"the image has shape {tuple(images.shape)}; an IMAGE [frames, height, width, "
                             f"channels] with 1, 3 or 4 channels was expected", "connect an IMAGE output")
        x = images[..., :3].movedim(-1, 1).float().expand(-1, 3, -1, -1)
        size = self.spec.image_size
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalized pixels [B, 3, S, S] → tokens [B, tokens, hidden] in the compute dtype."""
        dtype = self.tower.embeddings.position_embedding.weight.dtype
        return self.tower(pixel_values=pixels.to(dtype)).last_hidden_state

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """IMAGE [B, H, W, C] in 0..1 → Wan's CLIP tokens [B, tokens, hidden]."""
        return self(self.preprocess(images.to(self.tower.embeddings.position_embedding.weight.device)))
