"""Speed nodes: FP8 weights and matmuls, the attention backend, regional torch.compile, and (nodes/cache.py) step
caches. Each takes a DiT and returns a patched copy of its handle; the module itself is configured when a sampler
runs (memory.patches)."""
from __future__ import annotations

import dataclasses
import importlib.util

from .. import runtime
from ..errors import InputError
from ..handles import DiTHandle
from ..model_loaders.cache import MODULES
from ..model_loaders.core import module_of
from ..models.common.attention import available_backends
from ..models.common.ops import weight_linears
from ..speed import attention_backends  # noqa: F401  (registers the installed backends)
from ..speed.compile import MODES, CompileSettings
from ..speed.fp8 import E4M3
from .cache import OpenReelStepCache
from .common import OpenReelNode, mappings

_DIT_IN = ("OPENREEL_DIT", {"tooltip": "The diffusion transformer to configure."})
_DIT_OUT_TOOLTIP = ("The same model with this setting; connect it to the sampler or to further memory nodes.",)

STORAGE = {"as_loaded": None, "fp8_per_channel": "fp8_e4m3fn_channel", "fp8_per_tensor": "fp8_e4m3fn_scaled"}
ACTIVATION_SCALE = {"per_row": "row", "per_tensor": "tensor"}


def _has_fp8_weights(handle: DiTHandle) -> bool:
    return any(m.weight.dtype == E4M3 for _, m in weight_linears(module_of(handle)))


class OpenReelFP8(OpenReelNode):
    """Stores the DiT's large linear weights in FP8 (float8_e4m3fn: half the memory of bf16) and chooses how
    they are multiplied. Norms, embeddings, modulation and the output head always stay in high precision.
    ComfyUI fp8_scaled files are used as they are (their own scales); bf16/fp16 files are quantized at load."""

    NODE_ID = "OpenReelFP8"
    DISPLAY_NAME = "OpenReel FP8"
    CATEGORY = "OpenReel/memory"
    FUNCTION = "apply"
    RETURN_TYPES = ("OPENREEL_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = _DIT_OUT_TOOLTIP

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": _DIT_IN,
            "storage": (list(STORAGE), {
                "default": "fp8_per_channel",
                "tooltip": "How 16-bit weights become FP8 at load (half the memory of bf16). fp8_per_channel: one "
                           "scale per output channel (most precise: channels of large weights cost the others "
                           "nothing). fp8_per_tensor: one scale per weight, as ComfyUI's fp8_scaled files. "
                           "as_loaded: keep the loader's choice. FP8 files are used as they are, never "
                           "re-quantized."}),
            "compute": (["upcast", "fp8_matmul"], {
                "default": "upcast",
                "tooltip": "upcast: each weight is converted to bf16/fp16 for its matmul (exact products of the "
                           "FP8 weights; about bf16's speed). fp8_matmul: activations are quantized to FP8 too and "
                           "multiplied on FP8 tensor cores (RTX 40xx, H100 and newer): matrix products about 1.5x "
                           "faster with OpenReel Compile (1.1-1.4x without), at a further small loss of precision. "
                           "Elsewhere it upcasts."}),
            "activation_scale": (list(ACTIVATION_SCALE), {
                "default": "per_row",
                "tooltip": "fp8_matmul only. per_row: one scale per token (more accurate: a token with large "
                           "values does not coarsen the others). per_tensor: one scale per input (a few % faster)."}),
        }}

    def apply(self, dit: DiTHandle, storage: str, compute: str, activation_scale: str):
        weight_dtype = STORAGE[storage] or dit.weight_dtype
        if compute == "fp8_matmul" and not weight_dtype.startswith("fp8_e4m3fn") and not _has_fp8_weights(dit):
            raise InputError("fp8_matmul needs FP8 weights, and this model's weights are not stored in FP8",
                             "choose an fp8 storage, or load an FP8 file")
        out = dataclasses.replace(dit, weight_dtype=weight_dtype)
        if out.weights_key != dit.weights_key:
            MODULES.evict(dit.weights_key)  # the loader's 16-bit copy; rebuilt if another node still uses it
        return (out.with_patch("fp8_matmul", ACTIVATION_SCALE[activation_scale] if compute == "fp8_matmul" else None),)


