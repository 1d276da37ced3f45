"""OPTIONAL: the pack inside a real ComfyUI server . Skipped unless COMFYUI_PATH is set.

What it does: starts `main.py` of the ComfyUI checkout at COMFYUI_PATH on 127.0.0.1 with a free port and
`--base-directory` pointing at a temporary folder, whose `custom_nodes/ComfyUI-OpenReel` is a link to this
checkout and whose `models/diffusion_models/openreel-synthetic/` holds tiny random checkpoints written here.
So the checkout's own custom_nodes/, models/, user/ and output/ are neither read nor written (the database is
in memory). It then checks that the pack imported (no "IMPORT FAILED" for it in the log), that
/object_info describes every node of NODE_CLASS_MAPPINGS as the classes declare them, runs
`OpenReelDiTLoader` on every synthetic layout through /prompt (the loader is no output node, so ComfyUI's
core `PreviewAny` node, which takes any type, is the graph's output), and that bad input gives a clean
validation error (a name not in the list) or an execution error starting with "OpenReel DiT Loader:" (a file
that is not a DiT). Only loopback traffic; every wait is bounded; the server is always stopped by its PID.

Environment:
    COMFYUI_PATH     a ComfyUI checkout (the folder holding main.py). Unset: this module is skipped.
    COMFYUI_PYTHON   the interpreter that runs ComfyUI. Default: COMFYUI_PATH/.venv or COMFYUI_PATH/venv if
                     one exists, else the interpreter running pytest.

Setting ComfyUI up is not part of this repository (nothing of ComfyUI is committed here): ARCHITECTURE.md
("Testing inside a real ComfyUI") lists what a CPU-only machine needs. Then:
    COMFYUI_PATH=<checkout> COMFYUI_PYTHON=<its interpreter> python -m pytest -q tests/test_in_comfyui.py
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(
    not COMFYUI_PATH or not (Path(COMFYUI_PATH) / "main.py").is_file(),
    reason="set COMFYUI_PATH to a ComfyUI checkout (and COMFYUI_PYTHON to its interpreter) to run this test")

ROOT = Path(__file__).resolve().parents[1]
PACK_LINK = "ComfyUI-OpenReel"
HOST = "127.0.0.1"
START_TIMEOUT_S = 240     # import of ComfyUI and every core node on a slow CPU machine
PROMPT_TIMEOUT_S = 120
STOP_TIMEOUT_S = 20
SYNTHETIC = "openreel-synthetic"


def _comfy_python() -> str:
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    for venv in (".venv", "venv"):
        for exe in ("bin/python", "Scripts/python.exe"):
            candidate = Path(COMFYUI_PATH) / venv / exe
            if candidate.is_file():
                return str(candidate)
    return sys.executable


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _link_pack(custom_nodes: Path) -> None:
    target = custom_nodes / PACK_LINK
    try:
        target.symlink_to(ROOT, target_is_directory=True)
    except OSError:  # no symlinks allowed (e.g. Windows without the privilege): a copy of the sources
        shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns(
            ".git", ".venv*", "__pycache__", "*.safetensors", "*.pth", "output", "openreel-synthetic-models"))


def _write_models(models: Path) -> dict[str, str]:
    """Tiny random checkpoints, one per layout, and a file that is no DiT. Returns label → name in the list."""
    import torch
    from safetensors.torch import save_file

    from openreel import synthetic

    diffusion = models / "diffusion_models"
    folder = diffusion / SYNTHETIC
    state = synthetic.wan_state_dict()
    paths = {
        "official_bf16": synthetic.save_single(state, folder / "wan_t2v_official_bf16.safetensors"),
        "comfy_bf16": synthetic.save_single(state, folder / "wan_t2v_comfy_bf16.safetensors",
                                            prefix=synthetic.COMFY_PREFIX),
        "comfy_fp8_scaled": synthetic.save_fp8(state, folder / "wan_t2v_comfy_fp8_scaled.safetensors", scaled=True),
        "sharded": synthetic.save_sharded(state, folder / "wan_t2v_sharded", synthetic.TINY_WAN, shards=2),
    }
    not_a_dit = folder / "not_a_dit_vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(4, 4)}, str(not_a_dit))
    paths["not_a_dit"] = not_a_dit
    return {label: path.relative_to(diffusion).as_posix() for label, path in paths.items()}


class Server:
    def __init__(self, base: Path, port: int, log_path: Path):
        self.base, self.port, self.log_path = base, port, log_path
        self.url = f"http://{HOST}:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [_comfy_python(), "main.py", "--cpu", "--listen", HOST, "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(self.base),
               "--database-url", "sqlite:///:memory:", "--disable-api-nodes"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=COMFYUI_PATH, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 6000) -> str:
        return self.log()[-chars:]

    def get(self, route: str, timeout: float = 10):
        with urllib.request.urlopen(self.url + route, timeout=timeout) as r:
            return json.load(r)

    def post_prompt(self, prompt: dict) -> tuple[int, dict]:
        body = json.dumps({"prompt": prompt, "client_id": uuid.uuid4().hex}).encode()
        req = urllib.request.Request(self.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def wait_history(self, prompt_id: str) -> dict:
        deadline = time.monotonic() + PROMPT_TIMEOUT_S
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            time.sleep(0.25)
        raise AssertionError(f"prompt {prompt_id} did not finish within {PROMPT_TIMEOUT_S} s:\n{self.log_tail()}")


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfyui-base")
    (base / "custom_nodes").mkdir()
    _link_pack(base / "custom_nodes")
    names = _write_models(base / "models")
    from openreel import synthetic

    synthetic.write_model_set(base / "models", base / "input")  # what the example workflows load
    server = Server(base, _free_port(), base / "comfyui.log")
    try:
        server.start()
        yield server, names
    finally:
        server.stop()


def _loader_prompt(names: list[str]) -> dict:
    prompt = {}
    for i, name in enumerate(names):
        prompt[f"{2 * i + 1}"] = {"class_type": "OpenReelDiTLoader",
                                  "inputs": {"model_name": name, "weight_dtype": "auto", "compute_dtype": "auto"}}
        prompt[f"{2 * i + 2}"] = {"class_type": "PreviewAny", "inputs": {"source": [f"{2 * i + 1}", 0]}}
    return prompt


def _needs_preview_any(server: Server) -> None:
    try:
        server.get("/object_info/PreviewAny")["PreviewAny"]
    except (KeyError, urllib.error.HTTPError):
        pytest.skip("this ComfyUI has no PreviewAny node (added 2025-05) to end a graph on the loader")


def test_pack_imported(comfy):
    server, _ = comfy
    lines = [line for line in server.log().splitlines() if "IMPORT FAILED" in line and PACK_LINK in line]
    assert not lines, f"ComfyUI failed to import the pack:\n{server.log_tail()}"
    assert any(PACK_LINK in line and "seconds" in line for line in server.log().splitlines()), server.log_tail()


def test_object_info_has_every_node(comfy):
    from openreel import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    server, _ = comfy
    info = server.get("/object_info")
    assert NODE_CLASS_MAPPINGS
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        assert node_id in info, f"{node_id} missing from /object_info:\n{server.log_tail()}"
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
    server, names = comfy
    listed = server.get("/object_info/OpenReelDiTLoader")["OpenReelDiTLoader"]["input"]["required"]["model_name"][0]
    for label in ("official_bf16", "comfy_bf16", "comfy_fp8_scaled", "sharded", "not_a_dit"):
        assert names[label] in listed, (label, listed)
    assert not any("00002-of-00002" in name for name in listed), "a secondary shard is listed"


def test_loader_runs_every_layout(comfy):
    server, names = comfy
    _needs_preview_any(server)
    layouts = [names[k] for k in ("official_bf16", "comfy_bf16", "comfy_fp8_scaled", "sharded")]
    code, body = server.post_prompt(_loader_prompt(layouts))
    assert code == 200 and not body.get("node_errors"), body
    entry = server.wait_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-4000:]
    assert len(entry["outputs"]) == len(layouts)
    for node, output in entry["outputs"].items():
        (text,) = output["text"]
        assert text.startswith("DiTHandle(") and "family='wan'" in text and "task='t2v'" in text, (node, text)


def test_unknown_file_name_fails_validation(comfy):
    server, _ = comfy
    _needs_preview_any(server)
    code, body = server.post_prompt(_loader_prompt([f"{SYNTHETIC}/no_such_file.safetensors"]))
    assert code == 400, body
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    (error,) = body["node_errors"]["1"]["errors"]
    assert body["node_errors"]["1"]["class_type"] == "OpenReelDiTLoader"
    assert error["type"] == "value_not_in_list" and error["extra_info"]["input_name"] == "model_name"


def test_wrong_kind_of_file_fails_with_node_name(comfy):
    server, names = comfy
    _needs_preview_any(server)
    code, body = server.post_prompt(_loader_prompt([names["not_a_dit"]]))
    assert code == 200, body
    entry = server.wait_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    (error,) = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert error["node_type"] == "OpenReelDiTLoader"
    assert error["exception_message"].startswith("OpenReel DiT Loader: "), error["exception_message"]
    assert "not a diffusion transformer" in error["exception_message"]


WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows" / "api"


@pytest.mark.parametrize("name", sorted(p.stem for p in WORKFLOWS.glob("*.json")))
def test_example_workflow_runs_in_comfyui(comfy, name):
    """Each API workflow, queued through /prompt on the synthetic set (small sizes), saves a playable mp4 that carries
    the prompt; ComfyUI's own LoadImage reads the start images from the input folder."""
    from openreel.runner import synthetic_inputs
    from openreel.video_io import read_metadata, read_video

    server, _ = comfy
    prompt = json.loads((WORKFLOWS / f"{name}.json").read_text())
    for entry in prompt.values():
        entry["inputs"].update(synthetic_inputs(entry))
    status, reply = server.post_prompt(prompt)
    assert status == 200, reply
    entry = server.wait_history(reply["prompt_id"])
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)
    (saved,) = [item for out in entry["outputs"].values() for item in out.get("images", [])]
    path = server.base / "output" / saved["subfolder"] / saved["filename"]
    frames, _ = read_video(path)
    nodes, key = (("OpenReelDiffusionForcingSampler",), "num_frames") if "_df_" in name else \
        (("OpenReelEmptyLatent", "OpenReelImageToVideo"), "frames")
    count = next(e["inputs"][key] for e in prompt.values() if e["class_type"] in nodes)
    assert frames.shape == (count, 64, 64, 3)
    embedded = json.loads(read_metadata(path)["prompt"])  # ComfyUI adds its own keys (e.g. is_changed)
    assert {k: (v["class_type"], v["inputs"]) for k, v in embedded.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in prompt.items()}


