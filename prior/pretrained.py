"""The ``diffusers`` backend: pretrained latent video diffusion models from a local directory.

Three families, each reduced to the same noise residual ``eps_pred - eps`` in latent space:

- ``UNet3DConditionModel`` (ModelScope / Zeroscope text-to-video): per-frame ``AutoencoderKL``,
  DDPM/DDIM schedule, epsilon prediction.
- ``UNetSpatioTemporalConditionModel`` (Stable Video Diffusion, image-to-video): per-frame VAE
  encoder, EDM (Karras et al. 2022) sigmas from its ``EulerDiscreteScheduler``, v-prediction.
  With ``x_t = x_0 + sigma * eps`` and the EDM denoiser ``D``, ``eps_pred = (x_t - D) / sigma``.
- ``WanTransformer3DModel`` + ``AutoencoderKLWan`` (Wan 2.x, text- or image-to-video): a causal
  3-D VAE (frame count 4k+1), rectified flow ``x_t = (1 - sigma) x_0 + sigma * eps`` with velocity
  prediction ``v = eps - x_0``, so ``eps_pred = x_t + (1 - sigma) * v_pred``.

Renders are resized to the model's resolution (and, for Wan, resampled in time to 4k+1 frames)
before encoding; only the VAE *encoder* is on the gradient path.  Text and image embeddings are
handed in once as tensors and kept on the device (the text and CLIP encoders live in
``transformers``, which this package does not require: compute them once with the model's
pipeline and save them, e.g. with safetensors).  Weights load offline with
``from_pretrained(..., local_files_only=True)`` and are placed by :class:`~.runtime.Runtime`
(accelerate device, offload, half precision on GPU).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .conditioning import Conditioning
from .runtime import Runtime, RuntimeConfig
from .sds import SDSConfig, VideoPrior

Kind = Literal["auto", "unet3d", "svd", "wan"]

_CLASS_TO_KIND = {
    "UNet3DConditionModel": "unet3d",
    "UNetSpatioTemporalConditionModel": "svd",
    "WanTransformer3DModel": "wan",
}


def detect_kind(path: str | Path) -> str:
    """Which family a diffusers pipeline folder holds, from its ``model_index.json`` or sub-folders."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"pretrained prior folder {path} does not exist")
    for sub in ("unet", "transformer"):
        cfg = path / sub / "config.json"
        if cfg.is_file():
            name = json.loads(cfg.read_text()).get("_class_name", "")
            if name in _CLASS_TO_KIND:
                return _CLASS_TO_KIND[name]
            raise ValueError(f"{cfg}: model class {name!r} is not a supported video prior ({', '.join(_CLASS_TO_KIND)})")
    raise ValueError(f"{path} has no unet/ or transformer/ folder with a config.json")


