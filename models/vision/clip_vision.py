"""CLIP ViT-H/14, Wan's image encoder (I2V, FLF2V), in plain PyTorch, with Wan's preprocessing.

Architecture (official `wan/modules/clip.py`, open-clip XLM-RoBERTa ViT-H/14 visual tower; transformers'
`CLIPVisionModel` is the same network): 224 px, patch 14 (no bias), a class token, learned position embeddings,
LayerNorm (eps 1e-5) before the blocks, width 1280, 32 pre-norm blocks of 16 heads (scores scaled by head_dim^-0.5),
MLP 5120 with exact GELU. Wan reads the tokens after the penultimate block with no post-norm (official
`use_31_block=True`, transformers' `hidden_states[-2]`): 257 x 1280 per image. So only the first L-1 blocks are built
and loaded; the last block and the projection head would never be used. Parameter names are transformers' (= ComfyUI's
`clip_vision_h.safetensors`) under `tower.`; the loader maps the official names onto them. The attention and MLP
projections are built with `ops.linear`.

Numerics (as the official tower): every parameter takes the compute dtype and the activations run in it; the
LayerNorms compute in float32 and cast back.

Preprocessing (official `CLIPModel.visual`): the whole frame resized to 224 x 224 by bicubic interpolation (no crop,
no antialiasing), then normalized with CLIP's mean and std. The official code resizes the [-1, 1] frame and then
maps it to [0, 1]; resizing is linear with weights summing to one, so resizing the [0, 1] IMAGE is the same.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import CheckpointError, InputError
from ..common.ops import PLAIN, Ops

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

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


ACTIVATIONS = {"gelu": F.gelu, "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x)}


class FloatLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32, the result cast back to the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


class _Embeddings(nn.Module):
    """Patches (a stride-p convolution) after a class token, plus one learned embedding per position."""

    def __init__(self, spec: CLIPVisionSpec):
        super().__init__()
        width = spec.hidden_size
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.patch_embedding = nn.Conv2d(3, width, spec.patch_size, stride=spec.patch_size, bias=False)
        self.position_embedding = nn.Embedding(spec.tokens, width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight.to(patches.dtype)


class _SelfAttention(nn.Module):
    def __init__(self, spec: CLIPVisionSpec, ops: Ops):
        super().__init__()
        width = spec.hidden_size
        self.num_heads = spec.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (ops.linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (proj(x).view(b, n, self.num_heads, -1).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # scores scaled by head_dim^-0.5
        return self.out_proj(out.transpose(1, 2).flatten(2))


class _MLP(nn.Module):
    def __init__(self, spec: CLIPVisionSpec, ops: Ops):
        super().__init__()
        if spec.hidden_act not in ACTIVATIONS:
            raise CheckpointError(f"the CLIP config names the activation {spec.hidden_act!r}, which OpenReel "
                                  f"does not implement (it knows {', '.join(ACTIVATIONS)})",
                                  "use the CLIP model the video model was trained with (ComfyUI's "
                                  "clip_vision_h.safetensors for Wan, clip_l.safetensors for HunyuanVideo)")
        self.act = ACTIVATIONS[spec.hidden_act]
        self.fc1 = ops.linear(spec.hidden_size, spec.intermediate_size)
        self.fc2 = ops.linear(spec.intermediate_size, spec.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPLayer(nn.Module):
    """One pre-norm CLIP transformer block (the vision tower's, and causal the text tower's)."""

    def __init__(self, spec: CLIPVisionSpec, ops: Ops):
        super().__init__()
        self.layer_norm1 = FloatLayerNorm(spec.hidden_size, eps=spec.eps)
        self.self_attn = _SelfAttention(spec, ops)
        self.layer_norm2 = FloatLayerNorm(spec.hidden_size, eps=spec.eps)
        self.mlp = _MLP(spec, ops)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), causal)
        return x + self.mlp(self.layer_norm2(x))


class _Tower(nn.Module):
    """The vision transformer minus its last block; `post_layernorm` (the pooled output's norm) is in the files and
    loaded, but the penultimate-block tokens Wan reads never pass through it."""

    def __init__(self, spec: CLIPVisionSpec, ops: Ops):
        super().__init__()
        self.embeddings = _Embeddings(spec)
        self.pre_layrnorm = FloatLayerNorm(spec.hidden_size, eps=spec.eps)
        layers = nn.ModuleList(CLIPLayer(spec, ops) for _ in range(spec.num_layers - 1))
        self.encoder = nn.ModuleDict({"layers": layers})
        self.post_layernorm = FloatLayerNorm(spec.hidden_size, eps=spec.eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.pre_layrnorm(self.embeddings(pixels))
        for layer in self.encoder.layers:
            x = layer(x)
        return x


class CLIPVisionEncoder(nn.Module):
    """IMAGE [B, H, W, C] in 0..1 → penultimate-block tokens [B, 257, 1280] (ViT-H/14), as Wan encodes images."""

    def __init__(self, spec: CLIPVisionSpec, ops: Ops = PLAIN):
        super().__init__()
        self.spec = spec
        self.tower = _Tower(spec, ops)

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
        return self.tower(pixels.to(dtype))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """IMAGE [B, H, W, C] in 0..1 → Wan's CLIP tokens [B, tokens, hidden]."""
        return self(self.preprocess(images.to(self.tower.embeddings.position_embedding.weight.device)))
