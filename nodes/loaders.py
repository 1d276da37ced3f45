"""Loader nodes: model files → handles (OPENREEL_DIT, …)."""
from __future__ import annotations

from .. import runtime
from ..model_loaders.checkpoint import is_companion_file
from ..model_loaders.dit import COMPUTE_DTYPE_CHOICES, WEIGHT_DTYPE_CHOICES, load_dit, recipe_choices
from ..model_loaders.clip_vision import load_clip_vision
from ..model_loaders.text_encoder import DTYPE_CHOICES as ENCODER_DTYPE_CHOICES
from ..model_loaders.text_encoder import load_text_encoder
from ..model_loaders.vae import DTYPE_CHOICES as VAE_DTYPE_CHOICES
from ..model_loaders.vae import load_vae
from .common import OpenReelNode, mappings


def _model_choices(kind: str) -> list[str]:
    """Files of `kind`, listing a sharded checkpoint once (by its first shard) and an official fp8 file without
    its scale map."""
    return [name for name in runtime.list_models(kind) if not is_companion_file(name)]


class OpenReelDiTLoader(OpenReelNode):
    """Loads a video diffusion transformer (Wan2.1, Wan2.2 experts and TI2V-5B, SkyReels-V2, HunyuanVideo T2V,
    Step-Video-T2V and -Turbo) from models/diffusion_models. The model kind is detected from the weights, never the file name; single files,
    sharded sets (pick any shard), diffusers folders and ComfyUI fp8_scaled files all work."""

    MODEL_FOLDER = "diffusion_models"  # where model_name is looked for (named in messages)
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
                           "fp8_e4m3fn_scaled adds a per-tensor scale, fp8_e4m3fn_channel one per output channel "
                           "(best precision). fp8 math itself is chosen with OpenReel FP8."}),
            "compute_dtype": (list(COMPUTE_DTYPE_CHOICES), {
                "default": "auto",
                "tooltip": "Precision of the matrix math. auto: bf16 on GPUs that support it, else fp16 (GPU) "
                           "or fp32 (CPU). Norms and modulation always run in fp32, as in the official code."}),
        }, "optional": {
            "recipe": (list(recipe_choices()), {
                "default": "auto",
                "tooltip": "Which model this is where the weights cannot tell: Step-Video-T2V and its "
                           "step-distilled Turbo have the same shapes. The sampler's defaults (steps, shift, cfg) "
                           "follow it. auto: what the weights say (Step-Video: T2V)."}),
        }}

    def load(self, model_name: str, weight_dtype: str, compute_dtype: str, recipe: str = "auto"):
        path = runtime.model_path("diffusion_models", model_name)
        return (load_dit(path, weight_dtype, compute_dtype, recipe),)


_ENCODER_DTYPE_TOOLTIP = ("Storage of the encoder's large weights. auto: fp8 files stay fp8, others bf16 on GPUs "
                          "(fp32 on CPU); fp8 halves memory at a small precision cost.")


class OpenReelTextEncoderLoader(OpenReelNode):
    """Loads a text encoder from models/text_encoders; what it is comes from the weights.
    Wan and SkyReels-V2: umT5-XXL (the official models_t5_umt5-xxl-enc-bf16.pth, ComfyUI's umt5_xxl files, an HF
    folder). HunyuanVideo: the Llama encoder (ComfyUI's llava_llama3_fp16 / fp8_scaled, the official or diffusers
    text_encoder folder, the LLaVA folder) and CLIP-L (clip_l.safetensors or a CLIP folder); Step-Video: Step-LLM
    (the official step_llm/ folder or one file) and HunyuanCLIP (the official hunyuan_clip/ folder or one file).
    Load both of a pair and connect them to one Text Encode. The tokenizer comes from the file itself (ComfyUI's
    umT5 files carry it), from beside it, from models/text_encoders/tokenizers/<umt5-xxl | llava-llama-3-8b |
    clip-vit-large-patch14 | step_llm | hunyuan_clip>/, or from ComfyUI's own copy."""

    MODEL_FOLDER = "text_encoders"  # where model_name is looked for (named in messages)
    NODE_ID = "OpenReelTextEncoderLoader"
    DISPLAY_NAME = "OpenReel Text Encoder Loader"
    CATEGORY = "OpenReel/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("OPENREEL_TEXT_ENCODER",)
    RETURN_NAMES = ("text_encoder",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (_model_choices("text_encoders"), {
                "tooltip": "Text encoder weights in models/text_encoders: umT5-XXL (Wan, SkyReels-V2), llava_llama3 "
                           "or clip_l (HunyuanVideo)."}),
            "dtype": (list(ENCODER_DTYPE_CHOICES), {"default": "auto", "tooltip": _ENCODER_DTYPE_TOOLTIP}),
        }}

    def load(self, model_name: str, dtype: str):
        return (load_text_encoder(runtime.model_path("text_encoders", model_name), dtype),)


class OpenReelCLIPVisionLoader(OpenReelNode):
    """Loads the CLIP ViT-H/14 image encoder that Wan2.1 / SkyReels-V2 image-to-video and FLF2V models need, from
    models/clip_vision: ComfyUI's clip_vision_h.safetensors or the official open-clip .pth."""

    MODEL_FOLDER = "clip_vision"  # where model_name is looked for (named in messages)
    NODE_ID = "OpenReelCLIPVisionLoader"
    DISPLAY_NAME = "OpenReel CLIP Vision Loader"
    CATEGORY = "OpenReel/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("OPENREEL_CLIP_VISION",)
    RETURN_NAMES = ("clip_vision",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (_model_choices("clip_vision"), {"tooltip": "CLIP ViT-H/14 weights in models/clip_vision."}),
            "dtype": (list(ENCODER_DTYPE_CHOICES), {"default": "auto", "tooltip": _ENCODER_DTYPE_TOOLTIP}),
        }}

    def load(self, model_name: str, dtype: str):
        return (load_clip_vision(runtime.model_path("clip_vision", model_name), dtype),)


class OpenReelVAELoader(OpenReelNode):
    """Loads a video VAE from models/vae: the Wan2.1 VAE (16-channel latents: Wan2.1, Wan2.2 A14B, SkyReels-V2),
    the Wan2.2 VAE (48-channel: TI2V-5B only) or the HunyuanVideo VAE; official .pth / .pt or ComfyUI / diffusers
    safetensors. The kind is detected from the weights."""

    MODEL_FOLDER = "vae"  # where model_name is looked for (named in messages)
    NODE_ID = "OpenReelVAELoader"
    DISPLAY_NAME = "OpenReel VAE Loader"
    CATEGORY = "OpenReel/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("OPENREEL_VAE",)
    RETURN_NAMES = ("vae",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (_model_choices("vae"), {"tooltip": "A Wan2.1 / Wan2.2 or HunyuanVideo VAE in "
                                                                          "models/vae."}),
            "dtype": (list(VAE_DTYPE_CHOICES), {"default": "auto",
                                                "tooltip": "auto: bf16 on GPUs that support it, else fp32."}),
        }}

    def load(self, model_name: str, dtype: str):
        return (load_vae(runtime.model_path("vae", model_name), dtype),)


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(OpenReelDiTLoader, OpenReelTextEncoderLoader,
                                                           OpenReelCLIPVisionLoader, OpenReelVAELoader)
