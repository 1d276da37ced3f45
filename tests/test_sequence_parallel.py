"""Sequence parallelism (parallel/sequence.py) on CPU processes over gloo: a DiT forward split over 2, 3 and 4 ranks
equals the single-process forward (float32), for every timestep layout and the block-causal mask, with and without
token chunks; 3 ranks do not divide the heads, so they gather keys and values instead of exchanging heads."""
from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from openreel.models.hunyuan.model import HunyuanConfig, HunyuanDiT
from openreel.models.stepvideo.model import StepVideoConfig, StepVideoDiT
from openreel.models.wan.model import WanConfig, WanDiT
from openreel.parallel.sequence import SequenceParallel, shares

TIMEOUT_S = 120


def _wan() -> tuple[torch.nn.Module, list[tuple[tuple, dict]]]:
    torch.manual_seed(0)
    model = WanDiT(WanConfig(dim=128, ffn_dim=256, num_heads=4, num_layers=2, text_dim=32)).eval()
    for p in model.parameters():  # the zero-initialised modulation tables would hide per-token modulation
        p.data.normal_(0, 0.2)
    x = torch.randn(1, 16, 3, 4, 6)  # 3 × 2 × 3 = 18 tokens: shares of 9 or 5, 5, 4, 4
    context = torch.randn(1, 7, 32)
    per_frame = torch.tensor([[900.0, 500.0, 100.0]])
    per_token = torch.linspace(950, 50, 18)[None]
    calls = [((x, torch.tensor([700.0]), context), {}),
             ((x, per_frame, context), {"causal_block_size": 1}),   # diffusion forcing's layout
             ((x, per_token, context), {})]                           # TI2V-5B's layout
    return model, calls


def _stepvideo() -> tuple[torch.nn.Module, list[tuple[tuple, dict]]]:
    torch.manual_seed(1)
    cfg = StepVideoConfig(hidden=512, heads=4, layers=2, ffn_width=1024, in_channels=4, out_channels=4, patch=1,
                          caption_dim=64, clip_dim=32)
    model = StepVideoDiT(cfg).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    x = torch.randn(1, 4, 3, 2, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    kwargs = {"context_mask": mask, "clip": torch.randn(1, 6, 32)}
    return model, [((x, torch.tensor([600.0]), torch.randn(1, 5, 64)), kwargs)]


def _hunyuan() -> tuple[torch.nn.Module, list[tuple[tuple, dict]]]:
    """Two samples with different text lengths: the stream ends with text tokens every rank keeps whole, and a
    key mask covers the padding."""
    torch.manual_seed(2)
    cfg = HunyuanConfig(hidden=512, heads=4, mlp_width=1024, double_blocks=1, single_blocks=1, text_dim=32,
                        pooled_dim=16, refiner_blocks=1, refiner_heads=4, refiner_mlp_width=1024)
    model = HunyuanDiT(cfg).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    x = torch.randn(2, 16, 3, 4, 6)
    kwargs = {"context_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]), "pooled": torch.randn(2, 16),
              "guidance": 6.0}
    return model, [((x, torch.tensor([800.0, 300.0]), torch.randn(2, 5, 32)), kwargs)]


def _wan_compiled() -> tuple[torch.nn.Module, list[tuple[tuple, dict]]]:
    """Wan with its blocks regionally compiled (Dynamo and AOTAutograd, no code generation on the CPU): the
    exchange inside the compiled blocks."""
    from openreel.memory.patches import PATCHES
    from openreel.model_loaders import core  # noqa: F401  (registers the run-time patches)
    from openreel.speed.compile import CompileSettings

    model, calls = _wan()
    PATCHES["compile"].apply(model, CompileSettings(backend="aot_eager"))
    return model, calls[:1]


FAMILIES = {"wan": _wan, "stepvideo": _stepvideo, "hunyuan": _hunyuan, "wan_compiled": _wan_compiled}


def _outputs(model, calls) -> list[torch.Tensor]:
    """Each call's output whole, then with token chunks of 4 (the blocks' other code path)."""
    out = []
    with torch.no_grad():
        for chunk in (0, 4):
            model.token_chunk = chunk
            out += [model(*args, **kwargs) for args, kwargs in calls]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, family: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model, calls = FAMILIES[family]()
        model.wrappers.set("sequence_parallel", SequenceParallel())
        outputs = _outputs(model, calls)
        torch.save(outputs, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3, 4])   # 3 does not divide the 4 heads: keys and values gathered
@pytest.mark.parametrize("family", list(FAMILIES))
def test_split_forward_equals_one_process(family, world):
    model, calls = FAMILIES[family]()
    expected = _outputs(model, calls)
    with tempfile.TemporaryDirectory() as out:
        context = mp.start_processes(_rank, args=(world, _free_port(), family, out), nprocs=world, join=False,
                                     start_method="fork")
        waited = 0.0
        while not context.join(timeout=1):
            waited += 1
            assert waited < TIMEOUT_S, "the ranks did not finish: a collective hangs"
        for rank in range(world):
            got = torch.load(Path(out) / f"rank{rank}.pt")
            for g, e in zip(got, expected):
                assert g.shape == e.shape
                assert (g - e).abs().max().item() <= 1e-5 * max(1.0, e.abs().max().item())


def test_shares_cover_the_sequence_evenly():
    assert shares(18, 4) == [5, 5, 4, 4] and shares(18, 2) == [9, 9] and sum(shares(32760, 8)) == 32760
