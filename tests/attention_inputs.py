"""Attention inputs shaped and distributed like a video DiT's, and the error measures the kernel tests use.

"random": unit Gaussians (flat attention: the hardest case for FP8 P·V, whose output is a cancellation of many
values). "real": what real checkpoints show: keys with a shared offset per channel and a few outlier channels,
values with channel offsets, and sharper (lower-temperature) attention.
"""
import torch
import torch.nn.functional as F

# The shapes an attention kernel meets in the video DiTs, for the GPU kernel tests.
SHAPES = {   # name: (batch, queries, keys, heads, dim)
    "Wan 480p share": (1, 8190, 8190, 5, 128),
    "I2V CLIP keys": (2, 1560, 257, 5, 128),
    "text keys": (1, 4096, 512, 5, 128),
    "odd keys": (1, 1000, 1001, 4, 128),
    "head dim 64": (1, 3000, 3000, 4, 64),
}


def inputs(batch: int, queries: int, keys: int, heads: int, dim: int, kind: str = "random",
           dtype=torch.bfloat16, device="cpu", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(batch, queries, heads, dim, generator=g)
    k = torch.randn(batch, keys, heads, dim, generator=g)
    v = torch.randn(batch, keys, heads, dim, generator=g)
    if kind == "real":
        q = q * 2.0
        k = k + 3.0 * torch.randn(heads, dim, generator=g)            # channel offsets (removed by smoothing)
        outliers = torch.randperm(dim, generator=g)[:4]
        k[..., outliers] *= 8.0                                      # a few large channels, as real keys have
        v = v + torch.randn(heads, dim, generator=g)
    elif kind != "random":
        raise ValueError(kind)
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v))


def block_causal(queries: int, keys: int, blocks: int, device="cpu") -> torch.Tensor:
    """Query block i attends to key blocks ≤ i (diffusion forcing's causal blocks), as a boolean [Lq, Lk]."""
    qb = torch.arange(queries, device=device) * blocks // queries
    kb = torch.arange(keys, device=device) * blocks // keys
    return qb[:, None] >= kb[None, :]


def reference(q, k, v, mask=None) -> torch.Tensor:
    """fp32 attention, [B, L, H, D]."""
    out = F.scaled_dot_product_attention(q.float().transpose(1, 2), k.float().transpose(1, 2),
                                         v.float().transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def errors(out: torch.Tensor, ref: torch.Tensor) -> dict:
    out, ref = out.float().reshape(ref.shape), ref.float()
    return {"rel": ((out - ref).norm() / ref.norm()).item(),
            "cos": F.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item(),
            "finite": bool(out.isfinite().all())}
