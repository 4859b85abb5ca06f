"""Masked-frame conditioning (MCVD): which frames of a clip are given, and their pixels.

One representation serves every mode: ``frames`` [B, T, 3, H, W] in [0, 1] and ``given`` [B, T]
bool.  Unconditional = nothing given; image-to-video = frame 0 given; prediction = frames 0..k-1
given; video-to-video = every frame given.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

Mode = Literal["none", "first", "past", "all"]
MODES: tuple[Mode, ...] = ("none", "first", "past", "all")


@dataclasses.dataclass(frozen=True)
class Conditioning:
    """Given frames and which of them count.

    frames: [B, T, 3, H, W] in [0, 1] (values where ``given`` is False are ignored);
    given: [B, T] bool.
    """

    frames: torch.Tensor
    given: torch.Tensor

    def __post_init__(self):
        if self.frames.ndim != 5 or self.given.shape != self.frames.shape[:2]:
            raise ValueError(
                f"conditioning frames must be [B,T,3,H,W] with given [B,T]; got {tuple(self.frames.shape)} "
                f"and {tuple(self.given.shape)}"
            )

    @property
    def any_given(self) -> bool:
        return bool(self.given.any())

    def to(self, device=None, dtype=None) -> "Conditioning":
        return Conditioning(self.frames.to(device=device, dtype=dtype), self.given.to(device=device))

    def expand(self, batch: int) -> "Conditioning":
        """Repeat a batch-1 conditioning to ``batch``."""
        if self.frames.shape[0] == batch:
            return self
        if self.frames.shape[0] != 1:
            raise ValueError(f"cannot expand a conditioning of batch {self.frames.shape[0]} to {batch}")
        return Conditioning(self.frames.expand(batch, *self.frames.shape[1:]), self.given.expand(batch, -1))

    @staticmethod
    def from_indices(frames: torch.Tensor, indices: list[int] | range) -> "Conditioning":
        """Condition on ``frames`` [B, T, 3, H, W] at the listed frame indices."""
        b, t = frames.shape[:2]
        given = torch.zeros(b, t, dtype=torch.bool, device=frames.device)
        idx = list(indices)
        bad = [i for i in idx if not 0 <= i < t]
        if bad:
            raise ValueError(f"given frame indices {bad} are outside a clip of {t} frames")
        given[:, idx] = True
        return Conditioning(frames, given)


def parse_given(spec: str, num_frames: int) -> list[int]:
    """Parse a frame selection like ``"0-10"``, ``"0,2,4"`` or ``"0-3,7"`` (inclusive ranges).

    Raises ``ValueError`` naming the spec for malformed text, reversed ranges or indices outside
    ``0..num_frames-1``.
    """
    out: list[int] = []
    text = spec.replace(" ", "")
    if not text:
        raise ValueError("empty --given frame selection")
    for part in text.split(","):
        try:
            if "-" in part:
                lo_s, hi_s = part.split("-", 1)
                lo, hi = int(lo_s), int(hi_s)
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"bad --given frame selection {spec!r}: use e.g. '0-10' or '0,2,4'") from None
    bad = sorted({i for i in out if not 0 <= i < num_frames})
    if bad:
        raise ValueError(
            f"--given {spec!r} selects frames {bad} but the clip has frames 0-{num_frames - 1}"
        )
    return sorted(set(out))


@dataclasses.dataclass(frozen=True)
class MaskSamplingConfig:
    """Probabilities of each conditioning mode during training (normalised), MCVD-style.

    ``none`` doubles as condition dropout, which classifier-free guidance needs.  ``past`` gives a
    random number of leading frames in ``[1, T-1]``.
    """

    none: float = 0.25
    first: float = 0.25
    past: float = 0.4
    all: float = 0.1

    def probabilities(self) -> torch.Tensor:
        p = torch.tensor([self.none, self.first, self.past, self.all], dtype=torch.float64)
        if (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"conditioning probabilities must be >= 0 and not all zero: {self}")
        return p / p.sum()


def sample_given_masks(
    config: MaskSamplingConfig, batch: int, frames: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random training masks: [batch, frames] bool, one mode per clip drawn from ``config``."""
    modes = torch.multinomial(config.probabilities(), batch, replacement=True, generator=generator)
    given = torch.zeros(batch, frames, dtype=torch.bool)
    past = torch.randint(1, max(frames, 2), (batch,), generator=generator)
    for i in range(batch):
        m = int(modes[i])
        if m == 1:
            given[i, 0] = True
        elif m == 2:
            given[i, : int(past[i])] = True
        elif m == 3:
            given[i] = True
    return given


def loss_frames(given: torch.Tensor) -> torch.Tensor:
    """Frames a denoising loss (or SDS gradient) should act on: [B, T] float.

    The frames that are not given; for a clip with every frame given (video-to-video) all frames,
    so that mode still has something to learn and to distil.
    """
    free = (~given).float()
    all_given = given.all(dim=1, keepdim=True)
    return torch.where(all_given, torch.ones_like(free), free)
