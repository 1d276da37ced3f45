"""Reference implementations for parity tests: the official Wan code (PyPI `wan22`), diffusers, and the official
HunyuanVideo code (a checkout named by $HUNYUAN_VIDEO_PATH; not installable).

`wan22`'s package `__init__` imports every pipeline and their heavy dependencies, so the model modules are
loaded from their files under a private package name, with the CUDA-only `flash_attention` replaced by an
exact float32 SDPA equivalent that honours the same key-length semantics. HunyuanVideo's modules are loaded the
same way, with its attention module (flash-attn varlen, and segment bounds built on "cuda") replaced by an exact
SDPA equivalent of the same varlen semantics.

A test whose reference package is not installed is skipped, saying what to install: `load_official` and
`load_official_util` do it themselves; a test importing a reference package directly calls `require` first.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

# Reference packages (top-level import names) → the skip reason when one is missing.
REFERENCES = {
    "wan": "needs wan22 (pip install --no-deps -r requirements-reference.txt)",
    "diffusers": "needs diffusers (pip install -r requirements-dev.txt)",
    "xfuser": "needs xfuser (pip install --no-deps -r requirements-reference.txt)",
    "einops": "needs einops (pip install einops), which the official HunyuanVideo code imports",
}
HUNYUAN_ENV = "HUNYUAN_VIDEO_PATH"


def installed(package: str) -> bool:
    """Whether `package` can be imported, found without importing it (wan's __init__ is heavy)."""
    if package in sys.modules:  # possibly registered empty by a loader below (no __spec__ to find)
        return True
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return False


def require(*packages: str) -> None:
    """Skip the calling test (or, called at module level, the whole test module) unless every reference package
    in `packages` is installed; the reason says what to install."""
    missing = [REFERENCES.get(p, f"needs {p}") for p in packages if not installed(p)]
    if missing:
        pytest.skip("; ".join(missing), allow_module_level=True)


@contextmanager
def _skip_on_missing_reference():
    """A reference file importing a reference package that is not installed (wan's model.py needs diffusers)."""
    try:
        yield
    except ModuleNotFoundError as err:
        package = (err.name or "").partition(".")[0]
        if package in REFERENCES:
            pytest.skip(REFERENCES[package])
        raise


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


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float32: the relative difference the parity tests bound."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def randomize_vae(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Unit-scale random weights for a VAE (norm scales near 1); a damped output conv keeps decoded values near
    [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.dim() > 1:
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                p.copy_(0.1 * noise)
            if name.startswith("decoder.conv_out"):
                p.mul_(0.3)
    return module.eval()


def wan_root() -> Path:
    """The installed `wan` package's folder (wan22); skips the calling test when it is not installed."""
    require("wan")
    return Path(importlib.util.find_spec("wan").submodule_search_locations[0])


def _package(name: str, path: Path) -> None:
    """Register an empty package (its __init__ is not run) so submodules import from `path`."""
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(path)]
        sys.modules[name] = pkg


def load_official(module: str):
    """Import `wan/modules/<module>.py` (e.g. 'model', 'vae2_1', 't5', 'animate/model_animate') as
    `wanref.modules.<module>`, without running any of wan's package __init__ files."""
    root = wan_root()
    _package("wanref", root)
    _package("wanref.modules", root / "modules")
    _package("wanref.distributed", root / "distributed")
    _package("wanref.utils", root / "utils")
    _package("wanref.modules.animate", root / "modules" / "animate")
    if "wanref.modules.attention" not in sys.modules:
        attn = types.ModuleType("wanref.modules.attention")
        attn.flash_attention = _sdpa_flash_attention
        attn.attention = _sdpa_flash_attention
        sys.modules["wanref.modules.attention"] = attn
    with _skip_on_missing_reference():
        return importlib.import_module("wanref.modules." + module.replace("/", "."))


@functools.cache
def load_official_util(file: str):
    """`wan/utils/<file>` (e.g. 'fm_solvers_unipc.py'): the schedulers import only numpy, torch and diffusers."""
    path = wan_root() / "utils" / file
    spec = importlib.util.spec_from_file_location("wanref_util_" + path.stem, path)
    module = importlib.util.module_from_spec(spec)
    with _skip_on_missing_reference():
        spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------- official HunyuanVideo
def hunyuan_root() -> Path:
    """`hyvideo/` of the official HunyuanVideo checkout named by $HUNYUAN_VIDEO_PATH; skips the calling test when
    the variable is unset, names no checkout, or a package its modules import is missing."""
    path = os.environ.get(HUNYUAN_ENV)
    if not path:
        pytest.skip(f"needs the official HunyuanVideo code: set {HUNYUAN_ENV} to a checkout of Tencent/HunyuanVideo")
    root = Path(path) / "hyvideo"
    if not (root / "modules" / "models.py").is_file():
        pytest.skip(f"{HUNYUAN_ENV}={path} is not a HunyuanVideo checkout (no hyvideo/modules/models.py)")
    require("diffusers", "einops")
    return root


def _hunyuan_segments(text_mask: torch.Tensor, img_len: int) -> torch.Tensor:
    """The official varlen segment bounds, on the mask's device: per sample, [image + valid text] and then its
    text padding, over the batch flattened to one sequence of samples of img_len + text_len tokens."""
    batch, text_len = text_mask.shape
    valid = text_mask.sum(1).to(torch.int32)
    starts = torch.arange(batch, dtype=torch.int32, device=text_mask.device) * (img_len + text_len)
    ends = torch.stack([starts + img_len + valid, starts + img_len + text_len], dim=1).flatten()
    return torch.cat([ends.new_zeros(1), ends])


def _hunyuan_attention(q, k, v, mode="flash", drop_rate=0, attn_mask=None, causal=False, cu_seqlens_q=None,
                       cu_seqlens_kv=None, max_seqlen_q=None, max_seqlen_kv=None, batch_size=1):
    """The official `attention` contract ([B, S, H, D] in, [B, S, H·D] out) on SDPA in the input precision:
    mode "torch" takes `attn_mask`; mode "flash" (flash_attn_varlen_func) flattens the batch to one sequence in
    which each segment between consecutive `cu_seqlens` bounds attends only to itself."""
    b, s = q.shape[:2]
    if mode == "torch":
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=attn_mask, is_causal=causal)
        return out.transpose(1, 2).reshape(b, s, -1)
    position = torch.arange(b * s, device=q.device)
    segment = torch.searchsorted(cu_seqlens_q[1:].to(q.device).long(), position, right=True)
    mask = segment[:, None] == segment[None, :]
    flat = [t.reshape(1, b * s, *t.shape[2:]).transpose(1, 2) for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*flat, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, s, -1)


