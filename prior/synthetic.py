"""Procedural videos with a hidden physical law, to check that a trained prior knows something real.

A travelling sine wave whose speed is fixed by its wavelength through a dispersion relation
``speed = coefficient * wavelength ** exponent`` (deep-water gravity waves have exponent 1/2).
Each clip shows the wavelength (appearance) and the speed (motion); a prior that learned the law
scores clips whose speed breaks it as less likely, and score distillation through
:func:`wave_clip` (differentiable in speed) recovers the lawful speed from a wrong guess.
"""

from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass(frozen=True)
class WaveLaw:
    """The hidden law and the clip geometry (lengths in pixels, time in frames)."""

    frames: int = 8
    height: int = 16
    width: int = 16
    wavelength_range: tuple[float, float] = (5.0, 12.0)
    coefficient: float = 0.45
    exponent: float = 0.5
    amplitude: float = 0.4

    def speed(self, wavelength: torch.Tensor | float) -> torch.Tensor:
        """Lawful speed in pixels per frame for ``wavelength`` (pixels)."""
        return self.coefficient * torch.as_tensor(wavelength, dtype=torch.float32) ** self.exponent


def wave_clip(
    law: WaveLaw, wavelength: torch.Tensor, speed: torch.Tensor, phase: torch.Tensor
) -> torch.Tensor:
    """Render travelling waves; differentiable in every argument.

    wavelength, speed, phase: [B] (pixels, pixels/frame, radians). Returns [B, T, 3, H, W] in [0, 1]
    (grey, waves travel towards +x).
    """
    dev = speed.device
    t = torch.arange(law.frames, device=dev, dtype=speed.dtype).reshape(1, -1, 1, 1, 1)
    x = torch.arange(law.width, device=dev, dtype=speed.dtype).reshape(1, 1, 1, 1, -1)
    lam = wavelength.reshape(-1, 1, 1, 1, 1)
    arg = 2 * math.pi * (x - speed.reshape(-1, 1, 1, 1, 1) * t) / lam + phase.reshape(-1, 1, 1, 1, 1)
    wave = 0.5 + law.amplitude * torch.sin(arg)
    return wave.expand(-1, law.frames, 3, law.height, law.width)


def sample_waves(
    law: WaveLaw, count: int, generator: torch.Generator | None = None, speed_scale: torch.Tensor | float = 1.0
) -> torch.Tensor:
    """``count`` lawful clips (speed multiplied by ``speed_scale``, 1 = lawful) -> [count, T, 3, H, W]."""
    lo, hi = law.wavelength_range
    lam = lo + (hi - lo) * torch.rand(count, generator=generator)
    phase = 2 * math.pi * torch.rand(count, generator=generator)
    return wave_clip(law, lam, law.speed(lam) * speed_scale, phase)
