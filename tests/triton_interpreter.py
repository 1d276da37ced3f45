"""Runs Triton kernels on the CPU through Triton's interpreter (TRITON_INTERPRET=1), for tests.

Import this before any module that defines a Triton kernel: the variable is read when a kernel is decorated.
Two faults of the interpreter in Triton 3.6 are mended here, neither in compiled kernels:
- with NumPy 2, a loop bound that is a kernel argument fails (`int()` of a one-element array);
- its float → float8e4nv conversion drops the carry when rounding up crosses a power of two (7.9 becomes 4), and
  its float → bfloat16 conversion truncates; conversions between float32, float16, bfloat16 and float8e4nv go
  through PyTorch instead (round to nearest even, as the GPU does);
- its dot multiplies bfloat16 operands as their raw 16-bit integers: they are converted to float32 first.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime import interpreter  # noqa: E402

_patch_tensor = interpreter._patch_lang_tensor
_convert_float = interpreter._convert_float
_TORCH = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _patched_tensor(tensor, scope):
    _patch_tensor(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))


def _as_torch(data: np.ndarray, dtype) -> torch.Tensor:
    raw = torch.from_numpy(np.ascontiguousarray(data).copy())
    if dtype == tl.float8e4nv:
        return raw.view(torch.float8_e4m3fn)
    return raw.view(_TORCH[dtype.name])


def _converted(data, input_dtype, output_dtype, rounding_mode):
    if {input_dtype.name, output_dtype.name} - {*_TORCH, "fp8e4nv"}:
        return _convert_float(data, input_dtype, output_dtype, rounding_mode)
    out = _as_torch(data, input_dtype).float()
    out = out.to(torch.float8_e4m3fn if output_dtype == tl.float8e4nv else _TORCH[output_dtype.name])
    return out.view(torch.uint8 if output_dtype == tl.float8e4nv else out.dtype).numpy() \
        if output_dtype != tl.bfloat16 else out.view(torch.int16).numpy().view(np.uint16)


def _dot(self, a, b, d, input_precision, max_num_imprecise_acc):
    if tl.bfloat16 in (a.dtype, b.dtype):
        a, b = (interpreter.TensorHandle(_as_torch(t.data, t.dtype).float().numpy(), tl.float32)
                if t.dtype == tl.bfloat16 else t for t in (a, b))
    return _create_dot(self, a, b, d, input_precision, max_num_imprecise_acc)


_create_dot = interpreter.InterpreterBuilder.create_dot
interpreter.InterpreterBuilder.create_dot = _dot
interpreter._patch_lang_tensor = _patched_tensor
interpreter._convert_float = _converted
