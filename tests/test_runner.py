"""Headless runner and workflow formats: validation, overrides, execution, exit codes, UI ↔ API equivalence."""
import json
from pathlib import Path

import pytest
import torch

from openreel import runtime
from openreel.nodes import NODE_CLASS_MAPPINGS
from openreel.runner import EXIT_INVALID, EXIT_OK, main, validate
from openreel.video_io import read_metadata, read_video, save_mp4
from openreel.workflow_format import api_to_ui, ui_to_api

COPY_VIDEO = {
    "1": {"class_type": "OpenReelLoadVideo", "inputs": {"video": "clip.mp4", "start_frame": 1, "frame_count": 4,
                                                         "stride": 1}, "_meta": {"title": "Source"}},
    "2": {"class_type": "OpenReelSaveVideo", "inputs": {"images": ["1", 0], "fps": ["1", 1], "filename_prefix":
                                                         "copy", "crf": 19, "pix_fmt": "yuv420p"}},
}


@pytest.fixture
def workspace(tmp_path):
    runtime.set_input_dir(tmp_path / "input")
    save_mp4([torch.rand(6, 32, 32, 3)], tmp_path / "input", "clip", 24.0)
    (tmp_path / "input" / "clip_00001_.mp4").rename(tmp_path / "input" / "clip.mp4")
    yield tmp_path
    runtime.set_input_dir(None)
    runtime.set_output_dir(None)


def test_links_are_type_checked(workspace):
    assert validate(COPY_VIDEO) == []  # FLOAT fps output → FLOAT fps input
    bad = json.loads(json.dumps(COPY_VIDEO))
    bad["2"]["inputs"]["fps"] = ["1", 2]  # the INT frame count into a FLOAT input
    assert any("expects FLOAT but node 1 gives INT" in p for p in validate(bad))


def test_runs_api_workflow_with_override_and_embeds_it(workspace, capsys):
    path = workspace / "wf.json"
    path.write_text(json.dumps(COPY_VIDEO))
    code = main(str(path), None, str(workspace / "out"), ["Source.frame_count=3", "2.filename_prefix=renamed"])
    assert code == EXIT_OK
    saved = workspace / "out" / "renamed_00001_.mp4"
    frames, fps = read_video(saved)
    assert frames.shape[0] == 3 and fps == pytest.approx(24.0)
    assert json.loads(read_metadata(saved)["prompt"])["1"]["inputs"]["frame_count"] == 3
    assert f"saved {saved}" in capsys.readouterr().out


def test_ui_workflow_runs_and_equals_its_api_twin(workspace):
    ui = api_to_ui(COPY_VIDEO, NODE_CLASS_MAPPINGS, notes=["Put clip.mp4 in ComfyUI/input."])
    assert ui_to_api(ui, NODE_CLASS_MAPPINGS) == COPY_VIDEO
    path = workspace / "ui.json"
    path.write_text(json.dumps(ui))
    assert main(str(path), None, str(workspace / "out"), []) == EXIT_OK
    saved = next((workspace / "out").glob("copy_*.mp4"))
    assert json.loads(read_metadata(saved)["workflow"]) == ui


def test_invalid_workflows_exit_2_listing_every_problem(workspace, capsys):
    bad = json.loads(json.dumps(COPY_VIDEO))
    bad["1"]["inputs"]["video"] = "missing.mp4"
    bad["2"]["inputs"]["crf"] = 80
    bad["2"]["inputs"]["fps"] = "fast"
    bad["3"] = {"class_type": "KSampler", "inputs": {}}
    path = workspace / "bad.json"
    path.write_text(json.dumps(bad))
    assert main(str(path), None, str(workspace / "out"), []) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "video = 'missing.mp4' is not one of the choices" in err
    assert "crf = 80 is outside 0..51" in err
    assert "fps = 'fast' is not a number; give a number from " in err
    assert "node 3 (KSampler): unknown node type" in err
    assert not (workspace / "out").exists()  # nothing ran
    assert main(str(path), None, None, ["nonexistent.x=1"]) == EXIT_INVALID


