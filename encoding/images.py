"""Images → vision-encoder tokens (CLIP ViT-H/14 for Wan2.1 image-to-video)."""
from __future__ import annotations

import torch

from .. import runtime
from ..handles import ClipVisionHandle
from ..model_loaders.core import module_of


def encode_image(handle: ClipVisionHandle, images: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, C] in 0..1 → Wan's CLIP tokens [B, 257, 1280] (ViT-H/14) on the CPU, one set per image."""
    module = module_of(handle)
    runtime.throw_if_interrupted()
    with runtime.placed(module) as device:
        return module.encode(images.to(device)).cpu()
