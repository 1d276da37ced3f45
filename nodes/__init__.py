"""ComfyUI node classes of every module in this folder, gathered into the two mappings ComfyUI reads."""
from . import conditioning, diffusion_forcing, encode, loaders, lora, memory, parallel, sample, speed, video

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in (loaders, lora, encode, conditioning, sample, diffusion_forcing, memory, parallel, speed, video):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
