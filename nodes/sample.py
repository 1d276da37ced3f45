"""Sampling nodes: latents and image conditioning in, denoised latents out."""
from __future__ import annotations

from dataclasses import replace

from ..encoding.images import encode_image
from ..encoding.video import encode_video
from ..latents import empty_latent, latent_format, video_size_problems
from ..models.registry import vae_family_of
from ..samplers.batches import pair_images, stack_latents
from ..samplers.sample import SOLVER_CHOICES, sample
from ..samplers.schedules import linear_schedule, wan_unipc_schedule
from .common import EMBEDS_INPUT, SAMPLER_OUT_OF_MEMORY, SEED_INPUT, SIZE, OpenReelNode, mappings


class OpenReelEmptyLatent(OpenReelNode):
    """An empty latent video for text-to-video, sized for the VAE you will decode with (16 channels for the
    Wan2.1 and HunyuanVideo VAEs, 48 for the Wan2.2 VAE, 64 for Step-Video's). Width and height must be multiples
    of 16 (32 for the Wan2.2 VAE); frames must be 4n+1 (81 = 5 s at 16 fps), for Step-Video 17n (204)."""

    NODE_ID = "OpenReelEmptyLatent"
    DISPLAY_NAME = "OpenReel Empty Latent"
    CATEGORY = "OpenReel/latent"
    FUNCTION = "make"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("OPENREEL_VAE", {"tooltip": "Decides the latent format (channels and stride)."}),
            "width": ("INT", {"default": 832, **SIZE, "tooltip": "Video width in pixels."}),
            "height": ("INT", {"default": 480, **SIZE, "tooltip": "Video height in pixels."}),
            "frames": ("INT", {"default": 81, "min": 1, "max": 1025, "step": 1,
                               "tooltip": "Wan and HunyuanVideo: 4n+1 frames (81, 129). Step-Video: 17n (204)."}),
            "batch": ("INT", {"default": 1, "min": 1, "max": 16,
                              "tooltip": "Videos made at once. Video k (from 0) takes the noise of seed + k, so it "
                                         "can be made again alone with that seed. OpenReel Save Video writes one "
                                         "file per video."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width: int = 16, height: int = 16, frames: int = 1):
        return "; ".join(video_size_problems(width, height, frames)) or True

    def make(self, vae, width: int, height: int, frames: int, batch: int):
        return (empty_latent(latent_format(vae.latent_format), width, height, frames, batch),)


class OpenReelImageToVideo(OpenReelNode):
    """Image conditioning for image-to-video. With the Wan2.1 VAE: Wan2.1 I2V (connect clip_vision), FLF2V (connect
    end_image and clip_vision), Wan2.2 I2V-A14B and SkyReels-V2 I2V (no clip_vision for Wan2.2). With the Wan2.2
    VAE: Wan2.2 TI2V-5B image mode. Images are centre-cropped to the video's aspect and resized. A batch of n start
    images makes n videos, one from each (with one end image for all, or one per start image)."""

    NODE_ID = "OpenReelImageToVideo"
    DISPLAY_NAME = "OpenReel Image To Video"
    CATEGORY = "OpenReel/latent"
    FUNCTION = "make"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("OPENREEL_VAE", {"tooltip": "Encodes the image (Wan2.2 VAE for TI2V-5B, else Wan2.1 VAE)."}),
                "start_image": ("IMAGE", {"tooltip": "The first frame of the video; n images make n videos."}),
                "width": ("INT", {"default": 832, **SIZE, "tooltip": "Video width in pixels."}),
                "height": ("INT", {"default": 480, **SIZE, "tooltip": "Video height in pixels."}),
                "frames": ("INT", {"default": 81, "min": 1, "max": 1025, "step": 4, "tooltip": "4n+1 frames."}),
            },
            "optional": {
                "clip_vision": ("OPENREEL_CLIP_VISION", {"tooltip": "Wan2.1 I2V / FLF2V and SkyReels-V2 I2V need it; "
                                                                    "Wan2.2 models do not use it."}),
                "end_image": ("IMAGE", {"tooltip": "The last frame, for first-last-frame models (FLF2V); one "
                                                   "for all videos or one per start image."}),
            },
        }

    VALIDATE_INPUTS = OpenReelEmptyLatent.VALIDATE_INPUTS

    def make(self, vae, start_image, width: int, height: int, frames: int, clip_vision=None, end_image=None):
        clip = None if clip_vision is None else (lambda images: encode_image(clip_vision, images))
        family = vae_family_of(vae)
        latents = [family.image_to_video(vae.spec, lambda video: encode_video(vae, video), start, width, height,
                                         frames, end=end, clip_tokens=clip)
                   for start, end in pair_images(start_image, end_image)]
        return (stack_latents(latents),)


