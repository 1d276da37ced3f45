"""Images prepared for a VAE: IMAGE [B, H, W, C] in 0..1 → pixels in [-1, 1] at the video's size."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_image(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """IMAGE [B, H, W, C] 0..1 → [B, 3, height, width] in [-1, 1]: centre-cropped to the aspect, bicubic resize."""
    x = image[..., :3].permute(0, 3, 1, 2).float()
    h, w = x.shape[2:]
    if w * height > h * width:  # too wide: crop the sides
        new_w = round(h * width / height)
        x = x[:, :, :, (w - new_w) // 2:(w - new_w) // 2 + new_w]
    elif w * height < h * width:
        new_h = round(w * height / width)
        x = x[:, :, (h - new_h) // 2:(h - new_h) // 2 + new_h]
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1)
