"""OPTIONAL: the real ComfyUI frontend turns every UI workflow into exactly its API twin. Skipped unless COMFYUI_PATH
and CHROMIUM are set (and websocket-client is installed).

What it does: starts ComfyUI as tests/integration/ does (127.0.0.1, free port, `--base-directory` in a temporary
folder holding a link to this pack and the synthetic model set, so every combo value of the workflows exists), then a
headless Chromium driven over the DevTools protocol. In the page served by ComfyUI (its own frontend, the pip package
comfyui-frontend-package) it runs, for each workflows/<name>.json, `await app.loadGraphData(ui)` and
`(await app.graphToPrompt()).output`, and compares class_type, inputs and _meta.title of every node with
workflows/api/<name>.json. It also checks that every node type is registered in the frontend, that no dialog opened
(e.g. "missing nodes") and that the page logged no console error or uncaught exception. With OPENREEL_SCREENSHOT=<png>
it saves a screenshot of the wan22_i2v_a14b graph there. Only loopback traffic; every wait is bounded; the server
and the browser are always stopped by their PIDs.

Environment:
    COMFYUI_PATH     a ComfyUI checkout (the folder holding main.py). Unset: this module is skipped.
    COMFYUI_PYTHON   the interpreter that runs ComfyUI (default as in tests/integration/server.py).
    CHROMIUM         a Chromium/Chrome executable (e.g. /usr/bin/chromium). Unset: this module is skipped.
    OPENREEL_SCREENSHOT  optional path of a PNG screenshot of one loaded graph.

    COMFYUI_PATH=<checkout> COMFYUI_PYTHON=<its python> CHROMIUM=/usr/bin/chromium \
        python -m pytest -q tests/test_frontend_roundtrip.py
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM")
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(
    not COMFYUI_PATH or not (Path(COMFYUI_PATH) / "main.py").is_file() or not CHROMIUM or not Path(CHROMIUM).is_file(),
    reason="set COMFYUI_PATH (a ComfyUI checkout) and CHROMIUM (a Chromium executable) to run this test")

ROOT = Path(__file__).resolve().parents[1]
UI_DIR = ROOT / "workflows"
API_DIR = UI_DIR / "api"
BROWSER_START_S = 30
PAGE_READY_S = 120
CALL_TIMEOUT_S = 60
SCREENSHOT_WORKFLOW = "wan22_i2v_a14b"


class Browser:
    """A headless Chromium and one page, over the DevTools protocol (websocket-client)."""

    def __init__(self, executable: str, workdir: Path):
        self.executable, self.workdir = executable, workdir
        self.proc: subprocess.Popen | None = None
        self.ws = None
        self.next_id = 0
        self.console_errors: list[str] = []
        self.startup_errors: list[str] = []

    def start(self) -> None:
        import websocket

        profile = self.workdir / "chromium-profile"
        profile.mkdir()
        cmd = [self.executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--no-default-browser-check", "--disable-sync",
               "--disable-extensions", f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
               "--remote-debugging-port=0", "--window-size=1920,1080", "about:blank"]
        with open(self.workdir / "chromium.log", "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + BROWSER_START_S
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Chromium did not start:\n" + (self.workdir / "chromium.log").read_text()[-4000:])
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=CALL_TIMEOUT_S,
                                              suppress_origin=True)
        self.call("Runtime.enable")
        self.call("Log.enable")
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=1920, height=1080, deviceScaleFactor=1, mobile=False)

    def stop(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)

    def _event(self, msg: dict) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console_errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            self.console_errors.append("uncaught: " + str(d.get("exception", {}).get("description", d.get("text"))))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            e = params["entry"]
            self.console_errors.append(f"log.{e.get('source')}: {e.get('text')} {e.get('url', '')}".strip())

    def call(self, method: str, **params):
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)
        raise TimeoutError(f"{method} did not answer within {CALL_TIMEOUT_S} s")

    def eval(self, expression: str):
        """Value of an async JS expression (JSON-serialisable)."""
        res = self.call("Runtime.evaluate", expression=f"(async () => {{ {expression} }})()", awaitPromise=True,
                        returnByValue=True, timeout=CALL_TIMEOUT_S * 1000)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise RuntimeError(str(d.get("exception", {}).get("description", d.get("text"))))
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.eval(f"return !!({expression});"):
                    return
            except RuntimeError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"page: `{expression}` not true within {timeout} s")


@pytest.fixture(scope="module")
def frontend(tmp_path_factory):
    pytest.importorskip("websocket", reason="pip install websocket-client to drive Chromium")
    from integration import server as tic
    from openreel import synthetic

    base = tmp_path_factory.mktemp("comfyui-frontend-base")
    (base / "custom_nodes").mkdir()
    tic.link_pack(base / "custom_nodes")
    synthetic.write_model_set(base / "models", base / "input")
    # no first-run template browser / tour over the canvas
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    server = tic.Server(base, tic.free_port(), base / "comfyui.log")
    browser = Browser(CHROMIUM, Path(tempfile.mkdtemp(prefix="openreel-chromium-")))
    try:
        server.start()
        browser.start()
        browser.call("Page.navigate", url=server.url + "/")
        browser.wait_for("window.app && window.app.graph && window.app.canvas && window.LiteGraph", PAGE_READY_S)
        # the node definitions are registered once /object_info is read; wait for one of ours
        browser.wait_for("window.LiteGraph.registered_node_types['OpenReelDiTLoader']", PAGE_READY_S)
        time.sleep(2)  # let the startup workflow and extensions settle
        browser.startup_errors = list(browser.console_errors)
        yield server, browser
    finally:
        browser.stop()
        server.stop()
        shutil.rmtree(browser.workdir, ignore_errors=True)


def _names() -> list[str]:
    return sorted(p.stem for p in UI_DIR.glob("*.json"))


def _load(browser: Browser, ui: dict) -> None:
    browser.eval(f"await window.app.loadGraphData({json.dumps(ui)}); return true;")


def _open_dialogs(browser: Browser) -> list[str]:
    return browser.eval("return [...document.querySelectorAll('.p-dialog, [role=dialog]')]"
                        ".filter(e => e.offsetParent !== null).map(e => e.innerText.slice(0, 300));")


def test_page_loads_without_pack_errors(frontend):
    """The page started and no console error or exception of its start names this pack or one of its nodes. (Errors of
    the frontend itself, e.g. 404s for an absent user.css, are not this pack's business and are not judged here.)"""
    server, browser = frontend
    ours = [e for e in browser.startup_errors if "openreel" in e.lower()]
    assert not ours, ours
    assert not _open_dialogs(browser), _open_dialogs(browser)


@pytest.mark.parametrize("name", _names())
def test_frontend_prompt_equals_api_twin(frontend, name):
    server, browser = frontend
    ui = json.loads((UI_DIR / f"{name}.json").read_text())
    api = json.loads((API_DIR / f"{name}.json").read_text())
    errors_before = len(browser.console_errors)
    _load(browser, ui)
    unknown = browser.eval("return (window.app.graph.nodes ?? window.app.graph._nodes)"
                           ".filter(n => !window.LiteGraph.registered_node_types[n.type]).map(n => n.type);")
    assert not unknown, f"node types unknown to the frontend: {unknown}"
    prompt = browser.eval("return (await window.app.graphToPrompt()).output;")
    dialogs = _open_dialogs(browser)
    assert not dialogs, f"dialogs after loading {name}: {dialogs}"
    assert sorted(prompt) == sorted(api), (sorted(prompt), sorted(api))
    for node_id, entry in api.items():
        got = prompt[node_id]
        assert got["class_type"] == entry["class_type"], (node_id, got["class_type"], entry["class_type"])
        assert got["inputs"] == entry["inputs"], (node_id, entry["class_type"], got["inputs"], entry["inputs"])
        if "title" in entry.get("_meta", {}):  # a twin names only custom titles; the frontend names every node
            assert got["_meta"]["title"] == entry["_meta"]["title"], (node_id, got["_meta"], entry["_meta"])
    new_errors = browser.console_errors[errors_before:]
    assert not new_errors, new_errors


def test_screenshot_of_a_loaded_graph(frontend):
    server, browser = frontend
    ui = json.loads((UI_DIR / f"{SCREENSHOT_WORKFLOW}.json").read_text())
    _load(browser, ui)
    # fit every node in the view
    browser.eval("""
        const nodes = (window.app.graph.nodes ?? window.app.graph._nodes); const c = window.app.canvas;
        let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
        for (const n of nodes) { x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
                                 x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]); }
        const w = c.canvas.width, h = c.canvas.height;
        const s = Math.min(w / (x1 - x0 + 80), h / (y1 - y0 + 80));
        c.ds.scale = s; c.ds.offset = [-x0 + 40 / s, -y0 + 40 / s];
        c.setDirty(true, true); c.draw(true, true); return true;""")
    time.sleep(1)
    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
    count = browser.eval("return (window.app.graph.nodes ?? window.app.graph._nodes).length;")
    assert count == len(ui["nodes"])
    target = os.environ.get("OPENREEL_SCREENSHOT")
    if target:
        Path(target).write_bytes(shot)
