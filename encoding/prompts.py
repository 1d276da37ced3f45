"""Prompts → text embeddings (OPENREEL_EMBEDS), cached per (encoder weights, prompt)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch

from .. import runtime
from ..handles import TextEmbeds, TextEncoderHandle
from ..model_loaders.core import module_of
from ..models.text.tokenizer import TEXT_LENGTH, load_tokenizer

_PROMPT_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_PROMPT_CACHE_SIZE = 64


def encode_text(handle: TextEncoderHandle, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts → (context [B, 512, d_model] with rows past each prompt zeroed, lengths [B]), on the CPU.

    The encoder is on the GPU only for the call."""
    ids, mask = load_tokenizer(handle.tokenizer)(prompts, TEXT_LENGTH)
    module = module_of(handle)
    runtime.throw_if_interrupted()
    with runtime.placed(module) as device:
        context, lengths = module.encode(ids.to(device), mask.to(device))
        return context.cpu(), lengths.cpu()


def encode_prompts(handle: TextEncoderHandle, positive: str, negative: str) -> TextEmbeds:
    """Both prompts → TextEmbeds. Encodings are cached per (encoder weights, prompt): re-running a graph or
    changing only the seed costs no encoder run."""
    wanted = [p for p in (positive, negative) if (handle.weights_key, p) not in _PROMPT_CACHE]
    if wanted:
        context, lengths = encode_text(handle, wanted)
        for prompt, row, length in zip(wanted, context, lengths):
            _PROMPT_CACHE[(handle.weights_key, prompt)] = row[: int(length)].unsqueeze(0).clone()
    embeds = []
    for prompt in (positive, negative):
        _PROMPT_CACHE.move_to_end((handle.weights_key, prompt))
        embeds.append(_PROMPT_CACHE[(handle.weights_key, prompt)])
    while len(_PROMPT_CACHE) > _PROMPT_CACHE_SIZE:
        _PROMPT_CACHE.popitem(last=False)
    return TextEmbeds(embeds[0], embeds[1])
