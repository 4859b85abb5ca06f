"""Shape morphing by optimised per-particle deformation-gradient control: an application of the simulator.

The method is that of Xu, Song, Levin and Hyde 2024 ("A differentiable material point method
framework for shape morphing", arXiv:2409.15746): an elastic body is simulated with MPM, and
every ``control_stride`` substeps each particle's deformation gradient is multiplied by a control
``A_p`` (``F_p <- A_p F_p``).  Elasticity then pulls the material towards the new rest shape the
control implies, so the controls act like an optimised, spatially varying plasticity.  The
controls of an *interval* of substeps are optimised so that the particles' mass, splatted onto
the grid at the end of the interval, matches the mass of the target shape on the same grid; the
next interval starts from the state the optimised one ends in ("chained" optimisation, their
section IV), which keeps every optimisation short and the whole morph physically continuous.

What differs from their C++ framework, and why (measurements in :class:`MorphSettings` and
:class:`OptimiserSettings`): gradients come from the simulator's exact checkpointed adjoint (one
backward pass for all controls of an interval), so the controls of an interval are optimised
jointly (they optimise one control step at a time); the optimised variables are by default a
smooth control field on a coarse grid rather than free per-particle matrices (:class:`ControlBasis`);
the objective adds a volume-preservation term and an end-speed term to their grid-mass loss and
control regulariser, compares masses on two grid levels, and may use the log of the mass; an
interval is 60 substeps; Adam is offered besides their gradient descent with backtracking line
search.

Everything here is plain torch on top of :func:`simulate`, so any torch loss (a rendering loss,
say) can replace the grid-mass objective: pass ``loss_fn`` to :func:`optimise_interval`.

    grid = morph_grid(32)
    volume = 0.045  # m^3: both shapes get it, so the morph keeps mass and volume
    source = sample_primitive("sphere", volume, grid_centre(grid), grid.dx / 2)
    target = sample_primitive("torus", volume, grid_centre(grid), grid.dx / 2)
    result = morph(MorphProblem.create(source, target, grid), num_intervals=16)
    result.chamfer_ratio  # final / initial Chamfer distance to the target
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Sequence

import numpy as np
import torch

from dreamcloth.taichi_mpm import (Bounds, GridSpec, Model, Params, ParticleSet, SimConfig, State, Trajectory, max_dt,
                                   sample_box, sample_mesh, sample_sphere, simulate)
from dreamcloth.taichi_mpm.cfl import p_wave_speed

LOSS_KINDS = ("squared", "log")
METHODS = ("adam", "gd")
BASES = ("particle", "grid")

# --------------------------------------------------------------------------------------- grid mass


def _stencil(x: torch.Tensor, grid: GridSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadratic B-spline stencil of each point: ``base [N, 3]`` (int64 node index of the first of
    three nodes per axis) and ``w [N, 3, 3]`` (weight of node ``base + j`` along axis ``a`` at
    ``w[:, a, j]``).  The same convention as the simulator's transfers (Hu et al. 2018)."""
    origin = torch.tensor(grid.origin, dtype=x.dtype, device=x.device)
    u = (x - origin) / grid.dx
    base = torch.floor(u - 0.5)
    f = u - base  # in [0.5, 1.5)
    # Nodes at distances f, f - 1, f - 2 from the point (in cells).
    w = torch.stack([0.5 * (1.5 - f) ** 2, 0.75 - (f - 1.0) ** 2, 0.5 * (f - 0.5) ** 2], dim=-1)
    return base.to(torch.int64), w


def splat_mass(x: torch.Tensor, mass: torch.Tensor, grid: GridSpec) -> torch.Tensor:
    """Particle mass on the grid nodes with quadratic B-spline weights (what MPM's p2g computes).

    Args:
        x: ``[N, 3]`` positions (m).  Differentiable: the weights are C1 in ``x``.
        mass: ``[N]`` particle masses (or any per-point weight).
        grid: the grid; every point's 3x3x3 stencil must lie on it.

    Returns:
        ``[R0, R1, R2]`` node masses (``grid.res``); they sum to ``mass.sum()``.

    Raises:
        ValueError: a point whose stencil leaves the grid (named with its index and position).
    """
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"x must have shape [N, 3], got {tuple(x.shape)}")
    if tuple(mass.shape) != (x.shape[0],):
        raise ValueError(f"mass must have shape [{x.shape[0]}], got {tuple(mass.shape)}")
    res = torch.tensor(grid.res, device=x.device)
    base, w = _stencil(x, grid)
    bad = ((base < 0) | (base + 2 > res - 1)).any(dim=1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"point {i} at {tuple(round(float(a), 4) for a in x[i].detach())} is too close to the edge of the grid "
            f"(origin {grid.origin}, {grid.res} nodes of {grid.dx:.4g} m) to splat its mass"
        )
    r0, r1, r2 = grid.res
    offs = torch.arange(3, device=x.device)
    ix = (base[:, 0, None] + offs)[:, :, None, None]
    iy = (base[:, 1, None] + offs)[:, None, :, None]
    iz = (base[:, 2, None] + offs)[:, None, None, :]
    flat = ((ix * r1 + iy) * r2 + iz).reshape(-1)  # [N * 27]
    weight = w[:, 0, :, None, None] * w[:, 1, None, :, None] * w[:, 2, None, None, :]  # [N, 3, 3, 3]
    contrib = (mass[:, None, None, None] * weight).reshape(-1)
    out = torch.zeros(r0 * r1 * r2, dtype=x.dtype, device=x.device)
    return out.index_add(0, flat, contrib).reshape(r0, r1, r2)


