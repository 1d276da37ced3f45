"""ComfyUI CONDITIONING ↔ OPENREEL_EMBEDS, so native text encoders feed OpenReel samplers and back.

CONDITIONING is a plain list of `[tensor [B, tokens, width], dict]` entries; nothing of ComfyUI is imported here.
What ComfyUI's `CLIPTextEncode` gives (ComfyUI 0.3.64):
- `CLIPLoader(type="wan")` (umT5-XXL): one entry, float32 on the CPU, `[1, max(512, n), 4096]`: the prompt's tokens
  and EOS, then pad tokens up to 512 whose rows are zeroed (the tokenizer's `min_length=512`, the model's
  `zero_out_masked`); the dict is `{"pooled_output": None}` with no attention mask. The zero rows are what the
  official Wan pads with, so the real rows are the rows up to the last non-zero one.
- `DualCLIPLoader(type="hunyuan_video")`: the Llama states of the third-last layer with the video template's
  tokens cropped away (the prompt's tokens and the closing `<|eot_id|>`, as the official pipeline's 95-token crop
  keeps), `[1, n, 4096]`, and `{"pooled_output": CLIP-L's unprojected pooled vector [1, 768]}`; an
  `"attention_mask"` only where some row is padding (then its zero entries are dropped here). `FluxGuidance` adds
  `"guidance"`, the embedded guidance scale the native HunyuanVideo takes (6.0 without it).
"""
from __future__ import annotations

import torch

from ..errors import InputError
from ..handles import TextEmbeds

ENCODERS = {"umt5": "umT5 (CLIPLoader type wan: Wan, SkyReels-V2)",
            "llama": "Llama + CLIP-L (DualCLIPLoader type hunyuan_video: HunyuanVideo)"}
UMT5_ROWS = 512  # Wan's text length; ComfyUI's umT5 tokenizer pads every prompt to at least this many tokens
HONOURED = ("pooled_output", "attention_mask", "guidance")
# Keys native nodes add whose effect an OpenReel sampler cannot reproduce, and where they come from.
UNSUPPORTED = {
    "area": "an area (Conditioning Set Area)", "strength": "a strength (Conditioning Set Area / Mask)",
    "set_area_to_bounds": "an area (Conditioning Set Mask)", "mask": "a mask (Conditioning Set Mask)",
    "mask_strength": "a mask (Conditioning Set Mask)",
    "start_percent": "a timestep range (ConditioningSetTimestepRange)",
    "end_percent": "a timestep range (ConditioningSetTimestepRange)",
    "concat_latent_image": "image-to-video inputs (WanImageToVideo and similar)",
    "concat_mask": "image-to-video inputs (WanImageToVideo and similar)",
    "clip_vision_output": "CLIP vision features (WanImageToVideo and similar)",
    "control": "a ControlNet (Apply ControlNet)", "hooks": "LoRA hooks (hook nodes)",
    "reference_latents": "reference latents (ReferenceLatent)",
}
_TO_OPENREEL = ("Connect CLIPTextEncode straight to this node, make the latent with OpenReel Empty Latent or "
                "OpenReel Image To Video, and add LoRAs with OpenReel LoRA")


