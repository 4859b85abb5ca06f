"""Grid convergence of a cloth (issue 12, point 5): the bundled demo's drop onto a sphere with a
31x31 cloth, one second, simulated with the same material at two grid resolutions; the worst and the
mean per-frame silhouette IoU of the coarse grid's drop against the fine one's.  ``dreamcloth bench
--section cloth`` reports it (full runs only: two simulations of 25 frames, minutes)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def grid_convergence(coarse: int = 32, fine: int = 64, bending: float = 2e-5, n: int = 31, frames: int = 25) -> dict:
    """Per-frame silhouette IoU of the ``coarse`` grid's drop against the ``fine`` grid's, with the
    demo's true values and ``bending`` (N m)."""
    from dreamcloth.cli.pipeline.scene import load_scene
    from dreamcloth.cli.pipeline.simulate import simulate_and_render

    from .demo_variants import demo_scene_text

    folder = Path(tempfile.mkdtemp(prefix="convergence_"))
    masks = {}
    for grid in (coarse, fine):
        path = folder / f"grid{grid}.toml"
        path.write_text(demo_scene_text({"grid": grid, "frames": frames, "mesh": f"grid:{n}x{n}", "bending_stiffness": bending}))
        masks[grid] = simulate_and_render(load_scene(path), "cpu").masks > 0.5
    a, b = masks[coarse], masks[fine]
    iou = (a & b).sum((1, 2)) / np.maximum((a | b).sum((1, 2)), 1)
    return {"iou": iou.tolist(), "worst": float(iou.min()), "worst_frame": int(iou.argmin()), "mean": float(iou.mean())}