def target_mass_grid(points: torch.Tensor, total_mass: float, grid: GridSpec) -> torch.Tensor:
    """``[R0, R1, R2]`` grid mass of a target shape sampled by ``points [M, 3]``, scaled to ``total_mass``.

    Each point carries ``total_mass / M``: the target is given the source's mass, so that the loss
    compares shapes, not densities.
    """
    if points.shape[0] == 0:
        raise ValueError("the target has no points")
    share = torch.full((points.shape[0],), float(total_mass) / points.shape[0], dtype=points.dtype, device=points.device)
    return splat_mass(points, share, grid)


# -------------------------------------------------------------------------------------------- loss


def pool_mass(mass_grid: torch.Tensor) -> torch.Tensor:
    """``[R0, R1, R2]`` -> ``[ceil(R0/2), ceil(R1/2), ceil(R2/2)]``: each coarse node sums a 2x2x2 block (mass is kept)."""
    pads = []
    for r in reversed(mass_grid.shape):
        pads += [0, r % 2]
    m = torch.nn.functional.pad(mass_grid, pads)
    r0, r1, r2 = m.shape
    return m.reshape(r0 // 2, 2, r1 // 2, 2, r2 // 2, 2).sum(dim=(1, 3, 5))


def grid_mass_loss(mass_grid: torch.Tensor, target: torch.Tensor, kind: str = "squared",
                   reference_mass: float | None = None) -> torch.Tensor:
    """Difference between a simulated grid mass and the target's (both ``[R0, R1, R2]``); a scalar.

    - ``"squared"``: ``0.5 sum (m - m*)^2 / sum m*^2``, the loss of Xu et al. 2024 normalised so
      that an empty grid scores 0.5 whatever the units;
    - ``"log"``: ``sum (log(1 + m / m_ref) - log(1 + m* / m_ref))^2 / #{m* > 0}``.  The log
      compresses the range of node masses, so a thin part of the target (a few light nodes) pulls
      as hard as its bulk, and missing mass costs as much as surplus mass.  ``m_ref`` defaults to
      the mean target mass of the nodes it covers.
    """
    if mass_grid.shape != target.shape:
        raise ValueError(f"grid mass {tuple(mass_grid.shape)} and target {tuple(target.shape)} differ in shape")
    if kind == "squared":
        return 0.5 * ((mass_grid - target) ** 2).sum() / (target**2).sum()
    if kind == "log":
        covered = target > 0
        ref = float(target[covered].mean()) if reference_mass is None else float(reference_mass)
        diff = torch.log1p(mass_grid / ref) - torch.log1p(target / ref)
        return (diff**2).sum() / covered.sum()
    raise ValueError(f"loss kind must be one of {', '.join(LOSS_KINDS)}, got {kind!r}")


def control_regulariser(control: torch.Tensor) -> torch.Tensor:
    """Mean squared Frobenius deviation of ``control [K, N, 3, 3]`` from the identity; a scalar.

    Keeps controls small where the mass loss does not care (inside the body), which keeps the
    material from being stretched in ways that the loss cannot see.
    """
    eye = torch.eye(3, dtype=control.dtype, device=control.device)
    return ((control - eye) ** 2).sum(dim=(-1, -2)).mean()


def volume_regulariser(control: torch.Tensor) -> torch.Tensor:
    """Mean of ``(log det A)^2`` over ``control [K, N, 3, 3]``; a scalar.

    A control with ``det A != 1`` changes the particle's rest volume.  Without this term the
    cheapest way to lower a grid-mass loss is to dilute the body into a thin cloud that covers the
    target's extent; keeping each control volume-preserving makes the material flow instead.
    """
    det = torch.linalg.det(control)
    return torch.log(det.abs().clamp(min=1e-6)).pow(2).mean()


# ----------------------------------------------------------------------------------------- chamfer


@dataclasses.dataclass(frozen=True)
class ChamferDistance:
    """Symmetric Chamfer distance between point sets ``a`` and ``b`` (scalar tensors, differentiable).

    - ``squared``: ``mean_a min_b |a - b|^2 + mean_b min_a |a - b|^2`` (m^2): the usual definition
      (Fan et al. 2017; PyTorch3D's default), the figure the morph is judged by;
    - ``euclidean``: the same with unsquared distances (m), easier to read as a length.
    """

    squared: torch.Tensor
    euclidean: torch.Tensor


def _nearest(a: torch.Tensor, b: torch.Tensor, chunk: int) -> torch.Tensor:
    """Index ``[N]`` into ``b`` of each point of ``a``'s nearest neighbour, chunked to bound memory."""
    out = torch.empty(a.shape[0], dtype=torch.int64, device=a.device)
    with torch.no_grad():
        for s in range(0, a.shape[0], chunk):
            out[s : s + chunk] = torch.cdist(a[s : s + chunk], b).argmin(dim=1)
    return out


def chamfer_distance(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048) -> ChamferDistance:
    """Chamfer distance between ``a [N, 3]`` and ``b [M, 3]`` (see :class:`ChamferDistance`).

    Nearest neighbours are found without autograd, ``chunk`` rows of the distance matrix at a time
    (memory O(chunk * M)); the distances to them are then recomputed with autograd, so gradients
    reach both point sets without storing the distance matrix.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != 3 or b.shape[1] != 3:
        raise ValueError(f"point sets must have shape [N, 3], got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError("Chamfer distance of an empty point set")
    ab = a - b[_nearest(a.detach(), b.detach(), chunk)]
    ba = b - a[_nearest(b.detach(), a.detach(), chunk)]
    sq_ab, sq_ba = (ab * ab).sum(-1), (ba * ba).sum(-1)
    # sqrt at an exact match would give an infinite gradient; the floor is far below any spacing.
    tiny = torch.finfo(a.dtype).tiny
    eu = torch.sqrt(sq_ab.clamp(min=tiny)).mean() + torch.sqrt(sq_ba.clamp(min=tiny)).mean()
    return ChamferDistance(squared=sq_ab.mean() + sq_ba.mean(), euclidean=eu)


# ---------------------------------------------------------------------------------------- problem


@dataclasses.dataclass(frozen=True)
class MorphSettings:
    """Material, time stepping and objective of a morph (frozen; validated on construction).

    Time is counted in substeps: an *interval* is ``interval_substeps`` substeps with a control
    before every ``control_stride``-th, and an output frame every ``frame_substeps``.  dt is the
    CFL bound of the material for particle speeds up to ``max_speed_fraction`` of its P-wave speed.

    The material is fixed-corotated elasticity, as in Xu et al. 2024.  ``velocity_kept_per_interval``
    is the fraction of grid velocity kept over one interval (the simulator's per-second damping is
    derived from it): the interval, not the second, is the morph's natural unit of time.

    The defaults were tuned on sphere -> torus at 32^3 (``benchmarks/bench_morph.py``):

    - 60 substeps per interval: a shear wave crosses a body of 14 cells in about 60 substeps at the
      CFL dt, and a control only shows in the loss once the material has responded to it.  With
      30 substeps (Xu et al.'s count, at a larger dt) every interval moved the body by a fraction
      of a cell.  Poisson's ratio 0.2 raises the shear wave speed relative to the CFL-limiting
      P wave for the same reason.
    - ``volume_weight``: without it the mass loss is lowered fastest by diluting the body into a
      thin cloud over the target's extent; ``velocity_weight`` stops an interval from ending in a
      "throw" that passes through the target at speed.
    - ``loss_levels`` 2 adds the mass difference on a 2x coarser grid, whose longer reach pulls
      material across the hole of the torus sooner.
    - the log-mass loss: the squared one barely pulls on the last thin layer of material left
      where the target is empty (its gradient vanishes with the mass there); with the log loss
      the 12-interval run ended at a Chamfer ratio of 0.025 instead of 0.044, with fewer particles
      left in the torus' hole.
    """

    young_modulus: float = 5.0e3
    poisson_ratio: float = 0.2
    density: float = 1.0e3
    velocity_kept_per_interval: float = 0.3
    max_speed_fraction: float = 0.125
    interval_substeps: int = 60
    control_stride: int = 15
    frame_substeps: int = 10
    loss: str = "log"
    loss_levels: int = 2
    control_weight: float = 1.0
    volume_weight: float = 100.0
    velocity_weight: float = 0.1

    def __post_init__(self):
        if not (self.young_modulus > 0 and self.density > 0 and 0 <= self.poisson_ratio < 0.5):
            raise ValueError("need young_modulus > 0, density > 0 and 0 <= poisson_ratio < 0.5")
        if not 0 < self.velocity_kept_per_interval <= 1:
            raise ValueError(f"velocity_kept_per_interval must lie in (0, 1], got {self.velocity_kept_per_interval}")
        if not self.max_speed_fraction >= 0:
            raise ValueError(f"max_speed_fraction must be >= 0, got {self.max_speed_fraction}")
        for name in ("interval_substeps", "control_stride", "frame_substeps", "loss_levels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.interval_substeps % self.frame_substeps:
            raise ValueError(
                f"interval_substeps ({self.interval_substeps}) must be a multiple of frame_substeps ({self.frame_substeps})"
            )
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"loss must be one of {', '.join(LOSS_KINDS)}, got {self.loss!r}")
        for name in ("control_weight", "volume_weight", "velocity_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def num_controls(self) -> int:
        """K: controls per interval (before substeps 0, stride, 2 stride, ...)."""
        return -(-self.interval_substeps // self.control_stride)

    @property
    def frames_per_interval(self) -> int:
        return self.interval_substeps // self.frame_substeps


@dataclasses.dataclass(frozen=True)
class MorphLoss:
    """One evaluation of the default objective (scalars): ``total = mass + control_weight *
    regulariser + volume_weight * volume + velocity_weight * kinetic``."""

    total: torch.Tensor
    mass: torch.Tensor
    regulariser: torch.Tensor
    volume: torch.Tensor
    kinetic: torch.Tensor


def _inside(points: np.ndarray, grid: GridSpec) -> np.ndarray:
    lo, hi = np.asarray(grid.inner_min), np.asarray(grid.inner_max)
    return np.all((points >= lo) & (points <= hi), axis=1)


@dataclasses.dataclass(frozen=True)
class MorphProblem:
    """A source body, a target shape and how to simulate and score the morph between them.

    Attributes:
        model: the source's particles (fixed-corotated solid).
        params: its material.
        config: grid and time stepping (no gravity).
        bounds: the parameter ranges the CFL dt was computed for (passed to every rollout, so dt
            never changes between intervals).
        mass: ``[N]`` particle masses (kg).
        target_points: ``[M, 3]`` points sampling the target shape (for the Chamfer distance).
        target_grid: ``[R0, R1, R2]`` the target's grid mass (the source's total mass).
        initial_state: the source at rest.
        settings: see :class:`MorphSettings`.
    """

    model: Model
    params: Params
    config: SimConfig
    bounds: Bounds
    mass: torch.Tensor
    target_points: torch.Tensor
    target_grid: torch.Tensor
    initial_state: State
    settings: MorphSettings

    @staticmethod
    def create(source: ParticleSet, target: ParticleSet, grid: GridSpec, settings: MorphSettings | None = None,
               dtype: torch.dtype = torch.float64, device="cpu") -> "MorphProblem":
        """Set a morph up from particles sampling the source body and the target shape.

        float64 is the default: in float32 the simulator's adjoint of the grid update divides by
        the square of a node's mass, which underflows at nodes that a particle at the body's edge
        barely touches (weights of 1e-10 and below), and one such node turns every control's
        gradient into NaN.  On this CPU float64 rollouts were as fast as float32 ones.

        Raises:
            ValueError: source or target particles outside the grid's interior (where particles
                can be), or settings out of range.
        """
        settings = settings or MorphSettings()
        for what, ps in (("source", source), ("target", target)):
            if ps.count == 0:
                raise ValueError(f"the {what} has no particles")
            inside = _inside(ps.positions, grid)
            if not inside.all():
                p = ps.positions[~inside][0]
                lo = tuple(round(a, 4) for a in grid.inner_min)
                hi = tuple(round(a, 4) for a in grid.inner_max)
                raise ValueError(
                    f"the {what} shape extends outside the simulation grid: a point at "
                    f"{tuple(round(float(a), 4) for a in p)} is outside the interior {lo} - {hi}"
                )
        t = dict(dtype=dtype, device=device)
        volume = torch.tensor(source.volumes, **t)
        model = Model.create(volume, "fixed_corotated")
        s = settings
        speed = s.max_speed_fraction * p_wave_speed(s.young_modulus, s.poisson_ratio, s.density)
        bounds = Bounds((s.young_modulus,) * 2, (s.poisson_ratio,) * 2, (s.density,) * 2, max_speed=speed)
        dt = max_dt(grid.dx, bounds)
        interval_time = s.interval_substeps * dt
        damping = s.velocity_kept_per_interval ** (1.0 / interval_time)
        # The simulator needs a positive damping; a fraction this small already stops everything.
        damping = max(damping, 1e-300)
        fps = 1.0 / (dt * s.frame_substeps) * (1 - 1e-12)  # a hair below the bound, against round-off
        config = SimConfig(grid=grid, fps=fps, substeps_per_frame=s.frame_substeps, gravity=(0.0, 0.0, 0.0),
                           segment_substeps=s.control_stride)
        params = Params.create(s.young_modulus, s.poisson_ratio, s.density, damping=damping, friction=0.0, **t)
        mass = volume * s.density
        x = torch.tensor(source.positions, **t)
        target_points = torch.tensor(target.positions, **t)
        target_grid = target_mass_grid(target_points, float(mass.sum()), grid)
        return MorphProblem(model, params, config, bounds, mass, target_points, target_grid, State.at_rest(x), settings)

    @property
    def num_particles(self) -> int:
        return self.model.num_particles

    @property
    def grid(self) -> GridSpec:
        return self.config.grid

    def clamp_inside(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, 3]`` moved into the grid's interior.

        The simulator keeps particles a cell away from the grid's edge but refuses to *start* one
        inside the wall cells, so a particle that drifted into a wall by the end of an interval
        is put back on the wall's face before the next interval starts.
        """
        lo = torch.tensor(self.grid.inner_min, dtype=x.dtype, device=x.device)
        hi = torch.tensor(self.grid.inner_max, dtype=x.dtype, device=x.device)
        return torch.minimum(torch.maximum(x, lo), hi)

    def identity_control(self) -> torch.Tensor:
        """``[K, N, 3, 3]`` controls that change nothing (K = ``settings.num_controls``)."""
        eye = torch.eye(3, dtype=self.mass.dtype, device=self.mass.device)
        return eye.expand(self.settings.num_controls, self.num_particles, 3, 3).clone()

    def rollout(self, state: State, control: torch.Tensor) -> Trajectory:
        """One interval from ``state`` under ``control [K, N, 3, 3]``; differentiable w.r.t. both.

        Returns the interval's frames (``frames_per_interval + 1``, the first being ``state``).
        """
        s = self.settings
        return simulate(self.model, state, self.params, self.config, s.frames_per_interval + 1, bounds=self.bounds,
                        control=control, control_stride=s.control_stride)

    def loss(self, trajectory: Trajectory, control: torch.Tensor) -> MorphLoss:
        """The default objective at the end of an interval.

        The grid-mass difference to the target (Xu et al. 2024; on ``loss_levels`` grids, each 2x
        coarser than the last), plus :func:`control_regulariser`, :func:`volume_regulariser` and
        the mean squared end speed in cells per interval, each with its weight.
        """
        s = self.settings
        m = splat_mass(trajectory.final.x, self.mass, self.grid)
        mass_term = grid_mass_loss(m, self.target_grid, s.loss)
        target = self.target_grid
        for _ in range(1, s.loss_levels):
            # Coarser levels see mismatches that are several cells apart, which the finest level
            # (whose weights reach 1.5 cells) cannot: they pull distant material in.
            m, target = pool_mass(m), pool_mass(target)
            mass_term = mass_term + grid_mass_loss(m, target, s.loss)
        reg = control_regulariser(control)
        vol = volume_regulariser(control)
        # Mean squared end speed in units of one cell per interval: without it the optimum of a
        # single interval may be a "throw" that passes through the target at speed.
        unit = self.grid.dx / (s.interval_substeps * self.config.dt)
        kinetic = (trajectory.final.v**2).sum(-1).mean() / unit**2
        total = mass_term + s.control_weight * reg + s.volume_weight * vol + s.velocity_weight * kinetic
        return MorphLoss(total, mass_term, reg, vol, kinetic)

    def chamfer(self, x: torch.Tensor) -> ChamferDistance:
        """Chamfer distance of positions ``x [N, 3]`` to the target's points (no gradient)."""
        with torch.no_grad():
            return chamfer_distance(x.detach(), self.target_points)