def test_a_failing_node_exits_1_naming_the_node(workspace, monkeypatch, capsys):
    from openreel.nodes.video import OpenReelLoadVideo

    def broken(self, **_):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(OpenReelLoadVideo, "load", broken)
    path = workspace / "wf.json"
    path.write_text(json.dumps(COPY_VIDEO))
    assert main(str(path), None, str(workspace / "out"), []) == 1
    assert "error: node 1 (Source) failed: RuntimeError: disk on fire" in capsys.readouterr().err


def test_synthetic_runs_never_write_into_a_users_models_folder(tmp_path, capsys):
    from pathlib import Path

    from openreel.cli import main as cli_main

    mine = tmp_path / "models" / "vae" / "wan_2.1_vae.safetensors"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own file")
    workflow = Path(__file__).resolve().parents[1] / "workflows" / "api" / "wan21_t2v.json"
    code = cli_main(["run", str(workflow), "--synthetic", "--models", str(tmp_path / "models")])
    assert code == EXIT_INVALID and "takes no --models" in capsys.readouterr().err
    assert mine.read_bytes() == b"the user's own file"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["wan_2.1_vae.safetensors"]


def _write(tmp_path, data, name="wf.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_set_rejects_an_input_the_node_does_not_have_and_takes_display_names(tmp_path, capsys):
    prompt = {"1": {"class_type": "OpenReelSchedule", "inputs": {"schedule": "wan_unipc", "steps": 4, "shift": 5.0,
                                                                 "denoise": 1.0}}}
    path = _write(tmp_path, prompt)
    assert main(path, None, str(tmp_path / "out"), ["1.stepz=5"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "OpenReel Schedule (node 1) has no input 'stepz'; its inputs: schedule, steps, shift, denoise" in err
    assert main(path, None, str(tmp_path / "out"), ["Nothing.steps=5"]) == EXIT_INVALID
    assert "use a node id: 1 (OpenReel Schedule)" in capsys.readouterr().err
    prompt["2"] = {"class_type": "OpenReelSchedule", "inputs": dict(prompt["1"]["inputs"]), "_meta": {"title": "B"}}
    from openreel.runner import apply_overrides

    apply_overrides(prompt, ["OpenReel Schedule.steps=7"])  # the name the runner prints, when it is unique
    assert prompt["1"]["inputs"]["steps"] == 7 and prompt["2"]["inputs"]["steps"] == 4
    prompt["3"] = {"class_type": "OpenReelMultiGPU", "inputs": {"gpus": "0,1"}}
    apply_overrides(prompt, ["3.gpus=0", "B.steps=3"])  # a text input keeps the text; numbers are parsed
    assert prompt["3"]["inputs"]["gpus"] == "0" and prompt["2"]["inputs"]["steps"] == 3


def test_a_missing_model_names_the_folders_searched(tmp_path):
    runtime.set_models_dir(tmp_path / "models")
    try:
        problems = validate({"1": {"class_type": "OpenReelVAELoader",
                                   "inputs": {"model_name": "wan_2.1_vae.safetensors", "dtype": "auto"}}})
    finally:
        runtime.set_models_dir(None)
    assert len(problems) == 1 and "(none found); searched " + str(tmp_path / "models" / "vae") in problems[0]
    assert "--models (or OPENREEL_MODELS)" in problems[0]


def test_a_workflow_file_that_is_no_object_is_refused(tmp_path, capsys):
    assert main(_write(tmp_path, [1, 2]), None, None, []) == EXIT_INVALID
    assert "holds a JSON list, not an object" in capsys.readouterr().err


def test_inspect_says_what_every_kind_of_file_is_and_lists_a_folder(tmp_path, capsys):
    from openreel import synthetic, synthetic_stepvideo
    from openreel.cli import main as cli_main

    models = tmp_path / "models"
    synthetic.write_model_set(models)
    for folder, what in (("vae/wan_2.1_vae.safetensors", "a video VAE"), ("clip_vision", "a CLIP vision encoder"),
                         ("text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors", "an umT5 encoder")):
        assert cli_main(["inspect", str(models / folder)]) == 0
        assert what in capsys.readouterr().out
    assert cli_main(["inspect", str(models / "diffusion_models")]) == 0
    out = capsys.readouterr().out
    dits = len(synthetic.DIFFUSION_MODELS) + 1 + len(synthetic_stepvideo.DIT_FILES)  # HunyuanVideo's, Step-Video's
    assert out.count("Load it with OpenReel DiT Loader") == dits  # subfolders too
    assert f"{synthetic.HUNYUAN_DIT}: a HunyuanVideo diffusion transformer" in out


def test_cli_help_names_folders_exit_codes_and_an_example_and_version_answers(capsys):
    from openreel.cli import main as cli_main
    from openreel.cli import version

    with pytest.raises(SystemExit) as done:
        cli_main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for needed in ("OPENREEL_MODELS", "OPENREEL_INPUT", "OPENREEL_OUTPUT", "exit codes", "130 interrupted",
                   "--synthetic", "examples:"):
        assert needed in text
    with pytest.raises(SystemExit):
        cli_main(["--version"])
    assert capsys.readouterr().out.strip() == f"OpenReel {version()}" and version() != "unknown"


def test_sizes_frames_and_the_output_folder_are_checked_before_anything_runs(tmp_path, capsys):
    """Issue 13 item 14: a wrong frame count and a wrong size are both listed by validation (exit 2, nothing ran),
    and --out naming a file is refused before the graph runs."""
    workflow = json.loads((Path(__file__).resolve().parents[1] / "workflows" / "api" / "wan21_t2v.json").read_text())
    workflow["5"]["inputs"].update(width=840, frames=80)
    problems = validate(workflow)
    assert any("frames = 80 is not of the form 4n+1: use 77 or 81" in p for p in problems)
    assert any("840×480 is not a multiple of 16: use e.g. 832×480" in p for p in problems)
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow))
    assert main(str(path), str(tmp_path / "models"), None, [], log=lambda *_: None) == EXIT_INVALID
    a_file = tmp_path / "taken"
    a_file.write_text("")
    assert main(str(path), str(tmp_path / "models"), str(a_file), [], log=lambda *_: None) == EXIT_INVALID
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_synthetic_run_keeps_the_workflows_frame_rule_and_reports_a_count_of_none():
    """A synthetic run shrinks frames within the workflow's own rule (Step-Video's 17n stays 17n, Wan's 4n+1 stays
    4n+1), and leaves a count of no rule for validation to report (before: it became 5 and failed late, at the
    latent node, with a message about 5 frames the user never wrote)."""
    from openreel.runner import synthetic_inputs

    def frames(n):
        return synthetic_inputs({"class_type": "OpenReelEmptyLatent", "inputs": {"frames": n}})["frames"]

    assert (frames(204), frames(81), frames(200)) == (17, 5, 200)
    prompt = json.loads((Path(__file__).resolve().parents[1] / "workflows" / "api" / "stepvideo_t2v_544p.json")
                        .read_text())
    prompt["5"]["inputs"].update(synthetic_inputs(prompt["5"]) | {"frames": 200})
    problems = validate(prompt)
    assert any("frames = 200" in p and "use 187 or 204" in p for p in problems)


def test_load_videos_upload_value_sits_after_its_last_required_widget():
    """The editor adds a video upload button after the node's other required widgets and saves its value ("image")
    there: UI workflows carry it in that place and read back to the same API prompt."""
    from openreel.workflow_format import widget_names

    cls = NODE_CLASS_MAPPINGS["OpenReelLoadVideo"]
    names = widget_names(cls)
    required = list(cls.INPUT_TYPES()["required"])
    assert [extra for _, extra in names] == [None] * (len(names) - 1) + ["image"]
    assert names[-1][0] == required[-1]
    prompt = {"1": {"class_type": "OpenReelLoadVideo", "inputs": {"video": "clip.mp4", "start_frame": 3,
                                                                   "frame_count": 0, "stride": 1}}}
    ui = api_to_ui(prompt, NODE_CLASS_MAPPINGS)
    assert ui["nodes"][0]["widgets_values"] == ["clip.mp4", 3, 0, 1, "image"]
    assert ui_to_api(ui, NODE_CLASS_MAPPINGS) == prompt
