"""The ``builtin`` backend: the project's own pixel-space video U-Net with a cosine DDPM schedule.

A trained model directory (what ``dreamcloth prior train`` writes) holds the ``VideoUNet``
(``config.json`` + safetensors weights) and its scheduler config in ``scheduler/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from .conditioning import Conditioning
from .runtime import Runtime, RuntimeConfig
from .sds import SDSConfig, VideoPrior, given_frame_mask
from .unet import VideoUNet


def training_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """The cosine ("squaredcos_cap_v2", Nichol & Dhariwal 2021) epsilon-prediction DDPM schedule."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="epsilon",
        clip_sample=True,
        clip_sample_range=1.0,
    )


def load_builtin_model(path: str | Path) -> tuple[VideoUNet, DDPMScheduler]:
    """Load ``(VideoUNet, DDPMScheduler)`` from a directory written by ``save_builtin_model``.

    Offline only (``local_files_only=True``); raises ``FileNotFoundError``/``ValueError`` naming the
    directory when it is not a builtin prior.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a builtin prior directory (no config.json)")
    try:
        model = VideoUNet.from_pretrained(path, local_files_only=True)
    except (OSError, TypeError, KeyError) as exc:
        raise ValueError(f"{path} does not hold a builtin VideoUNet ({type(exc).__name__}: {exc})") from None
    sched_dir = path / "scheduler"
    scheduler = (
        DDPMScheduler.from_pretrained(sched_dir, local_files_only=True) if sched_dir.is_dir() else training_scheduler()
    )
    return model, scheduler


def save_builtin_model(model: VideoUNet, scheduler: DDPMScheduler, path: str | Path) -> Path:
    """Write ``model`` and ``scheduler`` so that :func:`load_builtin_model` reads them back."""
    path = Path(path)
    model.save_pretrained(path)
    scheduler.save_pretrained(path / "scheduler")
    return path


class BuiltinPrior(VideoPrior):
    """Score distillation with a :class:`VideoUNet`; supports every masked-frame conditioning mode.

    Clips whose size differs from the model's training size are resized (bilinear, differentiable)
    to it before scoring.
    """

    pixel_space = True

    def __init__(
        self,
        model: VideoUNet,
        scheduler: DDPMScheduler,
        runtime: Runtime | None = None,
        config: SDSConfig = SDSConfig(),
    ):
        runtime = runtime or Runtime.resolve(RuntimeConfig(device="cpu"))
        super().__init__(runtime, config)
        self.model = runtime.place(model)
        self.scheduler = scheduler
        self._alphas_cumprod = scheduler.alphas_cumprod.to(torch.float32)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        runtime: RuntimeConfig = RuntimeConfig(),
        config: SDSConfig = SDSConfig(),
        accelerator=None,
    ) -> "BuiltinPrior":
        """Load a trained builtin prior from a local directory."""
        model, scheduler = load_builtin_model(path)
        return cls(model, scheduler, Runtime.resolve(runtime, accelerator), config)

    @property
    def sample_size(self) -> tuple[int, int]:
        return tuple(self.model.config.sample_size)  # type: ignore[return-value]

    def _resize(self, clip: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = clip.shape
        if (h, w) == self.sample_size:
            return clip
        out = F.interpolate(clip.reshape(b * t, c, h, w), size=self.sample_size, mode="bilinear", align_corners=False)
        return out.reshape(b, t, c, *self.sample_size)

    def encode(self, clip: torch.Tensor) -> torch.Tensor:
        return self._resize(clip) * 2.0 - 1.0

    def sds(self, clip: torch.Tensor, *args, **kwargs):
        if tuple(clip.shape[-2:]) != self.sample_size:
            # The surrogate must live on the tensor the model sees; resizing happens before it.
            clip = self._resize(clip)
        return super().sds(clip, *args, **kwargs)

    def timesteps_for(self, noise_levels: torch.Tensor) -> torch.Tensor:
        n = self.scheduler.config.num_train_timesteps
        return (noise_levels.clamp(0, 1) * (n - 1)).round().long().to(self.runtime.device)

    def add_noise(self, latents, noise, timesteps):
        return self.scheduler.add_noise(latents, noise, timesteps)

    def alpha_bar(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self._alphas_cumprod[timesteps.cpu()]

    def prepare_condition(self, conditioning: Conditioning | None, batch: int) -> tuple[Any, Any]:
        if conditioning is None or not conditioning.any_given:
            return None, None
        c = conditioning.to(self.runtime.device)
        cond = (self._resize(c.frames.float()) * 2.0 - 1.0, c.given)
        return cond, None if self.config.guidance_scale == 1.0 else "unconditional"

    def predict_noise(self, noisy, timesteps, condition):
        if condition is None or condition == "unconditional":
            return self.model(noisy.to(self.runtime.weight_dtype), timesteps)
        frames, given = condition
        return self.model(noisy.to(self.runtime.weight_dtype), timesteps, frames.to(self.runtime.weight_dtype), given)

    def frame_weights(self, conditioning, latents):
        return given_frame_mask(conditioning, latents)
