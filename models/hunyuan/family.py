"""HunyuanVideo 13B: recognized from its keys and shapes (official and diffusers layouts); the network comes next."""
from __future__ import annotations

import re

from ...handles import DiTSpec
from ..common.family import Checkpoint, DiTFamily, register_family

OFFICIAL_ANCHORS = ("txt_in.individual_token_refiner.blocks.0.norm1.weight",)
DIFFUSERS_ANCHORS = ("context_embedder.token_refiner.refiner_blocks.0.norm1.weight",)


def _count(ckpt: Checkpoint, pattern: str) -> int:
    found = {int(m.group(1)) for k in ckpt.keys() if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


class HunyuanFamily(DiTFamily):
    name = "hunyuan"
    title = "HunyuanVideo"
    anchors = OFFICIAL_ANCHORS + DIFFUSERS_ANCHORS
    runnable = False

    def describe(self, ckpt: Checkpoint) -> DiTSpec:
        official = "img_in.proj.weight" in ckpt
        embed = ckpt.shape("img_in.proj.weight" if official else "x_embedder.proj.weight")
        double = _count(ckpt, r"double_blocks\.(\d+)\." if official else r"transformer_blocks\.(\d+)\.")
        single = _count(ckpt, r"single_blocks\.(\d+)\." if official else r"single_transformer_blocks\.(\d+)\.")
        task = {16: "t2v", 33: "i2v", 32: "i2v"}.get(embed[1], "t2v")
        config = (("hidden", embed[0]), ("in_channels", embed[1]), ("double_blocks", double),
                  ("single_blocks", single))
        return DiTSpec(self.name, f"hunyuan_{task}", f"HunyuanVideo ({embed[0]} wide, {double} double + {single} "
                       f"single blocks, {embed[1]} input channels)", task, "hunyuan", config)


HUNYUAN = register_family(HunyuanFamily())
