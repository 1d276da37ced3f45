"""A smaller card on a big GPU, for benches: torch's allocator capped, and that card's free memory reported to
whoever asks torch (OpenReel's automatic choices: tiling, batching CFG, keeping an expert pair resident)."""
from __future__ import annotations

import torch

GIB = 1 << 30


def simulate_card(gib: float) -> None:
    """Cap torch's allocator at `gib` and report that card's free memory from then on (for the whole process)."""
    cap = int(gib * GIB)
    total = torch.cuda.mem_get_info()[1]
    torch.cuda.set_per_process_memory_fraction(cap / total)
    torch.cuda.mem_get_info = lambda device=None: (max(0, cap - torch.cuda.memory_reserved(device)), cap)
