"""OpenReel: open video diffusion transformers (Wan2.1/2.2, SkyReels-V2, HunyuanVideo, Step-Video) for ComfyUI."""
if __package__:  # imported as a package (ComfyUI, the runner, tests' conftest); pytest may also read this file bare
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
