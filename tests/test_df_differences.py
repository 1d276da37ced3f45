"""Where diffusers' SkyReels-V2 diffusion-forcing pipeline differs from the original code, OpenReel follows the
original; each difference is named here (the original's behaviour itself is checked in test_df_plan.py and
test_diffusion_forcing.py)."""
from __future__ import annotations

import pytest
import torch

from openreel.errors import InputError
from openreel.samplers.df_plan import plan_windows
from openreel.samplers.schedules import wan_unipc_schedule
from references import load_official_util, require


def test_scheduler_table_is_the_originals_flow_unipc_not_diffusers_unipc():
    require("diffusers")
    from diffusers import UniPCMultistepScheduler

    theirs = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0)
    theirs.set_timesteps(30)
    original = load_official_util("fm_solvers_unipc.py").FlowUniPCMultistepScheduler(
        num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    original.set_timesteps(30, shift=8.0)
    ours = wan_unipc_schedule(30, 8.0)
    assert torch.equal(ours.timesteps, original.timesteps)
    assert not torch.equal(ours.timesteps, theirs.timesteps.long())  # diffusers' table is another one


def test_frame_counts_that_are_not_4n_plus_1_are_refused_not_rounded():
    # diffusers rounds 120 frames up to 121 (31 latent frames); the original floors to 30; OpenReel asks
    with pytest.raises(InputError, match="num_frames is 120, not of the form 4n\\+1.*117 or 121"):
        plan_windows(120, 97, 17)


def test_causal_blocks_do_not_switch_attention_to_causal():
    # diffusers turns block-causal attention on whenever causal_block_size > 1; the original only with
    # --causal_attention (the released models were not trained for it): see test_diffusion_forcing_node.py's
    # test_block_causal_attention_only_when_asked for the model calls themselves
    from openreel.nodes.diffusion_forcing import OpenReelDiffusionForcingSampler

    default = OpenReelDiffusionForcingSampler.INPUT_TYPES()["required"]["causal_attention"][1]["default"]
    assert default is False
