"""Headless runner: execute a ComfyUI workflow (API or UI format) with this pack's nodes, no ComfyUI needed.

Semantics follow ComfyUI's executor where it matters to users: only nodes that feed an output node run, each once;
inputs are validated before anything runs (types of links, required inputs, combo choices such as model files,
min/max); VALIDATE_INPUTS is honoured; hidden PROMPT/EXTRA_PNGINFO/UNIQUE_ID are supplied so saved videos embed
the workflow. Exit codes: 0 done, 1 a node failed, 2 the workflow is invalid, 130 interrupted.
"""
from __future__ import annotations

import inspect
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import runtime
from .errors import OpenReelError
from .builtins import BUILTIN_NODES
from .nodes import NODE_CLASS_MAPPINGS as PACK_NODES
from .workflow_format import is_ui_format, ui_to_api

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130
NODE_CLASS_MAPPINGS = {**BUILTIN_NODES, **PACK_NODES}


class WorkflowError(Exception):
    """The workflow cannot run as written; the message lists every problem found."""


class NodeFailed(Exception):
    """A node raised while running; says which node, keeps the original exception as its cause."""


@dataclass
class RunResult:
    outputs: dict[str, Any] = field(default_factory=dict)   # node id → its "ui" dict (saved files etc.)
    seconds: float = 0.0


