"""Memory cooperation with ComfyUI's model manager (issue 13 item 10): POST /free, native loads."""
from __future__ import annotations

import time

from .server import SYNTHETIC, api_workflow

# ComfyUI logs "Requested to load <class>" when it loads a model its manager does not hold (load_models_gpu), so
# the count of these lines shows when ComfyUI had unloaded ours (on a CPU server the only observable sign).
OUR_DIT_REQUESTED = "Requested to load OpenReelWanDiT"
FREE_SETTLE_S = 2.0  # POST /free only sets a flag the prompt worker acts on when it wakes; nothing reports "done"


def wan_t2v(seed: int) -> dict:
    """The Wan2.1 T2V example on the synthetic set, with its sampler's seed set (a new seed runs it again)."""
    return api_workflow("wan21_t2v", OpenReelSampler={"seed": seed})


def test_free_unloads_our_models_and_the_next_run_loads_them_again(comfy):
    """Our DiT is registered with ComfyUI's model manager and stays loaded between runs; POST /free
    {"unload_models": true} (the "unload models" button) unloads it through the manager, and the next run loads it
    again and succeeds."""
    comfy.run_ok(wan_t2v(seed=101))
    requested = comfy.log().count(OUR_DIT_REQUESTED)
    assert requested >= 1, comfy.log_tail()
    comfy.run_ok(wan_t2v(seed=102))
    assert comfy.log().count(OUR_DIT_REQUESTED) == requested  # still held by the manager: not requested again
    assert comfy.post("/free", {"unload_models": True})[0] == 200
    time.sleep(FREE_SETTLE_S)
    comfy.run_ok(wan_t2v(seed=103))
    assert comfy.log().count(OUR_DIT_REQUESTED) == requested + 1, comfy.log_tail()


def test_our_workflow_runs_after_a_native_model_load(comfy):
    """A native model (ComfyUI's own WAN21 from a tiny Wan file in its layout) loads through the same manager
    (ModelSave loads it with load_models_gpu), and our workflow runs after it. (On a CPU server a load frees no
    memory, so that a native load unloads ours is shown only by the unit tests' fake manager.)"""
    import dataclasses

    from openreel import synthetic
    from openreel.video_io import read_video

    native = f"{SYNTHETIC}/native_wan_t2v.safetensors"  # ComfyUI's Wan takes 4096-wide text states
    synthetic.save_single(synthetic.wan_state_dict(dataclasses.replace(synthetic.TINY_WAN, text_dim=4096)),
                          comfy.base / "models" / "diffusion_models" / native, prefix=synthetic.COMFY_PREFIX)
    comfy.run_ok({"1": {"class_type": "UNETLoader", "inputs": {"unet_name": native, "weight_dtype": "default"}},
                  "2": {"class_type": "ModelSave", "inputs": {"model": ["1", 0],
                                                              "filename_prefix": "native/tiny_wan"}}})
    assert "Requested to load WAN21" in comfy.log(), comfy.log_tail()
    entry = comfy.run_ok(wan_t2v(seed=104))
    (path,) = comfy.saved_files(entry)
    frames, _ = read_video(path)
    assert frames.shape[1:] == (64, 64, 3)


WORKERS_STARTING = "starting 2 worker processes"


def _workers_of(pid: int) -> list[int]:
    """Processes started by the server process `pid` that run OpenReel's worker script."""
    from pathlib import Path

    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid and \
                    b"parallel/worker.py" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_multi_gpu_workers_live_across_prompts_and_free_stops_them(comfy):
    """OpenReel Multi-GPU's worker processes (two CPU workers on this server) start once, serve the next prompt
    too, and POST /free {"unload_models": true} stops them through ComfyUI's manager; the next run starts new ones."""
    def two_gpus(seed):
        return api_workflow("wan22_t2v_a14b_2gpu", OpenReelSampler={"seed": seed})

    comfy.run_ok(two_gpus(201))
    started = comfy.log().count(WORKERS_STARTING)
    assert started >= 1 and len(_workers_of(comfy.proc.pid)) == 2, comfy.log_tail()
    comfy.run_ok(two_gpus(202))
    assert comfy.log().count(WORKERS_STARTING) == started  # the same workers served the second prompt
    assert comfy.post("/free", {"unload_models": True})[0] == 200
    time.sleep(FREE_SETTLE_S)
    assert _workers_of(comfy.proc.pid) == []
    comfy.run_ok(two_gpus(203))
    assert comfy.log().count(WORKERS_STARTING) == started + 1, comfy.log_tail()


def test_step_caches_run_in_the_multi_gpu_workers(comfy):
    """The two-GPU Wan2.2 example with an OpenReel Step Cache (MagCache, as in the MagCache example) on each expert
    before OpenReel Multi-GPU: it runs in the workers and each expert's report reaches the server's log."""
    prompt = api_workflow("wan22_t2v_a14b_2gpu", OpenReelSampler={"seed": 204, "steps": 6})  # both experts
    caches = api_workflow("wan22_t2v_a14b_magcache")
    multi = prompt[next(k for k, v in prompt.items() if v["class_type"] == "OpenReelMultiGPU")]["inputs"]
    for name, cache in zip(("dit", "dit_low_noise"), ("20", "21")):
        prompt[cache] = {**caches[cache], "inputs": {**caches[cache]["inputs"], "dit": multi[name]}}
        multi[name] = [cache, 0]
    comfy.run_ok(prompt)
    assert "MagCache (high-noise expert):" in comfy.log() and "MagCache (low-noise expert):" in comfy.log(), \
        comfy.log_tail()
