"""Prompts → text embeddings (OPENREEL_EMBEDS), cached per (encoder weights, prompt).

Each kind of text encoder has its model's recipe (`RECIPES`, keyed by the encoder spec's `kind`):
- umT5 (Wan, SkyReels-V2): the prompt in 512 tokens; the real tokens' rows of the encoder's output.
- Llama (HunyuanVideo): the prompt inside the `dit-llm-encode-video` template, in 95 + 256 tokens; the hidden state
  of the third-last layer; the 95 template tokens dropped, then the real tokens' rows (the official code keeps the
  256 rows and a mask; the rows where the mask is 1 are these, so TextEmbeds holds no mask).
- CLIP text (HunyuanVideo's CLIP-L, the second encoder): the prompt in 77 tokens; the pooled vector [1, 768].
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


@dataclass(frozen=True)
class Recipe:
    """How a model encodes a prompt with one kind of text encoder."""
    template: str = "{}"     # the text the tokenizer sees; {} takes the prompt
    crop: int = 0            # leading tokens (the template's) whose rows are dropped
    pooled: bool = False     # the pooled vector [1, width] instead of the token rows [1, n, width]
    partner: str = ""        # the kind of text encoder this one needs as text_encoder_2 (its pooled vector)


RECIPES = {
    "umt5": Recipe(),
    "llama": Recipe(VIDEO_TEMPLATE, TEMPLATE_TOKENS, partner="clip_text"),
    "clip_text": Recipe(pooled=True),
}


def encode_text(handle: TextEncoderHandle, prompts: Sequence[str]) -> list[torch.Tensor]:
    """Prompts → one tensor per prompt on the CPU, in the encoder's compute dtype: the real tokens' rows
    [1, n, width] (sequence encoders) or the pooled vector [1, width]."""
    recipe = RECIPES[handle.spec.kind]
    # stripped as the official HunyuanVideo code does (Wan's cleaning strips too)
    ids, mask = load_tokenizer(handle.tokenizer)([recipe.template.format(p.strip()) for p in prompts])
    module = module_of(handle)
    runtime.throw_if_interrupted()
    with torch.no_grad(), runtime.placed(module) as device:
        ids, mask = ids.to(device), mask.to(device)
        if recipe.pooled:
            pooled = module(ids)[1]
            return [pooled[b:b + 1].cpu() for b in range(len(prompts))]
        hidden, keep = module(ids, mask)[:, recipe.crop:], mask[:, recipe.crop:].bool()
        return [hidden[b:b + 1, keep[b]].cpu() for b in range(len(prompts))]


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
    if recipe.pooled:
        raise InputError(f"text_encoder is {handle.spec.description}, which gives only HunyuanVideo's pooled vector",
                         "connect the Llama encoder (llava_llama3_*.safetensors) to text_encoder and CLIP-L "
                         "(clip_l.safetensors) to text_encoder_2")
    if not recipe.partner and handle_2 is not None:
        raise InputError(f"text_encoder is {handle.spec.description}, which takes no second encoder, but "
                         f"text_encoder_2 is connected", "leave text_encoder_2 empty for Wan and SkyReels-V2")
    if recipe.partner and (handle_2 is None or handle_2.spec.kind != recipe.partner):
        found = "empty" if handle_2 is None else handle_2.spec.description
        raise InputError(f"text_encoder is {handle.spec.description}, which HunyuanVideo pairs with CLIP-L as "
                         f"text_encoder_2 for the pooled vector; text_encoder_2 is {found}",
                         "load clip_l.safetensors with OpenReel Text Encoder Loader and connect it to "
                         "text_encoder_2")


def encode_prompts(handle: TextEncoderHandle, positive: str, negative: str,
                   handle_2: TextEncoderHandle | None = None) -> TextEmbeds:
    """Both prompts → TextEmbeds: token rows from `handle`, and the pooled vectors from `handle_2` where the model
    takes them (HunyuanVideo: Llama + CLIP-L). Encodings are cached."""
    check_encoders(handle, handle_2)
    embeds = _encoded(handle, [positive, negative])
    if handle_2 is None:
        return TextEmbeds(embeds[0], embeds[1])
    pooled = _encoded(handle_2, [positive, negative])
    return TextEmbeds(embeds[0], embeds[1], positive_pooled=pooled[0], negative_pooled=pooled[1])
