"""The "token_chunks" run-time patch: a DiT's token-wise layers run over chunks of this many tokens (0 = off).

Fewer activations for a few percent of time, with the values of the default path (models/common/token_chunks.py
says what each network chunks). The value becomes the network's `token_chunk` attribute, which its forward hands
to the blocks; a network without that attribute does not chunk, and asking it to is an error. The planner picks
`TOKEN_CHUNK` when the activations do not fit otherwise; the Block Swap node takes any number.
"""
from __future__ import annotations

import torch.nn as nn

from ..errors import InputError
from .patches import register_patch

TOKEN_CHUNK = 4096   # the planner's choice: chunk products stay large enough for full GPU speed


def supports_token_chunks(module: nn.Module) -> bool:
    """Whether `module`'s network honours the "token_chunks" patch."""
    return hasattr(type(module), "token_chunk")


def check_token_chunk(value) -> int:
    """`value` as a number of tokens per chunk (0 = off), or an InputError saying what is wrong."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"token_chunks is {value!r}: it must be a whole number of tokens per chunk, 0 or more",
                         "use 0 (off) or a chunk size such as 4096")
    return value


def _apply(module: nn.Module, value: int) -> None:
    chunk = check_token_chunk(value)
    if supports_token_chunks(module):
        module.token_chunk = chunk
    elif chunk:
        raise InputError(f"{type(module).__name__} cannot run in token chunks", "set token_chunks to 0")


register_patch("token_chunks", 0, _apply)