def _resize_frames(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, T, C, H, W] -> [B, T, C, *size] (bilinear, differentiable; identity when already that size)."""
    b, t, c, h, w = clip.shape
    if (h, w) == tuple(size):
        return clip
    out = F.interpolate(clip.reshape(b * t, c, h, w), size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(b, t, c, *size)


def _embeds(x: torch.Tensor | None, runtime: Runtime, name: str, ndim: int = 3) -> torch.Tensor | None:
    if x is None:
        return None
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions [B, L, D], got {tuple(x.shape)}")
    return x.detach().to(runtime.device, runtime.weight_dtype)


def _batch(x: torch.Tensor, b: int) -> torch.Tensor:
    return x if x.shape[0] == b else x.expand(b, *x.shape[1:])


class _LatentPrior(VideoPrior):
    pixel_space = False

    def __init__(self, vae, runtime: Runtime, config: SDSConfig, resolution: tuple[int, int]):
        super().__init__(runtime, config)
        # VAEs stay in fp32 and outside autocast: SD's VAE overflows in fp16 (its pipelines upcast it),
        # Wan's pipelines keep theirs in fp32, and the encoder is the one piece we back-propagate through.
        self.vae = runtime.place(vae, dtype=torch.float32)
        self.resolution = tuple(resolution)

    def _encode_frames(self, clip: torch.Tensor) -> torch.Tensor:
        """Per-frame 2-D VAE: [B, T, 3, H, W] in [0, 1] -> [B, T, C, h, w] (posterior mean, unscaled)."""
        x = _resize_frames(clip, self.resolution)
        b, t = x.shape[:2]
        z = self.vae.encode((x * 2 - 1).flatten(0, 1).float()).latent_dist.mode()
        return z.float().reshape(b, t, *z.shape[1:])


class UNet3DPrior(_LatentPrior):
    """Text-to-video ``UNet3DConditionModel`` (epsilon prediction) with a per-frame ``AutoencoderKL``.

    prompt_embeds: [1, L, D] text embeddings of the prompt; negative_prompt_embeds: the same for
    the empty/negative prompt (needed for guidance).  Both are cached on the device.
    """

    def __init__(self, unet, vae, scheduler, runtime: Runtime, config: SDSConfig, prompt_embeds, negative_prompt_embeds=None, resolution=None):
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        size = unet.config.sample_size
        resolution = resolution or (size * scale, size * scale)
        super().__init__(vae, runtime, config, resolution)
        if prompt_embeds is None:
            raise ValueError("UNet3DConditionModel is text-conditioned: pass prompt_embeds [1, L, D]")
        self.unet = runtime.place(unet)
        self.scheduler = scheduler
        self.prompt_embeds = _embeds(prompt_embeds, runtime, "prompt_embeds")
        self.negative_prompt_embeds = _embeds(negative_prompt_embeds, runtime, "negative_prompt_embeds")
        if config.guidance_scale != 1.0 and self.negative_prompt_embeds is None:
            raise ValueError("classifier-free guidance needs negative_prompt_embeds")
        self._alphas_cumprod = scheduler.alphas_cumprod.to(torch.float32)

    def encode(self, clip):
        return self._encode_frames(clip) * self.vae.config.scaling_factor

    def timesteps_for(self, noise_levels):
        n = self.scheduler.config.num_train_timesteps
        return (noise_levels.clamp(0, 1) * (n - 1)).round().long().to(self.runtime.device)

    def add_noise(self, latents, noise, timesteps):
        return self.scheduler.add_noise(latents, noise, timesteps)

    def alpha_bar(self, timesteps):
        return self._alphas_cumprod[timesteps.cpu()]

    def prepare_condition(self, conditioning, batch):
        if conditioning is not None and conditioning.any_given:
            raise ValueError("UNet3DConditionModel (text-to-video) cannot take conditioning frames")
        uncond = self.negative_prompt_embeds if self.config.guidance_scale != 1.0 else None
        return _batch(self.prompt_embeds, batch), None if uncond is None else _batch(uncond, batch)

    def predict_noise(self, noisy, timesteps, condition):
        sample = noisy.permute(0, 2, 1, 3, 4).to(self.runtime.weight_dtype)  # [B, C, T, h, w]
        out = self.unet(sample, timesteps, encoder_hidden_states=condition, return_dict=False)[0]
        return out.permute(0, 2, 1, 3, 4)


class _SigmaLadder:
    """Noise levels on a descending ladder of scheduler sigmas (``self._sigmas``) with their
    continuous timesteps (``self._timesteps``): what SVD's Karras and Wan's flow-matching
    schedulers share.  A noise level in [0, 1] picks a rung; a timestep finds its rung back."""

    def _index(self, timesteps):
        return torch.searchsorted(-self._timesteps, -timesteps.cpu().float()).clamp(max=len(self._timesteps) - 1)

    def timesteps_for(self, noise_levels):
        idx = ((1 - noise_levels.clamp(0, 1)) * (len(self._sigmas) - 1)).round().long()
        return self._timesteps[idx].to(self.runtime.device)

    def _sigma(self, timesteps, like):
        s = self._sigmas[self._index(timesteps)].to(like.device)
        return s.reshape(-1, *([1] * (like.ndim - 1)))


class SVDPrior(_SigmaLadder, _LatentPrior):
    """Stable Video Diffusion (``UNetSpatioTemporalConditionModel``): image-to-video, EDM v-prediction.

    The first given frame of the conditioning is the image; its VAE latent is concatenated to every
    noisy frame as in the SVD pipeline.  image_embeds: [1, 1, D] CLIP image embedding of that frame
    (default: zeros, the model's own unconditional embedding).  fps, motion_bucket_id and
    noise_aug_strength are SVD's micro-conditioning.
    """

    def __init__(
        self,
        unet,
        vae,
        scheduler,
        runtime: Runtime,
        config: SDSConfig,
        image_embeds=None,
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.02,
        resolution=None,
        num_levels: int = 1000,
    ):
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        size = unet.config.sample_size
        resolution = resolution or (size * scale, size * scale)
        super().__init__(vae, runtime, config, resolution)
        self.unet = runtime.place(unet)
        self.scheduler = scheduler
        cross = unet.config.cross_attention_dim
        cross = cross if isinstance(cross, int) else cross[0]
        self.image_embeds = _embeds(image_embeds, runtime, "image_embeds")
        if self.image_embeds is None:
            self.image_embeds = torch.zeros(1, 1, cross, device=runtime.device, dtype=runtime.weight_dtype)
        self.noise_aug_strength = noise_aug_strength
        # SVD's pipeline passes fps - 1 (the model was trained on that convention).
        self.added_time_ids = torch.tensor([[fps - 1, motion_bucket_id, noise_aug_strength]], device=runtime.device)
        # The sigma ladder comes from the model's own scheduler (Karras sigmas, continuous timesteps).
        scheduler.set_timesteps(num_levels, device="cpu")
        self._sigmas = scheduler.sigmas[:-1].to(torch.float32)  # descending, last entry 0 dropped
        self._timesteps = scheduler.timesteps.to(torch.float32)

    def encode(self, clip):
        return self._encode_frames(clip) * self.vae.config.scaling_factor

    def add_noise(self, latents, noise, timesteps):
        return latents + self._sigma(timesteps, latents) * noise

    def alpha_bar(self, timesteps):
        s = self._sigmas[self._index(timesteps)]
        return 1.0 / (1.0 + s**2)

    def prepare_condition(self, conditioning, batch):
        if conditioning is None or not conditioning.any_given:
            raise ValueError("Stable Video Diffusion is image-to-video: condition on a frame (e.g. frame 0 given)")
        c = conditioning.to(self.runtime.device)
        first = int(c.given[0].nonzero()[0])
        image = c.frames[:, first : first + 1].float()
        image = _resize_frames(image, self.resolution)[:, 0]
        # The pipeline's noise augmentation of the conditioning image (fixed seed: SDS steps stay comparable).
        gen = torch.Generator().manual_seed(0)
        image = image * 2 - 1 + self.noise_aug_strength * torch.randn(image.shape, generator=gen).to(image.device)
        with torch.no_grad():
            image_latent = self.vae.encode(image.float()).latent_dist.mode().float()
        t = c.frames.shape[1]
        cond_latents = _batch(image_latent[:, None].expand(-1, t, -1, -1, -1), batch)
        embeds = _batch(self.image_embeds, batch)
        ids = self.added_time_ids.expand(batch, -1)
        cond = (cond_latents, embeds, ids)
        uncond = (torch.zeros_like(cond_latents), torch.zeros_like(embeds), ids)
        return cond, uncond if self.config.guidance_scale != 1.0 else None

    def predict_noise(self, noisy, timesteps, condition):
        cond_latents, embeds, ids = condition
        sigma = self._sigma(timesteps, noisy)
        # EDM preconditioning (Karras et al. 2022, table 1, v-prediction form used by SVD).
        c_in = 1.0 / (sigma**2 + 1).sqrt()
        c_skip = 1.0 / (sigma**2 + 1)
        c_out = -sigma / (sigma**2 + 1).sqrt()
        model_in = torch.cat([noisy * c_in, cond_latents.to(noisy)], dim=2).to(self.runtime.weight_dtype)
        out = self.unet(model_in, timesteps.to(noisy), encoder_hidden_states=embeds, added_time_ids=ids.to(noisy), return_dict=False)[0]
        denoised = c_skip * noisy + c_out * out.float()
        return (noisy - denoised) / sigma


class WanPrior(_SigmaLadder, _LatentPrior):
    """Wan 2.x (``WanTransformer3DModel`` + ``AutoencoderKLWan``), rectified flow, velocity prediction.

    Text-to-video when the transformer's ``in_channels`` equals the VAE's ``z_dim``; image/frames-to-
    video when it is ``2 * z_dim + 4`` (Wan I2V): the given frames are VAE-encoded with zeros elsewhere
    and a 4-channel latent mask is built from the per-frame given mask, as in Wan's pipeline.
    Clips are resampled in time to 4k+1 frames (the causal VAE's requirement).
    prompt_embeds / negative_prompt_embeds: [1, L, text_dim]; image_embeds: [1, 257, image_dim] for
    models that have an image projection.
    """

    def __init__(
        self,
        transformer,
        vae,
        runtime: Runtime,
        config: SDSConfig,
        prompt_embeds,
        negative_prompt_embeds=None,
        image_embeds=None,
        flow_shift: float = 5.0,
        resolution=None,
        num_levels: int = 1000,
    ):
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.scale_spatial = 2 ** len(vae.config.temperal_downsample)
        self.scale_temporal = 2 ** sum(vae.config.temperal_downsample)
        patch = transformer.config.patch_size
        # Wan has no native size in its config; 480x832 is Wan 2.1/2.2's 480p training resolution.
        resolution = tuple(resolution or (480, 832))
        multiple = (self.scale_spatial * patch[1], self.scale_spatial * patch[2])
        if resolution[0] % multiple[0] or resolution[1] % multiple[1]:
            raise ValueError(f"Wan resolution {resolution} must be a multiple of {multiple}")
        super().__init__(vae, runtime, config, resolution)
        if prompt_embeds is None:
            raise ValueError("Wan is text-conditioned: pass prompt_embeds [1, L, text_dim]")
        self.transformer = runtime.place(transformer)
        z = vae.config.z_dim
        cin = transformer.config.in_channels
        if cin == z:
            self.image_to_video = False
        elif cin == 2 * z + self.scale_temporal:
            self.image_to_video = True
        else:
            raise ValueError(f"Wan transformer in_channels={cin} fits neither text-to-video ({z}) nor I2V ({2 * z + self.scale_temporal})")
        self.prompt_embeds = _embeds(prompt_embeds, runtime, "prompt_embeds")
        self.negative_prompt_embeds = _embeds(negative_prompt_embeds, runtime, "negative_prompt_embeds")
        self.image_embeds = _embeds(image_embeds, runtime, "image_embeds")
        if transformer.config.image_dim is not None and self.image_embeds is None:
            raise ValueError("this Wan model projects CLIP image embeddings: pass image_embeds")
        if config.guidance_scale != 1.0 and self.negative_prompt_embeds is None:
            raise ValueError("classifier-free guidance needs negative_prompt_embeds")
        self._mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).reshape(1, z, 1, 1, 1)
        self._std = torch.tensor(vae.config.latents_std, dtype=torch.float32).reshape(1, z, 1, 1, 1)
        self.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=flow_shift)
        self.scheduler.set_timesteps(num_levels, device="cpu")
        self._sigmas = self.scheduler.sigmas[:-1].to(torch.float32)  # descending from 1
        self._timesteps = self.scheduler.timesteps.to(torch.float32)

    def frames_for(self, t: int) -> int:
        """The smallest valid frame count >= t (k * temporal factor + 1)."""
        f = self.scale_temporal
        return f * math.ceil(max(t - 1, 0) / f) + 1

    def _resample_time(self, clip: torch.Tensor) -> torch.Tensor:
        b, t = clip.shape[:2]
        target = self.frames_for(t)
        if target == t:
            return clip
        # Linear interpolation in time: differentiable, keeps first and last frames.
        x = clip.permute(0, 2, 3, 4, 1).reshape(b, -1, t)
        x = F.interpolate(x, size=target, mode="linear", align_corners=True)
        return x.reshape(b, *clip.shape[2:], target).permute(0, 4, 1, 2, 3)

    def _vae_encode(self, clip: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] in [0, 1] -> normalised latents [B, C, F, h, w] (F = (T' - 1) / 4 + 1)."""
        x = _resize_frames(self._resample_time(clip), self.resolution)
        x = (x * 2 - 1).permute(0, 2, 1, 3, 4)  # [B, 3, T', H, W]
        z = self.vae.encode(x.float()).latent_dist.mode().float()
        return (z - self._mean.to(z.device)) / self._std.to(z.device)

    def encode(self, clip):
        return self._vae_encode(clip)

    def add_noise(self, latents, noise, timesteps):
        return self.scheduler.scale_noise(latents, timesteps.cpu(), noise)

    def alpha_bar(self, timesteps):
        s = self._sigmas[self._index(timesteps)]
        snr = ((1 - s) / s) ** 2
        return snr / (1 + snr)

    def prepare_condition(self, conditioning, batch):
        cond_latents = None
        if self.image_to_video:
            if conditioning is None or not conditioning.any_given:
                raise ValueError("this Wan model is image-to-video: condition on at least one given frame")
            cond_latents = self._condition_latents(conditioning.to(self.runtime.device))
        elif conditioning is not None and conditioning.any_given:
            raise ValueError("this Wan model is text-to-video and cannot take conditioning frames")
        text = _batch(self.prompt_embeds, batch)
        image = None if self.image_embeds is None else _batch(self.image_embeds, batch)
        cond = (text, image, None if cond_latents is None else _batch(cond_latents, batch))
        if self.config.guidance_scale == 1.0:
            return cond, None
        # Wan's negative branch drops the text but keeps the image condition.
        return cond, (_batch(self.negative_prompt_embeds, batch), image, cond[2])

    @torch.no_grad()
    def _condition_latents(self, c: Conditioning) -> torch.Tensor:
        frames = self._resample_time(c.frames.float() * c.given[:, :, None, None, None])
        given = self._resample_time(c.given.float()[:, :, None, None, None].expand(-1, -1, 1, 1, 1))[:, :, 0, 0, 0] > 0.5
        latents = self._vae_encode(frames)
        b, t = given.shape
        h, w = latents.shape[-2:]
        f = self.scale_temporal
        # Wan I2V mask: the first pixel frame counts f times, then groups of f frames per latent frame.
        mask = given.float()[:, :, None, None].expand(b, t, h, w)
        mask = torch.cat([mask[:, :1].repeat_interleave(f, dim=1), mask[:, 1:]], dim=1)
        mask = mask.reshape(b, -1, f, h, w).transpose(1, 2)  # [B, f, F, h, w]
        return torch.cat([mask.to(latents), latents], dim=1)

    def predict_noise(self, noisy, timesteps, condition):
        text, image, cond_latents = condition
        x = noisy if cond_latents is None else torch.cat([noisy, cond_latents.to(noisy)], dim=1)
        v = self.transformer(
            x.to(self.runtime.weight_dtype),
            timesteps,
            encoder_hidden_states=text,
            encoder_hidden_states_image=image,
            return_dict=False,
        )[0].float()
        sigma = self._sigma(timesteps, noisy)
        return noisy + (1 - sigma) * v


def load_pretrained_prior(
    path: str | Path,
    kind: Kind = "auto",
    runtime: RuntimeConfig = RuntimeConfig(),
    config: SDSConfig = SDSConfig(),
    accelerator=None,
    resolution: tuple[int, int] | None = None,
    **embeddings: Any,
) -> VideoPrior:
    """Load a diffusers video model folder (``unet/`` or ``transformer/``, ``vae/``, ``scheduler/``) as a prior.

    Offline only.  ``embeddings``: ``prompt_embeds``, ``negative_prompt_embeds`` (UNet3D, Wan),
    ``image_embeds`` (SVD, Wan with an image projection), plus SVD's ``fps``,
    ``motion_bucket_id``, ``noise_aug_strength`` and Wan's ``flow_shift``.
    resolution: (H, W) renders are resized to (default: the model's native size).
    """
    from diffusers import (
        AutoencoderKL,
        AutoencoderKLTemporalDecoder,
        AutoencoderKLWan,
        DDPMScheduler,
        EulerDiscreteScheduler,
        UNet3DConditionModel,
        UNetSpatioTemporalConditionModel,
        WanTransformer3DModel,
    )

    path = Path(path)
    kind = detect_kind(path) if kind == "auto" else kind
    rt = Runtime.resolve(runtime, accelerator)
    load = dict(local_files_only=True, torch_dtype=rt.weight_dtype)
    if kind == "unet3d":
        unet = UNet3DConditionModel.from_pretrained(path, subfolder="unet", **load)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True, torch_dtype=torch.float32)
        # Training schedule of the checkpoint (its scheduler/ may be a DDIM or DPM sampler config).
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
        if scheduler.config.prediction_type != "epsilon":
            raise ValueError(f"{path}: UNet3D prior expects epsilon prediction, got {scheduler.config.prediction_type}")
        return UNet3DPrior(unet, vae, scheduler, rt, config, embeddings.get("prompt_embeds"), embeddings.get("negative_prompt_embeds"), resolution)
    if kind == "svd":
        unet = UNetSpatioTemporalConditionModel.from_pretrained(path, subfolder="unet", **load)
        vae = AutoencoderKLTemporalDecoder.from_pretrained(path, subfolder="vae", local_files_only=True, torch_dtype=torch.float32)
        scheduler = EulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
        if scheduler.config.prediction_type != "v_prediction":
            raise ValueError(f"{path}: SVD prior expects v-prediction, got {scheduler.config.prediction_type}")
        extra = {k: embeddings[k] for k in ("fps", "motion_bucket_id", "noise_aug_strength") if k in embeddings}
        return SVDPrior(unet, vae, scheduler, rt, config, embeddings.get("image_embeds"), resolution=resolution, **extra)
    if kind == "wan":
        transformer = WanTransformer3DModel.from_pretrained(path, subfolder="transformer", **load)
        vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", local_files_only=True, torch_dtype=torch.float32)
        shift = embeddings.get("flow_shift")
        sched_cfg = path / "scheduler" / "scheduler_config.json"
        if shift is None and sched_cfg.is_file():
            cfg = json.loads(sched_cfg.read_text())
            shift = cfg.get("flow_shift", cfg.get("shift"))
        return WanPrior(
            transformer,
            vae,
            rt,
            config,
            embeddings.get("prompt_embeds"),
            embeddings.get("negative_prompt_embeds"),
            embeddings.get("image_embeds"),
            flow_shift=float(shift) if shift is not None else 5.0,
            resolution=resolution,
        )
    raise ValueError(f"unknown pretrained prior kind {kind!r}; choose auto, unet3d, svd or wan")