def test_conditioning_bridge_in_comfyui(comfy):
    """OpenReel To Conditioning's CONDITIONING travels through real ComfyUI links (and ComfyUI's own
    ConditioningZeroOut) into OpenReel From Conditioning, and the sampler gives the latent it gives from the
    embeddings directly; an absent negative equals ConditioningZeroOut's. (CLIPLoader type wan cannot load the
    synthetic umT5: ComfyUI takes a T5 without `encoder.block.23` for a T5-base and refuses its shapes.)"""
    import torch
    from safetensors.torch import load_file

    from openreel.encoding.conditioning import ENCODERS
    from openreel.synthetic import TEXT_ENCODER

    server, _ = comfy

    def sampler(embeds: str, prefix: str) -> dict:
        return {f"s_{prefix}": {"class_type": "OpenReelSampler", "inputs": {
                    "seed": 1, "steps": 2, "cfg": 0.0, "shift": 0.0, "solver": "unipc", "cfg_low_noise": 0.0,
                    "boundary": 0.0, "denoise": 1.0, "add_noise": "enable", "return_with_leftover_noise": "enable",
                    "dit": ["dit", 0], "embeds": [embeds, 0], "latent": ["latent", 0]}},
                f"save_{prefix}": {"class_type": "SaveLatent", "inputs": {
                    "samples": [f"s_{prefix}", 0], "filename_prefix": f"bridge/{prefix}"}}}

    def from_conditioning(negative: list | None) -> dict:
        inputs = {"positive": ["to_cond", 0], "encoder": ENCODERS["umt5"]}
        return {"class_type": "OpenReelConditioningToEmbeds",
                "inputs": inputs if negative is None else {**inputs, "negative": negative}}

    prompt = {
        "dit": {"class_type": "OpenReelDiTLoader", "inputs": {"model_name": "wan2.1_t2v_1.3B_fp16.safetensors",
                                                               "weight_dtype": "auto", "compute_dtype": "auto",
                                                               "recipe": "auto"}},
        "te": {"class_type": "OpenReelTextEncoderLoader", "inputs": {"model_name": TEXT_ENCODER, "dtype": "auto"}},
        "vae": {"class_type": "OpenReelVAELoader", "inputs": {"model_name": "wan_2.1_vae.safetensors",
                                                              "dtype": "auto"}},
        "text": {"class_type": "OpenReelTextEncode", "inputs": {"prompt": "a red fox walks on the snow",
                                                                "negative_prompt": "static", "text_encoder": ["te", 0]}},
        "latent": {"class_type": "OpenReelEmptyLatent", "inputs": {"width": 64, "height": 64, "frames": 5,
                                                                   "batch": 1, "vae": ["vae", 0]}},
        "to_cond": {"class_type": "OpenReelEmbedsToConditioning", "inputs": {"embeds": ["text", 0]}},
        "zero": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["to_cond", 1]}},
        "bridged": from_conditioning(["to_cond", 1]),
        "zeroed": from_conditioning(["zero", 0]),
        "absent": from_conditioning(None),
        **sampler("text", "direct"), **sampler("bridged", "bridged"), **sampler("zeroed", "zeroed"),
        **sampler("absent", "absent"),
    }
    status, reply = server.post_prompt(prompt)
    assert status == 200 and not reply.get("node_errors"), reply
    entry = server.wait_history(reply["prompt_id"])
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-4000:]
    latents = {}
    for node, output in entry["outputs"].items():
        (saved,) = output["latents"]
        latents[node.removeprefix("save_")] = load_file(
            str(server.base / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]
    assert latents["direct"].abs().sum() > 0
    assert torch.equal(latents["bridged"], latents["direct"])
    assert torch.equal(latents["absent"], latents["zeroed"])
    assert not torch.equal(latents["zeroed"], latents["direct"])  # the negative prompt really reaches the sampler


# ComfyUI logs "Requested to load <class>" when it loads a model its manager does not hold (load_models_gpu), so
# the count of these lines shows when ComfyUI had unloaded ours (on a CPU server the only observable sign).
OUR_DIT_REQUESTED = "Requested to load OpenReelWanDiT"
FREE_SETTLE_S = 2.0  # POST /free only sets a flag the prompt worker acts on when it wakes; nothing reports "done"


def _run_ok(server: Server, prompt: dict) -> dict:
    status, reply = server.post_prompt(prompt)
    assert status == 200 and not reply.get("node_errors"), reply
    entry = server.wait_history(reply["prompt_id"])
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-4000:]
    return entry


