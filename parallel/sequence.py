"""Sequence parallelism (Ulysses): the ranks of a torch.distributed group share a DiT's video tokens.

Through each block list every rank holds a contiguous share of the tokens. Everything in a block is token-wise but
self-attention, and there each rank trades its tokens of every head for every token of its share of the heads
(one all-to-all), attends, and trades back: every rank computes exactly what one process would for its tokens.
Where the ranks do not divide the heads (Wan's 40 heads on 3 GPUs), each rank gathers every rank's keys and values
instead and attends with its own queries: more traffic, any number of ranks.
Attention to the text needs no exchange (each rank's queries see the whole text). After the list, the shares are
gathered so every rank continues with the whole stream.

A model takes part by running its self-attention through `models.common.attention.self_attention` and by giving
its blocks' inputs (the first argument after the stream of each `run_blocks`) for a share of the tokens:
`inputs_for_tokens(inputs, slice, length)`. A stream may end with tokens every rank keeps whole
(`replicated_tokens(inputs)`: HunyuanVideo's text, a few hundred against tens of thousands of video tokens).
Tokens need not divide by the number of ranks (shares differ by at most one token).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import InputError
from ..models.common.attention import exchanging_tokens
from ..models.common.wrappers import Wrapper


def shares(length: int, ranks: int) -> list[int]:
    """Tokens per rank, in rank order: as even as possible, the first ranks one more."""
    return [length // ranks + (r < length % ranks) for r in range(ranks)]


class SequenceExchange:
    """The exchange of one block list's self-attention: tokens split over ranks ⇄ heads split over ranks (one
    all-to-all each way), or, where the ranks do not divide the heads, every rank's keys and values gathered.

    A stream may end with `tail` tokens every rank holds whole (HunyuanVideo's text): each rank attends with its
    heads' slice of them, and their outputs are gathered over the heads (with gathered keys: each rank attends
    with all of them)."""

    def __init__(self, sizes: list[int], tail: int = 0, group=None):
        self.sizes, self.tail, self.group = sizes, tail, group
        self.ranks, self.rank = len(sizes), dist.get_rank(group)
        self.share = sizes[self.rank]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, run):
        if q.shape[2] % self.ranks == 0:
            return self.to_tokens(run(self.to_heads(q), self.to_heads(k), self.to_heads(v), mask))
        whole = [torch.cat([gather_tokens(t[:, :self.share], self.sizes, self.group), t[:, self.share:]], dim=1)
                 for t in (k, v)]
        if mask is not None and mask.shape[-2] > 1:   # the rows of my queries (a key mask has one): share, tail
            start, length = sum(self.sizes[:self.rank]), sum(self.sizes)
            rows = torch.cat([torch.arange(start, start + self.share), torch.arange(length, length + self.tail)])
            mask = mask[..., rows.to(mask.device), :]
        return run(q, *whole, mask)

    def to_heads(self, t: torch.Tensor) -> torch.Tensor:
        """[B, share + tail, H, D] → [B, L + tail, H/N, D]: my share of the heads for every token."""
        b, _, h, d = t.shape
        n, per = self.share, h // self.ranks
        send = t[:, :n].reshape(b, n, self.ranks, per, d).permute(2, 1, 0, 3, 4).reshape(self.ranks * n, b, per, d)
        out = send.new_empty(sum(self.sizes), b, per, d)
        dist.all_to_all_single(out, send.contiguous(), self.sizes, [n] * self.ranks, group=self.group)
        mine = out.permute(1, 0, 2, 3)
        if not self.tail:
            return mine
        return torch.cat([mine, t[:, n:, self.rank * per:(self.rank + 1) * per]], dim=1)

    def to_tokens(self, out: torch.Tensor) -> torch.Tensor:
        """Attention's output [B, L + tail, (H/N)·D] → [B, share + tail, H·D]: every head for my tokens."""
        b, _, width = out.shape
        length = sum(self.sizes)
        send = out[:, :length].transpose(0, 1).contiguous()
        got = send.new_empty(self.ranks * self.share, b, width)
        dist.all_to_all_single(got, send, [self.share] * self.ranks, self.sizes, group=self.group)
        mine = got.view(self.ranks, self.share, b, width).permute(2, 1, 0, 3).reshape(b, self.share, -1)
        if not self.tail:
            return mine
        heads = [torch.empty_like(out[:, length:]) for _ in range(self.ranks)]
        dist.all_gather(heads, out[:, length:].contiguous(), group=self.group)
        return torch.cat([mine, torch.cat(heads, dim=-1)], dim=1)


def gather_tokens(x: torch.Tensor, sizes: list[int], group=None) -> torch.Tensor:
    """Every rank's share [B, share, ...] → the whole sequence [B, L, ...] on every rank (shares padded to the
    longest for the collective, the padding dropped)."""
    longest = max(sizes)
    padded = x.new_zeros(x.shape[0], longest, *x.shape[2:])
    padded[:, : x.shape[1]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([part[:, :n] for part, n in zip(parts, sizes)], dim=1)


class SequenceParallel(Wrapper):
    """The "sequence_parallel" wrapper: each block list runs on this rank's share of the tokens."""

    order = 75  # inside step caches (they see the whole stream), outside block swap (each rank streams its blocks)

    def __init__(self, group=None):
        self.group = group

    def blocks(self, call, model: nn.Module, list_name: str, x, *args):
        if not hasattr(model, "inputs_for_tokens"):
            raise InputError(f"sequence parallelism does not support {type(model).__name__} models yet",
                             "run this model on one GPU")
        inputs = args[0]
        tail = model.replicated_tokens(inputs) if hasattr(model, "replicated_tokens") else 0
        length = x.shape[1] - tail
        sizes = shares(length, dist.get_world_size(self.group))
        start = sum(sizes[: dist.get_rank(self.group)])
        mine = slice(start, start + sizes[dist.get_rank(self.group)])
        args = (model.inputs_for_tokens(inputs, mine, length), *args[1:])
        with exchanging_tokens(SequenceExchange(sizes, tail, self.group)):
            out = call(torch.cat([x[:, mine], x[:, length:]], dim=1), *args)
        share = mine.stop - mine.start
        return torch.cat([gather_tokens(out[:, :share], sizes, self.group), out[:, share:]], dim=1)
