"""Attention backends beyond plain SDPA, registered into `models.common.attention` with what each cannot do.

- "sdpa_cudnn", "sdpa_flash": PyTorch's SDPA held to one kernel (`torch.nn.attention.sdpa_kernel`), where
  plain "sdpa" lets PyTorch choose.
- "sage": SageAttention (`sageattention.sageattn`), listed everywhere, refusing every call (saying what to install)
  where it does not import. PyPI's 1.0.6 is the Triton SageAttention 1 (INT8 Q·Kᵀ, FP16 P·V), slower than cuDNN on
  an H200. SageAttention 2 (built from its sources: INT8 Q·Kᵀ, FP8 P·V, one CUDA kernel per GPU generation) is the
  fastest attention we measured on an H200 (1.4x cuDNN).
- "flash": FlashAttention 4 (`flash_attn.cute`, PyPI `flash-attn-4`: Hopper and Blackwell), 3
  (`flash_attn_interface`, Hopper) or 2 (`flash_attn`), whichever imports first. Exact attention (bf16/fp16).
- "int8_fp8": our own 8-bit kernel (speed/int8_attention.py: INT8 Q·Kᵀ, FP8 P·V; Triton, FP8 GPUs: Ada, Hopper and
  newer), for the video self-attention only; "int8_fp8_all" also runs the text cross-attention on it; "int8_16bit"
  keeps P·V in 16 bits (more precise, less fast).
- "flash4": FlashAttention 4 by that name, for the "speed" preset and for workflows that name it: registered
  everywhere, refusing every call (saying what to install) where it does not import.
- "speed": a preset, the fastest kernel whose accuracy bound holds for each call where it runs (SPEED_ORDER):
  SageAttention 2 on Hopper where it is installed (as accurate as our own 8-bit kernel), then FlashAttention 4
  (exact; on an H200 1.18-1.21x cuDNN's attention, ahead of our 8-bit kernel), else "int8_fp8" on GPUs it serves
  (1.13x cuDNN, DiT output within 0.6% of exact attention), else SDPA; the text attention on FlashAttention 4 or
  SDPA (exact). Registered everywhere, so a workflow that names it runs anywhere.

Each backend's refusal check names what it cannot honour: masks (block-causal attention: 1.0.6 would silently
ignore one), head sizes, fp32, CPU tensors, older GPUs, and for Sage 1.0.6 short key sequences whose length is
not a multiple of 64 (e.g. the 257 CLIP tokens of I2V; see SAGE_KEY_BLOCK; SageAttention 2 masks them). The
dispatch then raises or falls back to SDPA, by the policy in the backend name ("sage:fallback"), so no backend ever
returns a silently different result.
External kernels run as opaque custom ops, so a compiled block does not trace into their Triton/CUDA code.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from .. import runtime
from ..memory.patches import register_patch
from .custom_ops import opaque
from ..models.common.attention import register_backend, registered

log = logging.getLogger(__name__)

HALF_DTYPES = (torch.float16, torch.bfloat16)
# sageattention 1.0.6 reads keys in blocks of 64 and does not mask the last block's padding out of the softmax:
# each padding key scores 0. With the keys' mean subtracted (below) the real scores of a query average 0, so a
# padding key weighs at most as much as an average real key, and the output shrinks by at most padding / keys.
SAGE_KEY_BLOCK = 64
SAGE_PADDING_TOLERANCE = 0.005   # accepted relative error from that, a fraction of Sage's own INT8 error (~1.4%)


def _refusal(q: Tensor, mask: Tensor | None, *, masks: bool = False, head_dims=None, max_head_dim: int = 256,
             capability: tuple[int, int] = (8, 0), exact_capability: bool = False) -> str | None:
    """What a half-precision CUDA attention kernel with these limits cannot do for this call, or None."""
    if q.device.type != "cuda":
        return f"tensors on {q.device.type}; it runs on CUDA GPUs only"
    if mask is not None and not masks:
        return "an attention mask (block-causal attention); it only computes full attention"
    if q.dtype not in HALF_DTYPES:
        return f"dtype {q.dtype}; it takes float16 or bfloat16"
    d = q.shape[-1]
    if head_dims is not None and d not in head_dims:
        return f"head size {d}; it takes {', '.join(map(str, head_dims))}"
    if d > max_head_dim or d % 8:
        return f"head size {d}; it takes multiples of 8 up to {max_head_dim}"
    have = torch.cuda.get_device_capability(q.device)
    if have < capability or (exact_capability and have != capability):
        need = f"{capability[0]}.{capability[1]}" + ("" if exact_capability else " or newer")
        return f"a GPU of compute capability {have[0]}.{have[1]}; it needs {need}"
    return None


# ------------------------------------------------------------------------------------------------ SDPA kernels
def _sdpa_with(kernel: SDPBackend):
    def run(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        with sdpa_kernel(kernel):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=mask)
        return out.transpose(1, 2).flatten(2)
    return run


def _cudnn_refusal(q, k, v, mask):
    return _refusal(q, mask, masks=True)


def _flash_sdpa_refusal(q, k, v, mask):
    return _refusal(q, mask)


# ------------------------------------------------------------------------------------------------ external kernels
def _opaque(name: str, kernel: Callable) -> Callable:
    """`kernel` (q, k, v → output shaped like q) as a custom op. Kernels import their package when called (a
    dictionary look-up once imported)."""
    return opaque(name, kernel, lambda q, *rest: q.new_empty(q.shape))


def _sage_kernel(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from sageattention import sageattn
    return sageattn(q, k, v, tensor_layout="NHD", is_causal=False, smooth_k=False)


def _sage2_kernel(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from sageattention import sageattn
    return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)   # its key centring leaves k alone


def _flash4_kernel(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from flash_attn.cute import flash_attn_func
    return flash_attn_func(q, k, v, causal=False)[0]   # (output, log-sum-exp)


def _flash3_kernel(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from flash_attn_interface import flash_attn_func
    out = flash_attn_func(q, k, v, causal=False)
    return out[0] if isinstance(out, tuple) else out   # some FA3 releases also return the log-sum-exp


def _flash2_kernel(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from flash_attn import flash_attn_func
    return flash_attn_func(q, k, v, causal=False)


def _int8_kernel(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], pv: str) -> Tensor:
    from .int8_attention import int8_attention
    return int8_attention(q, k, v, mask, pv)


_sage_op = _opaque("sageattn", _sage_kernel)
_sage2_op = _opaque("sageattn2", _sage2_kernel)
_flash4_op = _opaque("flash_attn4", _flash4_kernel)
_flash3_op = _opaque("flash_attn3", _flash3_kernel)
_flash2_op = _opaque("flash_attn2", _flash2_kernel)
_int8_op = _opaque("int8_attention", _int8_kernel)


def _sage(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    # Sage's own smooth_k subtracts the keys' mean in place, in the caller's tensor; doing it here leaves the
    # input alone. Softmax is unchanged by it (it shifts each query's scores by one constant).
    k = k - k.mean(dim=1, keepdim=True)
    return _sage_op(q.contiguous(), k.contiguous(), v.contiguous()).flatten(2)


def _sage_refusal(q, k, v, mask):
    reason = _refusal(q, mask, head_dims=(64, 96, 128))
    keys = k.shape[1]
    padding = -keys % SAGE_KEY_BLOCK
    if reason is None and padding > keys * SAGE_PADDING_TOLERANCE:
        return (f"{keys} keys, not a multiple of {SAGE_KEY_BLOCK}: sageattention 1.0.6 would weigh {padding} "
                f"padding keys into the softmax (up to {padding / keys:.1%} error)")
    return reason


# SageAttention 2's `sageattn` picks its kernel by compute capability; each CUDA kernel is an extension that a build
# may leave out (a build compiles for the GPUs it was told of). 8.6 runs its Triton kernel, always there.
SAGE2_KERNELS = {(8, 0): "SM80_ENABLED", (8, 6): None, (8, 9): "SM89_ENABLED", (9, 0): "SM90_ENABLED",
                 (12, 0): "SM89_ENABLED", (12, 1): "SM89_ENABLED"}
SAGE2_HEAD_DIMS = 128   # it pads smaller head sizes to 64 or 128


def _sage2_built() -> frozenset[tuple[int, int]]:
    """The compute capabilities the installed SageAttention 2 has a kernel for."""
    core = importlib.import_module("sageattention.core")
    return frozenset(cap for cap, flag in SAGE2_KERNELS.items() if flag is None or getattr(core, flag, False))


def _sage2_refusal_with(built: frozenset[tuple[int, int]]):
    def refuses(q, k, v, mask):
        reason = _refusal(q, mask, max_head_dim=SAGE2_HEAD_DIMS)
        have = None if reason else torch.cuda.get_device_capability(q.device)
        if have is not None and have not in built:
            listed = ", ".join(f"{a}.{b}" for a, b in sorted(built)) or "none"
            known = have in SAGE2_KERNELS
            return (f"a GPU of compute capability {have[0]}.{have[1]}; this SageAttention 2 has kernels for {listed}"
                    + ("; rebuild it on this GPU" if known else ""))
        return reason
    return refuses


def _sage2(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    return _sage2_op(q.contiguous(), k.contiguous(), v.contiguous()).flatten(2)


def _flash_with(op: Callable):
    def run(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        return op(q.contiguous(), k.contiguous(), v.contiguous()).flatten(2)
    return run


def _flash4_refusal(q, k, v, mask):
    return _refusal(q, mask, capability=(9, 0))   # its SM90 and SM100 kernels (Hopper, Blackwell)


FLASH4_MISSING = ('flash-attn-4 is not installed (pip install flash-attn-4; with a CUDA 13 build of PyTorch: '
                  'pip install "flash-attn-4[cu13]")')
TRITON_MISSING = ("Triton is not installed (Linux: it comes with PyTorch's CUDA builds; Windows: pip install "
                  "triton-windows)")
MISSING: dict[str, str] = {}   # backends listed everywhere that cannot run on this machine: what to install


def missing(name: str) -> str | None:
    """What to install for backend `name` to run here, or None (installed, or not one of ours that can miss)."""
    return MISSING.get(name)


SAGE_MISSING = ("SageAttention does not import here (not installed, or broken: the log says why). SageAttention 2 "
                "is built from github.com/thu-ml/SageAttention (pip install . --no-build-isolation in its folder); "
                "PyPI's sageattention 1.0.6 is slower than cuDNN on Hopper")


def _refusing(why: str) -> Callable:
    """The refusal of a backend listed where it cannot run: every call, saying what to install."""
    return lambda q, k, v, mask: why


def _flash3_refusal(q, k, v, mask):
    return _refusal(q, mask, capability=(9, 0), exact_capability=True)


def _flash2_refusal(q, k, v, mask):
    return _refusal(q, mask)


def _int8_with(pv: str):
    def run(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        return _int8_op(q, k, v, mask, pv).flatten(2)
    return run


INT8_HEAD_DIMS = (64, 128)


def _int8_refusal_with(capability: tuple[int, int], triton_here: bool):
    """FP8 products need compute capability 8.9 (Ada, Hopper); INT8 and 16-bit ones 8.0 (Ampere). Without Triton
    the backend stays listed, so a shared workflow that names it still runs (on SDPA, by its fallback policy)."""
    def refuses(q, k, v, mask):
        if not triton_here:
            return TRITON_MISSING
        reason = _refusal(q, mask, masks=True, head_dims=INT8_HEAD_DIMS, capability=capability)
        if reason is None and mask is not None and not (mask.dim() == 2 or (mask.dim() == 4 and mask.shape[1] == 1)):
            return f"a mask shaped {tuple(mask.shape)}; it takes [queries, keys] or [batch, 1, queries, keys]"
        return reason
    return refuses


# Fastest first, as measured on an H200 at Wan's shapes (bench/RESULTS.md, issue 14); each within its accuracy bound.
# "sage" takes part only as SageAttention 2 (1.0.6 is slower than cuDNN), and only on the GPUs its accuracy was
# measured on: it runs another kernel, with other accumulators, on each GPU generation.
SPEED_ORDER = ("sage", "flash4", "int8_fp8")
EXACT_ORDER = ("flash4",)
SPEED_MEASURED_ON = {"sage": ((9, 0),)}


def _first_of(order: tuple[str, ...]) -> Callable:
    def run(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        for name in order:
            backend = registered(name)
            if backend is None or backend.refuses(q, k, v, mask) is not None:
                continue
            if name not in SPEED_MEASURED_ON or torch.cuda.get_device_capability(q.device) in SPEED_MEASURED_ON[name]:
                return backend.fn(q, k, v, mask)
        return registered("sdpa").fn(q, k, v, mask)
    return run


# ------------------------------------------------------------------------------------------------ registration
def _importable(module: str, attr: str) -> bool:
    """Whether `module.attr` imports; an installed package that fails to import is reported."""
    try:
        if importlib.util.find_spec(module) is None:
            return False
    except ModuleNotFoundError:   # its parent is a plain module, not a package
        return False
    try:
        return hasattr(importlib.import_module(module), attr)
    except Exception as exc:  # an install that fails at import (e.g. a Triton / CUDA mismatch)
        log.warning("OpenReel: %s is installed but cannot be used (%s: %s)", module, type(exc).__name__, exc)
        return False


def _sage_generation() -> int | None:
    """1 for SageAttention 1 (PyPI's 1.0.6), 2 for SageAttention 2, None where it does not import."""
    if not _importable("sageattention", "sageattn"):
        return None
    return 2 if hasattr(importlib.import_module("sageattention"), "sageattn_qk_int8_pv_fp8_cuda_sm90") else 1


def register_installed() -> None:
    """Register the SDPA kernels, our 8-bit kernels (refusing every call where Triton does not import),
    SageAttention and FlashAttention 4 by name (refusing every call where they do not import), and "flash": 4, then
    3, then 2, where one imports."""
    register_backend("sdpa_cudnn", _sdpa_with(SDPBackend.CUDNN_ATTENTION), _cudnn_refusal)
    register_backend("sdpa_flash", _sdpa_with(SDPBackend.FLASH_ATTENTION), _flash_sdpa_refusal)
    triton_here = _importable("triton", "jit")
    fp8_refusal = _int8_refusal_with((8, 9), triton_here)
    register_backend("int8_fp8", _int8_with("fp8"), fp8_refusal, self_only=True)
    register_backend("int8_fp8_all", _int8_with("fp8"), fp8_refusal)
    register_backend("int8_16bit", _int8_with("16bit"), _int8_refusal_with((8, 0), triton_here), self_only=True)
    sage = _sage_generation()
    if sage == 1:
        register_backend("sage", _sage, _sage_refusal)
    elif sage == 2:
        register_backend("sage", _sage2, _sage2_refusal_with(_sage2_built()))
    else:   # listed all the same: a shared workflow that names it still loads
        register_backend("sage", _sage, _refusing(SAGE_MISSING))
    speed_order = tuple(name for name in SPEED_ORDER if name != "sage" or sage == 2)
    register_backend("speed", _first_of(speed_order), self_only=True, others=_first_of(EXACT_ORDER))
    for module, op, refusal in (("flash_attn.cute", _flash4_op, _flash4_refusal),
                                ("flash_attn_interface", _flash3_op, _flash3_refusal),
                                ("flash_attn", _flash2_op, _flash2_refusal)):
        if _importable(module, "flash_attn_func"):
            register_backend("flash", _flash_with(op), refusal)
            break
    flash4_here = registered("flash") is not None and registered("flash").refuses is _flash4_refusal
    register_backend("flash4", _flash_with(_flash4_op), _flash4_refusal if flash4_here else _refusing(FLASH4_MISSING))
    MISSING.clear()
    MISSING.update(dict.fromkeys(() if triton_here else ("int8_fp8", "int8_fp8_all", "int8_16bit"), TRITON_MISSING))
    MISSING.update({} if flash4_here else {"flash4": FLASH4_MISSING})
    MISSING.update({} if sage else {"sage": SAGE_MISSING})


register_installed()


def _set_attention(module, backend: str) -> None:
    module.attention_backend = backend


def default_backend() -> str:
    """A DiT's attention without an OpenReel Attention node: what ComfyUI was started with, as its own models do
    (--use-sage-attention: "sage", --use-flash-attention: "flash"; policy fallback), else SDPA."""
    flag = runtime.attention_flag()
    return f"{flag}:fallback" if flag is not None and registered(flag) is not None else "sdpa"


# Value: "<backend>" or "<backend>:<policy>" (models/common/attention.py).
register_patch("attention", default_backend(), _set_attention)
