"""Detection from keys and shapes: each supported variant is named right, each wrong input is a clear error."""
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from openreel import runtime, synthetic
from openreel.errors import CheckpointError, DetectionError, InputError
from openreel.model_loaders.cache import MODULES
from openreel.model_loaders.checkpoint import Checkpoint, TensorInfo
from openreel.model_loaders.identify import identify
from openreel.model_loaders.dit import inspect_dit
from openreel.models.wan.model import WanConfig, WanDiT
from openreel.nodes.loaders import OpenReelDiTLoader

BASE = dict(ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)


def write(tmp_path, state, name="model.safetensors", prefix=""):
    return synthetic.save_single(state, tmp_path / name, prefix=prefix)


@pytest.mark.parametrize("cfg, variant, task, latent, clip", [
    (WanConfig(dim=1536, **{**BASE, "num_heads": 12}), "t2v_1.3b", "t2v", "wan21", False),
    (WanConfig(dim=5120, **{**BASE, "num_heads": 40}), "t2v_14b", "t2v", "wan21", False),
    (WanConfig(dim=5120, in_dim=36, image_tokens=257, **{**BASE, "num_heads": 40}), "i2v_clip_14b", "i2v", "wan21", True),
    (WanConfig(dim=5120, in_dim=36, image_tokens=514, **{**BASE, "num_heads": 40}), "flf2v_14b", "flf2v", "wan21", True),
    (WanConfig(dim=5120, in_dim=36, **{**BASE, "num_heads": 40}), "i2v_14b", "i2v", "wan21", False),
    (WanConfig(dim=3072, in_dim=48, out_dim=48, **{**BASE, "num_heads": 24}), "ti2v_5b", "ti2v", "wan22", False),
    (WanConfig(dim=1536, fps_embedding=True, **{**BASE, "num_heads": 12}), "df_fps_1.3b", "t2v", "wan21", False),
])
def test_every_variant_is_detected_from_shapes(cfg, variant, task, latent, clip):
    # Real widths with a tiny ffn: detection reads only names and shapes, so a header-only checkpoint serves.
    small = WanConfig(**{**cfg.__dict__, "ffn_dim": 32, "text_dim": 16})
    with torch.device("meta"):
        shapes = {synthetic.COMFY_PREFIX + k: v.shape for k, v in WanDiT(small).state_dict().items()}
    ckpt = Checkpoint((Path("model.safetensors"),), {k: TensorInfo(tuple(s), torch.bfloat16) for k, s in
                                                     shapes.items()}, {})
    family = identify(ckpt).family
    spec = family.describe(family.normalize(ckpt))
    assert (spec.variant, spec.task, spec.latent_format, spec.needs_clip) == (variant, task, latent, clip)
    assert spec.config == small


def _tiny_wan_state(**kw):
    cfg = WanConfig(dim=256, **{**BASE, **kw})
    return {k: v.to(torch.bfloat16) for k, v in synthetic.wan_state_dict(cfg).items()}


