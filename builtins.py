"""Stand-ins for the few ComfyUI core nodes the example workflows use, so the headless runner can execute them
without ComfyUI. Same class names, inputs and outputs as the core nodes; inside ComfyUI the real ones run."""
from __future__ import annotations

import numpy as np
import torch

from . import runtime
from .errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


class LoadImage:
    """ComfyUI's LoadImage: an image from the input folder → IMAGE [1, H, W, 3] and MASK [1, H, W]."""

    DISPLAY_NAME = "Load Image"
    CATEGORY = "image"
    FUNCTION = "load_image"
    RETURN_TYPES = ("IMAGE", "MASK")

    @classmethod
    def INPUT_TYPES(cls):
        folder = runtime.input_dir()
        files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) \
            if folder.is_dir() else []
        return {"required": {"image": (files, {"image_upload": True})}}

    def load_image(self, image: str):
        from PIL import Image, ImageOps

        path = runtime.input_dir() / image
        if not path.is_file():
            raise InputError(f"Load Image: {image!r} is not in the input folder {runtime.input_dir()}",
                             "put the image there or pick another")
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            rgba = img.convert("RGBA")
        pixels = torch.from_numpy(np.asarray(rgba).astype(np.float32) / 255.0)
        return pixels[None, ..., :3], (1.0 - pixels[..., 3])[None]


BUILTIN_NODES = {"LoadImage": LoadImage}
