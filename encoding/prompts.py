"""Prompts → text embeddings (OPENREEL_EMBEDS), cached per (encoder weights, prompt).

Each kind of text encoder has its model's recipe (`RECIPES`, keyed by the encoder spec's `kind`):
- umT5 (Wan, SkyReels-V2): the prompt in 512 tokens; the real tokens' rows of the encoder's output.
- Llama (HunyuanVideo): the prompt inside the `dit-llm-encode-video` template, in 95 + 256 tokens; the hidden state
  of the third-last layer; the 95 template tokens dropped, then the real tokens' rows (the official code keeps the
  256 rows and a mask; the rows where the mask is 1 are these, so TextEmbeds holds no mask).
- CLIP text (HunyuanVideo's CLIP-L, the second encoder): the prompt in 77 tokens; the pooled vector [1, 768].
- Step-LLM (Step-Video): the prompt as given (not stripped), the positive one followed by the official positive
  "magic" suffix (`stepvideo/config.py` `--pos_magic`); BOS … EOS padded to 320 tokens; every row of the last hidden
  state [1, 320, 6144] and the tokenizer's mask [1, 320] (what the official caption server returns as `y`, `y_mask`;
  the DiT puts HunyuanCLIP's 77 rows in front and pads the mask itself).
- HunyuanCLIP (Step-Video's second encoder): the same texts in 77 BERT tokens; every row of `last_hidden_state`
  [1, 77, 1024] (`clip_embedding`) and its mask, in TextEmbeds' `*_2` fields.
An encoder sits on the GPU only while it encodes; its weights stay in whatever storage the loader chose (fp8 too).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch

from .. import runtime
from ..errors import InputError
from ..handles import TextEmbeds, TextEncoderHandle
from ..model_loaders.core import module_of
from ..models.text.llama import TEMPLATE_TOKENS, VIDEO_TEMPLATE
from ..models.text.tokenizer import load_tokenizer

_PROMPT_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_PROMPT_CACHE_SIZE = 64

# Step-Video's official magic prompts (stepvideo/config.py defaults): appended to the positive prompt, and the
# negative prompt the official pipeline encodes.
STEPVIDEO_POSITIVE_MAGIC = ("超高清、HDR 视频、环境光、杜比全景声、画面稳定、流畅动作、逼真的细节、专业级构图、超现实主义、自然、生动、超细节、"
                            "清晰。")
STEPVIDEO_NEGATIVE = "画面暗、低分辨率、不良手、文本、缺少手指、多余的手指、裁剪、低质量、颗粒状、签名、水印、用户名、模糊。"


@dataclass(frozen=True)
class Pairing:
    """A model that encodes with two text encoders, for the messages when they are not connected so."""
    model: str               # e.g. "HunyuanVideo"
    first: str               # the first encoder and its files, e.g. "the Llama encoder (llava_llama3_*.safetensors)"
    second: str              # the second encoder's name, e.g. "CLIP-L"
    second_files: str        # what to load as the second, e.g. "clip_l.safetensors"
    second_use: str          # what the model takes from it, e.g. "the pooled vector"
    gives: str               # what the second encoder alone gives, e.g. "pooled vector"


HUNYUAN = Pairing("HunyuanVideo", "the Llama encoder (llava_llama3_*.safetensors)", "CLIP-L", "clip_l.safetensors",
                  "the pooled vector", "pooled vector")
STEPVIDEO = Pairing("Step-Video", "Step-LLM (the step_llm folder)", "HunyuanCLIP", "the hunyuan_clip folder",
                    "its token states", "second text encoder states")


@dataclass(frozen=True)
class Recipe:
    """How a model encodes a prompt with one kind of text encoder."""
    template: str = "{}"     # the text the tokenizer sees; {} takes the prompt
    crop: int = 0            # leading tokens (the template's) whose rows are dropped
    pooled: bool = False     # the pooled vector [1, width] instead of the token rows [1, n, width]
    padded: bool = False     # every row of the padded sequence [1, length, width] (the mask goes beside)
    strip: bool = True       # the prompt is stripped first (HunyuanVideo's official code and Wan's cleaning do)
    suffix: str = ""         # appended to the positive prompt
    partner: str = ""        # the kind of text encoder this one needs as text_encoder_2
    second: bool = False     # this encoder is a model's text_encoder_2 only
    pairing: Pairing | None = None


RECIPES = {
    "umt5": Recipe(),
    "llama": Recipe(VIDEO_TEMPLATE, TEMPLATE_TOKENS, partner="clip_text", pairing=HUNYUAN),
    "clip_text": Recipe(pooled=True, second=True, pairing=HUNYUAN),
    "stepllm": Recipe(padded=True, strip=False, suffix=STEPVIDEO_POSITIVE_MAGIC, partner="hunyuan_clip",
                      pairing=STEPVIDEO),
    "hunyuan_clip": Recipe(padded=True, strip=False, second=True, pairing=STEPVIDEO),
}


def _texts(recipe: Recipe, prompts: Sequence[str]) -> list[str]:
    return [recipe.template.format(p.strip() if recipe.strip else p) for p in prompts]


def encode_text(handle: TextEncoderHandle, prompts: Sequence[str]) -> list[torch.Tensor]:
    """Prompts → one tensor per prompt on the CPU, in the encoder's compute dtype: the real tokens' rows
    [1, n, width] (sequence encoders), every row of the padded sequence [1, length, width] (`padded` recipes: the
    mask is `prompt_masks`), or the pooled vector [1, width]."""
    recipe = RECIPES[handle.spec.kind]
    ids, mask = load_tokenizer(handle.tokenizer)(_texts(recipe, prompts))
    module = module_of(handle)
    runtime.throw_if_interrupted()
    with torch.no_grad(), runtime.placed(module) as device:
        ids, mask = ids.to(device), mask.to(device)
        if recipe.pooled:
            pooled = module(ids)[1]
            return [pooled[b:b + 1].cpu() for b in range(len(prompts))]
        hidden = module(ids, mask)
        if recipe.padded:
            return [hidden[b:b + 1].cpu() for b in range(len(prompts))]
        hidden, keep = hidden[:, recipe.crop:], mask[:, recipe.crop:].bool()
        return [hidden[b:b + 1, keep[b]].cpu() for b in range(len(prompts))]


def prompt_masks(handle: TextEncoderHandle, prompts: Sequence[str]) -> list[torch.Tensor]:
    """The tokenizer's mask [1, length] (1: a real token) per prompt, for `padded` recipes (no encoder runs)."""
    _, mask = load_tokenizer(handle.tokenizer)(_texts(RECIPES[handle.spec.kind], prompts))
    return [mask[b:b + 1] for b in range(len(prompts))]


