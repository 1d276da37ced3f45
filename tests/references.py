"""Reference implementations for parity tests: the official Wan code (PyPI `wan22`) and diffusers.

`wan22`'s package `__init__` imports every pipeline and their heavy dependencies, so the model modules are
loaded from their files under a private package name, with the CUDA-only `flash_attention` replaced by an
exact float32 SDPA equivalent that honours the same key-length semantics.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F


def _sdpa_flash_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None, q_scale=None,
                          causal=False, window_size=(-1, -1), deterministic=False, dtype=torch.bfloat16, version=None):
    """Same contract as wan's flash_attention ([B, L, N, C] in and out), in the input precision."""
    b, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    mask = None
    if k_lens is not None:
        mask = (torch.arange(lk, device=q.device)[None, :] < k_lens.to(q.device)[:, None]).view(b, 1, 1, lk)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                         is_causal=causal, scale=softmax_scale)
    return out.transpose(1, 2).contiguous()


def _wan_root() -> Path:
    return Path(importlib.util.find_spec("wan").submodule_search_locations[0])


def load_official(module: str):
    """Load `wan/modules/<module>.py` (e.g. 'model', 'vae2_1', 't5') as `wanref.<module>` without wan/__init__."""
    name = f"wanref.{module.replace('/', '.')}"
    if name in sys.modules:
        return sys.modules[name]
    root = _wan_root() / "modules"
    if "wanref" not in sys.modules:
        pkg = types.ModuleType("wanref")
        pkg.__path__ = [str(root)]
        sys.modules["wanref"] = pkg
        attn = types.ModuleType("wanref.attention")
        attn.flash_attention = _sdpa_flash_attention
        attn.attention = _sdpa_flash_attention
        sys.modules["wanref.attention"] = attn
    parts = module.split("/")
    for i in range(1, len(parts)):  # intermediate packages, e.g. wanref.animate
        sub = "wanref." + ".".join(parts[:i])
        if sub not in sys.modules:
            pkg = types.ModuleType(sub)
            pkg.__path__ = [str(root.joinpath(*parts[:i]))]
            sys.modules[sub] = pkg
    spec = importlib.util.spec_from_file_location(name, root / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
