"""One attention entry point for every network: `attention(q, k, v, mask=..., backend=...)`.

Layout in: q [B, Lq, H, D], k/v [B, Lk, H, D]; out: [B, Lq, H·D] in q's dtype. `mask` is a boolean
[Lq, Lk] (or broadcastable [B, 1, Lq, Lk]) where True means "may attend". Backends register here; a model
names its backend as a plain attribute, so two models in one process can use different ones.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

AttentionFn = Callable[..., torch.Tensor]
_BACKENDS: dict[str, AttentionFn] = {}


def register_backend(name: str, fn: AttentionFn) -> None:
    _BACKENDS[name] = fn


def available_backends() -> list[str]:
    return list(_BACKENDS)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


register_backend("sdpa", _sdpa)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None = None,
              backend: str = "sdpa") -> torch.Tensor:
    try:
        fn = _BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown attention backend {backend!r}; available: {available_backends()}") from None
    return fn(q, k, v, mask)
