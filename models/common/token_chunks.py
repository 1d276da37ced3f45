"""Token chunks: token-wise layers of a DiT run over slices of the token sequence, so their large intermediate
tensors exist for one slice at a time.

A network with a `token_chunk` attribute (tokens per chunk, 0 = off; the "token_chunks" run-time patch of
memory/token_chunks.py sets it) hands the number to its blocks, which then project, normalize and add their
residual branches slice by slice with these helpers. Attention still sees every token at once. Each token's
values go through the same operations as without chunks, so only the size of the matrix products changes.
"""
from __future__ import annotations

from typing import Callable

import torch


def chunking(chunk: int, length: int) -> bool:
    """Whether chunks of `chunk` tokens split a sequence of `length` tokens (0, or a chunk as long: no)."""
    return 0 < chunk < length


def spans(start: int, stop: int, chunk: int) -> list[slice]:
    """Consecutive slices of at most `chunk` tokens covering start..stop."""
    return [slice(s, min(s + chunk, stop)) for s in range(start, stop, chunk)]


def add_in_chunks(x: torch.Tensor, branch: Callable[[slice], torch.Tensor], chunk: int) -> torch.Tensor:
    """x[:, s] += branch(s) for each slice s of at most `chunk` tokens of x [B, L, D], in place: the branch's
    intermediates live for one slice, and no second stream is made. Returns x."""
    for s in spans(0, x.shape[1], chunk):
        x[:, s].add_(branch(s))
    return x
