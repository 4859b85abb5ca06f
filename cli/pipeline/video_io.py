"""Reading videos: any container and codec ffmpeg knows (through PyAV), resampled and resized.

Every failure a user can cause (a missing file, a file that is not a video, a truncated or corrupt
stream, too few frames) is a ``ValueError``/``FileNotFoundError`` whose message names the file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .errors import not_a_file


@dataclasses.dataclass(frozen=True)
class Video:
    """Decoded frames ``[T, H, W, 3]`` uint8, their rate and where they came from."""

    frames: np.ndarray
    fps: float
    path: Path

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def as_tensor(self, device="cpu", dtype=None):
        """Frames as a float tensor ``[T, 3, H, W]`` in [0, 1]."""
        import torch

        t = torch.from_numpy(self.frames).to(device=device).permute(0, 3, 1, 2)
        return t.to(dtype or torch.float32) / 255.0


def read_video(
    path: str | Path,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
    max_frames: int | None = None,
    min_frames: int = 1,
    same_aspect: bool = False,
) -> Video:
    """Decode ``path``; optionally resample to ``fps`` (nearest frame in time) and resize to ``size=(H, W)``.

    ``same_aspect``: a video whose width/height differs from ``size``'s by more than 1% is a
    ValueError instead of being stretched (a scene's camera: a stretched video moves every
    silhouette the fit compares).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that cannot be
    decoded, is truncated, or has fewer than ``min_frames`` frames after resampling.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {path} {not_a_file(path)}")
    frames: list[np.ndarray] = []
    times: list[float] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream")
            stream = container.streams.video[0]
            src_fps = float(stream.average_rate or stream.guessed_rate or 0.0) or None
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(float(frame.time) if frame.time is not None else len(times) / (src_fps or 1.0))
    except av.error.FFmpegError as exc:
        if not frames:
            raise ValueError(f"{path} is not a readable video ({exc.__class__.__name__}: {exc})") from None
        # A stream that breaks part-way: keep nothing, the caller cannot trust a prefix silently.
        raise ValueError(f"{path} is truncated or corrupt after frame {len(frames)} ({exc})") from None
    if not frames:
        raise ValueError(f"{path} contains no decodable frames (truncated or corrupt?)")
    src_fps = src_fps or 24.0
    arr = np.stack(frames)
    if fps is not None and abs(fps - src_fps) > 1e-6:
        arr = _resample(arr, np.asarray(times) - times[0], fps)
        out_fps = float(fps)
    else:
        out_fps = src_fps
    if max_frames is not None:
        arr = arr[:max_frames]
    if arr.shape[0] < min_frames:
        raise ValueError(f"{path} has {arr.shape[0]} frames at {out_fps:g} fps, but {min_frames} are needed")
    if size is not None and same_aspect:
        (h, w), (sh, sw) = arr.shape[1:3], size
        # within 1%, or one pixel of rounding: write_video pads an odd side by one pixel (a 128x95
        # camera's video is 128x96), and scene init rounds the camera's height to whole pixels
        rounding = min(abs(w * sh / h - sw), abs(h * sw / w - sh)) <= 1.0
        if abs((w / h) / (sw / sh) - 1.0) > ASPECT_TOLERANCE and not rounding:
            raise ValueError(f"{path} is {w}x{h} (aspect {w / h:.3f}) but the scene's camera is {sw}x{sh} ({sw / sh:.3f}): "
                             "resizing would stretch it; set [camera] width and height to the video's aspect")
    if size is not None and tuple(arr.shape[1:3]) != tuple(size):
        arr = resize_frames(arr, size)
    return Video(frames=arr, fps=out_fps, path=path)


#: relative difference of width/height between a video and the camera it is fitted with, beyond
#: which ``same_aspect`` refuses it (even sizes for H.264 round 16:9 at 854x480 by 0.06%)
ASPECT_TOLERANCE = 0.01


def _resample(frames: np.ndarray, times: np.ndarray, fps: float) -> np.ndarray:
    """Nearest source frame for each output time 0, 1/fps, ... up to the last source frame."""
    duration = float(times[-1]) if len(times) > 1 else 0.0
    n_out = int(np.floor(duration * fps + 1e-6)) + 1
    want = np.arange(n_out) / fps
    idx = np.clip(np.searchsorted(times, want), 0, len(times) - 1)
    prev = np.clip(idx - 1, 0, len(times) - 1)
    pick = np.where(np.abs(times[prev] - want) <= np.abs(times[idx] - want), prev, idx)
    return frames[pick]


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 ``[T,H,W,3]`` frames to ``size=(H, W)`` with antialiased bilinear filtering."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    out = F.interpolate(t, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
