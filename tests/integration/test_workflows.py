"""Every example API workflow through /prompt, and one followed on the websocket."""
from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from .server import WORKFLOWS, Socket, api_workflow, node_of


@pytest.mark.parametrize("name", sorted(p.stem for p in WORKFLOWS.glob("*.json")))
def test_example_workflow_runs_in_comfyui(comfy, name):
    """Each API workflow, queued through /prompt on the synthetic set (small sizes), saves a playable mp4 that carries
    the prompt; ComfyUI's own LoadImage reads the start images from the input folder."""
    from openreel.video_io import read_metadata, read_video

    prompt = api_workflow(name)
    entry = comfy.run_ok(prompt)
    (path,) = comfy.saved_files(entry)
    frames, _ = read_video(path)
    nodes, key = (("OpenReelDiffusionForcingSampler",), "num_frames") if "_df_" in name else \
        (("OpenReelEmptyLatent", "OpenReelImageToVideo"), "frames")
    count = next(e["inputs"][key] for e in prompt.values() if e["class_type"] in nodes)
    assert frames.shape == (count, 64, 64, 3)
    embedded = json.loads(read_metadata(path)["prompt"])  # ComfyUI adds its own keys (e.g. is_changed)
    assert {k: (v["class_type"], v["inputs"]) for k, v in embedded.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in prompt.items()}


def test_websocket_follows_a_workflow(comfy):
    """Following wan21_t2v on /ws: execution_start, the sampler's progress rising to its maximum, `executed` for
    Save Video naming the file /history lists, and `executing` with node null last; /view serves the mp4."""
    prompt = api_workflow("wan21_t2v", OpenReelSampler={"seed": 7, "steps": 3, "cfg": 5.0})
    sampler, save = node_of(prompt, "OpenReelSampler"), node_of(prompt, "OpenReelSaveVideo")
    with Socket(comfy) as ws:
        prompt_id = ws.queue(prompt)
        last = ws.until_done(prompt_id)
    assert last["type"] == "executing" and last["data"]["node"] is None, last
    kinds = [m["type"] for m in ws.messages if m.get("data", {}).get("prompt_id") == prompt_id]
    assert kinds[0] == "execution_start" and "execution_error" not in kinds, kinds
    assert kinds.index("execution_start") < kinds.index("progress") < kinds.index("executed"), kinds
    progress = ws.of(prompt_id, "progress", sampler)
    values = [p["value"] for p in progress]
    assert len(values) >= 3 and values == sorted(values), values  # one tick per model call, rising
    assert len({p["max"] for p in progress}) == 1 and values[-1] == progress[0]["max"], progress
    executing = [d["node"] for d in ws.of(prompt_id, "executing")]
    assert sampler in executing and save in executing and executing.index(sampler) < executing.index(save)
    (executed,) = ws.of(prompt_id, "executed", save)
    (item,) = executed["output"]["images"]
    assert item["filename"].endswith(".mp4") and item["type"] == "output"
    entry = comfy.get(f"/history/{prompt_id}")[prompt_id]
    assert entry["status"]["status_str"] == "success" and entry["outputs"][save]["images"] == [item]
    query = urllib.parse.urlencode({k: item[k] for k in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{comfy.url}/view?{query}", timeout=10) as r:
        assert r.read() == (comfy.output / item["subfolder"] / item["filename"]).read_bytes()
