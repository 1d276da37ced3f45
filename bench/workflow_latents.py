"""Fingerprints of every example workflow's final latent on the synthetic model set, to prove a change bit-neutral.

Run from the repo root, before and after a change, on the SAME synthetic files (the set is random: write it once):
    python bench/workflow_latents.py --synthetic-dir /tmp/openreel-syn > before.txt
    (change the code)
    python bench/workflow_latents.py --synthetic-dir /tmp/openreel-syn > after.txt && diff before.txt after.txt
`--fixed-embeds` replaces the text encoder's output by seeded noise of the same shape, which separates changes of
the text encoder from changes of everything after it. Prints one line per workflow: sha256 prefix, shape, |sum|.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if "openreel" not in sys.modules:
    spec = importlib.util.spec_from_file_location("openreel", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    sys.modules["openreel"] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

from openreel import runner, runtime  # noqa: E402
from openreel.handles import TextEmbeds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--synthetic-dir", required=True, help="where the synthetic set is (written once if absent)")
    parser.add_argument("--fixed-embeds", action="store_true")
    args = parser.parse_args()
    runtime.set_device("cpu")
    sampler = runner.NODE_CLASS_MAPPINGS["OpenReelSampler"]
    run, found = getattr(sampler, sampler.FUNCTION), []

    def recording(self, *a, **k):
        out = run(self, *a, **k)
        latent = out[0]["samples"].contiguous()
        found.append(f"{hashlib.sha256(latent.numpy().tobytes()).hexdigest()[:16]} {tuple(latent.shape)} "
                     f"{latent.abs().sum().item():.6f}")
        return out
    setattr(sampler, sampler.FUNCTION, recording)
    if args.fixed_embeds:
        encode = runner.NODE_CLASS_MAPPINGS["OpenReelTextEncode"]
        real = encode.encode

        def fixed(self, *a, **k):
            e = real(self, *a, **k)[0]
            gen = torch.Generator().manual_seed(5)
            return (TextEmbeds(torch.randn(e.positive.shape, generator=gen),
                               torch.randn(e.negative.shape, generator=gen)),)
        encode.encode = fixed
    out = Path(tempfile.mkdtemp())
    for workflow in sorted((ROOT / "workflows" / "api").glob("*.json")):
        found.clear()
        prompt, ui = runner.load_workflow(workflow)
        runner.use_synthetic_models(prompt, Path(args.synthetic_dir), log=lambda *a: None)
        runtime.set_output_dir(out)
        runner.execute(prompt, ui, log=lambda *a: None)
        print(workflow.name, *found, flush=True)


if __name__ == "__main__":
    main()
