"""Step-Video-T2V 30B: recognized from its keys and shapes; the network comes next."""
from __future__ import annotations

import re

from ..handles import DiTSpec
from .checkpoint import Checkpoint
from .families import Family, find_prefix, register_family

ANCHORS = ("adaln_single.linear.weight",)


def normalize(ckpt: Checkpoint) -> Checkpoint:
    return ckpt.strip_prefix(find_prefix(ckpt, ANCHORS))


def describe(ckpt: Checkpoint) -> DiTSpec:
    embed = ckpt.shape("pos_embed.proj.weight")
    layers = 1 + max((int(m.group(1)) for k in ckpt.keys() if (m := re.match(r"transformer_blocks\.(\d+)\.", k))),
                     default=-1)
    config = (("hidden", embed[0]), ("in_channels", embed[1]), ("layers", layers))
    return DiTSpec("stepvideo", "stepvideo_t2v", f"Step-Video-T2V ({embed[0]} wide, {layers} layers, "
                   f"{embed[1]} latent channels)", "t2v", "stepvideo", config)


register_family(Family(name="stepvideo", title="Step-Video", anchors=ANCHORS, normalize=normalize,
                       describe=describe, build=None))