SWITCH = ("enable", "disable")
_ADD_NOISE_TOOLTIP = (
    "enable: noise from the seed is added to the latent at the schedule's first noise level. disable: the latent "
    "already holds its noise (from a sampler before this one with leftover noise), as KSamplerAdvanced. For "
    "two-stage sampling: SplitSigmas, the first sampler with the high sigmas, the second with the low sigmas and "
    "add_noise disabled. With euler the two stages give exactly one sampler's result; the multistep solvers "
    "(official/unipc, dpm++_2m) start their history afresh at the split, so the result differs slightly.")
_LEFTOVER_TOOLTIP = (
    "Only matters when the sigmas end above 0 (e.g. the high part of SplitSigmas). enable: return the latent "
    "with the noise left at the last sigma, for a next sampler with add_noise disabled. disable: the last step "
    "goes to 0 instead, denoising to the end (KSamplerAdvanced's return_with_leftover_noise).")


class OpenReelSampler(OpenReelNode):
    """Flow-matching sampler for every model OpenReel runs (Wan2.1/2.2, SkyReels-V2, HunyuanVideo). Give one DiT,
    or a Wan2.2 A14B pair: the high-noise expert in `dit` and the low-noise expert in `dit_low_noise`; the sampler
    switches at the boundary (official rule: timestep ≥ boundary·1000 uses the high-noise expert) and keeps only the
    active expert on the GPU. Zero in steps, cfg, shift, cfg_low_noise or boundary means the official default for
    the detected model (HunyuanVideo: 50 steps, shift 7, cfg 1 with embedded guidance 6). A latent of n videos
    gives n videos (one prompt serves all). add_noise and return_with_leftover_noise chain samplers as
    KSamplerAdvanced does (see their tooltips)."""

    NODE_ID = "OpenReelSampler"
    DISPLAY_NAME = "OpenReel Sampler"
    OUT_OF_MEMORY_TODO = SAMPLER_OUT_OF_MEMORY
    CATEGORY = "OpenReel/sampling"
    FUNCTION = "run"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dit": ("OPENREEL_DIT", {"tooltip": "The model, or the HIGH-noise expert of a Wan2.2 A14B pair."}),
                "embeds": EMBEDS_INPUT,
                "latent": ("LATENT", {"tooltip": "From OpenReel Empty Latent (text-to-video) or Image To Video."}),
                "seed": SEED_INPUT,
                "steps": ("INT", {"default": 0, "min": 0, "max": 1000,
                                  "tooltip": "Denoising steps; 0 = official default (Wan2.1 50, Wan2.2 A14B 40, "
                                             "TI2V-5B 50, SkyReels DF 30, HunyuanVideo 50)."}),
                "cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                  "tooltip": "Guidance scale (of the high-noise expert for a pair); 0 = official "
                                             "default; 1 = no guidance (one model call per step)."}),
                "shift": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                    "tooltip": "Flow shift σ' = sσ/(1+(s-1)σ); 0 = official default (Wan2.1 T2V 5, "
                                               "Wan2.2 T2V-A14B 12, I2V 5 (3 at 480p for Wan2.1), FLF2V 16, "
                                               "HunyuanVideo 7)."}),
                "solver": (list(SOLVER_CHOICES), {"default": "official",
                                                  "tooltip": "official: the model's own (Wan: unipc; HunyuanVideo: "
                                                             "euler); unipc: Wan's FlowUniPC; dpm++_2m: Wan's "
                                                             "FlowDPM; euler: first order."}),
            },
            "optional": {
                "dit_low_noise": ("OPENREEL_DIT", {"tooltip": "The LOW-noise expert of a Wan2.2 A14B pair."}),
                "cfg_low_noise": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                            "tooltip": "Guidance of the low-noise expert; 0 = official default "
                                                       "(T2V 3.0, I2V 3.5)."}),
                "boundary": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.005,
                                       "tooltip": "Switch point as a fraction of the noise level; 0 = official "
                                                  "default (T2V 0.875, I2V 0.900)."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                      "tooltip": "Below 1: video-to-video from the latent's content (VAE Encode)."}),
                "sigmas": ("SIGMAS", {"tooltip": "A custom noise schedule (e.g. from ComfyUI's sigma nodes); "
                                                 "replaces steps and shift."}),
                "add_noise": (list(SWITCH), {"default": "enable", "tooltip": _ADD_NOISE_TOOLTIP}),
                "return_with_leftover_noise": (list(SWITCH), {"default": "enable", "tooltip": _LEFTOVER_TOOLTIP}),
            },
        }

    def run(self, dit, embeds, latent, seed, steps, cfg, shift, solver, dit_low_noise=None, cfg_low_noise=0.0,
            boundary=0.0, denoise=1.0, sigmas=None, add_noise="enable", return_with_leftover_noise="enable"):
        return (sample(dit, embeds, latent, seed=seed, steps=steps, guidance=cfg, shift=shift, solver=solver,
                       dit_low_noise=dit_low_noise, guidance_low_noise=cfg_low_noise, boundary=boundary,
                       denoise=denoise, sigmas=sigmas, add_noise=add_noise == "enable",
                       leftover_noise=return_with_leftover_noise == "enable"),)


