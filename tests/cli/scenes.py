"""Small scene files for the command tests."""

from __future__ import annotations

from pathlib import Path

DRAPE = """
[scene]
fps = 24
frames = {frames}
grid = 16
domain = [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]

[camera]
width = 64
height = 48
fov_y_deg = 40
eye = [0.5, 1.05, 1.75]
look_at = [0.5, 0.45, 0.5]
background = [1.0, 1.0, 1.0]

[[object]]
name = "sheet"
kind = "cloth"
mesh = "grid:8x8"
size = [0.6, 0.6]
center = [0.57, 0.72, 0.55]
rotation_deg = [0.0, 25.0, 0.0]
color = [0.85, 0.35, 0.2]

[object.material]
young_modulus = {E}
poisson_ratio = 0.3
density = 1.0
damping = {damping}
friction = 0.3
shear_stiffness = 200.0
normal_stiffness = 200.0

[object.fit]
young_modulus = [20.0, 400.0]
{extra_fit}

[[collider]]
kind = "sphere"
center = [0.5, 0.45, 0.5]
radius = 0.15

[[collider]]
kind = "plane"
point = [0.0, 0.05, 0.0]
"""


def write_drape(folder: Path, name: str = "drape.toml", E: float = 60.0, damping: float = 0.3, frames: int = 10,
                extra_fit: str = "", text: str | None = None) -> Path:
    p = Path(folder) / name
    p.write_text(text if text is not None else DRAPE.format(E=E, damping=damping, frames=frames, extra_fit=extra_fit))
    return p
