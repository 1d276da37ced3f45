"""Encoding nodes: prompts → OPENREEL_EMBEDS, frames ↔ latents through a Wan VAE."""
from __future__ import annotations

import logging

import torch

from ..encoding.prompts import encode_prompts
from ..encoding.video import TILE_CHOICES, check_latent_for, decode_latent, encode_video
from .common import OpenReelNode, mappings

log = logging.getLogger(__name__)

# The official Wan negative prompt (wan/configs/shared_config.py `sample_neg_prompt`).
WAN_NEGATIVE = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
                "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
                "三条腿，背景人很多，倒着走")
_TILING_TOOLTIP = ("Spatial tiles bound the VAE's memory. auto: whole frames when they fit in free VRAM, else the "
                   "largest tile that fits; off: whole frames; a number: tile size in pixels (tiles overlap by a "
                   "quarter and are blended).")
_VAE_OUT_OF_MEMORY = ("choose a smaller tiling (384 or 256: smaller tiles need less memory), or free GPU memory "
                      "(inside ComfyUI, Unload Models)")


class OpenReelTextEncode(OpenReelNode):
    """Encodes the prompt and the negative prompt for any model OpenReel runs; what it does follows the encoder:
    - Wan and SkyReels-V2: text_encoder is umT5-XXL; text_encoder_2 stays empty.
    - HunyuanVideo: text_encoder is the Llama encoder (llava_llama3_*.safetensors: the prompt inside HunyuanVideo's
      video template, the third-last layer's states) and text_encoder_2 is CLIP-L (clip_l.safetensors: the pooled
      vector). HunyuanVideo runs without classifier-free guidance by default, so its negative prompt is unused
      unless guidance is above 1.
    - Step-Video: text_encoder is Step-LLM (the step_llm folder: every row of its last hidden state, 320 tokens,
      and their mask; the official positive "magic" suffix is appended to the prompt) and text_encoder_2 is
      HunyuanCLIP (the hunyuan_clip folder: its 77 token states). The official negative prompt is
      encoding.prompts.STEPVIDEO_NEGATIVE.
    Encodings are cached, so re-running a graph with the same prompts costs nothing; each encoder sits on the GPU
    only while it encodes."""

    NODE_ID = "OpenReelTextEncode"
    DISPLAY_NAME = "OpenReel Text Encode"
    OUT_OF_MEMORY_TODO = ("load the text encoder with dtype fp8 (OpenReel Text Encoder Loader: half the memory), or "
                          "free GPU memory (inside ComfyUI, Unload Models)")
    CATEGORY = "OpenReel/conditioning"
    FUNCTION = "encode"
    RETURN_TYPES = ("OPENREEL_EMBEDS",)
    RETURN_NAMES = ("embeds",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": ("OPENREEL_TEXT_ENCODER", {
                "tooltip": "From OpenReel Text Encoder Loader: umT5-XXL (Wan, SkyReels-V2), the Llama encoder "
                           "(HunyuanVideo: llava_llama3_*.safetensors) or Step-LLM (Step-Video: the step_llm "
                           "folder, with HunyuanCLIP as text_encoder_2)."}),
            "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "What the video shows."}),
            "negative_prompt": ("STRING", {"multiline": True, "default": WAN_NEGATIVE,
                                           "tooltip": "What to steer away from (classifier-free guidance). The "
                                                      "default is the official Wan negative prompt. HunyuanVideo "
                                                      "runs without classifier-free guidance by default, so it "
                                                      "uses no negative prompt unless guidance is above 1."}),
        }, "optional": {
            "text_encoder_2": ("OPENREEL_TEXT_ENCODER", {
                "tooltip": "HunyuanVideo: CLIP-L (clip_l.safetensors) for the pooled vector; Step-Video: "
                           "HunyuanCLIP (hunyuan_clip/); Wan: leave empty"}),
        }}

    def encode(self, text_encoder, prompt: str, negative_prompt: str, text_encoder_2=None):
        return (encode_prompts(text_encoder, prompt, negative_prompt, text_encoder_2),)


class OpenReelVAEDecode(OpenReelNode):
    """Decodes a latent video into frames (ComfyUI IMAGE). Temporal chunking is built in; spatial tiling keeps
    large videos inside small VRAM budgets. ComfyUI's IMAGE has no batch of videos, so a latent of n videos
    becomes their frames one video after another (as ComfyUI's own VAE Decode does; a warning says so): to save
    each video as its own file, connect the latent and the VAE to OpenReel Save Video instead."""

    NODE_ID = "OpenReelVAEDecode"
    DISPLAY_NAME = "OpenReel VAE Decode"
    OUT_OF_MEMORY_TODO = _VAE_OUT_OF_MEMORY
    CATEGORY = "OpenReel/latent"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("OPENREEL_VAE", {"tooltip": "The VAE matching the latent (Wan2.2 VAE for TI2V-5B)."}),
            "latent": ("LATENT", {"tooltip": "A video latent, e.g. from OpenReel Sampler."}),
            "tiling": (list(TILE_CHOICES), {"default": "auto", "tooltip": _TILING_TOOLTIP}),
        }}

    def decode(self, vae, latent, tiling: str):
        check_latent_for(vae, latent)
        count = latent["samples"].shape[0]
        if count > 1:
            log.warning("%s: the latent holds %d videos; they are joined one after another into one IMAGE (ComfyUI's "
                        "IMAGE has no batch of videos). To save each as its own file, connect the latent and the VAE "
                        "to OpenReel Save Video instead.", self.DISPLAY_NAME, count)
        return (torch.cat(list(decode_latent(vae, latent, tiling))),)


class OpenReelVAEEncode(OpenReelNode):
    """Encodes frames (ComfyUI IMAGE) into a latent video, e.g. for video-to-video with denoise below 1. The frame
    count must be 4n+1 and the size a multiple of 16 (Wan2.1 VAE) or 32 (Wan2.2 VAE)."""

    NODE_ID = "OpenReelVAEEncode"
    DISPLAY_NAME = "OpenReel VAE Encode"
    OUT_OF_MEMORY_TODO = _VAE_OUT_OF_MEMORY
    CATEGORY = "OpenReel/latent"
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("OPENREEL_VAE", {"tooltip": "A Wan VAE."}),
            "images": ("IMAGE", {"tooltip": "The frames, e.g. from OpenReel Load Video."}),
            "tiling": (list(TILE_CHOICES), {"default": "auto", "tooltip": _TILING_TOOLTIP}),
        }}

    def encode(self, vae, images, tiling: str):
        video = images[..., :3].permute(3, 0, 1, 2).unsqueeze(0).float() * 2 - 1  # [1, 3, F, H, W] in [-1, 1]
        return ({"samples": encode_video(vae, video, tiling), "latent_format": vae.latent_format},)


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(OpenReelTextEncode, OpenReelVAEDecode, OpenReelVAEEncode)