def _encoded(handle: TextEncoderHandle, prompts: Sequence[str]) -> list[torch.Tensor]:
    """`encode_text` through the cache: re-running a graph or changing only the seed costs no encoder run."""
    wanted = list(dict.fromkeys(p for p in prompts if (handle.weights_key, p) not in _PROMPT_CACHE))
    if wanted:
        for prompt, tensor in zip(wanted, encode_text(handle, wanted)):
            _PROMPT_CACHE[(handle.weights_key, prompt)] = tensor.clone()
    out = []
    for prompt in prompts:
        _PROMPT_CACHE.move_to_end((handle.weights_key, prompt))
        out.append(_PROMPT_CACHE[(handle.weights_key, prompt)])
    while len(_PROMPT_CACHE) > _PROMPT_CACHE_SIZE:
        _PROMPT_CACHE.popitem(last=False)
    return out


def check_encoders(handle: TextEncoderHandle, handle_2: TextEncoderHandle | None) -> None:
    """Refuse a pair of encoders no model encodes with (before any encoder runs)."""
    recipe = RECIPES[handle.spec.kind]
    pairing = recipe.pairing
    if recipe.second:
        raise InputError(f"text_encoder is {handle.spec.description}, which gives only {pairing.model}'s "
                         f"{pairing.gives}",
                         f"connect {pairing.first} to text_encoder and {pairing.second} ({pairing.second_files}) to "
                         f"text_encoder_2")
    if not recipe.partner and handle_2 is not None:
        raise InputError(f"text_encoder is {handle.spec.description}, which takes no second encoder, but "
                         f"text_encoder_2 is connected", "leave text_encoder_2 empty for Wan and SkyReels-V2")
    if recipe.partner and (handle_2 is None or handle_2.spec.kind != recipe.partner):
        found = "empty" if handle_2 is None else handle_2.spec.description
        raise InputError(f"text_encoder is {handle.spec.description}, which {pairing.model} pairs with "
                         f"{pairing.second} as text_encoder_2 for {pairing.second_use}; text_encoder_2 is {found}",
                         f"load {pairing.second_files} with OpenReel Text Encoder Loader and connect it to "
                         f"text_encoder_2")


def encode_prompts(handle: TextEncoderHandle, positive: str, negative: str,
                   handle_2: TextEncoderHandle | None = None) -> TextEmbeds:
    """Both prompts → TextEmbeds: token rows from `handle`, and from `handle_2` where the model takes a second
    encoder: its pooled vectors (HunyuanVideo: Llama + CLIP-L) or its token rows and masks (Step-Video: Step-LLM +
    HunyuanCLIP; Step-LLM's masks go beside its rows). Encodings are cached."""
    check_encoders(handle, handle_2)
    recipe = RECIPES[handle.spec.kind]
    prompts = [positive + recipe.suffix, negative]
    embeds = _encoded(handle, prompts)
    if handle_2 is None:
        return TextEmbeds(embeds[0], embeds[1])
    second = _encoded(handle_2, prompts)
    if RECIPES[handle_2.spec.kind].pooled:
        return TextEmbeds(embeds[0], embeds[1], positive_pooled=second[0], negative_pooled=second[1])
    masks, masks_2 = prompt_masks(handle, prompts), prompt_masks(handle_2, prompts)
    return TextEmbeds(embeds[0], embeds[1], positive_mask=masks[0], negative_mask=masks[1], positive_2=second[0],
                      negative_2=second[1], positive_2_mask=masks_2[0], negative_2_mask=masks_2[1])
