"""The CONDITIONING bridge (encoding/conditioning.py, nodes/conditioning.py) on hand-built CONDITIONING in the format
ComfyUI 0.3.64's CLIPTextEncode gives (no ComfyUI needed):
- CLIPLoader(type=wan): [[float32 [1, max(512, n), width] with the rows after EOS zeroed, {"pooled_output": None}]]
- DualCLIPLoader(type=hunyuan_video): [[float32 [1, n, width] (template cropped), {"pooled_output": [1, 768]}]],
  "attention_mask" [1, n] only where a row is padding, "guidance" after FluxGuidance."""
import pytest
import torch

from openreel import synthetic
from openreel.encoding.conditioning import ENCODERS, conditioning_to_embeds, embeds_to_conditioning
from openreel.errors import InputError
from openreel.handles import TextEmbeds
from openreel.latents import empty_latent, latent_format
from openreel.model_loaders.cache import MODULES
from openreel.model_loaders.dit import load_dit
from openreel.nodes.conditioning import OpenReelConditioningToEmbeds, OpenReelEmbedsToConditioning
from openreel.samplers.sample import sample

WIDTH, POOLED = synthetic.TINY_WAN.text_dim, 12


def _rows(n: int, seed: int, width: int = WIDTH) -> torch.Tensor:
    return torch.randn(1, n, width, generator=torch.Generator().manual_seed(seed))


def _umt5(rows: torch.Tensor) -> list:
    """CLIPTextEncode's output for CLIPLoader(type=wan): zero rows up to 512 tokens, no pooled vector."""
    padded = torch.cat([rows, rows.new_zeros(1, max(0, 512 - rows.shape[1]), rows.shape[2])], dim=1)
    return [[padded.float(), {"pooled_output": None}]]


def _hunyuan(rows: torch.Tensor, pooled: torch.Tensor, **extra) -> list:
    """CLIPTextEncode's output for DualCLIPLoader(type=hunyuan_video): the cropped Llama rows and CLIP-L's pooled."""
    return [[rows.float(), {"pooled_output": pooled.float(), **extra}]]


def _same(a: TextEmbeds, b: TextEmbeds) -> bool:
    fields = ("positive", "negative", "positive_pooled", "negative_pooled", "positive_mask", "negative_mask")
    for name in fields:
        x, y = getattr(a, name), getattr(b, name)
        if (x is None) != (y is None) or (x is not None and not torch.equal(x, y)):
            return False
    return a.embedded_guidance == b.embedded_guidance


def test_umt5_conditioning_loses_its_zero_padding():
    pos, neg = _rows(7, 1), _rows(3, 2)
    embeds = conditioning_to_embeds(_umt5(pos), _umt5(neg), "umt5")
    assert torch.equal(embeds.positive, pos) and torch.equal(embeds.negative, neg)
    assert embeds.positive_pooled is None and embeds.positive_mask is None and embeds.embedded_guidance is None


def test_umt5_prompt_of_512_tokens_fits_and_a_longer_one_is_refused():
    full = _rows(512, 3)
    assert torch.equal(conditioning_to_embeds(_umt5(full), _umt5(_rows(2, 4)), "umt5").positive, full)
    with pytest.raises(InputError, match="positive is 530 umT5 tokens long, and Wan models take at most 512"):
        conditioning_to_embeds(_umt5(_rows(530, 3)), None, "umt5")


def test_missing_negative_is_the_positive_zeroed_out():
    embeds = conditioning_to_embeds(_umt5(_rows(5, 1)), None, "umt5")
    assert torch.equal(embeds.negative, torch.zeros(1, 1, WIDTH))  # the padding alone: the DiT pads with zeros too
    pooled = torch.randn(1, POOLED)
    embeds = conditioning_to_embeds(_hunyuan(_rows(4, 1), pooled, guidance=3.5), None, "llama")
    assert torch.equal(embeds.negative, torch.zeros(1, 4, WIDTH))
    assert torch.equal(embeds.negative_pooled, torch.zeros(1, POOLED)) and embeds.embedded_guidance == 3.5


