"""Errors OpenReel raises for bad input: each says what was wrong and what to do about it.

Nodes prefix the message with their display name (see `nodes/common.py`), so a user reads
"OpenReel DiT Loader: <what was wrong>. <what to do>".
"""
import torch


class OpenReelError(Exception):
    """Bad input the user can fix; `what` is the problem, `todo` the remedy."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__module__ = "openreel"  # ComfyUI shows "<module>.<class>": not the pack's folder path

    def __init__(self, what: str, todo: str = ""):
        self.what = what
        self.todo = todo
        super().__init__(f"{what}. {todo[:1].upper()}{todo[1:]}" if todo else what)


class CheckpointError(OpenReelError):
    """A weights file that cannot be read, is damaged, or is incomplete."""


class DetectionError(OpenReelError):
    """Weights that are not the kind of model the loader expects."""


class InputError(OpenReelError):
    """A node input that does not fit (shapes, frame counts, mismatched models)."""


class OutOfMemory(OpenReelError, torch.OutOfMemoryError):
    """The GPU ran out of memory in a node, with that node's remedy. Still torch's OutOfMemoryError, so ComfyUI
    unloads its models after it as after any other."""


OpenReelError.__module__ = "openreel"
