"""A real ComfyUI server with this pack, for the integration suite (helpers; the fixture is in conftest.py).

`Server.start` runs `main.py` of the ComfyUI checkout at COMFYUI_PATH on 127.0.0.1 with a free port and
`--base-directory` pointing at a temporary folder, whose `custom_nodes/ComfyUI-OpenReel` is a link to this
checkout and whose `models/` holds the synthetic model set (tiny random checkpoints in the real file layouts) plus a
few extra layouts in `models/diffusion_models/openreel-synthetic/`. So the checkout's own custom_nodes/, models/,
user/ and output/ are neither read nor written (the database is in memory). Only loopback traffic; every wait is
bounded; `Server.stop` ends the process it started by its PID (terminate, wait, kill, wait).
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

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows" / "api"
PACK_LINK = "ComfyUI-OpenReel"
HOST = "127.0.0.1"
START_TIMEOUT_S = 240     # import of ComfyUI and every core node on a slow CPU machine
PROMPT_TIMEOUT_S = 180
STOP_TIMEOUT_S = 20
SYNTHETIC = "openreel-synthetic"


def comfyui_available() -> bool:
    """Whether COMFYUI_PATH names a ComfyUI checkout (a folder holding main.py)."""
    return bool(COMFYUI_PATH) and (Path(COMFYUI_PATH) / "main.py").is_file()


def comfy_python() -> str:
    """COMFYUI_PYTHON, else COMFYUI_PATH's .venv or venv interpreter, else the one running pytest."""
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    for venv in (".venv", "venv"):
        for exe in ("bin/python", "Scripts/python.exe"):
            candidate = Path(COMFYUI_PATH) / venv / exe
            if candidate.is_file():
                return str(candidate)
    return sys.executable


def free_port() -> int:
    """A TCP port nothing listens on now (on the loopback interface)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def link_pack(custom_nodes: Path) -> None:
    """Install this checkout as `custom_nodes/ComfyUI-OpenReel` (a link; a copy where links are not allowed)."""
    target = custom_nodes / PACK_LINK
    try:
        target.symlink_to(ROOT, target_is_directory=True)
    except OSError:  # no symlinks allowed (e.g. Windows without the privilege): a copy of the sources
        shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns(
            ".git", ".venv*", "__pycache__", "*.safetensors", "*.pth", "output", "openreel-synthetic-models"))


def write_models(models: Path) -> dict[str, str]:
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
    """One ComfyUI process on 127.0.0.1:`port` with `base` as its base directory; `names`: write_models' labels;
    `extra_args` for main.py, `env` added to its environment."""

    def __init__(self, base: Path, port: int, log_path: Path, names: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.base, self.port, self.log_path = base, port, log_path
        self.names = names or {}
        self.extra_args, self.env = extra_args, env or {}
        self.url = f"http://{HOST}:{port}"
        self.proc: subprocess.Popen | None = None

    @property
    def output(self) -> Path:
        return self.base / "output"

    def start(self) -> None:
        """Start main.py and wait until /system_stats answers (or the process exits: then raise with its log)."""
        cmd = [comfy_python(), "main.py", "--cpu", "--listen", HOST, "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(self.base),
               "--database-url", "sqlite:///:memory:", "--disable-api-nodes", *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
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

    def stop(self) -> int | None:
        """End the process this object started, by its PID: SIGTERM, wait, then SIGKILL and wait. Returns the exit
        code (None if it was never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 6000) -> str:
        return self.log()[-chars:]

    def get(self, route: str, timeout: float = 10):
        """GET a JSON route."""
        with urllib.request.urlopen(self.url + route, timeout=timeout) as r:
            return json.load(r)

    def post(self, route: str, body: dict, timeout: float = 10) -> tuple[int, dict | None]:
        """POST a JSON body; returns (status, JSON reply or None when the reply is empty), 4xx replies included."""
        req = urllib.request.Request(self.url + route, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                data = r.read()
                return r.status, json.loads(data) if data.strip() else None
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def post_prompt(self, prompt: dict, client_id: str | None = None) -> tuple[int, dict]:
        """Queue an API-format prompt; returns (status, reply): 200 with prompt_id, or 400 with node_errors."""
        return self.post("/prompt", {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex})

    def wait_history(self, prompt_id: str, timeout: float = PROMPT_TIMEOUT_S) -> dict:
        """The /history entry of a prompt once it has finished (success or error)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            time.sleep(0.25)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s:\n{self.log_tail()}")

    def run_ok(self, prompt: dict) -> dict:
        """Queue a prompt that must pass validation and run to success; returns its /history entry."""
        status, reply = self.post_prompt(prompt)
        assert status == 200 and not reply.get("node_errors"), reply
        entry = self.wait_history(reply["prompt_id"])
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-4000:]
        return entry

    def run_error(self, prompt: dict) -> dict:
        """Queue a prompt that passes validation and fails while running; returns its execution_error message."""
        status, reply = self.post_prompt(prompt)
        assert status == 200 and not reply.get("node_errors"), reply
        entry = self.wait_history(reply["prompt_id"])
        assert entry["status"]["status_str"] == "error", json.dumps(entry["status"], indent=1)[-4000:]
        (error,) = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
        return error

    def saved_files(self, entry: dict, node: str | None = None) -> list[Path]:
        """The files a finished prompt's output nodes (or one of them) list as "images" (videos) or "latents"."""
        outputs = entry["outputs"].values() if node is None else [entry["outputs"][node]]
        return [self.output / item["subfolder"] / item["filename"]
                for out in outputs for key in ("images", "latents") for item in out.get(key, [])]

    def upload(self, path: Path, subfolder: str) -> dict:
        """POST /upload/image as ComfyUI's frontend does for an upload button (videos too)."""
        boundary = uuid.uuid4().hex
        fields = [('name="subfolder"', b"", subfolder.encode()),
                  (f'name="image"; filename="{path.name}"', b"Content-Type: video/mp4\r\n", path.read_bytes())]
        body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n".encode() + extra
                        + b"\r\n" + data + b"\r\n" for disposition, extra, data in fields) \
            + f"--{boundary}--\r\n".encode()
        req = urllib.request.Request(self.url + "/upload/image", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)


