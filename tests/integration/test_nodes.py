"""The pack as ComfyUI sees it: import, /object_info, loaders on every layout, uploads, the template listing."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .server import PACK_LINK, ROOT, SYNTHETIC, Server


def loader_prompt(names: list[str]) -> dict:
    """OpenReelDiTLoader on each file, each ending on ComfyUI's PreviewAny (the loader is no output node)."""
    prompt = {}
    for i, name in enumerate(names):
        prompt[f"{2 * i + 1}"] = {"class_type": "OpenReelDiTLoader",
                                  "inputs": {"model_name": name, "weight_dtype": "auto", "compute_dtype": "auto"}}
        prompt[f"{2 * i + 2}"] = {"class_type": "PreviewAny", "inputs": {"source": [f"{2 * i + 1}", 0]}}
    return prompt


def needs_preview_any(server: Server) -> None:
    """Skip on a ComfyUI older than its PreviewAny node."""
    try:
        server.get("/object_info/PreviewAny")["PreviewAny"]
    except (KeyError, urllib.error.HTTPError):
        pytest.skip("this ComfyUI has no PreviewAny node (added 2025-05) to end a graph on the loader")


def test_pack_imported(comfy):
    lines = [line for line in comfy.log().splitlines() if "IMPORT FAILED" in line and PACK_LINK in line]
    assert not lines, f"ComfyUI failed to import the pack:\n{comfy.log_tail()}"
    assert any(PACK_LINK in line and "seconds" in line for line in comfy.log().splitlines()), comfy.log_tail()


def test_object_info_has_every_node(comfy):
    from openreel import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    info = comfy.get("/object_info")
    assert NODE_CLASS_MAPPINGS
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        assert node_id in info, f"{node_id} missing from /object_info:\n{comfy.log_tail()}"
        entry = info[node_id]
        assert entry["python_module"] == f"custom_nodes.{PACK_LINK}", entry["python_module"]
        assert entry["display_name"] == NODE_DISPLAY_NAME_MAPPINGS[node_id]
        assert entry["category"] == cls.CATEGORY
        assert entry["output"] == list(cls.RETURN_TYPES)
        assert entry["output_name"] == list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES))
        assert entry["output_node"] == bool(getattr(cls, "OUTPUT_NODE", False))
        assert entry["description"]
        declared = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            assert list(entry["input"].get(section, {})) == list(declared.get(section, {})), (node_id, section)
            for name, spec in entry["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_loader_lists_synthetic_files(comfy):
    listed = comfy.get("/object_info/OpenReelDiTLoader")["OpenReelDiTLoader"]["input"]["required"]["model_name"][0]
    for label in ("official_bf16", "comfy_bf16", "comfy_fp8_scaled", "sharded", "not_a_dit"):
        assert comfy.names[label] in listed, (label, listed)
    assert not any("00002-of-00002" in name for name in listed), "a secondary shard is listed"


def test_loader_runs_every_layout(comfy):
    needs_preview_any(comfy)
    layouts = [comfy.names[k] for k in ("official_bf16", "comfy_bf16", "comfy_fp8_scaled", "sharded")]
    entry = comfy.run_ok(loader_prompt(layouts))
    assert len(entry["outputs"]) == len(layouts)
    for node, output in entry["outputs"].items():
        (text,) = output["text"]
        assert text.startswith("DiTHandle(") and "family='wan'" in text and "task='t2v'" in text, (node, text)


def test_unknown_file_name_fails_validation(comfy):
    needs_preview_any(comfy)
    code, body = comfy.post_prompt(loader_prompt([f"{SYNTHETIC}/no_such_file.safetensors"]))
    assert code == 400, body
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    (error,) = body["node_errors"]["1"]["errors"]
    assert body["node_errors"]["1"]["class_type"] == "OpenReelDiTLoader"
    assert error["type"] == "value_not_in_list" and error["extra_info"]["input_name"] == "model_name"


def test_wrong_kind_of_file_fails_with_node_name(comfy):
    needs_preview_any(comfy)
    error = comfy.run_error(loader_prompt([comfy.names["not_a_dit"]]))
    assert error["node_type"] == "OpenReelDiTLoader"
    assert error["exception_message"].startswith("OpenReel DiT Loader: "), error["exception_message"]
    assert "not a diffusion transformer" in error["exception_message"]


def test_load_video_upload_button_and_uploaded_file(comfy, tmp_path):
    """Issue 13 item 8: /object_info declares Load Video's list as a video upload (the frontend's button); a video
    uploaded through ComfyUI's upload route is listed and loads."""
    import torch

    from openreel.video_io import iter_chunks, read_video, save_mp4

    clip, _ = save_mp4(iter_chunks(torch.rand(6, 32, 48, 3)), tmp_path, "upload", 8.0)
    reply = comfy.upload(clip, "openreel-upload")
    name = f"{reply['subfolder']}/{reply['name']}"
    spec = comfy.get("/object_info/OpenReelLoadVideo")["OpenReelLoadVideo"]["input"]["required"]["video"]
    assert spec[1].get("video_upload") is True and name in spec[0], spec
    entry = comfy.run_ok({
        "1": {"class_type": "OpenReelLoadVideo", "inputs": {"video": name, "start_frame": 0, "frame_count": 0,
                                                            "stride": 1}},
        "2": {"class_type": "OpenReelSaveVideo", "inputs": {"images": ["1", 0], "fps": ["1", 1], "crf": 19,
                                                            "pix_fmt": "yuv420p", "filename_prefix": "upload/out"}}})
    (path,) = comfy.saved_files(entry, "2")
    frames, fps = read_video(path)
    assert frames.shape == (6, 32, 48, 3) and fps == pytest.approx(8.0)


def test_template_listing_names_every_workflow(comfy):
    """GET /api/workflow_templates lists the pack's folder (as installed: custom_nodes/ComfyUI-OpenReel) with every
    UI workflow in workflows/ (ComfyUI globs <pack>/workflows/*.json), and serves each file."""
    expected = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
    assert expected
    listing = comfy.get("/api/workflow_templates")
    assert sorted(listing.get(PACK_LINK, [])) == expected, listing.get(PACK_LINK)
    name = expected[0]
    with urllib.request.urlopen(f"{comfy.url}/api/workflow_templates/{PACK_LINK}/{name}.json", timeout=10) as r:
        assert json.load(r) == json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    assert Path(comfy.base / "custom_nodes" / PACK_LINK / "workflows").resolve() == (ROOT / "workflows").resolve()
