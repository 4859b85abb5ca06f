"""Where training clips come from: decoded videos (handed in as tensors) or procedural generators.

Decoding is the CLI's job (the library never reads files it does not own); this module only cuts
fixed-length windows out of frame tensors.  Sampling is driven by an explicit
``torch.Generator`` so that a training step's batch depends only on (seed, step, process), which is
what makes ``--resume`` reproduce the same losses.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch

from .synthetic import WaveLaw, sample_waves


class ClipSource(Protocol):
    """Anything that draws training clips."""

    num_frames: int
    sample_size: tuple[int, int]

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """A batch of clips [batch, T, 3, H, W] in [0, 1]."""
        ...


@dataclasses.dataclass
class VideoClips:
    """Random windows of ``num_frames`` consecutive frames from a list of videos.

    videos: tensors [N_i, 3, H, W] in [0, 1] (all the same H, W; N_i >= num_frames).
    flip: random horizontal flips (a cheap augmentation that keeps physics plausible).
    """

    videos: list[torch.Tensor]
    num_frames: int
    flip: bool = False

    def __post_init__(self):
        if not self.videos:
            raise ValueError("no videos to train on")
        shapes = {tuple(v.shape[1:]) for v in self.videos}
        if len(shapes) != 1:
            raise ValueError(f"videos differ in size {sorted(shapes)}; resize them to one size")
        short = [i for i, v in enumerate(self.videos) if v.shape[0] < self.num_frames]
        if short:
            raise ValueError(f"{len(short)} video(s) have fewer than {self.num_frames} frames")
        self.sample_size = tuple(self.videos[0].shape[-2:])
        # Weight videos by their number of windows so every window is equally likely.
        self._windows = torch.tensor([v.shape[0] - self.num_frames + 1 for v in self.videos], dtype=torch.float64)

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        which = torch.multinomial(self._windows, batch, replacement=True, generator=generator)
        out = []
        for i in which.tolist():
            start = int(torch.randint(0, int(self._windows[i]), (1,), generator=generator))
            clip = self.videos[i][start : start + self.num_frames]
            if self.flip and bool(torch.rand(1, generator=generator) < 0.5):
                clip = clip.flip(-1)
            out.append(clip)
        return torch.stack(out).float()

    def held_out(self, count: int, seed: int = 1234) -> torch.Tensor:
        """``count`` windows drawn with a fixed seed (for sample grids and prediction metrics)."""
        return self.sample(count, torch.Generator().manual_seed(seed))


@dataclasses.dataclass
class WaveClips:
    """Procedural travelling-wave clips obeying a :class:`WaveLaw` (see ``synthetic``)."""

    law: WaveLaw = WaveLaw()

    @property
    def num_frames(self) -> int:
        return self.law.frames

    @property
    def sample_size(self) -> tuple[int, int]:
        return (self.law.height, self.law.width)

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return sample_waves(self.law, batch, generator)
