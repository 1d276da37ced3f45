"""Resumable renders: the state of a long sampling run, saved after each finished part, found again by its key.

A render's key is a hash of everything that decides its result (models and their patches, prompts, images, every
setting, the seed); a run that finds a saved state under its key continues after the last finished part, and a
changed graph never sees another graph's state. States are written to a temporary name and renamed, so a crash
while saving leaves the previous state; they are read with `torch.load(weights_only=True)` (tensors and plain data
only). The file is removed when the render completes.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from .. import runtime


def render_key(*parts: Any) -> str:
    """A stable hash of `parts`: tensors by their bytes, dataclasses and containers by their contents."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"tensor{tuple(t.shape)}{t.dtype}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, (list, tuple)):
            digest.update(f"seq{len(value)}".encode())
            for item in value:
                feed(item)
        elif isinstance(value, dict):
            for k in sorted(value, key=repr):
                feed(k)
                feed(value[k])
        else:
            digest.update(repr(value).encode())
    for part in parts:
        feed(part)
    return digest.hexdigest()[:24]


class ResumeStore:
    """Where one render's state lives: `<output folder>/openreel-resume/<key>.pt`."""

    def __init__(self, key: str, folder: Path | None = None):
        self.key = key
        self.path = (folder or runtime.output_dir() / "openreel-resume") / f"{key}.pt"

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        return state if state.get("key") == self.key else None

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        torch.save({**state, "key": self.key}, partial)
        os.replace(partial, self.path)

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)