def _no_parallel_attention(*args, **kwargs):
    raise NotImplementedError("sequence-parallel attention is not part of the parity reference")


def load_hunyuan(module: str):
    """Import `hyvideo/modules/<module>.py` (e.g. 'models', 'posemb_layers') of the $HUNYUAN_VIDEO_PATH checkout
    as `hyref.modules.<module>`, without running hyvideo's package __init__ files."""
    root = hunyuan_root()
    _package("hyref", root)
    _package("hyref.modules", root / "modules")
    _package("hyref.utils", root / "utils")
    if "hyref.modules.attenion" not in sys.modules:  # (sic: the official file name)
        attn = types.ModuleType("hyref.modules.attenion")
        attn.attention = _hunyuan_attention
        attn.parallel_attention = _no_parallel_attention
        attn.get_cu_seqlens = _hunyuan_segments
        sys.modules["hyref.modules.attenion"] = attn
    with _skip_on_missing_reference():
        return importlib.import_module("hyref.modules." + module)


# ------------------------------------------------------------------------------------------ official Step-Video
STEPVIDEO_ENV = "STEPVIDEO_T2V_PATH"
_XFUSER_STEP = "xfuser.model_executor.models.customized.step_video_t2v"


def _single_process_parallel_state() -> types.ModuleType:
    """xfuser's `parallel_state` for one process: no sequence or tensor parallelism."""
    state = types.ModuleType("xfuser.core.distributed.parallel_state")
    state.get_sequence_parallel_world_size = lambda: 1
    state.get_sequence_parallel_rank = lambda: 0
    state.get_tensor_model_parallel_world_size = lambda: 1
    state.get_tensor_model_parallel_rank = lambda: 0
    return state


