"""One attention entry point for every network: `attention(q, k, v, mask=..., backend=...)`.

Layout in: q [B, Lq, H, D], k/v [B, Lk, H, D]; out: [B, Lq, H·D] in q's dtype. `mask` is a boolean
[Lq, Lk] (or broadcastable [B, 1, Lq, Lk]) where True means "may attend". Backends register here; a model
names its backend as a plain attribute, so two models in one process can use different ones.

`backend` is "<name>" or "<name>:<policy>". A backend may register a check that names what it cannot do for a
call (a mask, a head size, a dtype, a device); such a call is never handed to it. Policy "error" (the default)
raises an error saying why; "fallback" runs the call on SDPA instead and logs that once per backend and reason.

A backend registered `self_only` (an approximate kernel, e.g. 8-bit) serves `self_attention` only: the models' other
attention calls (text cross-attention, short text refiners) stay exact, on SDPA or on the exact kernel the backend
names as `others`, by design and without a log.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator, NamedTuple, Protocol

import torch
import torch.nn.functional as F

from ...errors import InputError

log = logging.getLogger(__name__)

AttentionFn = Callable[..., torch.Tensor]
RefusalFn = Callable[..., "str | None"]   # (q, k, v, mask) → why the backend cannot run this call, or None
POLICIES = ("error", "fallback")


class Backend(NamedTuple):
    fn: AttentionFn
    refuses: RefusalFn | None
    self_only: bool = False
    others: AttentionFn | None = None   # runs a self_only backend's other calls; None: SDPA


_BACKENDS: dict[str, Backend] = {}
_LOGGED: set[tuple[str, str]] = set()


def register_backend(name: str, fn: AttentionFn, refuses: RefusalFn | None = None, *, self_only: bool = False,
                     others: AttentionFn | None = None) -> None:
    _BACKENDS[name] = Backend(fn, refuses, self_only, others)


def available_backends() -> list[str]:
    return list(_BACKENDS)


def registered(name: str) -> Backend | None:
    return _BACKENDS.get(name)


def parse_backend(backend: str) -> tuple[str, str]:
    """"sage:fallback" → ("sage", "fallback"); a bare name has policy "error"."""
    name, _, policy = backend.partition(":")
    policy = policy or "error"
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; available: {available_backends()}")
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r} in attention backend {backend!r}; use one of {POLICIES}")
    return name, policy


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


register_backend("sdpa", _sdpa)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None = None,
              backend: str = "sdpa") -> torch.Tensor:
    """Attention of q to other tokens (text), or any call that is not the main self-attention."""
    name, _ = parse_backend(backend)
    chosen = _BACKENDS[name]
    if chosen.self_only:
        return (chosen.others or _sdpa)(q, k, v, mask)
    return _dispatch(q, k, v, mask, backend)


def _dispatch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              backend: str) -> torch.Tensor:
    name, policy = parse_backend(backend)
    fn, refuses, *_ = _BACKENDS[name]
    reason = None if refuses is None else refuses(q, k, v, mask)
    if reason is None:
        return fn(q, k, v, mask)
    if policy == "error":
        raise InputError(f"the {name!r} attention backend cannot run this call: {reason}",
                         "choose on_unsupported = fallback (SDPA runs such calls) or another attention backend")
    if (name, reason) not in _LOGGED:
        _LOGGED.add((name, reason))
        log.warning("OpenReel: attention backend %r cannot run a call (%s); SDPA runs such calls", name, reason)
    return _sdpa(q, k, v, mask)


class TokenExchange(Protocol):
    """Self-attention over a token sequence split over ranks (parallel/sequence.py): `attend` gets this rank's
    share of q, k, v ([B, share, H, D]) and a mask over all tokens, calls `run(q, k, v, mask)` on what the ranks
    traded, and returns this rank's share of the output [B, share, H·D]."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               run: AttentionFn) -> torch.Tensor: ...


# A plain global, not a ContextVar: torch.compile reads a global under a guard, while a ContextVar breaks the graph
# of every compiled block. Model calls run one at a time per process (ComfyUI's executor, each parallel rank).
_exchange: TokenExchange | None = None


@contextlib.contextmanager
def exchanging_tokens(exchange: TokenExchange | None) -> Iterator[None]:
    """Within: `self_attention` calls run with `exchange` around them."""
    global _exchange
    previous, _exchange = _exchange, exchange
    try:
        yield
    finally:
        _exchange = previous


def self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None = None,
                   backend: str = "sdpa") -> torch.Tensor:
    """`attention` of a token sequence over itself. Under sequence parallelism each rank holds a share of the
    tokens, and the ranks trade around the call (heads for tokens, or keys and values) so that every query
    attends over all tokens (`mask` is over all of them). Attention to other tokens (text) needs no exchange: use
    `attention`."""
    exchange = _exchange
    if exchange is None:
        return _dispatch(q, k, v, mask, backend)
    return exchange.attend(q, k, v, mask, lambda *qkvm: _dispatch(*qkvm, backend))
