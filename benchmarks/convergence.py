"""Grid convergence of a cloth (issue 12, point 5): the bundled demo's drop onto a sphere with a
31x31 cloth, one second, simulated with the same material at two grid resolutions; the worst and the
mean per-frame silhouette IoU of the coarse grid's drop against the fine one's.  ``dreamcloth bench
--section cloth`` reports it (full runs only: two simulations of 25 frames, minutes)."""

from __future__ import annotations

import tempfile
from pathlib import Path



def grid_convergence(coarse: int = 32, fine: int = 64, bending: float = 2e-5, n: int = 31, frames: int = 25,
                     cloth_solver: str = "mpm") -> dict:
    """Per-frame silhouette IoU of the ``coarse`` grid's drop against the ``fine`` grid's, with the
    demo's true values and ``bending`` (N m): ``dreamcloth scene check --convergence`` on that scene
    (``cloth_solver``: the scene's ``[scene] cloth_solver``)."""
    from dreamcloth.cli.pipeline.scene import load_scene
    from dreamcloth.cli.pipeline.simulate import measured_convergence

    from .demo_variants import demo_scene_text, with_cloth_solver

    path = Path(tempfile.mkdtemp(prefix="convergence_")) / f"grid{coarse}.toml"
    text = demo_scene_text({"grid": coarse, "frames": frames, "mesh": f"grid:{n}x{n}", "bending_stiffness": bending})
    path.write_text(with_cloth_solver(text, cloth_solver))
    c = measured_convergence(load_scene(path), fine, knob="grid")
    return {k: c[k] for k in ("iou", "worst", "worst_frame", "mean")}
