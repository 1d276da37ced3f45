"""Attention kernel rate at the Wan-14B 480p shape: cuDNN vs flash SDPA, [B, L, H, D] views vs contiguous [B, H, L, D].

Run on a GPU machine:  python bench/attention_layout.py
"""
import torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
L, H, D = 32760, 40, 128
torch.manual_seed(0)
blhd = [torch.randn(1, L, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
views = [t.transpose(1, 2) for t in blhd]
contig = [v.contiguous() for v in views]
def bench(fn, n=10):
    for _ in range(2): fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n): fn()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / n
flops = 4 * L * L * H * D
for name, qkv in (("BLHD views (ours now)", views), ("BHLD contiguous", contig)):
    for be in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
        with sdpa_kernel(be):
            ms = bench(lambda: F.scaled_dot_product_attention(*qkv))
        print(f"{name:24s} {be.name:16s} {ms:6.2f} ms  {flops / ms / 1e9:5.0f} TFLOP/s", flush=True)
with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
    ms = bench(lambda: F.scaled_dot_product_attention(*[v.contiguous() for v in views]))
print(f"{'contiguous() + cudnn':24s} {'incl. copies':16s} {ms:6.2f} ms  {flops / ms / 1e9:5.0f} TFLOP/s")
