"""mp4 in and out through the ffmpeg binary that `imageio-ffmpeg` ships.

Writing streams frames into ffmpeg (a decoder can hand over chunks; the whole video never has to exist at once),
embeds metadata the way ComfyUI's own SaveVideo does (mp4 `use_metadata_tags`; `prompt` and `workflow` as JSON),
writes to a temporary name and renames, and never overwrites: names are numbered.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from .errors import InputError

PIXEL_FORMATS = ("yuv420p", "yuv444p")


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _escape_ffmetadata(text: str) -> str:
    return re.sub(r"([=;#\\\n])", r"\\\1", text)


def next_free_path(folder: Path, prefix: str, suffix: str = ".mp4") -> Path:
    """`folder/<prefix>_<n:05>_<suffix>` with n one above the highest taken (ComfyUI's numbering)."""
    pattern = re.compile(re.escape(prefix) + r"_(\d{5})_" + re.escape(suffix) + "$")
    taken = [int(m.group(1)) for p in folder.glob(f"{prefix}_*") if (m := pattern.match(p.name))]
    return folder / f"{prefix}_{max(taken, default=0) + 1:05d}_{suffix}"


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """IMAGE [T, H, W, C] float 0..1 → uint8 RGB [T, H, W, 3]."""
    if frames.dim() != 4 or frames.shape[-1] not in (1, 3, 4):
        raise InputError(f"frames of shape {tuple(frames.shape)} are not an IMAGE batch [frames, height, width, "
                         f"channels]", "connect the output of a VAE decode or an image node")
    frames = frames[..., :3] if frames.shape[-1] >= 3 else frames.expand(*frames.shape[:3], 3)
    return (frames.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


class Mp4Writer:
    """Stream RGB frames into an H.264 mp4; `close()` finishes it, then it appears under its final name."""

    def __init__(self, path: Path, width: int, height: int, fps: float, *, crf: int = 19,
                 pix_fmt: str = "yuv420p", metadata: dict[str, str] | None = None):
        if pix_fmt not in PIXEL_FORMATS:
            raise InputError(f"pixel format {pix_fmt!r} is not supported", f"use one of {PIXEL_FORMATS}")
        if pix_fmt == "yuv420p" and (width % 2 or height % 2):
            raise InputError(f"yuv420p needs an even width and height, got {width}×{height}",
                             "use yuv444p or an even frame size")
        self.path, self.size, self.frames = Path(path), (width, height), 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(f".{self.path.stem}.partial.mp4")
        self._meta_file = None
        cmd = [_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-r", f"{fps:.6g}", "-i", "-"]
        if metadata:
            lines = [";FFMETADATA1"] + [f"{_escape_ffmetadata(k)}={_escape_ffmetadata(v)}" for k, v in metadata.items()]
            self._meta_file = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8")
            self._meta_file.write("\n".join(lines) + "\n")
            self._meta_file.close()
            cmd += ["-f", "ffmetadata", "-i", self._meta_file.name, "-map_metadata", "1", "-map", "0:v"]
        cmd += ["-c:v", "libx264", "-crf", str(int(crf)), "-pix_fmt", pix_fmt, "-movflags", "+use_metadata_tags+faststart",
                str(self._partial)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, frames: np.ndarray) -> None:
        """uint8 RGB frames [n, H, W, 3] of this writer's size."""
        if frames.shape[1:] != (self.size[1], self.size[0], 3):
            raise InputError(f"frame size {frames.shape[2]}×{frames.shape[1]} differs from the video's "
                             f"{self.size[0]}×{self.size[1]}", "all frames of one video must have one size")
        self._proc.stdin.write(np.ascontiguousarray(frames).tobytes())
        self.frames += frames.shape[0]

    def close(self) -> Path:
        self._proc.stdin.close()
        err = self._proc.stderr.read().decode(errors="replace")
        code = self._proc.wait()
        if self._meta_file is not None:
            os.unlink(self._meta_file.name)
        if code != 0 or self.frames == 0:
            self._partial.unlink(missing_ok=True)
            raise RuntimeError(f"ffmpeg could not write {self.path.name} ({self.frames} frames): {err.strip()}")
        _rename_without_overwrite(self._partial, self.path)
        return self.path

    def abort(self) -> None:
        self._proc.kill()
        self._proc.wait()
        self._partial.unlink(missing_ok=True)
        if self._meta_file is not None:
            os.unlink(self._meta_file.name)


def _rename_without_overwrite(src: Path, dst: Path) -> None:
    os.link(src, dst)  # fails if dst exists: an existing output is never replaced
    os.unlink(src)


def save_mp4(chunks: Iterable[torch.Tensor], folder: Path, prefix: str, fps: float, *, crf: int = 19,
             pix_fmt: str = "yuv420p", metadata: dict[str, str] | None = None) -> tuple[Path, int]:
    """Write IMAGE chunks [t, H, W, C] to a new numbered mp4 in `folder`; returns (path, frame count)."""
    writer = None
    try:
        for chunk in chunks:
            frames = to_uint8(chunk)
            if writer is None:
                writer = _open_numbered(folder, prefix, frames.shape[2], frames.shape[1], fps, crf, pix_fmt, metadata)
            writer.write(frames)
        if writer is None:
            raise InputError("there are no frames to save", "connect a video with at least one frame")
        return writer.close(), writer.frames
    except BaseException:
        if writer is not None and writer._proc.poll() is None:
            writer.abort()
        raise


def _open_numbered(folder, prefix, width, height, fps, crf, pix_fmt, metadata) -> Mp4Writer:
    folder.mkdir(parents=True, exist_ok=True)
    return Mp4Writer(next_free_path(folder, prefix), width, height, fps, crf=crf, pix_fmt=pix_fmt, metadata=metadata)


def read_video(path: Path, start: int = 0, count: int = 0, stride: int = 1) -> tuple[torch.Tensor, float]:
    """Frames [T, H, W, 3] float 0..1 and the source fps; frames start, start+stride, … (count 0 = to the end)."""
    import imageio_ffmpeg

    if not Path(path).exists():
        raise InputError(f"video file {path} does not exist", "pick a file from the input folder")
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
        width, height = meta["size"]
        frames = []
        for index, raw in enumerate(reader):
            if index < start or (index - start) % stride:
                continue
            frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3))
            if count and len(frames) == count:
                break
    finally:
        reader.close()
    if not frames:
        raise InputError(f"{Path(path).name} has no frames from frame {start} on", "lower start_frame")
    video = torch.from_numpy(np.stack(frames)).float() / 255.0
    return video, float(meta["fps"])


def read_metadata(path: Path) -> dict[str, str]:
    """The container's global metadata tags (e.g. 'prompt', 'workflow' as JSON strings)."""
    text = subprocess.run([_ffmpeg(), "-hide_banner", "-loglevel", "error", "-i", str(path), "-f", "ffmetadata", "-"],
                          capture_output=True, text=True, check=True).stdout
    tags, key, current, chars = {}, None, [], iter(text)
    for ch in chars:  # ffmetadata: key=value lines; '\\' escapes '=', ';', '#', '\\' and newlines
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch == "=" and key is None:
            key, current = "".join(current), []
        elif ch == "\n":
            if current[:1] == ["["]:
                break  # stream and chapter sections follow the global tags
            if key is not None:
                tags[key] = "".join(current)
            key, current = None, []
        else:
            current.append(ch)
    return tags


def comfy_metadata(prompt: dict | None, extra_pnginfo: dict | None) -> dict[str, str]:
    """ComfyUI's embedding: 'prompt' and each extra_pnginfo entry (e.g. 'workflow') as JSON text."""
    meta = {}
    if prompt is not None:
        meta["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        meta[key] = json.dumps(value)
    return meta


def iter_chunks(frames: torch.Tensor, size: int = 16) -> Iterator[torch.Tensor]:
    for start in range(0, frames.shape[0], size):
        yield frames[start:start + size]