def test_hunyuan_conditioning_gives_rows_pooled_vector_and_embedded_guidance():
    pos, neg, pooled = _rows(6, 1), _rows(2, 2), torch.randn(2, 1, POOLED)
    embeds = conditioning_to_embeds(_hunyuan(pos, pooled[0], guidance=6.0), _hunyuan(neg, pooled[1]), "llama")
    assert torch.equal(embeds.positive, pos) and torch.equal(embeds.negative, neg)
    assert torch.equal(embeds.positive_pooled, pooled[0]) and torch.equal(embeds.negative_pooled, pooled[1])
    assert embeds.embedded_guidance == 6.0


def test_an_attention_mask_keeps_only_the_real_rows():
    rows, mask = _rows(5, 1), torch.tensor([[1, 1, 1, 0, 0]])
    embeds = conditioning_to_embeds(_hunyuan(rows, torch.ones(1, POOLED), attention_mask=mask),
                                    _hunyuan(rows, torch.ones(1, POOLED)), "llama")
    assert torch.equal(embeds.positive, rows[:, :3]) and torch.equal(embeds.negative, rows)


def test_to_conditioning_gives_clip_text_encodes_umt5_format():
    embeds = TextEmbeds(_rows(7, 1).bfloat16(), _rows(3, 2).bfloat16())
    positive, negative = embeds_to_conditioning(embeds)
    for cond, rows in ((positive, embeds.positive), (negative, embeds.negative)):
        (tensor, extra), = cond
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu" and tensor.shape == (1, 512, WIDTH)
        assert extra == {"pooled_output": None}
        assert torch.equal(tensor[:, :rows.shape[1]], rows.float()) and not tensor[:, rows.shape[1]:].any()


def test_to_conditioning_gives_the_hunyuan_format_with_guidance():
    pooled = torch.randn(2, 1, POOLED)
    embeds = TextEmbeds(_rows(6, 1), _rows(2, 2), positive_pooled=pooled[0], negative_pooled=pooled[1],
                        embedded_guidance=4.0)
    (pos, pos_extra), = embeds_to_conditioning(embeds)[0]
    assert pos.shape == (1, 6, WIDTH) and set(pos_extra) == {"pooled_output", "guidance"}
    assert torch.equal(pos_extra["pooled_output"], pooled[0]) and pos_extra["guidance"] == 4.0


@pytest.mark.parametrize("kind", ["umt5", "llama"])
def test_round_trips_are_exact(kind):
    pooled = torch.randn(2, 1, POOLED) if kind == "llama" else (None, None)
    embeds = TextEmbeds(_rows(9, 1), _rows(4, 2), positive_pooled=pooled[0], negative_pooled=pooled[1],
                        embedded_guidance=5.0 if kind == "llama" else None)
    assert _same(conditioning_to_embeds(*embeds_to_conditioning(embeds), kind), embeds)
    native = (_umt5(_rows(9, 1)), _umt5(_rows(4, 2))) if kind == "umt5" else \
        (_hunyuan(_rows(9, 1), pooled[0]), _hunyuan(_rows(4, 2), pooled[1]))
    back = embeds_to_conditioning(conditioning_to_embeds(*native, kind))
    for ours, theirs in zip(back, native):
        assert torch.equal(ours[0][0], theirs[0][0]) and ours[0][1].keys() == theirs[0][1].keys()


def test_step_video_embeddings_have_no_native_conditioning():
    embeds = TextEmbeds(_rows(4, 1), _rows(4, 2), positive_2=_rows(77, 3), negative_2=_rows(77, 4))
    with pytest.raises(InputError, match="OpenReel To Conditioning: these are Step-Video embeddings"):
        OpenReelEmbedsToConditioning().convert(embeds)


def _umt5_with(**extra) -> list:
    cond = _umt5(_rows(3, 1))
    cond[0][1].update(extra)
    return cond


