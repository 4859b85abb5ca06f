"""Fabric-standard experiments with analytic answers (float64), shared by the tests and ``dreamcloth bench --section cloth``:

- cantilever bending (Peirce 1930, "The 'handle' of cloth as a measurable quantity"; ASTM D1388):
  the tip deflection of a strip overhanging a clamp under its own weight, against the
  inextensible elastica;
- stretch under self-weight: a sheet hanging from its top edge stretches by w g L^2 / (2 E);
- terminal speed: a horizontal sheet falling flat reaches sqrt(2 w g / (rho_air C_d)); a sheet inclined
  at theta with drag along its velocity (drag_tangential 1) falls straight down and reaches
  sqrt(2 w g / (rho_air C_d cos theta)).

``solver`` is the cloth solver (``SimConfig.cloth_solver``): "mpm" on the grid or "mesh" without one,
its membrane explicit; "mesh-implicit" is the mesh solver with its implicit membrane step
(``SimConfig.membrane = "implicit"``, the scene files' default for the mesh solver).
"""

import math

import numpy as np
import torch
from scipy.integrate import solve_bvp

from dreamcloth.taichi_mpm import Bounds, GridSpec, ModelBuilder, Params, grid_mesh, simulate, stable_config
from dreamcloth.taichi_mpm.cloth_forces import AIR_DENSITY

F64 = torch.float64
G = 9.81


def elastica_tip_deflection(load: float) -> float:
    """Tip deflection / length of a clamped inextensible strip under its own weight, ``load`` = w g L^3 / B.

    theta'' = -load (1 - s) cos theta, theta(0) = 0, theta'(1) = 0 (s = arc length / L): the moment
    B theta' balances the weight of the overhang beyond s.
    """
    s0 = np.linspace(0, 1, 200)
    sol = solve_bvp(lambda s, y: np.vstack([y[1], -load * (1 - s) * np.cos(y[0])]), lambda a, b: np.array([a[0], b[1]]),
                    s0, np.zeros((2, s0.size)), tol=1e-10, max_nodes=100000)
    if not sol.success:
        raise RuntimeError(f"elastica: {sol.message}")
    s = np.linspace(0, 1, 4001)
    return float(np.trapezoid(np.sin(sol.sol(s)[0]), s))


def solver_config(solver: str) -> dict:
    """``SimConfig`` fields of a cloth ``solver`` name (module docstring)."""
    if solver == "mesh-implicit":
        return {"cloth_solver": "mesh", "membrane": "implicit"}
    return {"cloth_solver": solver}


def cantilever(load: float, grid_res: int, length=0.2, width=0.04, nx=22, nz=5, density=0.2, membrane=300.0, seconds=1.2,
               solver: str = "mpm"):
    """Simulated tip deflection / length of a strip clamped by its first two vertex columns.

    The damping is set near critical for the first bending mode (omega = 3.516 sqrt(B / (rho L^4)))
    so that the strip settles within ``seconds``.
    """
    h = length / (nx - 2)
    bending = density * G * length**3 / load
    verts, faces = grid_mesh(nx, nz, ((nx - 1) * h, width), (0.1 + (nx - 1) * h / 2, 0.5, 0.2))
    b = ModelBuilder(F64)
    b.add_cloth("strip", verts, faces, pinned=[i * nz + j for i in range(2) for j in range(nz)])
    model, state = b.build([])
    grid = GridSpec.from_domain((0, 0.05, 0), (0.45, 0.55, 0.4), grid_res)
    omega = 3.516 * math.sqrt(bending / (density * length**4))
    params = Params.create(membrane, 0.0, density, math.exp(-2 * omega), 0.0, membrane, membrane,
                           bending_stiffness=bending, drag_coefficient=0.0, dtype=F64)
    bounds = Bounds((membrane, membrane), (0.0, 0.0), (density, density), max_speed=2.0, shear_stiffness=(membrane, membrane),
                    normal_stiffness=(membrane, membrane), min_length=h)
    cfg = stable_config(grid, 10.0, bounds, **solver_config(solver))
    with torch.no_grad():
        traj = simulate(model, state, params, cfg, int(seconds * 10) + 1, bounds=bounds)
    tip = list(range((nx - 1) * nz, nx * nz))
    return (0.5 - traj.x[:, tip, 1].mean(1).numpy()) / length


