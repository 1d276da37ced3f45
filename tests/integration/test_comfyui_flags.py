"""ComfyUI's own start-up flags reach OpenReel's DiTs: started with --use-sage-attention, a workflow without an
OpenReel Attention node runs its DiT on "sage" (fallback policy), as ComfyUI's native models use SageAttention.

A server of its own (the flag is per process), with a stand-in `sageattention` package on its path: SDPA behind
SageAttention's entry point, so ComfyUI starts with the flag on a CPU machine. The DiT's calls then reach our "sage"
backend, which refuses CPU tensors and falls back to SDPA, saying so in the log: that line is the proof.
"""
from __future__ import annotations

import atexit

from .server import Server, api_workflow, free_port, link_pack

STAND_IN = '''import torch.nn.functional as F


def sageattn(q, k, v, tensor_layout="HND", is_causal=False, **kwargs):
    if tensor_layout == "NHD":
        return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)
'''


def test_sage_flag_becomes_the_dits_default_attention(tmp_path_factory):
    from openreel import synthetic

    base = tmp_path_factory.mktemp("comfyui-sage-flag")
    (base / "custom_nodes").mkdir()
    link_pack(base / "custom_nodes")
    synthetic.write_model_set(base / "models", base / "input")
    (base / "stand_in" / "sageattention").mkdir(parents=True)
    (base / "stand_in" / "sageattention" / "__init__.py").write_text(STAND_IN)
    server = Server(base, free_port(), base / "comfyui.log", extra_args=("--use-sage-attention",),
                    env={"PYTHONPATH": str(base / "stand_in")})
    atexit.register(server.stop)
    try:
        server.start()
        entry = server.run_ok(api_workflow("wan21_t2v"))
        assert server.saved_files(entry), entry
        log = server.log()
        assert "Using sage attention" in log   # ComfyUI took the flag
        assert "attention backend 'sage' cannot run a call (tensors on cpu" in log, server.log_tail()
    finally:
        server.stop()
        atexit.unregister(server.stop)
