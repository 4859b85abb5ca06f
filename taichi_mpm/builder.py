"""Assembling a :class:`Model` and its initial :class:`State` from solids and cloth meshes."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from .cloth import ELEMENT_MASS_FRACTION, ClothGroup
from .colliders import Collider
from .model import MaterialGroup, Model, State
from .sampling import ParticleSet


@dataclasses.dataclass(frozen=True)
class ObjectRange:
    """Where one object's particles are: ``[start, end)``; for cloth, the vertex particles are
    ``[start, start + num_vertices)`` and the element particles follow."""

    name: str
    kind: str  # "solid" | "cloth"
    start: int
    end: int
    num_vertices: int = 0
    cloth_index: int | None = None


class ModelBuilder:
    """Adds objects one after the other, then builds the model and its rest state.

        b = ModelBuilder(torch.float32)
        b.add_solid("block", sample_box(...), "neo_hookean", velocity=(0, 0, 1))
        b.add_cloth("sheet", *grid_mesh(32, 32, (0.5, 0.5), (0, 0.6, 0)), pinned=[0, 31])
        model, state, ranges = b.build(colliders)
    """

    def __init__(self, dtype: torch.dtype = torch.float32, device="cpu"):
        self.dtype, self.device = dtype, torch.device(device)
        self._x: list[np.ndarray] = []
        self._v: list[np.ndarray] = []
        self._vol: list[np.ndarray] = []
        self._mass_vol: list[np.ndarray] = []
        self._pinned: list[np.ndarray] = []
        self._pin_v: list[np.ndarray] = []
        self._groups: list[MaterialGroup] = []
        self._cloth: list[ClothGroup] = []
        self.ranges: list[ObjectRange] = []
        self._n = 0

    def _append(self, x, v, vol, mass_vol, pinned, pin_v):
        n = len(x)
        self._x.append(np.asarray(x, np.float64))
        self._v.append(np.broadcast_to(np.asarray(v, np.float64), (n, 3)))
        self._vol.append(np.asarray(vol, np.float64))
        self._mass_vol.append(np.asarray(mass_vol, np.float64))
        self._pinned.append(np.asarray(pinned, np.int32))
        self._pin_v.append(np.broadcast_to(np.asarray(pin_v, np.float64), (n, 3)))
        self._n += n

    def add_solid(self, name: str, particles: ParticleSet, model: str = "neo_hookean", velocity=(0.0, 0.0, 0.0)) -> ObjectRange:
        """A volumetric body sampled as ``particles``."""
        start = self._n
        n = particles.count
        self._groups.append(MaterialGroup(model, start, start + n))
        self._append(particles.positions, velocity, particles.volumes, particles.volumes, np.zeros(n), np.zeros(3))
        r = ObjectRange(name, "solid", start, start + n)
        self.ranges.append(r)
        return r

    def add_cloth(
        self, name: str, vertices: np.ndarray, faces: np.ndarray, velocity=(0.0, 0.0, 0.0),
        pinned: Sequence[int] = (), pin_velocity=(0.0, 0.0, 0.0),
    ) -> ObjectRange:
        """A cloth mesh: its vertices become particles, then one element particle per triangle.

        ``pinned`` lists local vertex indices whose velocity is prescribed (``pin_velocity``).
        """
        v0 = self._n
        nv, ne = len(vertices), len(faces)
        verts = np.asarray(vertices, dtype=np.float64)
        if verts.ndim != 2 or verts.shape[1] != 3:
            raise ValueError(f"cloth {name!r}: vertices must be [V, 3] positions, got shape {verts.shape}")
        bad = ~np.isfinite(verts).all(axis=1)
        if bad.any():
            raise ValueError(f"cloth {name!r}: vertices must be finite, got {int(bad.sum())} with NaN or infinite coordinates")
        for label, vec in (("velocity", velocity), ("pin_velocity", pin_velocity)):
            if not np.isfinite(np.asarray(vec, dtype=np.float64)).all():
                raise ValueError(f"cloth {name!r}: {label} must be finite, got {vec}")
        group = ClothGroup.build(vertices, faces, v0, v0 + nv, self.dtype, self.device)
        pin = np.zeros(nv, np.int32)
        pinned = np.asarray(list(pinned), dtype=np.int64)
        if pinned.size and (pinned.min() < 0 or pinned.max() >= nv):
            raise ValueError(f"cloth {name!r}: pinned vertex ids must be in [0, {nv}), got {pinned.tolist()}")
        pin[pinned] = 1
        va = group.vertex_areas.double().cpu().numpy()
        self._append(vertices, velocity, va, (1 - ELEMENT_MASS_FRACTION) * va, pin, pin_velocity)
        centroids = np.asarray(vertices, np.float64)[np.asarray(faces)].mean(axis=1)
        areas = group.areas.double().cpu().numpy()
        self._append(centroids, velocity, areas, ELEMENT_MASS_FRACTION * areas, np.zeros(ne), np.zeros(3))
        self._cloth.append(group)
        r = ObjectRange(name, "cloth", v0, v0 + nv + ne, num_vertices=nv, cloth_index=len(self._cloth) - 1)
        self.ranges.append(r)
        return r

    def build(self, colliders: Sequence[Collider] = ()) -> tuple[Model, State]:
        """The model and its rest state (cloth elements in their rest frames)."""
        if self._n == 0:
            raise ValueError("the scene has no objects")
        t = dict(dtype=self.dtype, device=self.device)
        pin_v = torch.tensor(np.concatenate(self._pin_v), **t)
        model = Model.create(
            torch.tensor(np.concatenate(self._vol), **t),
            self._groups,
            pinned=torch.tensor(np.concatenate(self._pinned), dtype=torch.int32, device=self.device),
            pin_velocity=pin_v,
            colliders=colliders,
            cloth=self._cloth,
            mass_volume=torch.tensor(np.concatenate(self._mass_vol), **t),
        )
        x = torch.tensor(np.concatenate(self._x), **t)
        v = torch.tensor(np.concatenate(self._v), **t)
        return model, State.at_rest(x, v, model)
