"""`dreamcloth fit --device DEV --out OUT` on the bundled demo where PyAV is missing (the device
machine): the frames come from .devcarry/demo_frames.npz (tools/gpu/prepare.sh), and without PyAV
the side-by-side fit.mp4 is skipped (everything else - params.json, the table - is written)."""

import sys
import time
from pathlib import Path

import numpy as np

from dreamcloth.cli.pipeline import video_io

raw = np.load(".devcarry/demo_frames.npz")


def read_video(path, fps=None, size=None, max_frames=None, min_frames=1):
    arr = raw["frames"]
    if max_frames is not None:
        arr = arr[:max_frames]
    if size is not None and tuple(arr.shape[1:3]) != tuple(size):
        arr = video_io.resize_frames(arr, size)
    return video_io.Video(arr, float(raw["fps"]), Path(path))


video_io.read_video = read_video
try:
    import av  # noqa: F401
except ImportError:
    import dreamcloth.render as R

    R.write_video = lambda frames, path, fps=24, **kw: print(f"(no PyAV: {path} not written)")
from dreamcloth.cli.app import app  # noqa: E402

t = time.perf_counter()
try:
    app(["fit", "--device", sys.argv[1], "--out", sys.argv[2]] + sys.argv[3:], standalone_mode=False)
finally:
    print(f"FIT on {sys.argv[1]}: {time.perf_counter() - t:.1f} s", flush=True)
