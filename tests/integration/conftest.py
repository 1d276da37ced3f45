"""The integration suite's server: ONE real ComfyUI for the whole session, with this pack and the synthetic set.

Environment:
    COMFYUI_PATH     a ComfyUI checkout (the folder holding main.py). Unset: every test here is skipped, saying so.
    COMFYUI_PYTHON   the interpreter that runs ComfyUI. Default: COMFYUI_PATH/.venv or COMFYUI_PATH/venv if
                     one exists, else the interpreter running pytest.

Setting ComfyUI up is not part of this repository (nothing of ComfyUI is committed here): ARCHITECTURE.md
("Testing inside a real ComfyUI") lists what a CPU-only machine needs. Then:
    COMFYUI_PATH=<checkout> COMFYUI_PYTHON=<its interpreter> python -m pytest -q tests/integration
The package `openreel` is registered by tests/conftest.py (whatever the checkout's folder is called).
"""
from __future__ import annotations

import atexit
from pathlib import Path

import pytest

from .server import Server, comfyui_available, free_port, link_pack, write_models

HERE = Path(__file__).resolve().parent
SKIP_REASON = "set COMFYUI_PATH to a ComfyUI checkout (and COMFYUI_PYTHON to its interpreter) to run the integration suite"


def pytest_collection_modifyitems(config, items):
    """Without a ComfyUI checkout, skip every test of this folder with the reason (other folders untouched)."""
    if comfyui_available():
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> Server:
    """The running server (base folder, port, log, `names` of the extra DiT layouts); stopped by its PID at the
    end of the session (also at interpreter exit, should the session end abnormally)."""
    from openreel import synthetic

    base = tmp_path_factory.mktemp("comfyui-base")
    (base / "custom_nodes").mkdir()
    link_pack(base / "custom_nodes")
    names = write_models(base / "models")
    synthetic.write_model_set(base / "models", base / "input")  # what the example workflows load
    server = Server(base, free_port(), base / "comfyui.log", names)
    atexit.register(server.stop)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        atexit.unregister(server.stop)
        assert server.proc is None or server.proc.poll() is not None, f"ComfyUI (pid {server.proc.pid}) still runs"
