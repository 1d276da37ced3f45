"""What every OpenReel node shares: registration and errors that name the node."""
from __future__ import annotations

import functools
import inspect

from ..errors import OpenReelError


class OpenReelNode:
    """Base of every node. Subclasses set NODE_ID (OpenReel<Thing>), DISPLAY_NAME, CATEGORY, FUNCTION, I/O.

    Library errors reach the user as "<display name>: <what was wrong>. <what to do>".
    """

    NODE_ID: str = ""
    DISPLAY_NAME: str = ""

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
    return wrapper


SIZE = {"min": 16, "max": 4096, "step": 16}  # width and height inputs (each model checks its own multiple)
EMBEDS_INPUT = ("OPENREEL_EMBEDS", {"tooltip": "Prompt and negative prompt, from OpenReel Text Encode."})
SEED_INPUT = ("INT", {"default": 0, "min": 0, "max": 2**64 - 1, "control_after_generate": True,
                      "tooltip": "Noise seed; the same seed gives the same video on any device."})


def mappings(*node_classes: type[OpenReelNode]) -> tuple[dict, dict]:
    """NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS for `node_classes`."""
    return ({c.NODE_ID: c for c in node_classes}, {c.NODE_ID: c.DISPLAY_NAME for c in node_classes})
