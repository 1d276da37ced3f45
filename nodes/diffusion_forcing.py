"""The diffusion-forcing sampler node: SkyReels-V2 DF videos of any length, the window loop inside the node."""
from __future__ import annotations

from ..samplers.sample import JOINS, SOLVER_CHOICES, sample_diffusion_forcing
from .common import EMBEDS_INPUT, SAMPLER_OUT_OF_MEMORY, SEED_INPUT, SIZE, OpenReelNode, mappings


class OpenReelDiffusionForcingSampler(OpenReelNode):
    """Makes a video of any length with a SkyReels-V2 diffusion-forcing model (DF-1.3B-540P, DF-14B-540P/720P),
    window by window inside this node: each window of base_num_frames continues the last overlap_history frames of
    the one before, or from the end of a video to extend. Synchronous (ar_step 0: all frames of a window at one
    noise level) or asynchronous (ar_step > 0: causal blocks of frames trail one another). Optional start and end
    images. The result is one LATENT of the whole video: decode it with OpenReel VAE Decode or stream it into
    OpenReel Save Video. Every setting is checked before any model runs (frame counts, window plan, causal blocks),
    with the nearest working numbers."""

    NODE_ID = "OpenReelDiffusionForcingSampler"
    DISPLAY_NAME = "OpenReel Diffusion Forcing Sampler"
    OUT_OF_MEMORY_TODO = SAMPLER_OUT_OF_MEMORY
    CATEGORY = "OpenReel/sampling"
    FUNCTION = "run"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dit": ("OPENREEL_DIT", {"tooltip": "A SkyReels-V2 DF model."}),
                "embeds": EMBEDS_INPUT,
                "vae": ("OPENREEL_VAE", {"tooltip": "The Wan2.1 VAE: encodes start / end images and, with the "
                                                    "vae_roundtrip join, the end of each window."}),
                "width": ("INT", {"default": 960, **SIZE, "tooltip": "Video width (540P models: 960×544)."}),
                "height": ("INT", {"default": 544, **SIZE, "tooltip": "Video height."}),
                "num_frames": ("INT", {"default": 257, "min": 1, "max": 100_001, "step": 4,
                                       "tooltip": "Frames of the whole video, 4n+1 (257 ≈ 10 s at 24 fps)."}),
                "base_num_frames": ("INT", {"default": 97, "min": 5, "max": 1025, "step": 4,
                                            "tooltip": "Frames per window, 4n+1 (the models were trained on 97 at "
                                                       "540P, 121 at 720P)."}),
                "overlap_history": ("INT", {"default": 17, "min": 1, "max": 1021, "step": 4,
                                            "tooltip": "Frames each window takes over from the one before, 4n+1 "
                                                       "(17 or 37 recommended)."}),
                "ar_step": ("INT", {"default": 0, "min": 0, "max": 100,
                                    "tooltip": "0: synchronous. > 0: asynchronous, each causal block trails the one "
                                               "before by this many steps (5 with causal_block_size 5 in the "
                                               "official recipe); more model calls, smoother motion across a "
                                               "window."}),
                "causal_block_size": ("INT", {"default": 1, "min": 1, "max": 32,
                                              "tooltip": "Latent frames denoised together (5 for asynchronous "
                                                         "runs). Every window must be whole blocks."}),
                "addnoise_condition": ("INT", {"default": 0, "min": 0, "max": 60,
                                               "tooltip": "Noise added to the frames a window continues from (0.001 "
                                                          "× this, model told t = this): 20 recommended for long "
                                                          "videos, against drift; above 60 hurts consistency."}),
                "seed": SEED_INPUT,
                "steps": ("INT", {"default": 0, "min": 0, "max": 1000,
                                  "tooltip": "Denoising steps per frame; 0 = official (30)."}),
                "cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                  "tooltip": "Guidance scale; 0 = official (6.0)."}),
                "shift": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                    "tooltip": "Flow shift; 0 = official (8.0)."}),
                "fps": (["24", "16"], {"default": "24", "tooltip": "DF-1.3B's fps embedding (24 or 16); the other "
                                                             "models ignore it."}),
                "join": (list(JOINS), {"default": "vae_roundtrip",
                                       "tooltip": "How a window continues the one before. vae_roundtrip: as the "
                                                  "original — the last overlap_history frames are decoded and "
                                                  "encoded again. reuse_latents: their latents are reused "
                                                  "(diffusers' way): no VAE pass per window and less colour drift "
                                                  "at joins, but not the original's numbers."}),
                "solver": (list(SOLVER_CHOICES), {"default": "unipc", "tooltip": "unipc: the original's FlowUniPC."}),
                "causal_attention": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Block-causal attention over causal blocks (the original's --causal_attention). Off "
                               "by default, as in the original: the released DF models were not trained for it."}),
            },
            "optional": {
                "start_image": ("IMAGE", {"tooltip": "The first frame (image-to-video), kept as given."}),
                "end_image": ("IMAGE", {"tooltip": "The last frame, kept as given."}),
                "extend_video": ("IMAGE", {"tooltip": "Frames of a video to continue (e.g. from OpenReel Load Video): "
                                                      "the first window starts from its last overlap_history "
                                                      "frames. The output (num_frames frames) starts with those, "
                                                      "then continues: join it after your video from frame "
                                                      "overlap_history on."}),
                "extend_latent": ("LATENT", {"tooltip": "Or the latent of a video to continue (e.g. this node's own "
                                                        "output, for one more stretch): its last overlap_history "
                                                        "frames are decoded and continued the same way."}),
            },
        }

    def run(self, dit, embeds, vae, width, height, num_frames, base_num_frames, overlap_history, ar_step,
            causal_block_size, addnoise_condition, seed, steps, cfg, shift, fps, join, solver, causal_attention,
            start_image=None, end_image=None, extend_video=None, extend_latent=None):
        return (sample_diffusion_forcing(
            dit, embeds, vae, width=width, height=height, num_frames=num_frames, base_num_frames=base_num_frames,
            overlap_history=overlap_history, seed=seed, ar_step=ar_step, causal_block_size=causal_block_size,
            addnoise_condition=addnoise_condition, steps=steps, guidance=cfg, shift=shift, fps=int(fps),
            solver=solver, join=join, causal_attention=causal_attention, start_image=start_image,
            end_image=end_image, extend_video=extend_video, extend_latent=extend_latent),)


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(OpenReelDiffusionForcingSampler)
