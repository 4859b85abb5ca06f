"""Frozen hyper-parameters of a simulation: the grid over the domain box, time stepping, gravity."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Sequence

Vec3 = tuple[float, float, float]


def _vec3(v: Sequence[float], name: str) -> Vec3:
    t = tuple(float(a) for a in v)
    if len(t) != 3:
        raise ValueError(f"{name} must have 3 components, got {len(t)}")
    if not all(math.isfinite(a) for a in t):
        raise ValueError(f"{name} must be finite, got {t}")
    return t  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """A dense MPM grid over an axis-aligned domain box.

    Node ``(i, j, k)`` sits at ``origin + (i, j, k) * dx``; ``res`` nodes per axis.  The outermost
    ``boundary`` cells on every side are walls (outward velocity removed), which with a CFL-bounded
    dt keeps every particle inside the grid.
    """

    origin: Vec3
    dx: float
    res: tuple[int, int, int]
    boundary: int = 3

    def __post_init__(self):
        object.__setattr__(self, "origin", _vec3(self.origin, "grid origin"))
        if isinstance(self.dx, bool) or not (isinstance(self.dx, (int, float)) and math.isfinite(self.dx) and self.dx > 0):
            raise ValueError(f"grid dx must be a positive finite number, got {self.dx!r}")
        res = tuple(self.res)
        if len(res) != 3 or not all(isinstance(r, numbers.Integral) and not isinstance(r, bool) for r in res):
            raise ValueError(f"grid res must be 3 integers, got {self.res!r}")
        res = tuple(int(r) for r in res)
        if isinstance(self.boundary, bool) or not (isinstance(self.boundary, numbers.Integral) and self.boundary >= 0):
            raise ValueError(f"grid boundary must be an integer >= 0, got {self.boundary!r}")
        if min(res) < 1:
            raise ValueError(f"grid res must be positive, got {res}")
        object.__setattr__(self, "res", res)

    @staticmethod
    def from_domain(domain_min: Sequence[float], domain_max: Sequence[float], resolution: int, boundary: int = 3) -> "GridSpec":
        """``resolution`` cells along the longest axis of the box; the others get the same dx.

        The walls take ``boundary`` cells, so the box is padded by that much on every side: the
        domain the user gave is where particles can move.
        """
        lo = _vec3(domain_min, "domain min")
        hi = _vec3(domain_max, "domain max")
        ext = [h - l for l, h in zip(lo, hi)]
        if min(ext) <= 0:
            raise ValueError(f"domain box is empty or inverted: min {lo}, max {hi}")
        if resolution < 4:
            raise ValueError(f"grid resolution must be at least 4 cells, got {resolution}")
        dx = max(ext) / resolution
        pad = boundary
        res = tuple(int(math.ceil(e / dx - 1e-9)) + 2 * pad + 1 for e in ext)
        origin = tuple(l - pad * dx for l in lo)
        return GridSpec(origin=origin, dx=dx, res=res, boundary=boundary)  # type: ignore[arg-type]

    @property
    def inv_dx(self) -> float:
        return 1.0 / self.dx

    @property
    def inner_min(self) -> Vec3:
        """Lowest point a particle may occupy (inside the walls)."""
        return tuple(o + self.boundary * self.dx for o in self.origin)  # type: ignore[return-value]

    @property
    def inner_max(self) -> Vec3:
        """Highest point a particle may occupy (inside the walls)."""
        return tuple(o + (r - 1 - self.boundary) * self.dx for o, r in zip(self.origin, self.res))  # type: ignore[return-value]

    @property
    def stencil_box(self) -> tuple[Vec3, Vec3]:
        """(lo, hi) corners of where a particle's 3x3x3 stencil lies inside the grid: the engine keeps
        particles there (see ``kernels.g2p``), and ``simulate`` accepts initial states there."""
        eps = 1e-6 * self.dx
        lo = tuple(o + self.dx for o in self.origin)
        hi = tuple(o + (r - 2) * self.dx - eps for o, r in zip(self.origin, self.res))
        return lo, hi  # type: ignore[return-value]

    @property
    def num_nodes(self) -> int:
        return self.res[0] * self.res[1] * self.res[2]


#: ``SimConfig.cloth_solver``: "mpm" (the cloth on the grid, Jiang et al. 2017) or "mesh" (grid-free,
#: see ``mesh_cloth``)
CLOTH_SOLVERS = ("mpm", "mesh")
#: ``SimConfig.membrane``: the mesh solver's membrane integrator
MEMBRANES = ("explicit", "implicit")


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Time stepping and grid of one simulation.

    ``substeps_per_frame`` substeps of ``dt = 1 / (fps * substeps_per_frame)`` make one output
    frame.  ``segment_substeps`` is K, the number of substeps per checkpointed segment in the
    backward pass (memory O(N (T/K + K))); ``None`` picks about sqrt(T).
    ``scatter`` chooses the particle-to-grid strategy: ``"colored"`` (parallel without float
    atomics; CPUs, many particles), ``"serial"`` (one thread; CPUs, up to a few thousand particles,
    where kernel launches cost more than the work), ``"atomic"`` (GPUs) or ``"auto"``.  The CPU
    strategies are deterministic.
    ``cloth_solver``: ``"mpm"`` simulates cloth on the grid; ``"mesh"`` integrates a cloth-only scene
    on its mesh alone, without a grid (``mesh_cloth``; the grid then only bounds the domain), with
    cloth-cloth contact at ``cloth_thickness`` (m; 0: none; ``self_contact``).
    ``membrane`` (mesh solver only): ``"explicit"`` integrates the membrane with the other forces
    (dt under its stiffness CFL bound); ``"implicit"`` takes a backward-Euler membrane step solved
    to convergence, so that dt no longer depends on the stretch stiffness (``membrane_newton``).
    ``flip`` blends FLIP into the grid-to-particle velocity (0: APIC, the default; see ``kernels.g2p``):
    the share of a particle's own velocity kept at each transfer, or, with ``flip_dt``, kept per
    ``flip_dt`` seconds: a substep of length dt then keeps ``flip ** (dt / flip_dt)``
    (:attr:`flip_share`), so that the transfers' dissipation per second, like ``damping``, does not
    change with the substep count.  Kept per substep, halving dt doubled the transfers and with
    them the loss of the motion the grid does not resolve (measured on a 41x41 cloth dropped on a
    sphere, README "Cloth physics").
    """

    grid: GridSpec
    fps: float
    substeps_per_frame: int
    gravity: Vec3 = (0.0, -9.81, 0.0)
    segment_substeps: int | None = None
    scatter: str = "auto"
    flip: float = 0.0
    flip_dt: float | None = None
    cloth_solver: str = "mpm"
    cloth_thickness: float = 0.0
    membrane: str = "explicit"

    def __post_init__(self):
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be positive, got {self.fps}")
        spf = self.substeps_per_frame
        if isinstance(spf, bool) or not isinstance(spf, numbers.Integral) or spf < 1:
            raise ValueError(f"substeps_per_frame must be an integer >= 1, got {spf!r}")
        object.__setattr__(self, "substeps_per_frame", int(spf))
        object.__setattr__(self, "gravity", _vec3(self.gravity, "gravity"))
        if self.segment_substeps is not None and self.segment_substeps < 1:
            raise ValueError(f"segment_substeps must be >= 1, got {self.segment_substeps}")
        if not (0.0 <= self.flip < 1.0):
            raise ValueError(f"flip must be in [0, 1), got {self.flip}")
        if self.flip_dt is not None and not (self.flip_dt > 0 and math.isfinite(self.flip_dt)):
            raise ValueError(f"flip_dt must be positive, got {self.flip_dt}")
        if self.cloth_solver not in CLOTH_SOLVERS:
            raise ValueError(f"cloth_solver must be one of {', '.join(map(repr, CLOTH_SOLVERS))}, got {self.cloth_solver!r}")
        if not (0.0 <= self.cloth_thickness < 1.0):
            raise ValueError(f"cloth_thickness must be in [0, 1) m, got {self.cloth_thickness}")
        if self.membrane not in MEMBRANES:
            raise ValueError(f"membrane must be one of {', '.join(map(repr, MEMBRANES))}, got {self.membrane!r}")
        if self.scatter not in ("auto", "colored", "serial", "atomic"):
            raise ValueError(f"scatter must be 'auto', 'colored', 'serial' or 'atomic', got {self.scatter!r}")

    @property
    def dt(self) -> float:
        return 1.0 / (self.fps * self.substeps_per_frame)

    @property
    def flip_share(self) -> float:
        """The FLIP share each substep's transfer uses: ``flip``, or ``flip ** (dt / flip_dt)``."""
        if self.flip == 0.0 or self.flip_dt is None:
            return self.flip
        return self.flip ** (self.dt / self.flip_dt)

    def segment_length(self, total_substeps: int) -> int:
        """K, substeps per checkpointed segment: ``segment_substeps`` or about sqrt(total)."""
        k = self.segment_substeps or max(1, int(round(math.sqrt(total_substeps))))
        return max(1, min(int(k), int(total_substeps)))
