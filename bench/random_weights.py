"""Random DiT weights of the real size for handles named "random-…": the DiT builder that bench/multi_gpu.py's
worker processes run instead of reading files ($OPENREEL_WORKER_SETUP names this file), and the handle it serves.

Values are bench/subjects.py's: generated per tensor name on the compute device, so every process on the same kind
of device makes the same weights (the peer included). A handle named other than "random-dit" (e.g. the two experts of
a pair) gets its own values, seeded by its name too."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from subjects import meta_shapes, random_checkpoint  # noqa: E402

from openreel import runtime  # noqa: E402
from openreel.handles import DiTHandle  # noqa: E402
from openreel.model_loaders.build import materialize  # noqa: E402
from openreel.model_loaders.checkpoint import Checkpoint, TensorInfo  # noqa: E402
from openreel.model_loaders.core import register_builder  # noqa: E402
from openreel.models.common.ops import PLAIN  # noqa: E402
from openreel.models.registry import family_of  # noqa: E402


DEFAULT_NAME = "random-dit.safetensors"


def random_handle(family, factory, weight_dtype: str = "bf16", compute_dtype: str = "bf16",
                  name: str = DEFAULT_NAME) -> DiTHandle:
    """The handle a loader would make for random weights of the network `factory()` builds, of `family`."""
    shapes = meta_shapes(factory)
    ckpt = Checkpoint((Path(name),), {k: TensorInfo(s, torch.bfloat16) for k, s in shapes.items()}, {})
    return DiTHandle(family.describe(ckpt), (name,), ((0, 0),), weight_dtype, compute_dtype)


def build(handle: DiTHandle) -> torch.nn.Module:
    family = family_of(handle.spec)
    device = runtime.torch_device()
    name = handle.files[0]
    ckpt = random_checkpoint(meta_shapes(lambda: family.build(handle.spec, PLAIN)), str(device),
                             salt="" if name == DEFAULT_NAME else name)
    return materialize(lambda ops: family.build(handle.spec, ops), ckpt, weight_dtype=handle.weight_dtype,
                       compute_dtype=handle.compute_dtype, device=runtime.offload_device(),
                       fp32_params=family.fp32_params)


register_builder(DiTHandle.kind, build)
