"""VRAM over repeated runs of a whole node graph: a workflow executed N times in one process on the GPU, with the
memory nodes in it, must not leave more allocated after each run than after the first.

Run on a GPU machine from the repo root:  python bench/graph_memory.py --runs 10 --out bench-out
It uses the synthetic model set (tiny random models in the real file layouts) at a moderate size, so what is
measured is the pack's own bookkeeping (caches, residency, swap buffers, previews), not a model's size.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if "openreel" not in sys.modules:
    spec = importlib.util.spec_from_file_location("openreel", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    sys.modules["openreel"] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

from openreel import runtime  # noqa: E402
from openreel.runner import execute, load_workflow, use_synthetic_models  # noqa: E402

SIZE = {"width": 256, "height": 256, "frames": 17}


def with_memory_nodes(prompt: dict) -> dict:
    """The Wan2.2 T2V pair workflow with an OpenReel Block Swap on each expert and an attention choice."""
    prompt = json.loads(json.dumps(prompt))
    for source, new_id in (("1", "101"), ("9", "102")):
        prompt[new_id] = {"class_type": "OpenReelBlockSwap",
                          "inputs": {"dit": [source, 0], "blocks_to_swap": 2, "offload_embeddings": True}}
    prompt["6"]["inputs"]["dit"] = ["101", 0]
    prompt["6"]["inputs"]["dit_low_noise"] = ["102", 0]
    return prompt


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runtime.set_output_dir(out / "videos")
    base, _ = load_workflow(ROOT / "workflows" / "api" / "wan22_t2v_a14b.json")
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "graphs": {}}
    with tempfile.TemporaryDirectory() as synthetic:
        for label, prompt in (("plain", base), ("block swap on both experts", with_memory_nodes(base))):
            use_synthetic_models(prompt, Path(synthetic), log=lambda *_: None)
            for entry in prompt.values():
                if entry["class_type"] in ("OpenReelEmptyLatent",):
                    entry["inputs"].update(SIZE)
                if entry["class_type"] == "OpenReelSampler":
                    entry["inputs"]["steps"] = 4
            allocated = []
            for _ in range(args.runs):
                execute(prompt, None, log=lambda *_: None)
                torch.cuda.synchronize()
                allocated.append(torch.cuda.memory_allocated())
            growth = (allocated[-1] - allocated[0]) / 2**20
            report["graphs"][label] = {"allocated_mib": [a / 2**20 for a in allocated], "growth_mib": growth,
                                       "max_reserved_mib": torch.cuda.max_memory_reserved() / 2**20}
            print(f"{label:28s} allocated after each of {args.runs} runs (MiB): "
                  f"{' '.join(f'{a / 2**20:.1f}' for a in allocated)}  growth {growth:+.1f} MiB", flush=True)
    (out / "graph_memory.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