# ------------------------------------------------------------------------------------ optimisation


@dataclasses.dataclass(frozen=True)
class OptimiserSettings:
    """How the controls of one interval are optimised.

    - ``"gd"`` (default): gradient descent with backtracking line search, as Xu et al. 2024 do
      (Armijo condition with constant ``armijo``; the step shrinks by ``shrink`` up to
      ``max_backtracks`` times, and grows by ``grow`` after a success).  The first trial step
      moves the largest variable by ``step_size``.  Stops early when no decrease is found.
    - ``"adam"``: ``iterations`` Adam steps of learning rate ``step_size`` (one forward and one
      backward rollout each, plus a final forward).  Faster at first, but without a line search
      it stalls once its fixed step overshoots (measured on sphere -> torus).

    Either way the best control evaluated is the result.  ``basis`` / ``basis_cells``: see
    :class:`ControlBasis`.  On sphere -> torus the two bases did equally well for 6 intervals;
    over 16 the grid basis ended at a Chamfer ratio of 0.022, per-particle controls at 0.042.
    """

    method: str = "gd"
    iterations: int = 6
    step_size: float = 0.05
    max_backtracks: int = 6
    shrink: float = 0.5
    grow: float = 2.0
    armijo: float = 1e-4
    basis: str = "grid"
    basis_cells: int = 2

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if int(self.iterations) < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise ValueError(f"step_size must be positive, got {self.step_size}")
        if self.basis not in BASES:
            raise ValueError(f"basis must be one of {', '.join(BASES)}, got {self.basis!r}")
        if int(self.basis_cells) < 1:
            raise ValueError(f"basis_cells must be >= 1, got {self.basis_cells}")
        if not (0 < self.shrink < 1 and self.grow >= 1 and 0 <= self.armijo < 1 and self.max_backtracks >= 0):
            raise ValueError("need 0 < shrink < 1, grow >= 1, 0 <= armijo < 1 and max_backtracks >= 0")