class Socket:
    """The server's websocket for one client id (`ws://…/ws?clientId=`): JSON messages in arrival order."""

    def __init__(self, server: Server, timeout: float = PROMPT_TIMEOUT_S):
        import websocket  # websocket-client (requirements-dev.txt)

        self.server, self.client_id = server, uuid.uuid4().hex
        self.ws = websocket.create_connection(f"ws://{HOST}:{server.port}/ws?clientId={self.client_id}",
                                              timeout=timeout)
        self.messages: list[dict] = []
        self.times: list[float] = []  # time.monotonic() at each message's arrival

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc) -> None:
        self.ws.close()

    def queue(self, prompt: dict) -> str:
        """Queue a prompt for this client (its messages come here); returns the prompt id."""
        status, reply = self.server.post_prompt(prompt, self.client_id)
        assert status == 200 and not reply.get("node_errors"), reply
        return reply["prompt_id"]

    def next(self, deadline: float) -> dict:
        """The next JSON message (binary preview frames are skipped), waiting until `deadline` (monotonic)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no websocket message in time; last ones: {self.messages[-5:]}\n"
                                     f"{self.server.log_tail()}")
            self.ws.settimeout(left)
            data = self.ws.recv()
            if isinstance(data, str):
                message = json.loads(data)
                self.messages.append(message)
                self.times.append(time.monotonic())
                return message

    def until(self, prompt_id: str, stop, timeout: float = PROMPT_TIMEOUT_S) -> dict:
        """Read messages of `prompt_id` until `stop(message)` holds; returns that message."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(deadline)
            if message.get("data", {}).get("prompt_id") == prompt_id and stop(message):
                return message

    def until_done(self, prompt_id: str, timeout: float = PROMPT_TIMEOUT_S) -> dict:
        """Read until the prompt ends: `executing` with node null, or an error / interrupt message."""
        return self.until(prompt_id, lambda m: (m["type"] == "executing" and m["data"]["node"] is None)
                          or m["type"] in ("execution_error", "execution_interrupted"), timeout)

    def of(self, prompt_id: str, kind: str, node: str | None = None) -> list[dict]:
        """The `data` of the messages so far of one type for a prompt (and one node, if given)."""
        return [m["data"] for m in self.messages if m["type"] == kind and m["data"].get("prompt_id") == prompt_id
                and (node is None or m["data"].get("node", m["data"].get("node_id")) == node)]


def api_workflow(name: str, **changes) -> dict:
    """An example API workflow on the synthetic set (the runner's small sizes), with `changes`:
    {class_type: {input: value}} applied to every node of that class."""
    from openreel.runner import synthetic_inputs

    prompt = json.loads((WORKFLOWS / f"{name}.json").read_text())
    for entry in prompt.values():
        entry["inputs"].update(synthetic_inputs(entry))
        entry["inputs"].update(changes.get(entry["class_type"], {}))
    return prompt


def node_of(prompt: dict, class_type: str) -> str:
    """The id of the one node of `class_type` in `prompt`."""
    (node,) = [k for k, v in prompt.items() if v["class_type"] == class_type]
    return node
