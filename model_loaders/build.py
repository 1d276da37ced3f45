"""Build a module on the meta device with the ops the weights need, then fill it straight from a checkpoint.

Peak host memory is about one copy of the weights: tensors are read (memory-mapped) one at a time, converted,
and assigned. Three storage roles per parameter:
- weight: the weight linears the network built with its `ops` (models/common/ops.py); stored in the chosen weight
  dtype (fp8 with scales allowed: one per tensor, "fp8_e4m3fn_scaled", or one per output channel,
  "fp8_e4m3fn_channel", derived from 16/32-bit files at load);
- fp32: norms, modulation, time embeddings (the network's FP32_PARAMS regex); kept in float32;
- compute: everything else; stored in the compute dtype.
ComfyUI `fp8_scaled` files (`scaled_fp8` marker, per-layer `scale_weight`) keep their fp8 weights and scales
as-is when fp8 storage is asked for; otherwise they are dequantized once at load.
"""
from __future__ import annotations

import re
from typing import Callable

import torch
import torch.nn as nn

from ..errors import CheckpointError
from ..models.common.ops import FP8_DTYPES, CastLinear, Ops, cast_ops
from ..speed.fp8 import quantize_weight
from .checkpoint import Checkpoint

# Markers and per-layer quantization tensors that are not module parameters.
QUANT_SUFFIXES = (".scale_weight", ".scale_input", ".weight_scale", ".input_scale", ".comfy_quant")
MARKER_KEYS = ("scaled_fp8",)
FILE_SCALES = (".scale_weight", ".weight_scale")

FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}
WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                 "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_scaled": torch.float8_e4m3fn,
                 "fp8_e4m3fn_channel": torch.float8_e4m3fn}
SCALE_GRANULARITY = {"fp8_e4m3fn_scaled": "tensor", "fp8_e4m3fn_channel": "channel"}  # scales derived at load
COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_compute_dtype(name: str, device: torch.device, half_fallback: bool = True) -> str:
    """The one "auto" rule: bf16 on GPUs that support it; else fp16 (`half_fallback`, transformers) or fp32 (VAEs,
    whose activations overflow fp16) on GPUs; fp32 on the CPU. Named dtypes pass through."""
    if name != "auto":
        if name not in COMPUTE_DTYPES:
            raise ValueError(f"compute dtype must be auto or one of {tuple(COMPUTE_DTYPES)}, not {name!r}")
        return name
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    if device.type in ("cuda", "mps") and half_fallback:
        return "fp16"
    return "fp32"


def _file_scale(ckpt: Checkpoint, module_name: str) -> torch.Tensor | None:
    for suffix in FILE_SCALES:
        if module_name + suffix in ckpt:
            return ckpt.get(module_name + suffix).float()
    return None


def _scale_shape(scale: torch.Tensor, out_features: int) -> torch.Tensor:
    if scale.numel() == 1:
        return scale.reshape(())
    if scale.numel() == out_features:
        return scale.reshape(out_features, 1)
    raise CheckpointError(f"a weight scale of shape {tuple(scale.shape)} fits no layer of width {out_features}",
                          "the fp8 file is damaged or of an unknown quantization layout")


