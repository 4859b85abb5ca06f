"""Small scene files for the command tests: the accuracy suite's drape at test size."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dreamcloth.benchmarks.accuracy import SCENARIOS, scene_text


def drape_text(E: float = 60.0, damping: float = 0.3, frames: int = 10) -> str:
    """An 8x8 cloth dropped onto a sphere, 64x48 camera; young_modulus fitted in [20, 400]."""
    base = SCENARIOS["drape"]
    sc = dataclasses.replace(base, small=dict(frames=frames, grid=16, n=8, width=64, height=48), fit={"young_modulus": (20.0, 400.0)})
    return scene_text(sc, "small", {"young_modulus": E, "damping": damping}, with_fit=True)


def write_drape(folder: Path, name: str = "drape.toml", E: float = 60.0, damping: float = 0.3, frames: int = 10,
                text: str | None = None, solver: str | None = None) -> Path:
    """The drape as a scene file; ``solver`` writes ``[scene] cloth_solver`` (default: the file's
    own default, "auto", which picks the mesh solver for this cloth-only scene)."""
    from dreamcloth.benchmarks.demo_variants import with_cloth_solver

    p = Path(folder) / name
    text = text if text is not None else drape_text(E, damping, frames)
    p.write_text(with_cloth_solver(text, solver) if solver else text)
    return p
