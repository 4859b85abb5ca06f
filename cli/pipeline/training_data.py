"""Training videos for the builtin prior: a scene simulated and rendered over its fit ranges."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

from .devices import resolve_device
from .errors import InputError
from .progress import Progress, silent


@dataclasses.dataclass
class TrainingSet:
    """The videos written (``clips``) and the file of the values each was made with (``params``)."""

    clips: list[Path]
    params: Path


def make_training_videos(scene_path: Path, out: Path, count: int = 32, seed: int = 0, device: str = "cpu",
                         progress: Progress = silent) -> TrainingSet:
    """Write ``count`` videos of the scene, each with parameters drawn from its fit ranges (log-uniform
    for log-space parameters, uniform otherwise): ``clip_NNNN.mp4`` plus ``params.jsonl``."""
    from dreamcloth.render import write_video
    from dreamcloth.taichi_mpm import PARAMETERS

    from .scene import load_scene
    from .simulate import simulate_and_render

    if count < 1:
        raise InputError(f"--count must be >= 1, got {count}")
    base = load_scene(scene_path)
    keys = base.fit_parameters
    if not keys:
        raise InputError(f"{scene_path}: no [object.fit] ranges to sample")
    dev = resolve_device(device)
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    clips = []
    progress("make-data", 0, count, "")
    with (out / "params.jsonl").open("w") as log:
        for i in range(count):
            values = {}
            for obj, p in keys:
                lo, hi = base.objects[obj].fit[p]
                log_space = PARAMETERS[p].log_space
                values[(obj, p)] = math.exp(rng.uniform(math.log(lo), math.log(hi))) if log_space else rng.uniform(lo, hi)
            video = simulate_and_render(base.with_values(values), dev).video
            path = write_video(video, out / f"clip_{i:04d}.mp4", fps=base.settings.fps)
            clips.append(path)
            log.write(json.dumps({"file": path.name, **{f"{base.objects[o].name}.{p}": v for (o, p), v in values.items()}}) + "\n")
            log.flush()
            progress("make-data", i + 1, count, ", ".join(f"{p}={v:.3g}" for (_, p), v in values.items()))
    return TrainingSet(clips, out / "params.jsonl")