class OpenReelAttention(OpenReelNode):
    """Chooses the attention kernel of the DiT. Backends that cannot run a call (a mask, a head size, fp32,
    CPU) never compute it differently: the call falls back to PyTorch SDPA (logged once) or stops with an
    error, as on_unsupported says. Without this node a DiT uses SDPA, or the kernel ComfyUI was started with
    (--use-sage-attention, --use-flash-attention), falling back as here."""

    NODE_ID = "OpenReelAttention"
    DISPLAY_NAME = "OpenReel Attention"
    CATEGORY = "OpenReel/memory"
    FUNCTION = "apply"
    RETURN_TYPES = ("OPENREEL_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = _DIT_OUT_TOOLTIP

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": _DIT_IN,
            "backend": (available_backends(), {
                "default": "sdpa",
                "tooltip": "Kernels (sage, flash4 and the int8 ones are listed also where they cannot run: there they "
                           "say what to install). sdpa: PyTorch picks (cuDNN or flash on recent GPUs; exact, the "
                           "right default). speed: a preset, the fastest kernel whose accuracy bound holds on this "
                           "GPU, else sdpa: SageAttention 2 where built from source (H100/H200: 1.4x cuDNN's speed, "
                           "2-4% error per call), else FlashAttention 4 where installed (exact; pip install "
                           "flash-attn-4), else int8_fp8 on RTX 40xx / H100 / H200 and newer. flash4 / flash: "
                           "FlashAttention 4 (Hopper, Blackwell; exact, 1.2x cuDNN's speed on an H200), flash: else "
                           "flash-attn 3 (Hopper) or 2. int8_fp8: OpenReel's 8-bit kernel (INT8 Q·K, FP8 P·V; needs "
                           "Triton) for the video self-attention, text attention stays exact: 1.13x cuDNN's speed "
                           "on an H200, about 2-4% error per call, 0.5% on a whole DiT output. int8_fp8_all: the "
                           "text attention "
                           "too. int8_16bit: INT8 Q·K with 16-bit P·V (more precise, slower than cuDNN on Hopper). "
                           "sdpa_cudnn / sdpa_flash: PyTorch's cuDNN / flash kernel only. sage: the installed "
                           "SageAttention, every call: 2 (built from source) or PyPI's 1.0.6 (slower than cuDNN on "
                           "Hopper: 437 vs 582 TFLOP/s). Masks (block-causal diffusion forcing): sdpa, sdpa_cudnn "
                           "and the int8 kernels."}),
            "on_unsupported": (["fallback", "error"], {
                "default": "fallback",
                "tooltip": "When the backend cannot run a call: fallback runs that call with SDPA (logged "
                           "once); error stops the run and says why."}),
        }}

    def apply(self, dit: DiTHandle, backend: str, on_unsupported: str):
        if backend not in available_backends():
            raise InputError(f"the attention backend {backend!r} is not installed here",
                             f"choose one of {', '.join(available_backends())}")
        why = attention_backends.missing(backend)
        if why is not None and on_unsupported == "error":
            raise InputError(f"the attention backend {backend!r} cannot run on this machine: {why}",
                             "install it, or choose on_unsupported = fallback (SDPA runs its calls)")
        return (dit.with_patch("attention", f"{backend}:{on_unsupported}"),)


class OpenReelCompile(OpenReelNode):
    """Compiles each transformer block with torch.compile (regional compilation: one compile serves every block;
    the first run takes a while longer). Fuses the many small float32 norm/modulation steps between the large
    kernels. Needs Triton on GPUs. A new resolution, frame count or attention backend compiles again."""

    NODE_ID = "OpenReelCompile"
    DISPLAY_NAME = "OpenReel Compile"
    CATEGORY = "OpenReel/memory"
    FUNCTION = "apply"
    RETURN_TYPES = ("OPENREEL_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = _DIT_OUT_TOOLTIP

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": _DIT_IN,
            "mode": (list(MODES), {
                "default": "default",
                "tooltip": "default: quick to compile. max-autotune-no-cudagraphs: benchmarks kernel choices "
                           "while compiling (minutes longer the first time) for a few % more speed."}),
            "dynamic": (["false", "auto"], {
                "default": "false",
                "tooltip": "false: one specialised graph per video size (fastest; a new size recompiles). auto: "
                           "after a second size, torch compiles a graph for any size (fewer recompiles)."}),
        }}

    def apply(self, dit: DiTHandle, mode: str, dynamic: str):
        if runtime.torch_device().type == "cuda" and importlib.util.find_spec("triton") is None:
            raise InputError("torch.compile needs Triton on GPUs and it is not installed",
                             "install triton (on Windows: triton-windows), or remove this node")
        settings = CompileSettings(mode=mode, dynamic=False if dynamic == "false" else None)
        return (dit.with_patch("compile", settings),)


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(OpenReelFP8, OpenReelAttention, OpenReelCompile,
                                                           OpenReelStepCache)