def _wan_t2v(seed: int) -> dict:
    """The Wan2.1 T2V example on the synthetic set, with its sampler's seed set (a new seed runs it again)."""
    from openreel.runner import synthetic_inputs

    prompt = json.loads((WORKFLOWS / "wan21_t2v.json").read_text())
    for entry in prompt.values():
        entry["inputs"].update(synthetic_inputs(entry))
        if entry["class_type"] == "OpenReelSampler":
            entry["inputs"]["seed"] = seed
    return prompt


def _post_json(server: Server, route: str, body: dict) -> int:
    req = urllib.request.Request(server.url + route, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


def test_free_unloads_our_models_and_the_next_run_loads_them_again(comfy):
    """Issue 13 item 10: our DiT is registered with ComfyUI's model manager and stays loaded between runs; POST
    /free {"unload_models": true} (the "unload models" button) unloads it through the manager, and the next run
    loads it again and succeeds."""
    server, _ = comfy
    _run_ok(server, _wan_t2v(seed=101))
    requested = server.log().count(OUR_DIT_REQUESTED)
    assert requested >= 1, server.log_tail()
    _run_ok(server, _wan_t2v(seed=102))
    assert server.log().count(OUR_DIT_REQUESTED) == requested  # still held by the manager: not requested again
    assert _post_json(server, "/free", {"unload_models": True}) == 200
    time.sleep(FREE_SETTLE_S)
    _run_ok(server, _wan_t2v(seed=103))
    assert server.log().count(OUR_DIT_REQUESTED) == requested + 1, server.log_tail()


def test_our_workflow_runs_after_a_native_model_load(comfy):
    """Issue 13 item 10: a native model (ComfyUI's own WAN21 from a tiny Wan file in its layout) loads through the
    same manager (ModelSave loads it with load_models_gpu), and our workflow runs after it. (On a CPU server a load
    frees no memory, so that a native load unloads ours is shown only by the unit tests' fake manager.)"""
    import dataclasses

    from openreel import synthetic
    from openreel.video_io import read_video

    server, _ = comfy
    native = f"{SYNTHETIC}/native_wan_t2v.safetensors"  # ComfyUI's Wan takes 4096-wide text states
    synthetic.save_single(synthetic.wan_state_dict(dataclasses.replace(synthetic.TINY_WAN, text_dim=4096)),
                          server.base / "models" / "diffusion_models" / native, prefix=synthetic.COMFY_PREFIX)
    _run_ok(server, {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": native, "weight_dtype": "default"}},
                     "2": {"class_type": "ModelSave", "inputs": {"model": ["1", 0],
                                                                 "filename_prefix": "native/tiny_wan"}}})
    assert "Requested to load WAN21" in server.log(), server.log_tail()
    entry = _run_ok(server, _wan_t2v(seed=104))
    (saved,) = [item for out in entry["outputs"].values() for item in out.get("images", [])]
    frames, _ = read_video(server.base / "output" / saved["subfolder"] / saved["filename"])
    assert frames.shape[1:] == (64, 64, 3)


def _upload(server: Server, path: Path, subfolder: str) -> dict:
    """POST /upload/image as ComfyUI's frontend does for an upload button (videos too)."""
    boundary = uuid.uuid4().hex
    fields = [('name="subfolder"', b"", subfolder.encode()),
              (f'name="image"; filename="{path.name}"', b"Content-Type: video/mp4\r\n", path.read_bytes())]
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n".encode() + extra + b"\r\n"
                    + data + b"\r\n" for disposition, extra, data in fields) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(server.url + "/upload/image", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def test_load_video_upload_button_and_uploaded_file(comfy, tmp_path):
    """Issue 13 item 8: /object_info declares Load Video's list as a video upload (the frontend's button); a video
    uploaded through ComfyUI's upload route is listed and loads."""
    import torch

    from openreel.video_io import iter_chunks, read_video, save_mp4

    server, _ = comfy
    clip, _ = save_mp4(iter_chunks(torch.rand(6, 32, 48, 3)), tmp_path, "upload", 8.0)
    reply = _upload(server, clip, "openreel-upload")
    name = f"{reply['subfolder']}/{reply['name']}"
    spec = server.get("/object_info/OpenReelLoadVideo")["OpenReelLoadVideo"]["input"]["required"]["video"]
    assert spec[1].get("video_upload") is True and name in spec[0], spec
    entry = _run_ok(server, {
        "1": {"class_type": "OpenReelLoadVideo", "inputs": {"video": name, "start_frame": 0, "frame_count": 0,
                                                            "stride": 1}},
        "2": {"class_type": "OpenReelSaveVideo", "inputs": {"images": ["1", 0], "fps": ["1", 1], "crf": 19,
                                                            "pix_fmt": "yuv420p", "filename_prefix": "upload/out"}}})
    (saved,) = entry["outputs"]["2"]["images"]
    frames, fps = read_video(server.base / "output" / saved["subfolder"] / saved["filename"])
    assert frames.shape == (6, 32, 48, 3) and fps == pytest.approx(8.0)