def load_xfuser_step(module: str):
    """xfuser 0.7.0's Step-Video block file `<module>` ('blocks', 'rope', 'normalization', 'attentions'), under its
    own name, without xfuser's package __init__ (it needs triton and its distributed runtime): the packages above
    it are registered empty and `parallel_state` is a single-process stand-in."""
    require("xfuser", "einops")
    found = sys.modules["xfuser"].__path__ if "xfuser" in sys.modules else None
    root = Path((found or importlib.util.find_spec("xfuser").submodule_search_locations)[0])
    parts = _XFUSER_STEP.split(".")
    for depth in range(1, len(parts) + 1):
        _package(".".join(parts[:depth]), root.joinpath(*parts[1:depth]))
    _package("xfuser.core", root / "core")
    _package("xfuser.core.distributed", root / "core" / "distributed")
    sys.modules.setdefault("xfuser.core.distributed.parallel_state", _single_process_parallel_state())
    return importlib.import_module(f"{_XFUSER_STEP}.{module}")


def stepvideo_root() -> Path:
    """`stepvideo/` of the official Step-Video-T2V checkout named by $STEPVIDEO_T2V_PATH; skips the calling test
    when the variable is unset or names no checkout."""
    path = os.environ.get(STEPVIDEO_ENV)
    if not path:
        pytest.skip(f"needs the official Step-Video code: set {STEPVIDEO_ENV} to a checkout of "
                    f"stepfun-ai/Step-Video-T2V")
    root = Path(path) / "stepvideo"
    if not (root / "modules" / "model.py").is_file():
        pytest.skip(f"{STEPVIDEO_ENV}={path} is not a Step-Video-T2V checkout (no stepvideo/modules/model.py)")
    require("diffusers", "einops")
    return root


def load_stepvideo(module: str, replace: dict[str, types.ModuleType] | None = None):
    """Import `stepvideo/<module>.py` (e.g. 'modules.model', 'vae.vae', 'text_encoder.stepllm') of the
    $STEPVIDEO_T2V_PATH checkout under its own name, without the package __init__ files (they parse command
    lines and start servers). Multi-GPU helpers become single-process stand-ins; the DiT's blocks come from
    xfuser 0.7.0 as the official model imports them. `replace`: further modules to stand in (e.g. the closed
    CUDA attention kernel of Step-LLM's `text_encoder.flashattention`)."""
    root = stepvideo_root()
    load_xfuser_step("blocks")
    for name, path in (("stepvideo", root), ("stepvideo.modules", root / "modules"),
                       ("stepvideo.vae", root / "vae"), ("stepvideo.text_encoder", root / "text_encoder"),
                       ("stepvideo.diffusion", root / "diffusion")):
        _package(name, path)
    if "stepvideo.utils" not in sys.modules:
        spec = importlib.util.spec_from_file_location("stepvideo.utils", root / "utils" / "utils.py")
        utils = importlib.util.module_from_spec(spec)
        sys.modules["stepvideo.utils"] = utils
        spec.loader.exec_module(utils)
    if "stepvideo.parallel" not in sys.modules:
        parallel = types.ModuleType("stepvideo.parallel")
        parallel.get_sequence_parallel_world_size = lambda: 1
        parallel.get_sequence_parallel_rank = lambda: 0
        parallel.parallel_forward = lambda fn: fn
        sys.modules["stepvideo.parallel"] = parallel
    for name, stand_in in (replace or {}).items():
        sys.modules[f"stepvideo.{name}"] = stand_in
    with _skip_on_missing_reference():
        return importlib.import_module(f"stepvideo.{module}")
