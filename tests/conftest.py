"""Register this checkout as the importable package `openreel`, whatever its folder is called."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

if "openreel" not in sys.modules:
    spec = importlib.util.spec_from_file_location("openreel", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["openreel"] = module
    spec.loader.exec_module(module)

sys.path.insert(0, str(Path(__file__).parent))  # test helpers: references.py, synthetic.py


@pytest.fixture(autouse=True)
def _cpu_and_seed():
    from openreel import runtime

    runtime.set_device("cpu")
    torch.manual_seed(0)
    yield
