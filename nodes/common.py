"""What every OpenReel node shares: registration and errors that name the node."""
from __future__ import annotations

import functools
import inspect

import torch

from ..errors import OpenReelError, OutOfMemory


class OpenReelNode:
    """Base of every node. Subclasses set NODE_ID (OpenReel<Thing>), DISPLAY_NAME, CATEGORY, FUNCTION, I/O.

    Library errors reach the user as "<display name>: <what was wrong>. <what to do>".
    """

    NODE_ID: str = ""
    DISPLAY_NAME: str = ""
    # what to do when the GPU runs out of memory in this node (nodes with a better remedy say theirs)
    OUT_OF_MEMORY_TODO = ("free GPU memory (close other programs that use the GPU; inside ComfyUI, Unload Models), "
                          "or lower the resolution or the frame count")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__doc__ and "DESCRIPTION" not in cls.__dict__:
            cls.DESCRIPTION = inspect.cleandoc(cls.__doc__)  # shown in ComfyUI's node info
        function = getattr(cls, "FUNCTION", None)
        if function and function in cls.__dict__:
            setattr(cls, function, _naming_errors(cls.__dict__[function], cls))


def _naming_errors(fn, cls):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OpenReelError as exc:
            raise type(exc)(f"{cls.DISPLAY_NAME}: {exc.what}", exc.todo) from exc
        except torch.OutOfMemoryError as exc:
            raise OutOfMemory(f"{cls.DISPLAY_NAME}: the GPU ran out of memory{_sizes(exc)}",
                              cls.OUT_OF_MEMORY_TODO) from exc
    return wrapper


def _sizes(exc: torch.OutOfMemoryError) -> str:
    """The sizes torch's message gives ("Tried to allocate 2.10 GiB. GPU 0 has a total capacity of 23.64 GiB of
    which 412.00 MiB is free. …"), as " (…)"; empty when it gives none."""
    sentences = [s.strip() for s in str(exc).split(". ")]
    sizes = [s for s in sentences if s.startswith("Tried to allocate") or "total capacity" in s]
    return f" ({'; '.join(sizes)})" if sizes else ""


SAMPLER_OUT_OF_MEMORY = ("put OpenReel VRAM Budget between the DiT loader and this sampler (budget_gb 0: what is "
                         "free; where one is already there, lower its budget_gb or allow fp8): it plans block swap, "
                         "fp8 weights and sequential CFG so that the run fits; or lower the resolution or the frame "
                         "count")
SIZE = {"min": 16, "max": 4096, "step": 16}  # width and height inputs (each model checks its own multiple)
EMBEDS_INPUT = ("OPENREEL_EMBEDS", {"tooltip": "Prompt and negative prompt, from OpenReel Text Encode."})
SEED_INPUT = ("INT", {"default": 0, "min": 0, "max": 2**64 - 1, "control_after_generate": True,
                      "tooltip": "Noise seed; the same seed gives the same video on any device."})


def mappings(*node_classes: type[OpenReelNode]) -> tuple[dict, dict]:
    """NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS for `node_classes`."""
    return ({c.NODE_ID: c for c in node_classes}, {c.NODE_ID: c.DISPLAY_NAME for c in node_classes})
