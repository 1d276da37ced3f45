"""Step-Video-T2V 30B: recognized from its keys and shapes; the network comes next."""
from __future__ import annotations

import re

from ...handles import DiTSpec
from ..common.family import Checkpoint, DiTFamily, register_family


class StepVideoFamily(DiTFamily):
    name = "stepvideo"
    title = "Step-Video"
    anchors = ("adaln_single.linear.weight",)
    runnable = False

    def describe(self, ckpt: Checkpoint) -> DiTSpec:
        embed = ckpt.shape("pos_embed.proj.weight")
        layers = 1 + max((int(m.group(1)) for k in ckpt.keys()
                          if (m := re.match(r"transformer_blocks\.(\d+)\.", k))), default=-1)
        config = (("hidden", embed[0]), ("in_channels", embed[1]), ("layers", layers))
        return DiTSpec(self.name, "stepvideo_t2v", f"Step-Video-T2V ({embed[0]} wide, {layers} layers, "
                       f"{embed[1]} latent channels)", "t2v", "stepvideo", config)


STEPVIDEO = register_family(StepVideoFamily())