def _entry(conditioning, name: str) -> tuple[torch.Tensor, dict]:
    """The single `[tensor, dict]` entry of a CONDITIONING input, checked for what a sampler can honour."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise InputError(f"{name} is not ComfyUI CONDITIONING (a list of [tensor, dict] entries)",
                         "connect the output of CLIPTextEncode")
    if len(conditioning) > 1:
        raise InputError(f"{name} holds {len(conditioning)} conditioning entries (from Conditioning (Combine) or "
                         f"scheduled hooks), and OpenReel takes one prompt per branch",
                         "encode one prompt with CLIPTextEncode and connect it directly")
    entry = conditioning[0]
    if (not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[0], torch.Tensor)
            or not isinstance(entry[1], dict)):
        raise InputError(f"{name} is not ComfyUI CONDITIONING (a list of [tensor, dict] entries)",
                         "connect the output of CLIPTextEncode")
    tensor, extra = entry
    if tensor.dim() != 3 or tensor.shape[0] != 1 or tensor.shape[1] == 0:
        raise InputError(f"{name}'s token states have shape {tuple(tensor.shape)}, not one prompt's "
                         f"[1, tokens, width]", "connect CLIPTextEncode with a single prompt")
    _check_keys(extra, name)
    return tensor, extra


def _check_keys(extra: dict, name: str) -> None:
    """Refuse what the dict carries beyond the states, pooled vector, mask and guidance (a None value is absent)."""
    for key, value in extra.items():
        if value is None or key in HONOURED:
            continue
        what = UNSUPPORTED.get(key, f"'{key}'")
        raise InputError(f"{name} carries {what}, which OpenReel samplers cannot honour", _TO_OPENREEL)


def _rows(tensor: torch.Tensor, extra: dict, kind: str, name: str) -> torch.Tensor:
    """The real token rows: those the attention mask marks, and for umT5 without the zeroed padding rows."""
    mask = extra.get("attention_mask")
    if mask is not None:
        if tuple(mask.shape) != tuple(tensor.shape[:2]):
            raise InputError(f"{name}'s attention mask has shape {tuple(mask.shape)} but its token states "
                             f"{tuple(tensor.shape)}", "connect the output of CLIPTextEncode unchanged")
        tensor = tensor[:, mask[0].bool().to(tensor.device)]
    if kind == "umt5":
        nonzero = tensor[0].abs().amax(dim=-1).nonzero()
        # at least one row: a zeroed prompt (ConditioningZeroOut) is the padding alone, one zero row stands for it
        tensor = tensor[:, :int(nonzero[-1]) + 1 if len(nonzero) else 1]
        if tensor.shape[1] > UMT5_ROWS:
            raise InputError(f"{name} is {tensor.shape[1]} umT5 tokens long, and Wan models take at most "
                             f"{UMT5_ROWS} (ComfyUI keeps a longer prompt whole; the official code cuts it)",
                             "shorten the prompt")
    return tensor


def _pooled(extra: dict, kind: str, name: str) -> torch.Tensor | None:
    """The pooled vector [1, width]: required for Llama + CLIP-L, refused for umT5 (which has none)."""
    pooled = extra.get("pooled_output")
    if kind == "umt5" and pooled is not None:
        raise InputError(f"{name} carries a pooled vector of width {pooled.shape[-1]}, so it comes from a CLIP "
                         f"(SD, SDXL, Flux, HunyuanVideo's DualCLIPLoader), not from umT5",
                         "load umt5_xxl with CLIPLoader type wan for Wan, or set encoder to "
                         f"'{ENCODERS['llama']}' for HunyuanVideo")
    if kind == "llama" and (pooled is None or pooled.dim() != 2 or pooled.shape[0] != 1):
        found = "none" if pooled is None else f"shape {tuple(pooled.shape)}"
        raise InputError(f"{name} has no CLIP-L pooled vector [1, width] ({found}), which HunyuanVideo needs",
                         "encode with DualCLIPLoader type hunyuan_video (clip_l + llava_llama3), or set encoder "
                         f"to '{ENCODERS['umt5']}' for Wan")
    return pooled


def _guidance(positive: dict, negative: dict | None, kind: str) -> float | None:
    """The embedded guidance scale FluxGuidance set (one value for both branches), or None."""
    scales = {float(d["guidance"]) for d in (positive, negative) if d is not None and d.get("guidance") is not None}
    if not scales:
        return None
    if kind == "umt5":
        raise InputError("the conditioning carries an embedded guidance scale (FluxGuidance), which Wan models do "
                         "not take", "remove the FluxGuidance node")
    if len(scales) > 1:
        raise InputError(f"positive and negative carry different embedded guidance scales {sorted(scales)}, and "
                         f"the model takes one", "set FluxGuidance on the positive prompt only")
    return scales.pop()


def zeroed(conditioning: list) -> list:
    """What ComfyUI's ConditioningZeroOut gives: every tensor (states, pooled vector) of each entry as zeros."""
    return [[torch.zeros_like(t), {k: torch.zeros_like(v) if k == "pooled_output" and v is not None else v
                                   for k, v in d.items()}] for t, d in conditioning]


