"""Video in and out: mp4 files ↔ ComfyUI IMAGE batches [frames, height, width, 3] in 0..1."""
from __future__ import annotations

import os
from pathlib import Path

from .. import runtime
from ..errors import InputError
from ..encoding.video import check_latent_for, decode_latent
from ..video_io import PIXEL_FORMATS, comfy_metadata, iter_chunks, read_video, save_mp4
from .common import OpenReelNode, mappings

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif")


def _output_folder(prefix: str) -> tuple[Path, str, str]:
    """(folder, subfolder relative to the output dir, file stem) for a 'sub/dir/name' prefix, kept inside output."""
    root = runtime.output_dir().resolve()
    prefix = prefix.strip() or "OpenReel"
    folder = (root / prefix).parent.resolve()
    if os.path.commonpath([root, folder]) != str(root):
        raise InputError(f"filename_prefix {prefix!r} points outside the output folder", "use a relative prefix "
                         "such as 'OpenReel/video'")
    return folder, folder.relative_to(root).as_posix() if folder != root else "", Path(prefix).name


class OpenReelSaveVideo(OpenReelNode):
    """Saves frames as an H.264 mp4 in the output folder. Files are numbered and never overwritten; a video is
    written under a temporary name and appears only when complete. The prompt and workflow are embedded in the
    file's metadata, as ComfyUI's own video saver does, so dropping the mp4 on ComfyUI restores the graph.
    Connect either images, or a latent and its VAE: then frames stream from the decoder into the file and the
    whole video never sits in memory, and a latent holding a batch of n videos is written as n files. (Images are
    one video: ComfyUI's IMAGE has no batch of videos.)"""

    NODE_ID = "OpenReelSaveVideo"
    DISPLAY_NAME = "OpenReel Save Video"
    CATEGORY = "OpenReel/video"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 120.0, "step": 1.0,
                                  "tooltip": "Frames per second (Wan2.1/2.2 A14B: 16, TI2V-5B and SkyReels-V2: 24)."}),
                "filename_prefix": ("STRING", {"default": "OpenReel/video",
                                               "tooltip": "Subfolder and name in the output folder; a number is added."}),
                "crf": ("INT", {"default": 19, "min": 0, "max": 51,
                                "tooltip": "H.264 quality: lower is better and larger (0 lossless, 17-23 typical)."}),
                "pix_fmt": (list(PIXEL_FORMATS), {"default": "yuv420p",
                                                  "tooltip": "yuv420p plays everywhere; yuv444p keeps full colour."}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "The frames, e.g. from OpenReel VAE Decode."}),
                "latent": ("LATENT", {"tooltip": "Or a latent video with its vae: decoded while saving."}),
                "vae": ("OPENREEL_VAE", {"tooltip": "The VAE that decodes `latent`."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save(self, fps, filename_prefix, crf, pix_fmt, images=None, latent=None, vae=None, prompt=None,
             extra_pnginfo=None):
        folder, subfolder, stem = _output_folder(filename_prefix)
        if (images is None) == (latent is None) or (latent is None) != (vae is None):
            raise InputError("connect either images, or a latent together with its vae", "connect one of the two")
        if images is not None:
            videos = [iter_chunks(images)]
        else:
            check_latent_for(vae, latent)
            videos = (decode_latent(vae, {**latent, "samples": latent["samples"][b:b + 1]})
                      for b in range(latent["samples"].shape[0]))
        metadata = comfy_metadata(prompt, extra_pnginfo)
        paths = [save_mp4(frames, folder, stem, fps, crf=crf, pix_fmt=pix_fmt, metadata=metadata)[0]
                 for frames in videos]
        return {"ui": {"images": [{"filename": path.name, "subfolder": subfolder, "type": "output"} for path in paths],
                       "animated": (True,)}}


def _input_videos() -> list[str]:
    """Video files in the input folder and its subfolders (where uploads land), as '/'-separated relative names."""
    folder = runtime.input_dir()
    if not folder.is_dir():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())


class OpenReelLoadVideo(OpenReelNode):
    """Loads frames and the frame rate from a video in the input folder, with a frame range and stride, for
    image-to-video and video extension."""

    NODE_ID = "OpenReelLoadVideo"
    DISPLAY_NAME = "OpenReel Load Video"
    CATEGORY = "OpenReel/video"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "FLOAT", "INT")
    RETURN_NAMES = ("images", "fps", "frame_count")
    OUTPUT_TOOLTIPS = ("The frames, [frames, height, width, 3] in 0..1.", "The source's frames per second "
                       "(divided by stride).", "How many frames were loaded.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            # video_upload: ComfyUI's frontend adds a button that uploads a video into the input folder.
            "video": (_input_videos(), {"video_upload": True,
                                        "tooltip": "A video file in the input folder; upload one with the button."}),
            "start_frame": ("INT", {"default": 0, "min": 0, "max": 1_000_000, "tooltip": "First frame to load (0-based)."}),
            "frame_count": ("INT", {"default": 0, "min": 0, "max": 100_000,
                                    "tooltip": "How many frames to load; 0 loads to the end."}),
            "stride": ("INT", {"default": 1, "min": 1, "max": 100, "tooltip": "Load every n-th frame."}),
        }}

    @classmethod
    def IS_CHANGED(cls, video, **_):
        path = runtime.input_dir() / video
        return f"{path.stat().st_mtime_ns}:{path.stat().st_size}" if path.exists() else ""

    @classmethod
    def VALIDATE_INPUTS(cls, video):
        if not (runtime.input_dir() / video).is_file():
            return (f"{cls.DISPLAY_NAME}: video {video!r} is not in the input folder ({runtime.input_dir()}). "
                    "Upload it with the node's upload button, put it in that folder, or pick another file.")
        return True

    def load(self, video, start_frame, frame_count, stride):
        frames, fps = read_video(runtime.input_dir() / video, start_frame, frame_count, stride)
        return frames, fps / stride, frames.shape[0]


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(OpenReelSaveVideo, OpenReelLoadVideo)
