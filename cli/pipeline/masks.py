"""Foreground masks of video frames, cut by the colour distance to the scene's background."""

from __future__ import annotations


def foreground_masks(frames, background, threshold: float = 0.08):
    """Foreground masks ``[T, 1, H, W]`` (float 0/1) where a pixel differs from the background colour.

    ``frames``: ``[T, 3, H, W]`` in [0, 1]; the distance is the max over channels (robust to
    H.264 chroma noise, which stays below ~0.05 at our quality settings).
    """
    import torch

    bg = torch.as_tensor(background, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    return ((frames - bg).abs().amax(dim=1, keepdim=True) > threshold).to(frames.dtype)


def read_mask_video(path, fps: float, size: tuple[int, int], min_frames: int = 1, levels: bool = False):
    """Masks ``[T, 1, H, W]`` (float 0/1) from a mask video: white (mean channel > 0.5) is foreground.

    ``levels``: the mean channel itself in [0, 1] instead (an anti-aliased mask's edge pixels say how
    much of them is foreground)."""
    from .video_io import read_video

    mv = read_video(path, fps=fps, size=size, min_frames=min_frames, same_aspect=True)
    grey = mv.as_tensor().mean(1, keepdim=True)
    return grey.clamp(0, 1) if levels else (grey > 0.5).float()