class OpenReelEmbeddedGuidance(OpenReelNode):
    """Sets the guidance scale a guidance-distilled model takes as an input (HunyuanVideo T2V: official 6.0). It
    travels with the embeddings, like ComfyUI's FluxGuidance; without this node the model's official value is used.
    It is not classifier-free guidance: that is the sampler's cfg (off at 1.0, one model call per step)."""

    NODE_ID = "OpenReelEmbeddedGuidance"
    DISPLAY_NAME = "OpenReel Embedded Guidance"
    CATEGORY = "OpenReel/conditioning"
    FUNCTION = "apply"
    RETURN_TYPES = ("OPENREEL_EMBEDS",)
    RETURN_NAMES = ("embeds",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "embeds": EMBEDS_INPUT,
            "guidance": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                   "tooltip": "The distilled guidance scale (HunyuanVideo's official value is 6.0). "
                                              "Models without embedded guidance ignore it."}),
        }}

    def apply(self, embeds, guidance: float):
        return (replace(embeds, embedded_guidance=float(guidance)),)


class OpenReelSchedule(OpenReelNode):
    """Wan's noise schedules as ComfyUI SIGMAS, so native sigma nodes (SplitSigmas, …) can cut or inspect them and
    OpenReel Sampler (or a native sampler) can use them. wan_unipc: the official FlowUniPC table (σ from 0.999);
    linear: σ = linspace(1, 0) shifted (Wan's DPM++ and HunyuanVideo's)."""

    NODE_ID = "OpenReelSchedule"
    DISPLAY_NAME = "OpenReel Schedule"
    CATEGORY = "OpenReel/sampling"
    FUNCTION = "make"
    RETURN_TYPES = ("SIGMAS",)
    RETURN_NAMES = ("sigmas",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "schedule": (["wan_unipc", "linear"], {"default": "wan_unipc", "tooltip": "Which table (see description)."}),
            "steps": ("INT", {"default": 40, "min": 1, "max": 1000, "tooltip": "Denoising steps."}),
            "shift": ("FLOAT", {"default": 5.0, "min": 0.01, "max": 100.0, "step": 0.1,
                                "tooltip": "Flow shift σ' = sσ/(1+(s-1)σ)."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                  "tooltip": "Below 1: the tail of a longer schedule, for video-to-video."}),
        }}

    def make(self, schedule: str, steps: int, shift: float, denoise: float):
        build = wan_unipc_schedule if schedule == "wan_unipc" else linear_schedule
        return (build(steps, shift, denoise).sigmas,)


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(OpenReelEmptyLatent, OpenReelImageToVideo, OpenReelSampler,
                                                           OpenReelEmbeddedGuidance, OpenReelSchedule)