@dataclasses.dataclass
class IntervalResult:
    """An optimised interval.

    Attributes:
        control: ``[K, N, 3, 3]`` the optimised controls (detached).
        trajectory: the interval's rollout under them (detached; frame 0 is the start state).
        losses: the objective along the optimisation, first at the identity control: every Adam
            iterate, or every step the line search accepted; when the last is not the best, the
            best (which is the result) is appended.
        evaluations: forward rollouts run (line-search trials included).
        gradients: backward passes run.
        chamfer: Chamfer distance of the end state to the target.
        seconds: wall time of the interval.
    """

    control: torch.Tensor
    trajectory: Trajectory
    losses: list[float]
    evaluations: int
    gradients: int
    chamfer: ChamferDistance
    seconds: float

    @property
    def end_state(self) -> State:
        return self.trajectory.final

    @property
    def initial_loss(self) -> float:
        return self.losses[0]

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


LossFn = Callable[[Trajectory, torch.Tensor], torch.Tensor]


class ControlBasis:
    """How the optimised variables become per-particle controls ``[K, N, 3, 3]``.

    ``"particle"``: one free ``A_p - I`` per particle and control step (Xu et al. 2024).
    ``"grid"``: ``A_p - I = sum_i w_ip D_i``, a field ``D`` on the nodes of a grid ``cells`` times
    coarser than the simulation's, interpolated with quadratic B-splines at the particles' positions
    at the start of the interval.  The per-particle gradient is noisy at the particle scale (each
    particle only sees the 27 nodes it splats to); the field sums it over neighbourhoods, so a
    step moves the material coherently.  Only nodes that some particle touches are variables.
    """

    def __init__(self, kind: str, x: torch.Tensor, grid: GridSpec, cells: int = 2):
        if kind not in BASES:
            raise ValueError(f"basis must be one of {', '.join(BASES)}, got {kind!r}")
        self.kind = kind
        self.num_particles = x.shape[0]
        if kind == "particle":
            self.num_variables = self.num_particles
            return
        if int(cells) < 1:
            raise ValueError(f"basis cells must be >= 1, got {cells}")
        # One coarse cell of padding on every side, so that every particle's stencil is on it.
        h = grid.dx * cells
        origin = tuple(o - h for o in grid.origin)
        coarse = GridSpec(origin, h, tuple(-(-r // cells) + 3 for r in grid.res), grid.boundary)
        base, w = _stencil(x.detach(), coarse)
        offs = torch.arange(3, device=x.device)
        r1, r2 = coarse.res[1], coarse.res[2]
        ix = (base[:, 0, None] + offs)[:, :, None, None]
        iy = (base[:, 1, None] + offs)[:, None, :, None]
        iz = (base[:, 2, None] + offs)[:, None, None, :]
        flat = ((ix * r1 + iy) * r2 + iz).reshape(x.shape[0], 27)
        nodes, local = torch.unique(flat, return_inverse=True)
        self.index = local  # [N, 27] into the touched nodes
        self.weight = (w[:, 0, :, None, None] * w[:, 1, None, :, None] * w[:, 2, None, None, :]).reshape(-1, 27)
        self.num_variables = int(nodes.shape[0])

    def controls(self, variables: torch.Tensor) -> torch.Tensor:
        """``variables [K, V, 3, 3]`` -> control deviations ``A - I`` ``[K, N, 3, 3]``."""
        if self.kind == "particle":
            return variables
        k = variables.shape[0]
        gathered = variables.reshape(k, -1, 9)[:, self.index]  # [K, N, 27, 9]
        return (gathered * self.weight[None, :, :, None].to(variables.dtype)).sum(dim=2).reshape(k, -1, 3, 3)



def _detach(traj: Trajectory) -> Trajectory:
    f = traj.final
    final = State(f.x.detach(), f.v.detach(), f.C.detach(), f.F.detach())
    return Trajectory(traj.x.detach(), traj.F.detach(), final, traj.dt, traj.substeps)


def _check_gradient(grad: torch.Tensor) -> None:
    if not torch.isfinite(grad).all():
        raise FloatingPointError(
            "the gradient of the morph objective is not finite; in float32 this is the simulator's grid-update "
            "adjoint dividing by an underflowed node mass - run the morph in float64"
        )


def optimise_interval(problem: MorphProblem, state: State, settings: OptimiserSettings | None = None,
                      loss_fn: LossFn | None = None, on_step: Callable[[int, float], None] | None = None) -> IntervalResult:
    """Optimise the controls of one interval starting from ``state``.

    Args:
        problem: the morph.
        state: where the interval starts (its tensors are not differentiated).
        settings: the optimiser (default Adam, see :class:`OptimiserSettings`).
        loss_fn: ``loss_fn(trajectory, control [K, N, 3, 3]) -> scalar`` to minimise instead of the
            default grid-mass objective (any torch loss on the interval's frames ``trajectory.x
            [T, N, 3]``, ``trajectory.F [T, N, 3, 3]`` or its end state).
        on_step: called as ``on_step(iteration, loss)`` after each accepted evaluation.

    Returns:
        :class:`IntervalResult`, whose ``end_state`` starts the next interval.
    """
    settings = settings or OptimiserSettings()
    t0 = time.perf_counter()
    start = State(problem.clamp_inside(state.x.detach()), *[t.detach() for t in (state.v, state.C, state.F)])
    eye = torch.eye(3, dtype=problem.mass.dtype, device=problem.mass.device)

    basis = ControlBasis(settings.basis, start.x, problem.grid, settings.basis_cells)

    def objective(delta: torch.Tensor) -> tuple[torch.Tensor, Trajectory]:
        control = eye + basis.controls(delta)
        traj = problem.rollout(start, control)
        value = loss_fn(traj, control) if loss_fn is not None else problem.loss(traj, control).total
        return value, traj

    delta = torch.zeros(problem.settings.num_controls, basis.num_variables, 3, 3,
                        dtype=problem.mass.dtype, device=problem.mass.device, requires_grad=True)
    evaluations = gradients = 0
    losses: list[float] = []
    best: tuple[float, torch.Tensor, Trajectory] | None = None

    def record(value: torch.Tensor, d: torch.Tensor, traj: Trajectory) -> None:
        nonlocal best
        v = float(value.detach())
        if not math.isfinite(v):
            raise FloatingPointError(f"the morph objective is {v}")
        losses.append(v)
        if best is None or v < best[0]:
            best = (v, d.detach().clone(), _detach(traj))
        if on_step is not None:
            on_step(len(losses) - 1, v)

    if settings.method == "adam":
        opt = torch.optim.Adam([delta], lr=settings.step_size)
        for _ in range(settings.iterations):
            opt.zero_grad(set_to_none=True)
            value, traj = objective(delta)
            evaluations += 1
            record(value, delta, traj)
            value.backward()
            gradients += 1
            _check_gradient(delta.grad)
            opt.step()
        with torch.no_grad():
            value, traj = objective(delta)
        evaluations += 1
        record(value, delta, traj)
    else:
        value, traj = objective(delta)
        evaluations += 1
        record(value, delta, traj)
        step = None
        for _ in range(settings.iterations):
            (grad,) = torch.autograd.grad(value, delta)
            gradients += 1
            _check_gradient(grad)
            g2 = float((grad * grad).sum())
            if g2 == 0.0:
                break
            if step is None:
                step = settings.step_size / float(grad.abs().max())
            current = float(value.detach())
            accepted = False
            for _ in range(settings.max_backtracks + 1):
                trial = (delta.detach() - step * grad).requires_grad_(True)
                t_value, t_traj = objective(trial)
                evaluations += 1
                if float(t_value.detach()) <= current - settings.armijo * step * g2:
                    accepted = True
                    break
                step *= settings.shrink
            if not accepted:
                break
            delta, value, traj = trial, t_value, t_traj
            record(value, delta, traj)
            step *= settings.grow
    assert best is not None
    best_value, best_delta, best_traj = best
    if losses[-1] != best_value:
        losses.append(best_value)  # the result is the best control seen (Adam may overshoot at the end)
    return IntervalResult(
        control=eye + basis.controls(best_delta), trajectory=best_traj, losses=losses, evaluations=evaluations, gradients=gradients,
        chamfer=problem.chamfer(best_traj.final.x), seconds=time.perf_counter() - t0,
    )


@dataclasses.dataclass
class MorphResult:
    """A chained morph.

    Attributes:
        intervals: one :class:`IntervalResult` per interval.
        x: ``[T, N, 3]`` positions at every output frame, the source at rest first.
        F: ``[T, N, 3, 3]`` deformation gradients at the same frames.
        initial_chamfer: Chamfer distance of the source to the target.
        seconds: wall time of the whole optimisation.
    """

    intervals: list[IntervalResult]
    x: torch.Tensor
    F: torch.Tensor
    initial_chamfer: ChamferDistance
    seconds: float

    @property
    def chamfer(self) -> list[float]:
        """Squared Chamfer distance (m^2) before the first interval and after each one."""
        return [float(self.initial_chamfer.squared)] + [float(r.chamfer.squared) for r in self.intervals]

    @property
    def chamfer_ratio(self) -> float:
        """Final over initial squared Chamfer distance (the morph's figure of merit; lower is better)."""
        c = self.chamfer
        return c[-1] / c[0]

    @property
    def final_state(self) -> State:
        return self.intervals[-1].end_state


def morph(problem: MorphProblem, num_intervals: int, settings: OptimiserSettings | None = None,
          loss_fn: LossFn | None = None, state: State | None = None,
          on_interval: Callable[[int, IntervalResult], None] | None = None,
          on_step: Callable[[int, int, float], None] | None = None) -> MorphResult:
    """Chained morph (Xu et al. 2024, section IV): optimise interval ``i``, continue from its end state.

    Args:
        problem: the morph.
        num_intervals: how many intervals to optimise one after the other.
        settings: the optimiser of every interval.
        loss_fn: replaces the default objective (see :func:`optimise_interval`).
        state: where to start (default the source at rest).
        on_interval: called as ``on_interval(i, result)`` after each interval.
        on_step: called as ``on_step(i, iteration, loss)`` after each accepted evaluation.
    """
    if num_intervals < 1:
        raise ValueError(f"num_intervals must be >= 1, got {num_intervals}")
    t0 = time.perf_counter()
    state = state or problem.initial_state
    initial = problem.chamfer(state.x)
    results: list[IntervalResult] = []
    xs, Fs = [state.x.detach()[None]], [state.F.detach()[None]]
    for i in range(num_intervals):
        step_cb = None if on_step is None else (lambda it, v, i=i: on_step(i, it, v))
        r = optimise_interval(problem, state, settings, loss_fn=loss_fn, on_step=step_cb)
        results.append(r)
        xs.append(r.trajectory.x[1:])
        Fs.append(r.trajectory.F[1:])
        state = r.end_state
        if on_interval is not None:
            on_interval(i, r)
    return MorphResult(results, torch.cat(xs), torch.cat(Fs), initial, time.perf_counter() - t0)


def equal_volume_torus(volume: float, aspect: float = 2.5) -> tuple[float, float]:
    """(major, minor) radii of a torus of ``volume`` whose major radius is ``aspect`` times its minor
    one: ``V = 2 pi^2 R r^2``."""
    if not (volume > 0 and aspect > 1):
        raise ValueError(f"need volume > 0 and aspect > 1, got {volume}, {aspect}")
    minor = (volume / (2 * math.pi**2 * aspect)) ** (1.0 / 3.0)
    return aspect * minor, minor


PRIMITIVES = ("sphere", "box", "torus")


def sample_primitive(kind: str, volume: float, center: Sequence[float], spacing: float, shift: float = 0.25) -> ParticleSet:
    """Particles filling a primitive of the given ``volume`` (m^3) centred at ``center``.

    ``sphere``; ``box`` (a cube); ``torus`` (lying flat: axis y, the up axis; major radius 2.5 times
    the minor one, see :func:`equal_volume_torus`).  Shapes of equal volume make a morph between
    them mass-preserving.

    The shape is moved by ``shift`` particle spacings along every axis.  A lattice centred on the
    shape puts a column of particles exactly on its symmetry axes; in a symmetric morph the forces
    on them cancel sideways, and sphere -> torus left such a column standing in the middle of the
    hole.  A quarter spacing breaks the symmetry at no visible cost.
    """
    if kind not in PRIMITIVES:
        raise ValueError(f"unknown primitive {kind!r}; choose from {', '.join(PRIMITIVES)} or give a mesh file")
    if not volume > 0:
        raise ValueError(f"volume must be positive, got {volume}")
    center = [float(c) + shift * spacing for c in center]
    if kind == "sphere":
        return sample_sphere((3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0), center, spacing)
    if kind == "box":
        side = volume ** (1.0 / 3.0)
        return sample_box((side, side, side), center, spacing)
    import trimesh

    major, minor = equal_volume_torus(volume)
    mesh = trimesh.creation.torus(major_radius=major, minor_radius=minor, major_sections=96, minor_sections=48)
    return sample_mesh(mesh, spacing, center=center, rotation_deg=(90.0, 0.0, 0.0), name="torus")


def grid_centre(grid: GridSpec) -> tuple[float, float, float]:
    """Centre of the grid's interior (where particles can be)."""
    return tuple((a + b) / 2 for a, b in zip(grid.inner_min, grid.inner_max))  # type: ignore[return-value]


def morph_grid(resolution: int = 32, size: float = 1.0) -> GridSpec:
    """A cubic grid of ``resolution`` nodes per axis over ``[0, size]^3`` (the 32^3 grid of Xu et al. 2024
    is ``morph_grid(32)``); the outer 3 cells on every side are walls."""
    if resolution < 12:
        raise ValueError(f"a morph grid needs at least 12 nodes per axis, got {resolution}")
    return GridSpec(origin=(0.0, 0.0, 0.0), dx=size / resolution, res=(resolution,) * 3)


__all__: Sequence[str] = (
    "BASES", "ChamferDistance", "ControlBasis", "IntervalResult", "LOSS_KINDS", "METHODS", "MorphLoss", "MorphProblem",
    "MorphResult", "MorphSettings", "OptimiserSettings", "PRIMITIVES", "chamfer_distance", "control_regulariser",
    "equal_volume_torus", "grid_centre", "grid_mass_loss", "morph", "morph_grid", "optimise_interval", "pool_mass",
    "sample_primitive", "splat_mass", "target_mass_grid", "volume_regulariser",
)
