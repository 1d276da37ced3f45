"""The CONDITIONING bridge: native text-encoder output into OpenReel samplers, and OpenReel embeddings out."""
from __future__ import annotations

from ..encoding.conditioning import ENCODERS, conditioning_to_embeds, embeds_to_conditioning
from .common import EMBEDS_INPUT, OpenReelNode, mappings

_BY_TITLE = {title: kind for kind, title in ENCODERS.items()}


class OpenReelConditioningToEmbeds(OpenReelNode):
    """Takes ComfyUI's own text encoding (CLIPTextEncode's CONDITIONING) into OpenReel samplers, so the umT5 and
    HunyuanVideo encoder files and text nodes already in use keep working:
    - Wan and SkyReels-V2: CLIPLoader (type wan, umt5_xxl_*.safetensors) → CLIPTextEncode. ComfyUI pads umT5's
      states to 512 rows with zero rows; they are dropped here (the DiT pads with the same zeros). A prompt over
      512 tokens, which ComfyUI keeps whole and the official code cuts, is refused.
    - HunyuanVideo: DualCLIPLoader (type hunyuan_video: clip_l + llava_llama3) → CLIPTextEncode: ComfyUI crops the
      video template's tokens as the official pipeline does, and gives CLIP-L's pooled vector; FluxGuidance's
      scale becomes the embedded guidance. TextEncodeHunyuanVideo_ImageToVideo's states start with image tokens
      for HunyuanVideo-I2V, which OpenReel does not run: they cannot be told from text states, so do not use it.
      Where ComfyUI differs from the official encoding: a prompt over 256 Llama tokens is not cut, CLIP-L's
      pooled vector of a prompt over 75 tokens comes from its first chunk (split at a word, not cut at 77), and
      spaces around the prompt are not stripped.
    One plain prompt per input: combined, area, mask, timestep-range, ControlNet or hook conditioning, and
    native image-to-video conditioning (WanImageToVideo), are refused rather than silently dropped. A
    conditioning from another model's encoder with the same widths (e.g. Flux's T5 + CLIP-L for HunyuanVideo)
    cannot be recognised: connect the encoder the model was trained with."""

    NODE_ID = "OpenReelConditioningToEmbeds"
    DISPLAY_NAME = "OpenReel From Conditioning"
    CATEGORY = "OpenReel/conditioning"
    FUNCTION = "convert"
    RETURN_TYPES = ("OPENREEL_EMBEDS",)
    RETURN_NAMES = ("embeds",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "positive": ("CONDITIONING", {"tooltip": "The prompt, from CLIPTextEncode."}),
            "encoder": (list(_BY_TITLE), {
                "default": ENCODERS["umt5"],
                "tooltip": "Which text encoder made the conditioning: umT5 for Wan and SkyReels-V2 (no pooled "
                           "vector), Llama + CLIP-L for HunyuanVideo (with CLIP-L's pooled vector)."}),
        }, "optional": {
            "negative": ("CONDITIONING", {
                "tooltip": "The negative prompt, from CLIPTextEncode. Classifier-free guidance (guidance above "
                           "1) steers away from it: connect one then (Wan's official negative prompt is OpenReel "
                           "Text Encode's default). Left empty: the positive zeroed out, as ComfyUI's "
                           "ConditioningZeroOut gives, which guidance 1 (HunyuanVideo's default) never uses."}),
        }}

    def convert(self, positive, encoder: str, negative=None):
        return (conditioning_to_embeds(positive, negative, _BY_TITLE.get(encoder, encoder)),)


class OpenReelEmbedsToConditioning(OpenReelNode):
    """Gives OpenReel Text Encode's embeddings to ComfyUI's own sampling nodes as CONDITIONING, exactly as
    CLIPTextEncode would give them: umT5 embeddings (Wan, SkyReels-V2) as CLIPLoader type wan does (float32,
    zero-padded to 512 rows, no pooled vector), for KSampler with a native Wan model; Llama + CLIP-L embeddings
    (HunyuanVideo) as DualCLIPLoader type hunyuan_video does (the pooled vector beside; OpenReel Embedded
    Guidance's scale as FluxGuidance's). Step-Video embeddings are refused: ComfyUI has no Step-Video model."""

    NODE_ID = "OpenReelEmbedsToConditioning"
    DISPLAY_NAME = "OpenReel To Conditioning"
    CATEGORY = "OpenReel/conditioning"
    FUNCTION = "convert"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"embeds": EMBEDS_INPUT}}

    def convert(self, embeds):
        return embeds_to_conditioning(embeds)


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(OpenReelConditioningToEmbeds, OpenReelEmbedsToConditioning)
