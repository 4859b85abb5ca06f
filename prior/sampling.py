"""Generating clips with a builtin prior (DDIM or DDPM from diffusers), and judging predictions.

Conditioning is MCVD's: given frames are shown to the network clean, never noised, and pasted into
the result, so prediction and video-to-video sampling share one loop with unconditional sampling.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from .conditioning import Conditioning
from .metrics import psnr, ssim
from .unet import VideoUNet

Sampler = Literal["ddim", "ddpm"]


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """Sampler choice and its knobs.

    steps: number of denoising steps; eta: DDIM stochasticity (0 = deterministic);
    guidance_scale: classifier-free guidance for conditioned sampling (1 = none).
    """

    sampler: Sampler = "ddim"
    steps: int = 50
    eta: float = 0.0
    guidance_scale: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.sampler not in ("ddim", "ddpm"):
            raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {self.sampler!r}")
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        if not (math.isfinite(self.eta) and 0.0 <= self.eta <= 1.0):
            raise ValueError(f"eta (DDIM stochasticity) must be in [0, 1], got {self.eta}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0.0):
            raise ValueError(f"guidance_scale must be finite and >= 0 (1 = none), got {self.guidance_scale}")


def make_sampler(train_scheduler: DDPMScheduler, sampler: Sampler):
    """A sampling scheduler sharing the training schedule's configuration."""
    if sampler == "ddim":
        return DDIMScheduler.from_config(train_scheduler.config)
    return DDPMScheduler.from_config(train_scheduler.config)


@torch.no_grad()
def sample_clips(
    model: VideoUNet,
    train_scheduler: DDPMScheduler,
    batch: int,
    conditioning: Conditioning | None = None,
    config: SampleConfig = SampleConfig(),
    device: torch.device | str | None = None,
    init: torch.Tensor | None = None,
    strength: float = 1.0,
    num_frames: int | None = None,
) -> torch.Tensor:
    """Draw ``batch`` clips [batch, T, 3, H, W] in [0, 1] from ``model``.

    conditioning: frames [1 or batch, T, 3, H, W] in [0, 1] with a given mask; those frames are
    returned unchanged.  init, strength: video-to-video by SDEdit (Meng et al. 2022) - start from
    ``init`` [1 or batch, T, 3, H, W] noised to the ``strength`` fraction of the sampling schedule
    instead of from pure noise (strength 1 = ignore ``init``).  Frame count and size come from the
    conditioning or ``init`` when present, else from ``num_frames`` and the model's config.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if conditioning is not None:
        conditioning = conditioning.expand(batch).to(device)
        frames, (h, w) = conditioning.frames.shape[1], conditioning.frames.shape[-2:]
    elif init is not None:
        frames, (h, w) = init.shape[1], init.shape[-2:]
    else:
        frames, (h, w) = num_frames or model.config.num_frames, tuple(model.config.sample_size)
    sched = make_sampler(train_scheduler, config.sampler)
    sched.set_timesteps(config.steps, device=device)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    x = torch.randn(batch, frames, 3, h, w, generator=gen).to(device, dtype)
    timesteps = sched.timesteps
    if init is not None and strength < 1.0:
        skip = min(int(round(len(timesteps) * (1.0 - strength))), len(timesteps) - 1)
        timesteps = timesteps[skip:]
        start = (init.to(device, dtype).expand(batch, -1, -1, -1, -1) * 2 - 1)
        x = sched.add_noise(start, x, timesteps[:1].expand(batch))
    cond_frames = given = None
    if conditioning is not None and conditioning.any_given:
        cond_frames = (conditioning.frames * 2 - 1).to(dtype)
        given = conditioning.given
    for t in timesteps:
        tt = t.reshape(1).expand(batch).to(device)
        eps = model(x, tt, cond_frames, given)
        if given is not None and config.guidance_scale != 1.0:
            eps_u = model(x, tt)
            eps = eps_u + config.guidance_scale * (eps - eps_u)
        kwargs = {"eta": config.eta} if config.sampler == "ddim" else {}
        x = sched.step(eps, t, x, generator=gen, **kwargs).prev_sample
    out = ((x.float() + 1) / 2).clamp(0, 1)
    if given is not None:
        keep = given.reshape(batch, frames, 1, 1, 1)
        out = torch.where(keep, conditioning.frames.float(), out)
    return out


@dataclasses.dataclass(frozen=True)
class PredictionScore:
    """Quality of predicted frames against ground truth, next to the copy-last-frame baseline.

    All figures are means over clips and over the predicted (not given) frames only.
    """

    psnr: float
    ssim: float
    copy_last_psnr: float
    copy_last_ssim: float
    num_clips: int
    given_frames: int


def score_prediction(predicted: torch.Tensor, truth: torch.Tensor, given_frames: int) -> PredictionScore:
    """Compare ``predicted`` with ``truth`` (both [B, T, 3, H, W] in [0, 1]) on frames ``given_frames..T-1``.

    The baseline repeats the last given frame, the usual floor for video prediction.
    """
    if predicted.shape != truth.shape:
        raise ValueError(f"prediction {tuple(predicted.shape)} and truth {tuple(truth.shape)} differ")
    if not 0 < given_frames < truth.shape[1]:
        raise ValueError(f"given_frames must be in 1..{truth.shape[1] - 1}")
    fut_pred = predicted[:, given_frames:].float()
    fut_true = truth[:, given_frames:].float()
    copy = truth[:, given_frames - 1 : given_frames].expand_as(fut_true).float()
    return PredictionScore(
        psnr=float(psnr(fut_pred, fut_true).mean()),
        ssim=float(ssim(fut_pred, fut_true).mean()),
        copy_last_psnr=float(psnr(copy, fut_true).mean()),
        copy_last_ssim=float(ssim(copy, fut_true).mean()),
        num_clips=int(truth.shape[0]),
        given_frames=given_frames,
    )


def predict_frames(
    model: VideoUNet,
    train_scheduler: DDPMScheduler,
    clips: torch.Tensor,
    given_frames: int,
    config: SampleConfig = SampleConfig(),
) -> torch.Tensor:
    """Predict frames ``given_frames..T-1`` of ``clips`` [B, T, 3, H, W] from the frames before them."""
    cond = Conditioning.from_indices(clips, range(given_frames))
    return sample_clips(model, train_scheduler, clips.shape[0], cond, config)
