"""Standalone entry: `python <this folder> <command> ...` (e.g. `python custom_nodes/ComfyUI-OpenReel inspect F`).

A clone's folder name (e.g. `ComfyUI-OpenReel`) is no importable name, so the pack is registered as the
package `openreel` from wherever it lies, then the command line runs.
"""
import importlib.util
import sys
from pathlib import Path

if __name__ == "__main__":
    if "openreel" not in sys.modules:
        root = Path(__file__).resolve().parent
        sys.path = [p for p in sys.path if Path(p or ".").resolve() != root]  # keep `models/` etc. off the path
        spec = importlib.util.spec_from_file_location("openreel", root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
        package = importlib.util.module_from_spec(spec)
        sys.modules["openreel"] = package
        spec.loader.exec_module(package)
    from openreel.cli import main

    sys.exit(main())
