"""The time step from a CFL bound on the run's parameter *ranges*.

dt is computed from the bounds of the parameters being fitted, not from their current values, so
that the number of substeps (and with it the loss) stays a smooth function of the parameters.
"""

from __future__ import annotations

import dataclasses
import math

#: Courant number for explicit MPM with quadratic B-splines; 0.3-0.5 is the usual range.
CFL_NUMBER = 0.4
#: Courant number for cloth, over min(dx, shortest rest edge): a soft cloth folding over a sphere
#: ran stably at 0.4 across young_modulus 25-400 once element particles carry mass (see cloth.py);
#: 0.35 keeps a margin for folds tighter than that test's.
CFL_NUMBER_CLOTH = 0.35
#: the mesh solver with the implicit membrane (``SimConfig.membrane = "implicit"``): dt moves no
#: vertex more than this fraction of the shortest rest edge at the bound speed, and is at most
#: ``MAX_DT_IMPLICIT``.  Accuracy, not stability (backward Euler is stable at any dt), and not the
#: stiffness: a 7x7 cloth swinging from two corners, 1/3 s, came 5.4-6.2, 3.0-3.5 and 1.6-2.0 mm
#: (mean vertex distance, worst frame) from the explicit solver at 12, 25 and 50 substeps per
#: frame for every young_modulus from 500 to 32,000 N/m (measured 2026-12-05, README "Cloth physics")
CFL_NUMBER_MOTION = 0.25
MAX_DT_IMPLICIT = 1e-3


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Ranges (low, high) of the material parameters a run may visit.

    For cloth, young_modulus and the stiffnesses are membrane stiffnesses (N/m) and density is
    areal (kg/m^2); the signal speed has the same form.  ``min_length`` is the shortest cloth
    rest edge (the Lagrangian forces act over it), ``max_speed`` a bound on particle speeds.
    Bending does not bound dt: its step is implicit (``cloth_forces.ImplicitBending``).
    """

    young_modulus: tuple[float, float]
    poisson_ratio: tuple[float, float]
    density: tuple[float, float]
    max_speed: float = 0.0
    shear_stiffness: tuple[float, float] | None = None
    normal_stiffness: tuple[float, float] | None = None
    min_length: float | None = None


def p_wave_speed(young_modulus: float, poisson_ratio: float, density: float) -> float:
    """Dilatational wave speed sqrt((lam + 2 mu) / rho): the fastest signal in a linear elastic solid."""
    E, nu, rho = young_modulus, poisson_ratio, density
    modulus = E * (1 - nu) / ((1 + nu) * (1 - 2 * nu))
    return math.sqrt(modulus / rho)


def max_dt(dx: float, bounds: Bounds, cfl: float = CFL_NUMBER, cfl_cloth: float = CFL_NUMBER_CLOTH, mesh: bool = False,
           implicit_membrane: bool = False) -> float:
    """Largest stable dt for every parameter value inside ``bounds``.

    ``mesh``: the grid-free cloth solver (``mesh_cloth``), whose only explicit force is the membrane
    acting over the shortest rest edge: the grid spacing and the shear and normal stiffnesses (the
    grid's d3 terms) do not enter.  With ``implicit_membrane`` too, no stiffness enters: dt moves a
    vertex at most ``CFL_NUMBER_MOTION`` of that edge at ``bounds.max_speed`` (at least 1 m/s), and
    is at most ``MAX_DT_IMPLICIT``."""
    if mesh and not bounds.min_length:
        raise ValueError("the mesh cloth solver's time step needs the shortest rest edge (Bounds.min_length)")
    if mesh and implicit_membrane:
        return min(CFL_NUMBER_MOTION * bounds.min_length / max(bounds.max_speed, 1.0), MAX_DT_IMPLICIT)
    c = p_wave_speed(bounds.young_modulus[1], bounds.poisson_ratio[1], bounds.density[0])
    if mesh:
        return cfl_cloth * bounds.min_length / (c + bounds.max_speed)
    cloth = bounds.shear_stiffness is not None or bounds.normal_stiffness is not None
    if not cloth:
        return cfl * dx / (c + bounds.max_speed)
    for k in (bounds.shear_stiffness, bounds.normal_stiffness):
        if k is not None:
            c = max(c, math.sqrt(k[1] / bounds.density[0]))
    length = min(dx, bounds.min_length) if bounds.min_length else dx
    return cfl_cloth * length / (c + bounds.max_speed)


def substeps_for(fps: float, dt_max: float) -> int:
    """Substeps per frame so that dt = 1 / (fps * substeps) <= dt_max."""
    if dt_max <= 0 or not math.isfinite(dt_max):
        raise ValueError(f"invalid CFL time step {dt_max}")
    return max(1, math.ceil(1.0 / (fps * dt_max) - 1e-9))


def stable_config(grid, fps: float, bounds: Bounds, **kwargs):
    """A :class:`SimConfig` with the fewest substeps per frame that the CFL bound allows."""
    from .config import SimConfig

    dt = max_dt(grid.dx, bounds, mesh=kwargs.get("cloth_solver") == "mesh", implicit_membrane=kwargs.get("membrane") == "implicit")
    return SimConfig(grid=grid, fps=fps, substeps_per_frame=substeps_for(fps, dt), **kwargs)
