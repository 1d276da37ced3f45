"""The example workflows: every UI graph equals its API twin, names only real nodes and valid values, and every API
workflow runs through the headless runner on the synthetic model set, writing a playable mp4."""
import json
from pathlib import Path

import pytest

from openreel import runtime
from openreel.model_loaders.cache import MODULES
from openreel.runner import EXIT_OK, NODE_CLASS_MAPPINGS, main, synthetic_inputs, use_synthetic_models, validate
from openreel.video_io import read_metadata, read_video
from openreel.workflow_format import UI_ONLY_NODES, ui_to_api

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
NAMES = sorted(p.stem for p in (WORKFLOWS / "api").glob("*.json"))
FPS = {"wan22_ti2v_5b_t2v": 24, "wan22_ti2v_5b_i2v": 24, "skyreels_v2_t2v": 24, "skyreels_v2_i2v": 24,
       **{name: 24 for name in NAMES if name.startswith(("skyreels_v2_df", "hunyuan_video"))},
       **{name: 25 for name in NAMES if name.startswith("stepvideo")}}


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    use_synthetic_models({}, folder, log=lambda *_: None)  # writes the set once for the module
    yield folder
    runtime.set_models_dir(None)
    runtime.set_input_dir(None)
    MODULES.clear()


def test_the_workflow_set_is_complete():
    assert NAMES == sorted(["wan21_t2v", "wan21_i2v", "wan21_flf2v", "wan22_t2v_a14b", "wan22_i2v_a14b",
                            "wan22_ti2v_5b_t2v", "wan22_ti2v_5b_i2v", "skyreels_v2_t2v", "skyreels_v2_i2v",
                            "skyreels_v2_df_t2v_10s", "skyreels_v2_df_t2v_30s_async", "skyreels_v2_df_i2v",
                            "skyreels_v2_df_start_end", "skyreels_v2_df_extend", "hunyuan_video_t2v_720p",
                            "hunyuan_video_t2v_544p_fast", "wan22_t2v_a14b_4step_lora",
                            "wan22_i2v_a14b_4step_lora", "wan21_t2v_teacache", "wan22_t2v_a14b_magcache",
                            "stepvideo_t2v_544p", "stepvideo_t2v_turbo", "stepvideo_t2v_24gb", "wan22_t2v_a14b_2gpu",
                            "wan22_t2v_a14b_fast", "wan22_t2v_a14b_24gb"])
    assert sorted(p.stem for p in WORKFLOWS.glob("*.json")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_ui_graph_equals_its_api_twin_and_carries_a_note(name):
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    assert ui_to_api(ui, NODE_CLASS_MAPPINGS) == api
    (note,) = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "Note"]
    assert "ComfyUI/models/" in note
    for loader in (n for n in api.values() if n["class_type"].endswith("Loader")):
        assert loader["inputs"]["model_name"].split("/")[0] in note  # the note names every file the graph loads
    known = set(NODE_CLASS_MAPPINGS) | set(UI_ONLY_NODES)
    assert {n["type"] for n in ui["nodes"]} <= known
    link_ids = {link[0] for link in ui["links"]}
    for n in ui["nodes"]:  # every slot's link exists and points back at this node and slot
        for i, slot in enumerate(n.get("inputs", [])):
            if slot.get("link") is not None:
                link = next(link for link in ui["links"] if link[0] == slot["link"])
                assert (link[3], link[4]) == (n["id"], i) and slot["link"] in link_ids


@pytest.mark.parametrize("name", NAMES)
def test_every_node_and_value_is_valid(name, synthetic_dir):
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    assert validate(api) == []


@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_runs_headless_and_writes_an_mp4(name, synthetic_dir, tmp_path):
    out = tmp_path / "out"
    code = main(str(WORKFLOWS / "api" / f"{name}.json"), None, str(out), [], log=lambda *_: None,
                synthetic_dir=str(synthetic_dir))
    assert code == EXIT_OK
    (video,) = out.rglob("*.mp4")
    frames, fps = read_video(video)
    nodes, count_key = (("OpenReelDiffusionForcingSampler",), "num_frames") if "_df_" in name else \
        (("OpenReelEmptyLatent", "OpenReelImageToVideo"), "frames")
    prompt = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    entry = next(e for e in prompt.values() if e["class_type"] in nodes)
    width, height, count = (synthetic_inputs(entry)[k] for k in ("width", "height", count_key))
    assert frames.shape == (count, height, width, 3)
    assert fps == pytest.approx(FPS.get(name, 16))
    assert json.loads(read_metadata(video)["prompt"])["8"]["class_type"] == "OpenReelSaveVideo"
