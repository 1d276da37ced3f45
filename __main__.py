"""Standalone entry: `python <this folder> <command> ...` (e.g. `python custom_nodes/ComfyUI-OpenReel inspect F`).

A clone's folder name (e.g. `ComfyUI-OpenReel`) is no importable name, so the pack is registered as the
package `openreel` from wherever it lies, then the command line runs. The package's `__init__` (which imports every
node, and so torch) is not run: each command imports what it needs, and `--help` answers at once.
"""
import sys
import types
from pathlib import Path

if __name__ == "__main__":
    if "openreel" not in sys.modules:
        root = Path(__file__).resolve().parent
        sys.path = [p for p in sys.path if Path(p or ".").resolve() != root]  # keep `models/` etc. off the path
        package = types.ModuleType("openreel", __doc__)
        package.__path__ = [str(root)]
        sys.modules["openreel"] = package
    from openreel.cli import main

    sys.exit(main())
