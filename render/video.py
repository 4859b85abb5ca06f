"""Writing what the renderer makes: PNG frames, H.264 mp4, side-by-side and overlay comparisons.

Video encoding goes through PyAV, which ships its own ffmpeg with libx264, so nothing has to be
installed on the system.  Frames are uint8 ``[T, H, W, 3]`` arrays or float tensors in [0, 1]
(``[T, H, W, 3]`` or ``[T, 3, H, W]``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np


def to_uint8_frames(frames) -> np.ndarray:
    """Any clip (uint8 or float in [0, 1]; ``[T,H,W,C]`` or ``[T,C,H,W]``; C in 1 or 3) as uint8 ``[T,H,W,3]``."""
    try:
        import torch

        if isinstance(frames, torch.Tensor):
            frames = frames.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    arr = np.asarray(frames)
    if arr.ndim == 3:  # a single frame or a clip of grey frames [T,H,W]
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"expected frames of shape [T,H,W,C] or [T,C,H,W], got {arr.shape}")
    if arr.shape[-1] not in (1, 3) and arr.shape[1] in (1, 3):
        arr = np.moveaxis(arr, 1, -1)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype != np.uint8:
        if not np.all(np.isfinite(arr)):
            raise ValueError("frames contain NaN or infinite values")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(arr)


def write_video(frames, path: str | Path, fps: float = 24.0, crf: int = 18) -> Path:
    """Encode a clip as H.264 mp4 (yuv420p, so every player opens it). Odd sizes are padded by one pixel."""
    import av

    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    arr = to_uint8_frames(frames)
    t, h, w, _ = arr.shape
    if t == 0:
        raise ValueError("cannot write a video with no frames")
    # yuv420p needs even width and height.
    ph, pw = h % 2, w % 2
    if ph or pw:
        arr = np.pad(arr, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from fractions import Fraction

    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = arr.shape[2], arr.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for frame in arr:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_png_frames(frames, folder: str | Path, prefix: str = "frame") -> list[Path]:
    """Write ``folder/prefix_0000.png`` ... and return the paths; ``prefix_NNNN.png`` files beyond
    these (a longer earlier run's) are removed, other files are left alone."""
    import imageio.v3 as iio

    arr = to_uint8_frames(frames)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(arr):
        p = folder / f"{prefix}_{i:04d}.png"
        iio.imwrite(p, frame)
        paths.append(p)
    # a longer earlier run into the same folder would leave its last frames behind
    for old in folder.glob(f"{prefix}_*.png"):
        index = old.stem[len(prefix) + 1 :]
        if index.isdigit() and int(index) >= len(arr):
            old.unlink()
    return paths


def side_by_side(clips: Sequence, gap: int = 4, gap_value: int = 255) -> np.ndarray:
    """Clips of equal length and height placed left to right with a ``gap``-pixel separator."""
    arrs = [to_uint8_frames(c) for c in clips]
    if not arrs:
        raise ValueError("side_by_side needs at least one clip")
    t, h = arrs[0].shape[:2]
    for a in arrs[1:]:
        if a.shape[:2] != (t, h):
            raise ValueError(f"clips differ in length or height: {arrs[0].shape} vs {a.shape}")
    sep = np.full((t, h, gap, 3), gap_value, dtype=np.uint8)
    parts = []
    for i, a in enumerate(arrs):
        if i:
            parts.append(sep)
        parts.append(a)
    return np.concatenate(parts, axis=2)


def difference(a, b, gain: float = 1.0) -> np.ndarray:
    """Absolute per-pixel difference of two clips (mean over channels, amplified by ``gain``), as uint8 grey."""
    fa = to_uint8_frames(a).astype(np.float32)
    fb = to_uint8_frames(b).astype(np.float32)
    if fa.shape != fb.shape:
        raise ValueError(f"clips differ in shape: {fa.shape} vs {fb.shape}")
    d = np.clip(np.abs(fa - fb).mean(axis=-1, keepdims=True) * gain, 0, 255).astype(np.uint8)
    return np.repeat(d, 3, axis=-1)


def overlay(base, mask, color=(255, 0, 0), opacity: float = 0.5) -> np.ndarray:
    """Tint ``base`` where ``mask`` ([T,H,W] or [T,1,H,W], values in [0,1]) is set, for silhouette comparison."""
    arr = to_uint8_frames(base).astype(np.float32)
    m = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask, dtype=np.float32)
    if m.ndim == 4:
        m = m[:, 0] if m.shape[1] == 1 else m[..., 0]
    if m.shape != arr.shape[:3]:
        raise ValueError(f"mask shape {m.shape} does not match frames {arr.shape[:3]}")
    a = (opacity * np.clip(m, 0, 1))[..., None]
    out = arr * (1 - a) + np.asarray(color, np.float32) * a
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