def load_workflow(path: Path) -> tuple[dict, dict | None]:
    """(API prompt, UI workflow or None) from a JSON file in either format."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise WorkflowError(f"cannot read workflow {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise WorkflowError(f"{path} is not a workflow: it holds a JSON {type(data).__name__}, not an object; save "
                            f"the workflow from ComfyUI (Save, or Export (API)) and run that file")
    if is_ui_format(data):
        try:
            return ui_to_api(data, NODE_CLASS_MAPPINGS), data
        except KeyError as exc:
            raise WorkflowError(f"{path}: {exc.args[0]}; this runner knows only OpenReel nodes") from exc
    if "prompt" in data and isinstance(data["prompt"], dict):  # a /prompt request body
        return data["prompt"], (data.get("extra_data") or {}).get("extra_pnginfo", {}).get("workflow")
    return data, None


def apply_overrides(prompt: dict, sets: list[str]) -> None:
    """`NODE.INPUT=VALUE`, NODE being a node id, a title, or a class type (must be unique); VALUE parsed as JSON,
    except for text (STRING) inputs, which take it as it is."""
    for item in sets:
        target, sep, raw = item.partition("=")
        node_ref, dot, name = target.rpartition(".")
        if not sep or not dot:
            raise WorkflowError(f"--set {item!r}: expected NODE.INPUT=VALUE")
        matches = [i for i, n in prompt.items()
                   if node_ref in (i, n.get("_meta", {}).get("title"), n["class_type"], _title(prompt, i))]
        if len(matches) != 1:
            nodes = ", ".join(f"{i} ({_title(prompt, i)})" for i in sorted(prompt, key=_id_key))
            raise WorkflowError(f"--set {item!r}: {node_ref!r} names {len(matches)} nodes; use a node id: {nodes}")
        cls = NODE_CLASS_MAPPINGS.get(prompt[matches[0]]["class_type"])
        kind = None
        if cls is not None:
            spec = cls.INPUT_TYPES()
            inputs = {**spec.get("required", {}), **spec.get("optional", {})}
            if name not in inputs:
                raise WorkflowError(f"--set {item!r}: {_title(prompt, matches[0])} (node {matches[0]}) has no input "
                                    f"{name!r}; its inputs: {', '.join(inputs)}")
            kind = inputs[name][0]
        value = raw
        if kind != "STRING":  # a text input keeps the text as typed (e.g. gpus=0 stays "0")
            try:
                value = json.loads(raw)
            except ValueError:
                pass
        prompt[matches[0]]["inputs"][name] = value


def _id_key(node_id: str):
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


def _title(prompt: dict, node_id: str) -> str:
    entry = prompt[node_id]
    cls = NODE_CLASS_MAPPINGS.get(entry["class_type"])
    return entry.get("_meta", {}).get("title") or getattr(cls, "DISPLAY_NAME", entry["class_type"])


def validate(prompt: dict) -> list[str]:
    """Every problem in the prompt, as ComfyUI would report them before running anything."""
    problems = []
    for node_id, entry in sorted(prompt.items(), key=lambda kv: _id_key(kv[0])):
        where = f"node {node_id} ({entry.get('class_type')})"
        cls = NODE_CLASS_MAPPINGS.get(entry.get("class_type"))
        if cls is None:
            problems.append(f"{where}: unknown node type; this runner knows {', '.join(sorted(NODE_CLASS_MAPPINGS))}")
            continue
        spec = cls.INPUT_TYPES()
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        inputs = entry.get("inputs", {})
        for name in spec.get("required", {}):
            if name not in inputs:
                problems.append(f"{where}: required input {name!r} is missing")
        for name, value in inputs.items():
            if name not in declared:
                continue  # ComfyUI ignores unknown inputs too (old workflows)
            kind, opts = declared[name][0], (declared[name][1] if len(declared[name]) > 1 else {})
            if isinstance(value, list):
                problems += _check_link(prompt, where, name, kind, value)
            elif isinstance(kind, (list, tuple)):
                if value not in kind:
                    shown = ", ".join(map(str, kind[:8])) + (" …" if len(kind) > 8 else "")
                    folder = getattr(cls, "MODEL_FOLDER", None) if name == "model_name" else None
                    searched = "" if folder is None else (
                        f"; searched {', '.join(str(f) for f in runtime.model_folders(folder))}: put the file there, "
                        f"or point --models (or OPENREEL_MODELS) at the folder that holds {folder}/")
                    problems.append(f"{where}: {name} = {value!r} is not one of the choices "
                                    f"({shown or 'none found'}){searched}")
            elif kind in ("INT", "FLOAT"):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    wanted = "a whole number" if kind == "INT" else "a number"
                    bounds = f" from {opts['min']} to {opts['max']}" if "min" in opts and "max" in opts else ""
                    problems.append(f"{where}: {name} = {value!r} is not a number; give {wanted}{bounds}")
                elif ("min" in opts and value < opts["min"]) or ("max" in opts and value > opts["max"]):
                    problems.append(f"{where}: {name} = {value} is outside {opts.get('min')}..{opts.get('max')}")
        check = getattr(cls, "VALIDATE_INPUTS", None)
        if check is not None:  # on the values the graph fixes; skipped when one it needs comes from a link
            params = inspect.signature(check).parameters
            given = {k: v for k, v in inputs.items() if k in params and not isinstance(v, list)}
            needed = {k for k, p in params.items() if p.default is inspect.Parameter.empty}
            verdict = check(**given) if needed <= set(given) and given else True
            if verdict is not True:
                problems.append(f"{where}: {verdict}")
    return problems


def _check_link(prompt, where, name, kind, value) -> list[str]:
    if len(value) != 2 or str(value[0]) not in prompt:
        return [f"{where}: input {name!r} links to a missing node {value!r}"]
    src_cls = NODE_CLASS_MAPPINGS.get(prompt[str(value[0])]["class_type"])
    if src_cls is None:
        return []  # reported on the source node itself
    if not 0 <= value[1] < len(src_cls.RETURN_TYPES):
        return [f"{where}: input {name!r} links to output {value[1]} of node {value[0]}, which has "
                f"{len(src_cls.RETURN_TYPES)} outputs"]
    out_type = src_cls.RETURN_TYPES[value[1]]
    expected = "COMBO" if isinstance(kind, (list, tuple)) else kind
    if out_type != expected and "*" not in (out_type, expected) and not (expected == "COMBO" and out_type == "STRING"):
        return [f"{where}: input {name!r} expects {expected} but node {value[0]} gives {out_type}"]
    return []


def execution_order(prompt: dict) -> list[str]:
    """Nodes that feed an output node, dependencies first."""
    outputs = [i for i, n in prompt.items() if getattr(NODE_CLASS_MAPPINGS[n["class_type"]], "OUTPUT_NODE", False)]
    if not outputs:
        raise WorkflowError("the workflow has no output node (e.g. OpenReel Save Video), so nothing would run")
    order, state = [], {}

    def visit(node_id: str) -> None:
        if state.get(node_id) == "done":
            return
        if state.get(node_id) == "active":
            raise WorkflowError(f"the workflow has a cycle through node {node_id}")
        state[node_id] = "active"
        for value in prompt[node_id]["inputs"].values():
            if isinstance(value, list):
                visit(str(value[0]))
        state[node_id] = "done"
        order.append(node_id)

    for node_id in sorted(outputs, key=_id_key):
        visit(node_id)
    return order


def execute(prompt: dict, ui_workflow: dict | None = None, log=print) -> RunResult:
    problems = validate(prompt)
    if problems:
        raise WorkflowError("the workflow is invalid:\n  " + "\n  ".join(problems))
    order = execution_order(prompt)
    results: dict[str, tuple] = {}
    run = RunResult()
    start = time.time()
    extra = {"workflow": ui_workflow} if ui_workflow is not None else {}
    for step, node_id in enumerate(order, 1):
        entry = prompt[node_id]
        cls = NODE_CLASS_MAPPINGS[entry["class_type"]]
        kwargs = {k: (results[str(v[0])][v[1]] if isinstance(v, list) else v) for k, v in entry["inputs"].items()}
        hidden = cls.INPUT_TYPES().get("hidden", {})
        for name, kind in hidden.items():
            kwargs[name] = {"PROMPT": prompt, "EXTRA_PNGINFO": extra, "UNIQUE_ID": node_id}.get(kind)
        log(f"[{step}/{len(order)}] {_title(prompt, node_id)} (node {node_id})")
        t0 = time.time()
        try:
            out = getattr(cls(), cls.FUNCTION)(**kwargs)
        except (OpenReelError, runtime.Interrupted, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise NodeFailed(f"node {node_id} ({_title(prompt, node_id)}) failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(out, dict):
            if "ui" in out:
                run.outputs[node_id] = out["ui"]
                for text in out["ui"].get("text", ()):  # what the node shows under itself in ComfyUI
                    log("      " + str(text).replace("\n", "\n      "))
            out = out.get("result", ())
        results[node_id] = tuple(out or ())
        log(f"      done in {time.time() - t0:.1f}s")
    run.seconds = time.time() - start
    return run


# A synthetic run keeps every size small: the models are tiny and random, the point is to exercise the graph.
# A value may be a function of the node's inputs.
SYNTHETIC_SIZES = {"OpenReelEmptyLatent": {"width": 64, "height": 64,
                                           "frames": lambda inputs: _few_frames(inputs["frames"])},
                   "OpenReelImageToVideo": {"width": 64, "height": 64, "frames": 5},
                   "OpenReelSampler": {"steps": 2},
                   "OpenReelDiffusionForcingSampler": {"width": 64, "height": 64, "num_frames": 53,
                                                       "base_num_frames": 37, "overlap_history": 21, "steps": 2},
                   # Without GPUs enough, as many CPU worker processes as the workflow lists GPUs.
                   "OpenReelMultiGPU": {"gpus": lambda inputs: _cpu_workers(inputs["gpus"])},
                   # Tiny random models have no published calibration: give TeaCache / MagCache a plain one.
                   "OpenReelStepCache": {"coefficients": lambda inputs: "" if inputs.get("method") == "easycache"
                                         else inputs.get("coefficients") or "1, 0"}}


def _few_frames(frames) -> object:
    """The fewest frames of the workflow's own frame rule (17n: 17; 4n+1: 5); a count that follows no rule, or is
    a link, is left for validation to report."""
    if not isinstance(frames, int):
        return frames
    return 17 if frames % 17 == 0 else 5 if frames % 4 == 1 else frames


def _cpu_workers(gpus) -> object:
    """A GPU list this machine cannot serve becomes that many CPU workers (a link is left as it is)."""
    import torch

    if not isinstance(gpus, str):
        return gpus
    names = [g for g in gpus.split(",") if g.strip()]
    if all(n.strip().isdigit() and int(n) < torch.cuda.device_count() for n in names):
        return gpus
    return ",".join(["cpu"] * len(names))


def synthetic_inputs(entry: dict) -> dict:
    """The inputs a synthetic run changes in one API-workflow node."""
    return {name: value(entry["inputs"]) if callable(value) else value
            for name, value in SYNTHETIC_SIZES.get(entry["class_type"], {}).items()}


def use_synthetic_models(prompt: dict, folder: Path, log=print) -> None:
    """Write the synthetic model set into `folder` (once), point the model and input folders at it, and shrink
    the workflow's sizes and steps."""
    from . import synthetic

    marker = folder / "complete.txt"
    stamp = f"{synthetic.SYNTHETIC_NOTE}\nversion {synthetic.SET_VERSION}\n"
    if not marker.exists() or marker.read_text() != stamp:
        log(f"writing the synthetic model set to {folder}")
        synthetic.write_model_set(folder / "models", folder / "input")
        marker.write_text(stamp)
    else:
        log(f"using the synthetic model set in {folder}")
    runtime.set_models_dir(folder / "models")
    runtime.set_input_dir(folder / "input")
    for node_id, entry in prompt.items():
        for name, value in synthetic_inputs(entry).items():
            entry["inputs"][name] = value
            log(f"  synthetic run: node {node_id} {name} = {value}")
    log(f"NOTE: {synthetic.SYNTHETIC_NOTE}.")


