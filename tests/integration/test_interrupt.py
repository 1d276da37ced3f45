"""POST /interrupt while our sampler samples and while our VAE decodes: the prompt stops promptly, the server goes on."""
from __future__ import annotations

import time

from .server import Socket, api_workflow, node_of

SAMPLING_STOP_S = 5.0   # from POST /interrupt to execution_interrupted while sampling (a model call takes ms here)


def interrupt_at_progress(comfy, prompt: dict, node: str, at: int) -> tuple[dict, float, Socket]:
    """Queue `prompt` on a websocket, POST /interrupt once `node` reports progress `at` (of a larger max), and
    read to the end. Returns the last message, seconds from the interrupt to it, and the socket (its messages)."""
    with Socket(comfy) as ws:
        prompt_id = ws.queue(prompt)
        tick = ws.until(prompt_id, lambda m: m["type"] in ("execution_error", "execution_success")
                        or (m["type"] == "progress" and m["data"]["node"] == node and m["data"]["value"] >= at))
        assert tick["type"] == "progress", tick
        assert tick["data"]["value"] < tick["data"]["max"], f"{node} finished before it could be interrupted: {tick}"
        start = time.monotonic()
        assert comfy.post("/interrupt", {})[0] == 200
        last = ws.until_done(prompt_id, timeout=60)
        return last, time.monotonic() - start, ws


def progress_ticks(ws: Socket, node: str) -> list[tuple[float, int, int]]:
    """(arrival time, value, max) of each progress message of `node` received so far."""
    return [(t, m["data"]["value"], m["data"]["max"]) for m, t in zip(ws.messages, ws.times)
            if m["type"] == "progress" and m["data"]["node"] == node]


def check_interrupted(comfy, last: dict, node: str, class_type: str) -> None:
    """The prompt ended on execution_interrupted at `node`, and /history records it."""
    assert last["type"] == "execution_interrupted", last
    assert last["data"]["node_id"] == node and last["data"]["node_type"] == class_type, last
    entry = comfy.wait_history(last["data"]["prompt_id"])
    assert "execution_interrupted" in [m[0] for m in entry["status"]["messages"]], entry["status"]


def check_next_prompt_runs(comfy) -> None:
    """After an interrupt the server runs the next prompt to a saved video."""
    from openreel.video_io import read_video

    entry = comfy.run_ok(api_workflow("wan21_t2v", OpenReelSampler={"seed": 5}))
    (path,) = comfy.saved_files(entry)
    assert read_video(path)[0].shape == (5, 64, 64, 3)


def test_interrupt_while_sampling(comfy):
    """1000 steps with guidance: interrupted after a few model calls, execution_interrupted names the sampler
    within seconds, far from the end of sampling; the next prompt runs."""
    prompt = api_workflow("wan21_t2v", OpenReelSampler={"steps": 1000, "cfg": 5.0, "seed": 3},
                          OpenReelEmptyLatent={"width": 128, "height": 128, "frames": 17})
    sampler = node_of(prompt, "OpenReelSampler")
    last, elapsed, ws = interrupt_at_progress(comfy, prompt, sampler, at=3)
    check_interrupted(comfy, last, sampler, "OpenReelSampler")
    ticks = progress_ticks(ws, sampler)
    assert elapsed < SAMPLING_STOP_S, f"interrupt took {elapsed:.1f} s"
    assert ticks[-1][1] < ticks[-1][2] // 2, ticks[-1]
    check_next_prompt_runs(comfy)


def test_interrupt_while_decoding(comfy):
    """A long latent (81 frames at 256×256, decoded straight from Empty Latent: no sampling) is interrupted
    between decoded chunks (one latent frame, 4 video frames each): execution_interrupted names VAE Decode no
    later than the chunk under way plus one (timed from the chunks before), long before the decode would end."""
    prompt = api_workflow("wan21_t2v", OpenReelEmptyLatent={"width": 256, "height": 256, "frames": 81})
    decode, latent = node_of(prompt, "OpenReelVAEDecode"), node_of(prompt, "OpenReelEmptyLatent")
    prompt[decode]["inputs"]["latent"] = [latent, 0]  # skip the sampler: only the decode takes time
    last, elapsed, ws = interrupt_at_progress(comfy, prompt, decode, at=5)  # 1 frame, then 4
    check_interrupted(comfy, last, decode, "OpenReelVAEDecode")
    (t1, v1, _), (t2, v2, total) = progress_ticks(ws, decode)[:2]
    chunk = t2 - t1
    assert (v1, v2) == (1, 5) and total == 81, progress_ticks(ws, decode)
    assert elapsed < 2 * chunk + 1.0, f"interrupt took {elapsed:.1f} s, a chunk {chunk:.1f} s"
    assert progress_ticks(ws, decode)[-1][1] <= 13, "the decode went on for more than two chunks"
    check_next_prompt_runs(comfy)