def _quantize(w: torch.Tensor, fp8: torch.dtype, granularity: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """float weight → (fp8 weight, scale per tensor / channel, or None: a plain cast, clamped to the fp8 range)."""
    if granularity is not None:
        return quantize_weight(w, granularity, fp8)
    limit = FP8_MAX[fp8]
    return w.float().clamp(-limit, limit).to(fp8), None


class _Plan:
    """Decides each parameter's storage dtype."""

    def __init__(self, ckpt: Checkpoint, weight_dtype: str, compute: torch.dtype, fp32_re: str):
        self.ckpt, self.weight_dtype, self.compute = ckpt, weight_dtype, compute
        self.fp32_re = re.compile(fp32_re) if fp32_re else None

    def ops(self) -> Ops:
        """The ops of this build: weight linears carry a scale when fp8 scales are derived at load, or when the
        file's own scales are kept (its fp8 weights stay fp8)."""
        keeps_file_scales = any(k.endswith(FILE_SCALES) for k in self.ckpt.keys()) and \
            (self.weight_dtype == "auto" or WEIGHT_DTYPES.get(self.weight_dtype) in FP8_DTYPES)
        return cast_ops(scaled=keeps_file_scales or self.weight_dtype in SCALE_GRANULARITY)

    def weight_storage(self, key: str) -> torch.dtype:
        """Storage dtype of a 'weight' role linear weight."""
        file_dtype = self.ckpt.dtype(key)
        if self.weight_dtype == "auto":
            return file_dtype if file_dtype in FP8_DTYPES else self.compute
        return WEIGHT_DTYPES[self.weight_dtype]

    def storage(self, key: str) -> torch.dtype:
        """Storage dtype of a parameter that is not a weight linear's weight."""
        return torch.float32 if self.fp32_re is not None and self.fp32_re.fullmatch(key) else self.compute


def _converted(plan: _Plan, module_name: str, attr: str, module: nn.Module) -> torch.Tensor:
    key = f"{module_name}.{attr}" if module_name else attr
    ckpt = plan.ckpt
    if isinstance(module, CastLinear) and attr in ("weight", "scale_weight"):
        storage = plan.weight_storage(f"{module_name}.weight")
        raw = ckpt.get(f"{module_name}.weight")
        file_scale = _file_scale(ckpt, module_name)
        if storage in FP8_DTYPES and raw.dtype == storage:
            weight, scale = raw, file_scale  # taken as-is: no dequantize/requantize round trip
        else:
            w = raw.float() * _scale_shape(file_scale, module.out_features) if file_scale is not None else raw
            if storage in FP8_DTYPES:
                granularity = SCALE_GRANULARITY.get(plan.weight_dtype, "tensor" if file_scale is not None else None)
                weight, scale = _quantize(w, storage, granularity)
            else:
                weight, scale = w.to(storage), None
        if attr == "weight":
            return weight
        return _scale_shape(scale if scale is not None else torch.ones(()), module.out_features)
    raw = ckpt.get(key)
    if attr == "weight" and raw.dtype in FP8_DTYPES:
        scale = _file_scale(ckpt, module_name)
        raw = raw.float() * scale.reshape(-1, *([1] * (raw.dim() - 1))) if scale is not None else raw.float()
    return raw.to(plan.storage(key))


def base_reader(ckpt: Checkpoint, *, weight_dtype: str, compute_dtype: str,
                fp32_params: str = "") -> Callable[[nn.Module, str], torch.Tensor]:
    """`read(model, name)`: parameter or buffer `name` of a model `materialize` built from `ckpt` with these
    settings, as that build stored it (the same conversion, so bitwise the loaded tensor): how a weight a LoRA
    merge changed is restored, one tensor at a time."""
    plan = _Plan(ckpt, weight_dtype, COMPUTE_DTYPES[compute_dtype], fp32_params)

    def read(model: nn.Module, name: str) -> torch.Tensor:
        module_name, _, attr = name.rpartition(".")
        return _converted(plan, module_name, attr, model.get_submodule(module_name) if module_name else model)
    return read


def materialize(factory: Callable[[Ops], nn.Module], ckpt: Checkpoint, *, weight_dtype: str, compute_dtype: str,
                device: torch.device, fp32_params: str = "") -> nn.Module:
    """Build `factory(ops)` on meta and load every parameter from `ckpt` (strict: missing or extra keys are
    errors). `compute_dtype` is a name from COMPUTE_DTYPES; the module's `compute_dtype` attribute is set to it."""
    if weight_dtype != "auto" and weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"unknown weight dtype {weight_dtype!r}")
    compute = COMPUTE_DTYPES[compute_dtype]
    plan = _Plan(ckpt, weight_dtype, compute, fp32_params)
    with torch.device("meta"):
        model = factory(plan.ops())

    expected = dict(model.named_parameters())
    expected.update((n, b) for n, b in model.named_buffers() if b is not None)
    file_keys = {k for k in ckpt.keys() if k not in MARKER_KEYS and not k.endswith(QUANT_SUFFIXES)}
    missing = sorted(k for k in expected if k not in file_keys and not k.endswith(QUANT_SUFFIXES))
    extra = sorted(file_keys - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} unexpected tensors (e.g. {', '.join(extra[:3])})")
        raise CheckpointError(f"{ckpt.name} does not match the detected model: {'; '.join(parts)}",
                              "the file is incomplete or a variant OpenReel does not support")

    for full_name in expected:
        module_name, _, attr = full_name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        if full_name.endswith(QUANT_SUFFIXES) and not isinstance(module, CastLinear):
            continue
        tensor = _converted(plan, module_name, attr, module)
        meta = getattr(module, attr)
        if attr == "weight" or not full_name.endswith(QUANT_SUFFIXES):
            if tuple(tensor.shape) != tuple(meta.shape):
                raise CheckpointError(f"{ckpt.name}: tensor {full_name} has shape {tuple(tensor.shape)}, "
                                      f"the detected model expects {tuple(meta.shape)}",
                                      "the file does not match its detected variant; it may be damaged")
        tensor = tensor.to(device)
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
        else:
            module._buffers[attr] = tensor
    model.eval()
    model.compute_dtype = compute
    return model