def hanging_stretch(grid_res: int, membrane=10.0, density=0.2, length=0.4, width=0.2, nx=21, nz=11, seconds=1.5,
                    max_stretch=0.0, solver: str = "mpm"):
    """(simulated, analytic) elongation of a sheet hanging from its pinned top edge (Poisson ratio 0:
    uniaxial tension w g (L - y) per unit width, strain tension / E, elongation w g L^2 / (2 E)).

    With a strain limit ``max_stretch`` (0: none) the strain is min(w g (L - y) / E, max_stretch - 1):
    capped over the top, elastic below depth s = E (max_stretch - 1) / (w g) from the bottom."""
    verts, faces = grid_mesh(nx, nz, (length, width), (0.5, 0.7, 0.5), (0.0, 0.0, 90.0))
    top = np.nonzero(np.isclose(verts[:, 1], verts[:, 1].max()))[0].tolist()
    bottom = np.nonzero(np.isclose(verts[:, 1], verts[:, 1].min()))[0]
    b = ModelBuilder(F64)
    b.add_cloth("sheet", verts, faces, pinned=top)
    model, state = b.build([])
    grid = GridSpec.from_domain((0.2, 0.2, 0.2), (0.8, 0.95, 0.8), grid_res)
    omega = 0.5 * math.pi * math.sqrt(membrane / density) / length  # first axial mode
    params = Params.create(membrane, 0.0, density, math.exp(-2 * omega), 0.0, membrane, membrane, max_stretch=max_stretch,
                           dtype=F64)
    bounds = Bounds((membrane, membrane), (0.0, 0.0), (density, density), max_speed=2.0, shear_stiffness=(membrane, membrane),
                    normal_stiffness=(membrane, membrane), min_length=length / (nx - 1))
    cfg = stable_config(grid, 20.0, bounds, **solver_config(solver))
    with torch.no_grad():
        traj = simulate(model, state, params, cfg, int(seconds * 20) + 1, bounds=bounds)
    y0 = float(state.x[bottom, 1].mean())
    elongation = density * G * length**2 / (2 * membrane)
    if max_stretch:
        cap = max_stretch - 1.0
        s = min(length, membrane * cap / (density * G))  # depth from the bottom where the cap starts
        elongation = cap * (length - s) + density * G * s**2 / (2 * membrane)
    return y0 - traj.x[:, bottom, 1].mean(1).numpy(), elongation


def _end_velocity(verts, faces, domain, grid_res: int, density: float, drag: float, tangential, spacing: float,
                  seconds: float, fps: float, solver: str) -> np.ndarray:
    """A free sheet (membrane 100 N/m, no bending) falling from rest through still air: the mean
    velocity of its vertices over the last frame."""
    b = ModelBuilder(F64)
    b.add_cloth("sheet", verts, faces)
    model, state = b.build([])
    grid = GridSpec.from_domain(*domain, grid_res)
    E = 100.0
    params = Params.create(E, 0.3, density, 1.0, 0.0, E, E, bending_stiffness=0.0, drag_coefficient=drag,
                           drag_tangential=tangential, dtype=F64)
    bounds = Bounds((E, E), (0.3, 0.3), (density, density), max_speed=3.0, shear_stiffness=(E, E), normal_stiffness=(E, E),
                    min_length=spacing)
    cfg = stable_config(grid, fps, bounds, **solver_config(solver))
    with torch.no_grad():
        traj = simulate(model, state, params, cfg, int(seconds * fps) + 1, bounds=bounds)
    c = traj.x[:, : len(verts)].mean(1).numpy()
    return (c[-1] - c[-2]) * fps


def falling_sheet(grid_res: int, density=0.1, drag=1.0, n=17, size=0.3, seconds=0.6, fps=50.0, solver: str = "mpm"):
    """(simulated speed at the end, analytic terminal speed) of a horizontal sheet falling flat from rest."""
    verts, faces = grid_mesh(n, n, (size, size), (0.5, 0.9, 0.5))
    v = _end_velocity(verts, faces, ((0, 0, 0), (1, 1, 1)), grid_res, density, drag, None, size / (n - 1), seconds, fps, solver)
    return -v[1], math.sqrt(2 * density * G / (AIR_DENSITY * drag))


def inclined_sheet(tilt_deg: float, tangential: float, density=0.1, drag=1.0, n=17, size=0.3, seconds=0.6, fps=50.0,
                   solver: str = "mesh") -> tuple[float, float, float]:
    """A sheet inclined by ``tilt_deg`` about x, falling from rest with drag's tangential share
    ``tangential``: (vertical speed at the end, horizontal speed at the end, the terminal speed of a
    force along -v, sqrt(2 w g / (rho_air C_d cos theta))).  Drag is uniform over a flat sheet, so it
    does not turn it: with the share 1 the force stays along -v and the sheet falls straight down;
    with 0 it is normal to the sheet, which glides sideways (a domain wide enough for that)."""
    verts, faces = grid_mesh(n, n, (size, size), (0.0, 0.0, 0.0))
    t = math.radians(tilt_deg)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(t), -math.sin(t)], [0.0, math.sin(t), math.cos(t)]])
    verts = verts @ rot.T + np.array([0.5, 0.85, 0.5])
    v = _end_velocity(verts, faces, ((-0.5, -1.5, -0.5), (1.5, 1.0, 1.5)), 32, density, drag, tangential, size / (n - 1),
                      seconds, fps, solver)
    return -v[1], float(math.hypot(v[0], v[2])), math.sqrt(2 * density * G / (AIR_DENSITY * drag * math.cos(t)))