def main(workflow: str, models: str | None, out: str | None, sets: list[str], log=print,
         synthetic_dir: str | None = None) -> int:
    if models:
        runtime.set_models_dir(models)
    if out:
        if Path(out).exists() and not Path(out).is_dir():
            print(f"error: --out {out} is a file, not a folder: name a folder (it is created if missing)",
                  file=sys.stderr)
            return EXIT_INVALID
        runtime.set_output_dir(out)
    previous = signal.signal(signal.SIGINT, _on_interrupt)
    try:
        prompt, ui = load_workflow(Path(workflow))
        if synthetic_dir:
            use_synthetic_models(prompt, Path(synthetic_dir), log)
        apply_overrides(prompt, sets)
        result = execute(prompt, ui, log)
    except WorkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except runtime.Interrupted:
        print("interrupted: stopped between model calls; nothing was saved for the unfinished output",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OpenReelError, NodeFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGINT, previous)
    for node_id, ui_out in result.outputs.items():
        for item in ui_out.get("images", []):
            path = runtime.output_dir() / item.get("subfolder", "") / item["filename"]
            log(f"saved {path}")
    log(f"finished in {result.seconds:.1f}s")
    return EXIT_OK


_interrupts = 0


def _on_interrupt(signum, frame):
    global _interrupts
    _interrupts += 1
    if _interrupts > 1:
        raise KeyboardInterrupt
    print("\nstopping at the next model call (Ctrl-C again to abort now)", file=sys.stderr)
    runtime.request_interrupt()
