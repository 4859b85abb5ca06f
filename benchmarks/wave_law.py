"""The hidden-law experiment of the builtin prior, shared by its benchmark and its test.

A small model is trained on procedural travelling waves whose speed is fixed by their wavelength
(``prior.WaveLaw``).  Then its denoising error over a sweep of speeds shows whether it learned the
law, and score distillation alone, back-propagated through the differentiable wave generator,
should pull a wrong speed to the lawful one.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def wave_training():
    """``(TrainConfig, UNetConfig)`` of the experiment: 1000 steps, half the clips conditioned on past frames."""
    from dreamcloth.prior import MaskSamplingConfig, TrainConfig, UNetConfig

    config = TrainConfig(
        steps=1000, batch_size=24, learning_rate=3e-3, warmup_steps=50, mixed_precision="no", ema_decay=0.995,
        masks=MaskSamplingConfig(none=0.5, first=0.0, past=0.5, all=0.0), checkpoint_every=1000,
        sample_every=1000, log_every=50, seed=0,
    )
    unet = UNetConfig(base_channels=16, channel_mults=(1, 2), layers_per_level=1, attention_levels=(False, True))
    return config, unet


def denoising_errors(prior, law, wavelength: float, scales, n: int = 64, seed: int = 1) -> list[float]:
    """Mean denoising error of ``n`` clips (random phases, noise and levels) at each speed ``scale`` x lawful."""
    from dreamcloth.prior import wave_clip

    g = torch.Generator().manual_seed(seed)
    lam = torch.full((n,), float(wavelength))
    phase = 2 * math.pi * torch.rand(n, generator=g)
    noise = torch.randn(n, law.frames, 3, law.height, law.width, generator=g)
    levels = 0.02 + 0.58 * torch.rand(n, generator=g)
    errors = []
    for s in scales:
        clip = wave_clip(law, lam, law.speed(lam) * s, phase)
        errors.append(float(prior.denoising_error(clip, levels, noise).mean()))
    return errors


def sds_speed_history(prior, law, wavelength: float, start: float, steps: int = 150, batch: int = 16, lr: float = 0.03,
                      seed: int = 2, on_step: Callable[[torch.Tensor], None] | None = None) -> list[float]:
    """Score distillation alone on the wave speed, from ``start`` x lawful: the speed / lawful after every
    Adam step.  ``on_step(log_speed)`` sees the parameter after each backward pass (its ``.grad`` set)."""
    from dreamcloth.prior import wave_clip

    lam = torch.tensor(float(wavelength))
    true_speed = float(law.speed(lam))
    log_speed = torch.tensor(math.log(true_speed * start), requires_grad=True)
    opt = torch.optim.Adam([log_speed], lr=lr)
    g = torch.Generator().manual_seed(seed)
    history = []
    for step in range(steps):
        phase = 2 * math.pi * torch.rand(batch, generator=g)
        clip = wave_clip(law, lam.expand(batch), log_speed.exp().expand(batch), phase)
        result = prior.sds(clip, step=step, generator=g)
        opt.zero_grad()
        result.loss.backward()
        if on_step is not None:
            on_step(log_speed)
        opt.step()
        history.append(float(log_speed.detach().exp()) / true_speed)
    return history
