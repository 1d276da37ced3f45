"""Command line for standalone use: run workflows headless, inspect checkpoints, build the synthetic model set."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import OpenReelError


def _inspect(args) -> int:
    from .model_loaders.inspect import inspect_path

    print("\n".join(inspect_path(args.path)))
    return 0


def _synth(args) -> int:
    import torch

    from . import synthetic
    from .model_loaders.core import module_of
    from .nodes.loaders import OpenReelDiTLoader

    models = Path(args.models)
    from . import runtime

    runtime.set_models_dir(models)
    folder = models / "diffusion_models" / "openreel-synthetic"
    print(f"Writing the SYNTHETIC demo model set (random weights, real file layouts) to {folder}")
    state = synthetic.wan_state_dict()
    written = [
        synthetic.save_single(state, folder / "wan_t2v_official_bf16.safetensors"),
        synthetic.save_single(state, folder / "wan_t2v_comfy_bf16.safetensors", prefix=synthetic.COMFY_PREFIX),
        synthetic.save_fp8(state, folder / "wan_t2v_comfy_fp8_scaled.safetensors", scaled=True),
        synthetic.save_sharded(state, folder / "wan_t2v_sharded", synthetic.TINY_WAN, shards=2),
    ]
    x = torch.randn(1, 16, 3, 8, 8)
    context = torch.randn(1, 12, synthetic.TINY_WAN.text_dim)
    for path in written:
        name = path.relative_to(models / "diffusion_models").as_posix()
        (handle,) = OpenReelDiTLoader().load(name, "auto", "auto")
        with torch.no_grad():
            out = module_of(handle)(x, torch.tensor([500.0]), context)
        print(f"  loaded {name}: {handle.spec.description}; weights {handle.weight_dtype}, compute "
              f"{handle.compute_dtype}; forward → {tuple(out.shape)}")
    print("All synthetic checkpoints loaded. They are random weights: outputs are noise, not videos.")
    return 0


def _run(args) -> int:
    from .runner import main as run_workflow

    synthetic = None
    if args.synthetic:
        import tempfile

        if args.models:  # the synthetic set is written under the real file names: never into the user's folder
            print("error: --synthetic runs on its own tiny models in a temporary folder and takes no --models. "
                  "Leave out --synthetic to run on the models in that folder", file=sys.stderr)
            return 2
        synthetic = str(Path(tempfile.gettempdir()) / "openreel-synthetic")
    return run_workflow(args.workflow, args.models, args.out, args.set or [], synthetic_dir=synthetic)


EPILOG = """\
folders (standalone; inside ComfyUI its own folders are used):
  models   --models, else $OPENREEL_MODELS, else ComfyUI/models when the pack sits in ComfyUI/custom_nodes,
           else ~/openreel-models (with diffusion_models/, vae/, text_encoders/, clip_vision/ inside)
  inputs   $OPENREEL_INPUT, else ./input (images and videos the workflow loads)
  outputs  --out, else $OPENREEL_OUTPUT, else ./output (files are numbered, never overwritten)

exit codes:
  0 done · 1 a node failed while running · 2 invalid workflow, input or model (nothing ran) · 130 interrupted

examples:
  python . run workflows/api/wan21_t2v.json --models ~/ComfyUI/models --set 6.seed=7
  python . run workflows/wan21_t2v.json --synthetic          (checks a graph on tiny random models)
  python . inspect ~/ComfyUI/models/diffusion_models
"""


def version() -> str:
    """The pack's version, from pyproject.toml (read as text: no import cost)."""
    import re

    text = (Path(__file__).resolve().parent / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return found.group(1) if found else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openreel", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"OpenReel {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="say what model a checkpoint (file, shard, index or folder) holds")
    p.add_argument("path")
    p.set_defaults(run=_inspect)
    p = sub.add_parser("run", help="run a workflow (API or UI format JSON) with this pack's nodes")
    p.add_argument("workflow")
    p.add_argument("--models", help="models folder (diffusion_models/, vae/, text_encoders/, clip_vision/ inside)")
    p.add_argument("--out", help="output folder for saved videos")
    p.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE",
                   help="override an input; NODE is a node id, title or class type; VALUE is JSON or text")
    p.add_argument("--synthetic", action="store_true",
                   help="run on the built-in synthetic model set (tiny random weights in the real file layouts, "
                        "written to a temporary folder) with small sizes: checks the graph on any machine")
    p.set_defaults(run=_run)
    p = sub.add_parser("synth", help="write the synthetic demo model set and load it through the loader nodes")
    p.add_argument("--models", default="openreel-synthetic-models", help="models folder to write into")
    p.set_defaults(run=_synth)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except OpenReelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