@pytest.mark.parametrize("keys, message", [
    ({"encoder.conv1.weight": (8, 3, 3, 3, 3), "decoder.upsamples.0.residual.0.gamma": (8, 1, 1, 1), "conv2.weight": (16, 16, 1, 1, 1)}, "a video VAE"),
    ({"shared.weight": (100, 8), "encoder.block.0.layer.0.SelfAttention.q.weight": (8, 8)}, "a text encoder"),
    ({"token_embedding.weight": (100, 8), "blocks.0.attn.q.weight": (8, 8)}, "a text encoder"),
    ({"visual.patch_embedding.weight": (8, 3, 14, 14), "visual.transformer.0.attn.to_qkv.weight": (24, 8)}, "a CLIP vision encoder"),
    ({"vision_model.encoder.layers.0.self_attn.q_proj.weight": (8, 8)}, "a CLIP vision encoder"),
    ({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": (4, 8), "diffusion_model.blocks.0.self_attn.q.lora_B.weight": (8, 4)}, "a LoRA"),
    ({"txt_in.individual_token_refiner.blocks.0.norm1.weight": (64,), "img_in.proj.weight": (64, 16, 1, 2, 2),
      "double_blocks.0.img_attn_qkv.weight": (192, 64), "single_blocks.0.linear1.weight": (8, 64)}, "HunyuanVideo"),
    ({"adaln_single.linear.weight": (384, 64), "pos_embed.proj.weight": (64, 64, 1, 1),
      "transformer_blocks.0.attn1.wqkv.weight": (192, 64)}, "Step-Video-T2V"),
    ({"foo.weight": (3, 3)}, "not a diffusion model OpenReel knows"),
])
def test_other_kinds_of_file_are_refused_with_what_was_found(tmp_path, keys, message):
    path = write(tmp_path, {k: torch.zeros(s) for k, s in keys.items()})
    with pytest.raises(DetectionError, match=message):
        inspect_dit(path)


@pytest.mark.parametrize("extra, message", [
    ({"vace_patch_embedding.weight": (256, 96, 1, 2, 2)}, "VACE"),
    ({"casual_audio_encoder.encoder.weight": (4, 4)}, "S2V"),
    ({"face_adapter.fuser_blocks.0.k_norm.weight": (4,)}, "Animate"),
])
def test_unsupported_wan_derivatives_are_named(tmp_path, extra, message):
    state = _tiny_wan_state()
    state.update({k: torch.zeros(s, dtype=torch.bfloat16) for k, s in extra.items()})
    with pytest.raises(DetectionError, match=message):
        inspect_dit(write(tmp_path, state))


def test_unknown_channel_layout_is_refused(tmp_path):
    state = _tiny_wan_state(in_dim=48)  # 48 in, 16 out: Fun-Control style
    with pytest.raises(DetectionError, match="48 input and 16 output channels"):
        inspect_dit(write(tmp_path, state))


def test_truncated_file(tmp_path):
    path = write(tmp_path, _tiny_wan_state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated.*download the file again"):
        inspect_dit(path)


def test_missing_shard_and_orphan_shard(tmp_path):
    first = synthetic.save_sharded(_tiny_wan_state(), tmp_path / "sharded", WanConfig(dim=256, **BASE), shards=3)
    (tmp_path / "sharded" / first.name.replace("00001", "00002")).unlink()
    with pytest.raises(CheckpointError, match="missing.*00002-of-00003"):
        inspect_dit(first)
    (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").unlink()
    with pytest.raises(CheckpointError, match="no \\*.index.json"):
        inspect_dit(first)


def test_incomplete_model_is_refused_at_load(tmp_path):
    state = _tiny_wan_state()
    del state["blocks.1.ffn.2.bias"]
    runtime.set_models_dir(tmp_path)
    MODULES.clear()
    try:
        write(tmp_path / "diffusion_models", state, name="partial.safetensors")
        with pytest.raises(CheckpointError, match="1 missing tensors.*blocks.1.ffn.2.bias"):
            OpenReelDiTLoader().load("partial.safetensors", "auto", "fp32")
    finally:
        runtime.set_models_dir(None)


def test_pickles_with_code_are_never_run(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"head.modulation": Payload()}))
    with pytest.raises(CheckpointError, match="never unpickles"):
        inspect_dit(path)


def test_node_errors_name_the_node_and_the_remedy(tmp_path):
    runtime.set_models_dir(tmp_path)
    try:
        with pytest.raises(InputError, match=r"^OpenReel DiT Loader: model file 'nope.safetensors' was not found .*"
                                             r"Put it in one of them"):
            OpenReelDiTLoader().load("nope.safetensors", "auto", "fp32")
        write(tmp_path / "diffusion_models", {"encoder.conv1.weight": torch.zeros(3), "decoder.conv_in.weight":
                                              torch.zeros(3)}, name="vae.safetensors")
        with pytest.raises(DetectionError, match=r"^OpenReel DiT Loader: vae.safetensors is a video VAE.*VAE Loader"):
            OpenReelDiTLoader().load("vae.safetensors", "auto", "fp32")
    finally:
        runtime.set_models_dir(None)


def test_model_input_errors():
    model = WanDiT(WanConfig(dim=256, **BASE))
    ctx = torch.zeros(1, 5, 64)
    with pytest.raises(InputError, match="36 channels.*takes 16"):
        model(torch.zeros(1, 16, 1, 2, 2), torch.tensor([1.0]), ctx, y=torch.zeros(1, 20, 1, 2, 2))
    with pytest.raises(InputError, match="not a multiple of the patch size"):
        model(torch.zeros(1, 16, 1, 3, 2), torch.tensor([1.0]), ctx)
    with pytest.raises(InputError, match="text embeddings"):
        model(torch.zeros(1, 16, 1, 2, 2), torch.tensor([1.0]), torch.zeros(1, 5, 32))
    with pytest.raises(InputError, match="timesteps of shape"):
        model(torch.zeros(1, 16, 2, 2, 2), torch.zeros(1, 3), ctx)
