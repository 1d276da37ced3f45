"""Loader nodes: model files → handles (OPENREEL_DIT, …)."""
from __future__ import annotations

from .. import runtime
from ..model_loaders.checkpoint import is_secondary_shard
from ..model_loaders.dit import COMPUTE_DTYPE_CHOICES, WEIGHT_DTYPE_CHOICES, load_dit
from .common import OpenReelNode, mappings


def _model_choices(kind: str) -> list[str]:
    """Files of `kind`, listing a sharded checkpoint once (by its first shard)."""
    return [name for name in runtime.list_models(kind) if not is_secondary_shard(name)]


class OpenReelDiTLoader(OpenReelNode):
    """Loads a video diffusion transformer (Wan2.1, Wan2.2 experts and TI2V-5B, SkyReels-V2) from
    models/diffusion_models. The model kind is detected from the weights, never the file name; single files,
    sharded sets (pick any shard), diffusers folders and ComfyUI fp8_scaled files all work."""

    NODE_ID = "OpenReelDiTLoader"
    DISPLAY_NAME = "OpenReel DiT Loader"
    CATEGORY = "OpenReel/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("OPENREEL_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = ("The loaded diffusion transformer, for OpenReel samplers and memory nodes.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (_model_choices("diffusion_models"), {
                "tooltip": "Weights file in models/diffusion_models. For a sharded checkpoint pick its first "
                           "shard; the index json beside it brings the rest."}),
            "weight_dtype": (list(WEIGHT_DTYPE_CHOICES), {
                "default": "auto",
                "tooltip": "How the large linear weights are stored in memory. auto: fp8 files stay fp8 (scales "
                           "kept), others take the compute dtype. fp8_e4m3fn halves memory (plain cast); "
                           "fp8_e4m3fn_scaled adds a per-tensor scale for better precision."}),
            "compute_dtype": (list(COMPUTE_DTYPE_CHOICES), {
                "default": "auto",
                "tooltip": "Precision of the matrix math. auto: bf16 on GPUs that support it, else fp16 (GPU) "
                           "or fp32 (CPU). Norms and modulation always run in fp32, as in the official code."}),
        }}

    def load(self, model_name: str, weight_dtype: str, compute_dtype: str):
        path = runtime.model_path("diffusion_models", model_name)
        return (load_dit(path, weight_dtype, compute_dtype),)


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(OpenReelDiTLoader)