def conditioning_to_embeds(positive: list, negative: list | None, kind: str) -> TextEmbeds:
    """Native CONDITIONING (from `kind`'s encoder: "umt5" or "llama") → TextEmbeds with real rows only.
    A missing negative is the positive zeroed out (ConditioningZeroOut), what guidance 1 never looks at."""
    if kind not in ENCODERS:
        raise InputError(f"unknown text encoder kind {kind!r}", f"choose one of {', '.join(ENCODERS.values())}")
    pos, pos_extra = _entry(positive, "positive")
    neg, neg_extra = _entry(zeroed(positive) if negative is None else negative, "negative")
    if pos.shape[-1] != neg.shape[-1]:
        raise InputError(f"positive is {pos.shape[-1]} wide but negative {neg.shape[-1]}: they come from "
                         f"different text encoders", "encode both prompts with the same CLIP loader")
    guidance = _guidance(pos_extra, None if negative is None else neg_extra, kind)
    pooled = [_pooled(extra, kind, name) for extra, name in ((pos_extra, "positive"), (neg_extra, "negative"))]
    if kind == "llama" and pooled[0].shape[-1] != pooled[1].shape[-1]:
        raise InputError(f"the pooled vectors are {pooled[0].shape[-1]} (positive) and {pooled[1].shape[-1]} "
                         f"(negative) wide", "encode both prompts with the same CLIP loader")
    return TextEmbeds(_rows(pos, pos_extra, kind, "positive"), _rows(neg, neg_extra, kind, "negative"),
                      positive_pooled=pooled[0], negative_pooled=pooled[1], embedded_guidance=guidance)


def _native(rows: torch.Tensor, mask: torch.Tensor | None, pooled: torch.Tensor | None,
            guidance: float | None) -> list:
    """One prompt as CLIPTextEncode would give it: float32 on the CPU; umT5's rows zero-padded to 512."""
    rows = rows.detach().float().cpu()
    if mask is not None:
        rows = rows[:, mask[0].bool().cpu()]
    extra = {"pooled_output": None}
    if pooled is None:
        rows = torch.cat([rows, rows.new_zeros(1, max(0, UMT5_ROWS - rows.shape[1]), rows.shape[2])], dim=1)
    else:
        extra["pooled_output"] = pooled.detach().float().cpu()
        if guidance is not None:
            extra["guidance"] = float(guidance)
    return [[rows, extra]]


def embeds_to_conditioning(embeds: TextEmbeds) -> tuple[list, list]:
    """TextEmbeds → (positive, negative) CONDITIONING in the format of ComfyUI's own text encode: umT5 embeddings
    as CLIPLoader(type=wan) gives them, Llama + CLIP-L embeddings as DualCLIPLoader(type=hunyuan_video) does (with
    OpenReel Embedded Guidance's scale as FluxGuidance's "guidance"). Step-Video has no native counterpart."""
    if embeds.positive_2 is not None or embeds.negative_2 is not None:
        raise InputError("these are Step-Video embeddings (Step-LLM and HunyuanCLIP states), and ComfyUI has no "
                         "Step-Video model to take them", "connect them to OpenReel Sampler instead")
    if (embeds.positive_pooled is None) != (embeds.negative_pooled is None):
        raise InputError("only one of the prompts has a pooled vector", "encode both with OpenReel Text Encode")
    guidance = embeds.embedded_guidance
    return (_native(embeds.positive, embeds.positive_mask, embeds.positive_pooled, guidance),
            _native(embeds.negative, embeds.negative_mask, embeds.negative_pooled, guidance))
