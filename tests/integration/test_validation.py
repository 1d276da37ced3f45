"""Invalid prompts: ComfyUI's 400 reply names our node and the problem before anything runs."""
from __future__ import annotations

from .server import api_workflow, node_of


def node_errors(comfy, prompt: dict, class_type: str) -> list[dict]:
    """POST a prompt that must fail validation; the errors of the one node of `class_type` in the 400 reply."""
    status, reply = comfy.post_prompt(prompt)
    assert status == 400, reply
    assert reply["error"]["type"] == "prompt_outputs_failed_validation", reply
    node = node_of(prompt, class_type)
    assert reply["node_errors"][node]["class_type"] == class_type, reply["node_errors"]
    return reply["node_errors"][node]["errors"]


def test_frames_off_the_frame_rule_are_refused_with_the_rule(comfy):
    """frames = 200 on Empty Latent (Wan: 4n+1) is refused by the node's own validation, naming the valid counts."""
    prompt = api_workflow("wan21_t2v", OpenReelEmptyLatent={"frames": 200})
    errors = node_errors(comfy, prompt, "OpenReelEmptyLatent")
    frames = [e for e in errors if e["extra_info"]["input_name"] == "frames"]
    assert frames and frames[0]["type"] == "custom_validation_failed", errors
    details = frames[0]["details"]
    assert "frames = 200 is not" in details and "4n+1: use 197 or 201" in details, details


def test_a_size_off_the_multiple_is_refused(comfy):
    prompt = api_workflow("wan21_t2v", OpenReelEmptyLatent={"width": 70})
    errors = node_errors(comfy, prompt, "OpenReelEmptyLatent")
    assert any("70×64 is not a multiple of" in e["details"] for e in errors), errors


def test_a_missing_model_file_is_refused_by_name(comfy):
    """A VAE file that is not in the models folder: value_not_in_list on the loader's model_name, naming the file."""
    prompt = api_workflow("wan21_t2v", OpenReelVAELoader={"model_name": "no_such_vae.safetensors"})
    (error,) = node_errors(comfy, prompt, "OpenReelVAELoader")
    assert error["type"] == "value_not_in_list" and error["extra_info"]["input_name"] == "model_name", error
    assert "no_such_vae.safetensors" in error["details"], error


def test_every_invalid_node_is_reported_at_once(comfy):
    """Two problems in two nodes (a missing DiT and a bad frame count): both nodes are in node_errors."""
    prompt = api_workflow("wan21_t2v", OpenReelEmptyLatent={"frames": 200},
                          OpenReelDiTLoader={"model_name": "no_such_dit.safetensors"})
    status, reply = comfy.post_prompt(prompt)
    assert status == 400, reply
    classes = {e["class_type"] for e in reply["node_errors"].values()}
    assert {"OpenReelEmptyLatent", "OpenReelDiTLoader"} <= classes, reply["node_errors"]


def test_a_gpu_list_of_one_is_refused_before_anything_runs(comfy):
    """OpenReel Multi-GPU with gpus "3" (one GPU, and none on this server) fails validation, saying what to list."""
    prompt = api_workflow("wan22_t2v_a14b_2gpu", OpenReelMultiGPU={"gpus": "3"})
    errors = node_errors(comfy, prompt, "OpenReelMultiGPU")
    assert any("needs two or more" in e["details"] and "e.g. 0,1" in e["details"] for e in errors), errors
