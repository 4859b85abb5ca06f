"""The ``VideoPrior`` contract: score distillation sampling (SDS) for video.

SDS (Poole, Jain, Barron, Mildenhall 2022, "DreamFusion: Text-to-3D using 2D Diffusion") asks a
frozen diffusion model how it would denoise a noised copy of the rendered clip and pushes the clip
along ``g = w(t) * (eps_pred - eps)``, skipping the model's Jacobian.  We hand the caller a
surrogate loss ``0.5 * ||x - (x - g).detach()||^2`` (summed, not averaged) whose gradient with
respect to ``x`` is exactly ``g``, so any optimiser and any upstream graph (renderer, simulator)
can consume it.

Every backend reduces its own parameterisation (epsilon DDPM, EDM v-prediction, flow matching) to
this same noise residual ``eps_pred - eps`` in its model space, and reports a VP-equivalent signal
fraction ``alpha_bar(t)`` so weightings mean the same thing across backends.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, Literal

import torch

from .conditioning import Conditioning, loss_frames
from .runtime import Runtime

Weighting = Literal["dreamfusion", "uniform", "fantasia3d"]


@dataclasses.dataclass(frozen=True)
class SDSConfig:
    """Hyper-parameters of score distillation.

    Noise levels are fractions of the model's schedule (0 = clean, 1 = pure noise), sampled
    uniformly in ``[t_min, t_max(step)]`` where ``t_max`` moves linearly from ``t_max`` to
    ``t_max_final`` over ``anneal_steps`` (large noise first for coarse structure, then small noise
    for detail; DreamTime, Huang et al. 2023).  ``weighting``: ``"dreamfusion"`` w = 1 - alpha_bar
    (= sigma_t^2, DreamFusion), ``"uniform"`` w = 1, ``"fantasia3d"`` w = sqrt(alpha_bar) *
    (1 - alpha_bar) (Chen et al. 2023).  ``guidance_scale`` is classifier-free guidance
    (Ho & Salimans 2022): 1 = conditional prediction only; it needs a condition.
    """

    t_min: float = 0.02
    t_max: float = 0.98
    t_max_final: float | None = None
    anneal_steps: int = 0
    weighting: Weighting = "dreamfusion"
    guidance_scale: float = 1.0

    def __post_init__(self):
        hi = self.t_max if self.t_max_final is None else min(self.t_max, self.t_max_final)
        if not 0.0 <= self.t_min < hi <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max(final) <= 1, got {self}")
        if self.weighting not in ("dreamfusion", "uniform", "fantasia3d"):
            raise ValueError(f"unknown SDS weighting {self.weighting!r}")
        if self.anneal_steps < 0:
            raise ValueError("anneal_steps must be >= 0")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0.0):
            raise ValueError(f"guidance_scale must be finite and >= 0 (1 = none), got {self.guidance_scale}")

    def t_range(self, step: int) -> tuple[float, float]:
        """The noise-level interval ``(lo, hi)`` used at optimisation step ``step``."""
        if self.t_max_final is None or self.anneal_steps == 0:
            return self.t_min, self.t_max
        a = min(max(step, 0) / self.anneal_steps, 1.0)
        return self.t_min, self.t_max + a * (self.t_max_final - self.t_max)


@dataclasses.dataclass(frozen=True)
class SDSResult:
    """One score-distillation evaluation.

    loss: scalar surrogate, ``loss.backward()`` deposits ``grad`` on ``target``;
    grad: [B, ...] detached ``w(t) * (eps_pred - eps)`` in model space (zero on given frames);
    target: the tensor the surrogate is built on (the clip itself for pixel-space priors, the
    VAE latents for latent priors);
    timesteps: [B] model timesteps; noise_levels: [B] fractions of the schedule; weights: [B] w(t);
    grad_norm: L2 norm of ``grad`` (a diagnostic; large values mean the prior strongly disagrees).
    """

    loss: torch.Tensor
    grad: torch.Tensor
    target: torch.Tensor
    timesteps: torch.Tensor
    noise_levels: torch.Tensor
    weights: torch.Tensor
    grad_norm: float


def sds_weight(alpha_bar: torch.Tensor, weighting: Weighting) -> torch.Tensor:
    """w(t) from the VP-equivalent signal fraction ``alpha_bar`` [B] -> [B]."""
    if weighting == "dreamfusion":
        return 1.0 - alpha_bar
    if weighting == "uniform":
        return torch.ones_like(alpha_bar)
    if weighting == "fantasia3d":
        return alpha_bar.sqrt() * (1.0 - alpha_bar)
    raise ValueError(f"unknown SDS weighting {weighting!r}")


class VideoPrior(abc.ABC):
    """A frozen video diffusion model that scores rendered clips.

    Subclasses implement the model-specific pieces (encode to model space, the noise schedule, the
    noise prediction); :meth:`sds` is shared.  Instances are frozen at construction.
    """

    #: True when the model works on pixels: the surrogate is then built on the clip itself.
    pixel_space: bool = True

    def __init__(self, runtime: Runtime, config: SDSConfig = SDSConfig()):
        self.runtime = runtime
        self.config = config

    # ---- backend interface -------------------------------------------------------------------
    @abc.abstractmethod
    def encode(self, clip: torch.Tensor) -> torch.Tensor:
        """Clip [B, T, 3, H, W] in [0, 1] -> model-space tensor (differentiable)."""

    @abc.abstractmethod
    def timesteps_for(self, noise_levels: torch.Tensor) -> torch.Tensor:
        """Fractions [B] in [0, 1] -> the model's timesteps [B] on its own schedule."""

    @abc.abstractmethod
    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process q(z_t | z_0) of the model's schedule."""

    @abc.abstractmethod
    def alpha_bar(self, timesteps: torch.Tensor) -> torch.Tensor:
        """VP-equivalent signal fraction [B] (SNR / (1 + SNR)) at ``timesteps``."""

    @abc.abstractmethod
    def predict_noise(self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: Any) -> torch.Tensor:
        """The model's noise estimate ``eps_pred`` (same shape as ``noisy``) under ``condition``.

        ``condition`` is what :meth:`prepare_condition` returned (its unconditional half for
        guidance).  Called under ``torch.no_grad``.
        """

    def prepare_condition(self, conditioning: Conditioning | None, batch: int) -> tuple[Any, Any]:
        """(conditional, unconditional) inputs for :meth:`predict_noise`; the second is None when
        the model has no condition to drop."""
        if conditioning is not None and conditioning.any_given:
            raise ValueError(f"{type(self).__name__} cannot take conditioning frames")
        return None, None

    def frame_weights(self, conditioning: Conditioning | None, latents: torch.Tensor) -> torch.Tensor | None:
        """Mask broadcastable to ``latents`` that zeroes the residual on given frames, or None."""
        return None

    # ---- shared ------------------------------------------------------------------------------
    def sample_noise_levels(self, batch: int, step: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fractions [batch] uniform in the (annealed) range for optimisation step ``step``."""
        lo, hi = self.config.t_range(step)
        u = torch.rand(batch, generator=generator)
        return lo + (hi - lo) * u

    @torch.no_grad()
    def noise_residual(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, condition: tuple[Any, Any]
    ) -> torch.Tensor:
        """``eps_pred - eps`` with classifier-free guidance when there is an unconditional branch."""
        noisy = self.add_noise(latents, noise, timesteps)
        cond, uncond = condition
        with self.runtime.autocast():
            eps = self.predict_noise(noisy, timesteps, cond).float()
            scale = self.config.guidance_scale
            if uncond is not None and scale != 1.0:
                eps_u = self.predict_noise(noisy, timesteps, uncond).float()
                eps = eps_u + scale * (eps - eps_u)
        return eps - noise.float()

    @torch.no_grad()
    def denoising_error(
        self,
        clip: torch.Tensor,
        noise_levels: torch.Tensor,
        noise: torch.Tensor,
        conditioning: Conditioning | None = None,
    ) -> torch.Tensor:
        """Mean squared noise-prediction error per clip: [B] (lower = the prior finds the clip likelier).

        clip: [B, T, 3, H, W] in [0, 1]; noise_levels: [B] fractions; noise: model-space shape.
        Pass the same noise and levels to compare clips (common random numbers).  This is the
        (unweighted) denoising score-matching loss, a bound on the clip's negative log-likelihood.
        """
        z = self.encode(clip.to(self.runtime.device)).float()
        t = self.timesteps_for(noise_levels.to(torch.float32))
        r = self.noise_residual(z, noise.to(z.device, torch.float32), t, self.prepare_condition(conditioning, z.shape[0]))
        mask = self.frame_weights(conditioning, r)
        if mask is not None:
            r = r * mask
        return r.square().flatten(1).mean(dim=1)

    def sds(
        self,
        clip: torch.Tensor,
        conditioning: Conditioning | None = None,
        step: int = 0,
        noise_levels: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> SDSResult:
        """Score distillation for ``clip`` [B, T, 3, H, W] in [0, 1] (differentiable).

        conditioning: given frames (MCVD-style), batch 1 or B; step: optimisation step (for the
        annealed noise range); noise_levels [B] and noise (model-space shape) fix the randomness,
        e.g. for tests; generator: seeds both otherwise.  The returned ``loss`` has gradient
        ``w(t) * (eps_pred - eps)`` with respect to ``result.target``.
        """
        if clip.ndim != 5 or clip.shape[2] != 3:
            raise ValueError(f"clip must be [B, T, 3, H, W], got {tuple(clip.shape)}")
        # an integer clip would cast the score's gradient to integers: a loss of exactly 0
        if not clip.is_floating_point():
            raise ValueError(f"clip must be a floating-point tensor in [0, 1], got {clip.dtype}")
        b = clip.shape[0]
        if conditioning is not None:
            conditioning = conditioning.expand(b)
        x = clip.to(self.runtime.device)
        latents = self.encode(x)
        target = x if self.pixel_space else latents
        z = latents.detach().float()
        if noise_levels is None:
            noise_levels = self.sample_noise_levels(b, step, generator)
        if noise is None:
            noise = torch.randn(z.shape, generator=generator).to(z.device)
        noise = noise.to(z.device, torch.float32)
        timesteps = self.timesteps_for(noise_levels.to(torch.float32))
        condition = self.prepare_condition(conditioning, b)
        residual = self.noise_residual(z, noise, timesteps, condition)
        weights = sds_weight(self.alpha_bar(timesteps).to(residual.device, torch.float32), self.config.weighting)
        grad = weights.reshape(-1, *([1] * (residual.ndim - 1))) * residual
        mask = self.frame_weights(conditioning, residual)
        if mask is not None:
            grad = grad * mask
        if not torch.isfinite(grad).all():
            # Never hand a NaN to the optimiser silently: the caller (e.g. the fit loop) decides.
            raise FloatingPointError("SDS gradient is not finite (NaN or inf in the clip or the prior's output)")
        grad = grad.to(target.dtype)
        # Pixel-space priors: the model works on 2x - 1, but we apply g to the clip itself (a constant
        # factor, like DreamFusion's dropped U-Net Jacobian), so d loss / d clip == g exactly.
        loss = 0.5 * (target - (target - grad).detach()).square().sum()
        return SDSResult(
            loss=loss,
            grad=grad.detach(),
            target=target,
            timesteps=timesteps.detach(),
            noise_levels=noise_levels.detach(),
            weights=weights.detach(),
            grad_norm=float(grad.detach().float().norm()),
        )


def given_frame_mask(conditioning: Conditioning | None, like: torch.Tensor) -> torch.Tensor | None:
    """[B, T, 1, 1, 1] weights (0 on given frames) for frame-major tensors shaped like ``like``."""
    if conditioning is None or not conditioning.any_given:
        return None
    w = loss_frames(conditioning.given.to(like.device))
    return w.reshape(*w.shape, *([1] * (like.ndim - 2))).to(like.dtype)
