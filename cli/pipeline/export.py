"""Writing simulation results a person can open: mesh sequences, particle clouds, state arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_mesh(path: str | Path, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """A triangle mesh as OBJ or PLY (by suffix), through trimesh."""
    import trimesh

    path = Path(path)
    trimesh.Trimesh(vertices=np.asarray(vertices, dtype=np.float64), faces=np.asarray(faces), process=False).export(path)
    return path


def write_points(path: str | Path, points: np.ndarray) -> Path:
    """A particle cloud as PLY, through trimesh."""
    import trimesh

    path = Path(path)
    trimesh.PointCloud(np.asarray(points, dtype=np.float64)).export(path)
    return path


def export_frames(out: Path, x: np.ndarray, ranges, faces: dict[int, np.ndarray], fmt: str = "obj", on_frame=None) -> list[Path]:
    """Per frame and object: ``out/meshes/<name>_0000.obj`` (cloth) or ``out/particles/<name>_0000.ply`` (solids).

    ``x``: ``[T, N, 3]`` positions.  Numbered files of an earlier export into these folders (other
    frames, objects or formats) are removed first, so the folders hold this run's frames only.
    """
    import re

    numbered = re.compile(r"^.+_\d{4,}\.(obj|ply)$")
    for sub in ("meshes", "particles"):
        if (out / sub).is_dir():
            for old in (out / sub).iterdir():
                if old.is_file() and numbered.match(old.name):
                    old.unlink()
    written = []
    for t in range(x.shape[0]):
        for i, r in enumerate(ranges):
            if r.kind == "cloth":
                d = out / "meshes"
                d.mkdir(parents=True, exist_ok=True)
                written.append(write_mesh(d / f"{r.name}_{t:04d}.{fmt}", x[t, r.start : r.start + r.num_vertices], faces[i]))
            else:
                d = out / "particles"
                d.mkdir(parents=True, exist_ok=True)
                written.append(write_points(d / f"{r.name}_{t:04d}.ply", x[t, r.start : r.end]))
        if on_frame is not None:
            on_frame(t)
    return written