@pytest.mark.parametrize("positive, kind, message", [
    ("not conditioning", "umt5", "positive is not ComfyUI CONDITIONING"),
    ([], "umt5", "positive is not ComfyUI CONDITIONING"),
    ([[torch.zeros(1, 4, WIDTH)]], "umt5", "positive is not ComfyUI CONDITIONING"),
    (_umt5(_rows(3, 1)) + _umt5(_rows(3, 2)), "umt5", "positive holds 2 conditioning entries"),
    ([[torch.zeros(2, 512, WIDTH), {"pooled_output": None}]], "umt5", r"shape \(2, 512, 64\), not one prompt's"),
    ([[torch.zeros(512, WIDTH), {"pooled_output": None}]], "umt5", r"shape \(512, 64\)"),
    (_umt5_with(area=(64, 64, 0, 0), strength=1.0), "umt5", r"carries an area \(Conditioning Set Area\)"),
    (_umt5_with(mask=torch.ones(1, 8, 8)), "umt5", r"carries a mask \(Conditioning Set Mask\)"),
    (_umt5_with(start_percent=0.0, end_percent=0.5), "umt5", "carries a timestep range"),
    (_umt5_with(concat_latent_image=torch.zeros(1, 16, 2, 4, 4)), "umt5", "carries image-to-video inputs"),
    (_umt5_with(hooks=object()), "umt5", "carries LoRA hooks"),
    (_umt5_with(something_new=1), "umt5", "carries 'something_new'"),
    (_umt5_with(guidance=3.5), "umt5", "embedded guidance scale .FluxGuidance., which Wan models do not take"),
    (_hunyuan(_rows(77, 1, 768), torch.zeros(1, 768)), "umt5", "carries a pooled vector of width 768"),
    (_umt5(_rows(3, 1)), "llama", r"positive has no CLIP-L pooled vector \[1, width\] \(none\)"),
    (_hunyuan(_rows(5, 1), torch.zeros(1, POOLED), attention_mask=torch.ones(1, 4)), "llama",
     r"attention mask has shape \(1, 4\) but its token states \(1, 5, 64\)"),
])
def test_conditioning_we_cannot_honour_is_refused_naming_the_node(positive, kind, message):
    node = OpenReelConditioningToEmbeds()
    with pytest.raises(InputError, match="^OpenReel From Conditioning: .*" + message):
        node.convert(positive, ENCODERS[kind])


@pytest.mark.parametrize("negative, kind, message", [
    (_umt5(_rows(3, 1, 32)), "umt5", "positive is 64 wide but negative 32"),
    (_hunyuan(_rows(3, 1), torch.zeros(1, 8)), "llama", r"pooled vectors are 12 \(positive\) and 8 \(negative\)"),
    (_hunyuan(_rows(3, 1), torch.zeros(1, POOLED), guidance=2.0), "llama", "different embedded guidance scales"),
])
def test_a_negative_that_does_not_match_the_positive_is_refused(negative, kind, message):
    positive = _umt5(_rows(3, 2)) if kind == "umt5" else _hunyuan(_rows(3, 2), torch.ones(1, POOLED), guidance=6.0)
    with pytest.raises(InputError, match="^OpenReel From Conditioning: .*" + message):
        OpenReelConditioningToEmbeds().convert(positive, ENCODERS[kind], negative)


def test_bridge_nodes_are_registered_for_comfyui_and_the_runner():
    from openreel import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from openreel.runner import NODE_CLASS_MAPPINGS as RUNNER_NODES

    for cls in (OpenReelConditioningToEmbeds, OpenReelEmbedsToConditioning):
        assert NODE_CLASS_MAPPINGS[cls.NODE_ID] is cls and RUNNER_NODES[cls.NODE_ID] is cls
    assert NODE_DISPLAY_NAME_MAPPINGS["OpenReelConditioningToEmbeds"] == "OpenReel From Conditioning"
    assert NODE_DISPLAY_NAME_MAPPINGS["OpenReelEmbedsToConditioning"] == "OpenReel To Conditioning"


def test_sampler_fed_from_native_conditioning_gives_the_same_latent(tmp_path):
    """A tiny Wan DiT with classifier-free guidance: CLIPTextEncode-format conditioning through OpenReel From
    Conditioning samples exactly what the same tensors as OpenReel embeddings do."""
    path = synthetic.save_single(synthetic.wan_state_dict(), tmp_path / "wan.safetensors", prefix=synthetic.COMFY_PREFIX)
    pos, neg = _rows(7, 1), _rows(3, 2)
    (converted,) = OpenReelConditioningToEmbeds().convert(_umt5(pos), ENCODERS["umt5"], _umt5(neg))
    try:
        dit = load_dit(path, "auto", "fp32")
        latent = empty_latent(latent_format(dit.spec.latent_format), 32, 32, 5)
        runs = [sample(dit, embeds, latent, seed=3, steps=2, guidance=4.0)["samples"]
                for embeds in (TextEmbeds(pos, neg), converted)]
    finally:
        MODULES.clear()
    assert torch.equal(runs[0], runs[1]) and runs[0].abs().sum() > 0
