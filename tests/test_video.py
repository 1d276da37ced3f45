"""Save/Load Video nodes: playable mp4s with the right frames, size and fps, embedded workflow, no overwrites."""
import json

import pytest
import torch

from openreel import runtime
from openreel.errors import InputError
from openreel.nodes.video import OpenReelLoadVideo, OpenReelSaveVideo
from openreel.video_io import read_metadata, read_video


@pytest.fixture
def dirs(tmp_path):
    runtime.set_output_dir(tmp_path / "output")
    runtime.set_input_dir(tmp_path / "input")
    yield tmp_path
    runtime.set_output_dir(None)
    runtime.set_input_dir(None)


def gradient_video(frames=9, height=32, width=48):
    t = torch.linspace(0, 1, frames).view(-1, 1, 1, 1)
    y = torch.linspace(0, 1, height).view(1, -1, 1, 1)
    x = torch.linspace(0, 1, width).view(1, 1, -1, 1)
    return torch.cat([x.expand(frames, height, width, 1), y.expand(frames, height, width, 1),
                      t.expand(frames, height, width, 1)], dim=-1)


def test_save_reads_back_with_frames_size_fps_and_workflow(dirs):
    video = gradient_video()
    workflow = {"nodes": [{"id": i, "type": "OpenReelSaveVideo", "note": "x" * 200} for i in range(1000)]}  # > 128 KiB
    prompt = {"1": {"class_type": "OpenReelSaveVideo", "inputs": {"fps": 16.0, "text": "a=b; c#d \\ e\nf"}}}
    result = OpenReelSaveVideo().save(16.0, "OpenReel/clip", 10, "yuv420p", images=video, prompt=prompt,
                                      extra_pnginfo={"workflow": workflow})
    saved = result["ui"]["images"][0]
    assert saved["subfolder"] == "OpenReel" and saved["type"] == "output" and result["ui"]["animated"] == (True,)
    path = dirs / "output" / "OpenReel" / saved["filename"]
    assert saved["filename"] == "clip_00001_.mp4"
    frames, fps = read_video(path)
    assert frames.shape == (9, 32, 48, 3) and fps == pytest.approx(16.0)
    assert (frames - video).abs().mean() < 0.03  # lossy H.264 at crf 10 on a smooth gradient
    meta = read_metadata(path)
    assert json.loads(meta["workflow"]) == workflow
    assert json.loads(meta["prompt"]) == prompt
    assert not list((dirs / "output" / "OpenReel").glob(".*partial*"))  # no temporary file left behind


def test_saving_twice_keeps_both_files(dirs):
    node = OpenReelSaveVideo()
    first = node.save(24.0, "run", 19, "yuv444p", images=gradient_video(5))["ui"]["images"][0]["filename"]
    second = node.save(24.0, "run", 19, "yuv444p", images=gradient_video(5))["ui"]["images"][0]["filename"]
    assert (first, second) == ("run_00001_.mp4", "run_00002_.mp4")
    assert len(list((dirs / "output").glob("run_*.mp4"))) == 2


def test_save_refuses_bad_input(dirs):
    node = OpenReelSaveVideo()
    with pytest.raises(InputError, match="^OpenReel Save Video: filename_prefix '../escape' points outside"):
        node.save(16.0, "../escape", 19, "yuv420p", images=gradient_video(3))
    with pytest.raises(InputError, match="yuv420p needs an even width and height"):
        node.save(16.0, "odd", 19, "yuv420p", images=gradient_video(3, 31, 48))
    with pytest.raises(InputError, match="not an IMAGE batch"):
        node.save(16.0, "bad", 19, "yuv420p", images=torch.zeros(3, 32, 48))
    with pytest.raises(InputError, match="connect either images, or a latent together with its vae"):
        node.save(16.0, "none", 19, "yuv420p")
    assert not list((dirs / "output").rglob("*.mp4"))


def test_load_video_range_and_stride(dirs):
    OpenReelSaveVideo().save(24.0, "src", 0, "yuv444p", images=gradient_video(12))
    (dirs / "input").mkdir()
    (dirs / "output" / "src_00001_.mp4").rename(dirs / "input" / "src.mp4")
    assert OpenReelLoadVideo.INPUT_TYPES()["required"]["video"][0] == ["src.mp4"]
    assert OpenReelLoadVideo.VALIDATE_INPUTS("src.mp4") is True
    assert "not in the input folder" in OpenReelLoadVideo.VALIDATE_INPUTS("missing.mp4")
    frames, fps, count = OpenReelLoadVideo().load("src.mp4", 2, 4, 2)
    assert count == 4 and frames.shape == (4, 32, 48, 3) and fps == pytest.approx(12.0)
    full, _ = read_video(dirs / "input" / "src.mp4")
    assert torch.equal(frames, full[2:10:2])
    with pytest.raises(InputError, match="no frames from frame 50"):
        OpenReelLoadVideo().load("src.mp4", 50, 0, 1)


def test_load_video_has_comfyui_upload_button_and_lists_uploaded_files(dirs):
    """Issue 13 item 8: the node's error said "Upload it" but it had no upload button. ComfyUI's frontend adds one to
    a file list declaring `video_upload`; an upload lands in the input folder (a subfolder such as "pasted/" and a
    " (1)" suffix for a repeated name), and the list, the check and the load find it there."""
    video_input = OpenReelLoadVideo.INPUT_TYPES()["required"]["video"]
    assert video_input[1].get("video_upload") is True
    OpenReelSaveVideo().save(24.0, "src", 0, "yuv444p", images=gradient_video(6))
    (dirs / "input" / "pasted").mkdir(parents=True)
    (dirs / "input" / "not_a_video.mp4").mkdir()  # a folder named like a video is no choice
    (dirs / "output" / "src_00001_.mp4").rename(dirs / "input" / "pasted" / "clip (1).mp4")
    assert OpenReelLoadVideo.INPUT_TYPES()["required"]["video"][0] == ["pasted/clip (1).mp4"]
    assert OpenReelLoadVideo.VALIDATE_INPUTS("pasted/clip (1).mp4") is True
    frames, fps, count = OpenReelLoadVideo().load("pasted/clip (1).mp4", 0, 0, 1)
    assert count == 6 and frames.shape == (6, 32, 48, 3) and fps == pytest.approx(24.0)
    message = OpenReelLoadVideo.VALIDATE_INPUTS("other.mp4")
    assert str(dirs / "input") in message and "upload button" in message
