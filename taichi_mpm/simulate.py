"""The public rollout: ``simulate(model, state, params, config, num_frames) -> Trajectory``."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Callable

import torch

from . import cfl as _cfl
from . import layout as L
from .config import SimConfig
from .layout import pack_material
from .mesh_cloth import check_supported, simulate_mesh
from .model import Model, Params, State
from .parameters import PARAMETERS
from .segment import run_segment
from .solver import Engine, StepParams, raise_nonfinite

#: bytes of forward tape a differentiable rollout may keep for its backward pass (see ``segment``):
#: a segment whose tape fits keeps it, and its backward pass does not re-simulate it.  The demo's
#: whole 1,185-substep rollout keeps ~0.1 GB (its fit went from 2 min 39 s to 1 min 51 s); the
#: MPM benchmark's 200 substeps of 22k particles ~0.9 GB; a 41x41 cloth at real-fabric stiffness
#: (50k substeps) would need ~40 GB and re-simulates the segments beyond the budget.  The
#: environment variable ``DREAMCLOTH_KEEP_TAPE_MB`` sets it (0: always re-simulate, memory
#: O(N (T/K + K)) as without it).
KEEP_TAPE_BYTES = int(float(os.environ.get("DREAMCLOTH_KEEP_TAPE_MB", "1024")) * 2**20)


@dataclasses.dataclass
class Trajectory:
    """A rollout sampled at the output frames (frame 0 is the initial state).

    Attributes:
        x: ``[T, N, 3]`` positions.
        F: ``[T, N, 3, 3]`` deformation gradients.
        final: full state after the last substep (v and C included), differentiable like the rest.
        dt: substep length; ``substeps``: substeps simulated in total.
    """

    x: torch.Tensor
    F: torch.Tensor
    final: State
    dt: float
    substeps: int


def lame(young_modulus: torch.Tensor, poisson_ratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lame parameters (mu, lambda) from Young's modulus and Poisson's ratio."""
    mu = young_modulus / (2 * (1 + poisson_ratio))
    lam = young_modulus * poisson_ratio / ((1 + poisson_ratio) * (1 - 2 * poisson_ratio))
    return mu, lam


def min_rest_edge(model: Model) -> float | None:
    """Shortest rest edge of the model's cloth meshes (None without cloth)."""
    if not model.cloth:
        return None
    lengths = []
    for c in model.cloth:
        # Dm columns are the rest edges e1, e2 in the triangle frame; e1 - e2 is the third edge
        Dm = torch.linalg.inv(c.rest_inverse.reshape(-1, 2, 2).double())
        e1, e2 = Dm[:, :, 0], Dm[:, :, 1]
        lengths += [e1.norm(dim=1).min(), e2.norm(dim=1).min(), (e1 - e2).norm(dim=1).min()]
    return float(torch.stack(lengths).min())


def _per_particle(t: torch.Tensor, n: int, name: str) -> torch.Tensor:
    if t.dim() == 0 or t.numel() == 1:
        return t.reshape(()).expand(n).contiguous()
    if tuple(t.shape) != (n,):
        raise ValueError(f"{name} must be a scalar or have shape [{n}], got {tuple(t.shape)}")
    return t.contiguous()


def _check_finite(name: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def validate_params(params: Params) -> None:
    """Physical ranges of every given value (``parameters.PARAMETERS``: E > 0, 0 <= nu < 0.5,
    density > 0, 0 < damping <= 1, friction >= 0, ...), all finite."""
    for spec in PARAMETERS.values():
        t = getattr(params, spec.name)
        if t is None:
            continue
        _check_finite(spec.name, t)
        ok = spec.admits(t.detach())
        if not bool(ok.all()):
            bad = t.detach().reshape(-1)[~ok.reshape(-1)][0].item()
            raise ValueError(f"{spec.name} must be {spec.rule()}, got {bad:g}")


def simulate(
    model: Model,
    state: State,
    params: Params,
    config: SimConfig,
    num_frames: int,
    bounds: _cfl.Bounds | None = None,
    control: torch.Tensor | None = None,
    control_stride: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Trajectory:
    """Roll the simulation out for ``num_frames`` output frames (``(num_frames - 1) * substeps_per_frame`` substeps).

    Args:
        model: static particle data (volumes, material groups, pins, colliders).
        state: initial state; ``x [N,3]``, ``v [N,3]``, ``C [N,3,3]``, ``F [N,3,3]``.  Gradients reach
            all four (initial positions and velocities included).
        params: material values (scalars or ``[N]``); gradients reach each.
        config: grid and time stepping.
        num_frames: frames to output, frame 0 being ``state``.
        bounds: parameter ranges of the run for the CFL check; defaults to the current values.
        control: ``[K, N, 3, 3]`` per-particle deformation-gradient controls: before substep
            ``k * control_stride`` (k < K) every particle's F becomes ``control[k] @ F`` (shape
            morphing actuation, Xu et al. 2024).  Differentiable like everything else.
        control_stride: substeps between controls.
        progress: called as ``progress(substeps_done, total)`` after every segment.

    Raises:
        ValueError: NaN/inf or out-of-range inputs, particles outside the domain, dt above the CFL bound.
        SimulationError: the rollout produced NaN/inf (the message names the substep).

    Tensors must share one device and dtype; they decide Taichi's arch and precision.
    """
    n = model.num_particles
    _check_inputs(model, state, params, config, num_frames)
    if control is not None:
        _check_control(control, model)
    if bounds is None:
        bounds = _bounds_of(model, state, params, config, num_frames)
    else:
        _check_bounds(bounds, params, model)
    check_cfl(config, bounds)
    if config.cloth_solver == "mesh":
        x, F, final, total = simulate_mesh(model, state, params, config, num_frames, _mesh_params(model, params), progress,
                                        keep_bytes=KEEP_TAPE_BYTES)
        return Trajectory(x=x, F=F, final=final, dt=config.dt, substeps=total)
    material, friction, damping = _packed_params(model, params)

    engine = Engine(model, config)
    grads = [t is not None and t.requires_grad
             for t in (params.bending_stiffness, params.drag_coefficient, params.density, params.drag_tangential)]
    engine.mesh_param_grads = (grads[0], grads[1] or grads[3], grads[2])  # drag's two columns come together
    spf = config.substeps_per_frame
    total = (num_frames - 1) * spf
    seg = config.segment_length(total) if total else 1
    cur = [state.x.contiguous(), state.v.contiguous(), state.C.contiguous(), state.F.contiguous()]
    xs, Fs = [state.x.unsqueeze(0)], [state.F.unsqueeze(0)]
    ctrl_at = _control_schedule(control, control_stride, n, total)
    start = 0
    kept: list[int] = []  # bytes of the tapes kept so far (see KEEP_TAPE_BYTES)
    per_substep = n * (L.STATE_DIM + L.W_DIM) * state.x.element_size() * 2  # a guess until a tape is measured
    while start < total:
        if start in ctrl_at:
            # applied between segments with plain torch ops, so autograd differentiates it directly
            cur[3] = (control[ctrl_at[start]] @ cur[3]).contiguous()
        nxt_ctrl = min([c for c in ctrl_at if c > start], default=total)
        count = min(seg, total - start, nxt_ctrl - start)
        record = [j for j in range(1, count + 1) if (start + j) % spf == 0]
        fits = torch.is_grad_enabled() and sum(kept) + count * per_substep <= KEEP_TAPE_BYTES
        n_kept = len(kept)
        x, v, C, F, fx, fF = run_segment(engine, start, count, record, cur, material, friction, damping,
                                         keep=kept if fits else None)
        if len(kept) > n_kept:
            per_substep = kept[-1] / count  # measured, grid tape included
        if not (torch.isfinite(x).all() and torch.isfinite(F).all() and torch.isfinite(v).all()):
            P = StepParams(material.detach(), friction.detach(), damping.detach())
            raise_nonfinite(engine, cur, P, start, count)
        cur = [x, v, C, F]
        xs.append(fx)
        Fs.append(fF)
        start += count
        if progress is not None:
            progress(start, total)
    final = State(*cur)
    return Trajectory(x=torch.cat(xs), F=torch.cat(Fs), final=final, dt=config.dt, substeps=total)


def _check_inputs(model: Model, state: State, params: Params, config: SimConfig, num_frames: int) -> None:
    """Dtype/device, finite values, physical parameter ranges, particles inside the domain."""
    dev, dtype = model.volume.device, model.volume.dtype
    n = model.num_particles
    for name, t, shape in (("x", state.x, (n, 3)), ("v", state.v, (n, 3)), ("C", state.C, (n, 3, 3)), ("F", state.F, (n, 3, 3))):
        # a state of another particle count overran the engine's buffers (a segfault, 2026-12-06)
        if tuple(t.shape) != shape:
            raise ValueError(f"state.{name} has shape {tuple(t.shape)}, the model's {n} particles need {shape}")
        if t.dtype != dtype or t.device != dev:
            raise ValueError(f"state.{name} is {t.dtype} on {t.device}, the model is {dtype} on {dev}")
        _check_finite(f"initial {name}", t)
    if isinstance(num_frames, bool) or not isinstance(num_frames, numbers.Integral) or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    for f in dataclasses.fields(params):
        t = getattr(params, f.name)
        if isinstance(t, torch.Tensor) and (t.dtype != dtype or t.device != dev):
            raise ValueError(f"params.{f.name} is {t.dtype} on {t.device}, the model is {dtype} on {dev}")
        if isinstance(t, torch.Tensor) and f.name != "friction" and t.numel() != 1 and tuple(t.shape) != (n,):
            raise ValueError(f"params.{f.name} has shape {tuple(t.shape)}: give a scalar or one value per particle ({n},)")
    if model.cloth and config.cloth_solver == "mpm" and (params.shear_stiffness is None or params.normal_stiffness is None):
        raise ValueError("a model with cloth on the MPM solver needs params.shear_stiffness and params.normal_stiffness")
    validate_params(params)
    # where a particle's 3x3x3 stencil lies inside the grid (the engine keeps them there): a state
    # that a previous rollout ended in is always accepted, so rollouts chain
    g = config.grid
    lo, hi = g.stencil_box
    xd = state.x.detach()
    lo_t = torch.tensor(lo, dtype=dtype, device=dev)
    hi_t = torch.tensor(hi, dtype=dtype, device=dev)
    outside = ((xd < lo_t) | (xd > hi_t)).any(dim=1)
    if outside.any():
        i = int(outside.nonzero()[0])
        raise ValueError(
            f"particle {i} at {tuple(round(float(a), 4) for a in xd[i])} starts outside the simulation domain "
            f"{tuple(round(a, 4) for a in lo)} - {tuple(round(a, 4) for a in hi)}"
        )


def _bounds_of(model: Model, state: State, params: Params, config: SimConfig, num_frames: int) -> _cfl.Bounds:
    """CFL bounds from the current values (when the caller gives no parameter ranges)."""
    n = model.num_particles

    def rng(t):
        t = t.detach()
        return (float(t.min()), float(t.max()))

    speed = float(state.v.detach().norm(dim=-1).max()) if n else 0.0
    duration = (num_frames - 1) / config.fps
    g = math.sqrt(sum(a * a for a in config.gravity))
    coll = max([math.sqrt(sum(a * a for a in c.velocity)) for c in model.colliders], default=0.0)
    cloth = bool(model.cloth)
    return _cfl.Bounds(
        rng(params.young_modulus), rng(params.poisson_ratio), rng(params.density),
        max_speed=speed + g * duration + coll,
        shear_stiffness=rng(params.shear_stiffness) if cloth and params.shear_stiffness is not None else None,
        normal_stiffness=rng(params.normal_stiffness) if cloth and params.normal_stiffness is not None else None,
        min_length=min_rest_edge(model),
    )


def _check_control(control: torch.Tensor, model: Model) -> None:
    n, dtype, dev = model.num_particles, model.volume.dtype, model.volume.device
    if not isinstance(control, torch.Tensor) or control.dim() != 4 or tuple(control.shape[1:]) != (n, 3, 3):
        raise ValueError(f"control must be a [K, {n}, 3, 3] tensor, got {tuple(getattr(control, 'shape', ()))}")
    if control.dtype != dtype or control.device != dev:
        raise ValueError(f"control is {control.dtype} on {control.device}, the model is {dtype} on {dev}")
    _check_finite("control", control)


def _check_bounds(bounds: _cfl.Bounds, params: Params, model: Model) -> None:
    """The caller's ranges: finite, low <= high, and holding the values simulated (the CFL step is
    chosen from them: a value above its range would run at a dt it is unstable at)."""
    cloth = bool(model.cloth)
    for name in ("young_modulus", "poisson_ratio", "density") + (("shear_stiffness", "normal_stiffness") if cloth else ()):
        rng = getattr(bounds, name)
        if rng is None:
            continue
        lo, hi = (float(a) for a in rng)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"bounds.{name} must be finite with low <= high, got {tuple(rng)}")
        t = getattr(params, name)
        if t is None:
            continue
        v = t.detach().reshape(-1)
        if name in ("shear_stiffness", "normal_stiffness") and v.numel() > 1:
            # per particle: solids in a mixed scene carry 0 for these; only the cloth's count
            idx = [torch.arange(g.vertex_start, g.vertex_start + g.num_vertices) for g in model.cloth]
            idx += [torch.arange(g.element_start, g.element_start + g.num_elements) for g in model.cloth]
            v = v[torch.cat(idx).to(v.device)]
        tol = 1e-6 * max(abs(lo), abs(hi))
        if float(v.min()) < lo - tol or float(v.max()) > hi + tol:
            raise ValueError(f"params.{name} ({float(v.min()):.4g}..{float(v.max()):.4g}) lies outside bounds.{name} "
                             f"[{lo:.4g}, {hi:.4g}] that the time step is chosen for; widen the bounds or leave them out")
    if not (math.isfinite(bounds.max_speed) and bounds.max_speed >= 0):
        raise ValueError(f"bounds.max_speed must be finite and >= 0, got {bounds.max_speed}")


def check_cfl(config: SimConfig, bounds: _cfl.Bounds) -> None:
    """A ValueError when ``config``'s dt is above the CFL bound of ``bounds`` (it says how many substeps are needed)."""
    mesh = config.cloth_solver == "mesh"
    dt_max = _cfl.max_dt(config.grid.dx, bounds, mesh=mesh, implicit_membrane=mesh and config.membrane == "implicit")
    if config.dt > dt_max * (1 + 1e-9):
        raise ValueError(
            f"dt={config.dt:.4g} s is above the CFL bound {dt_max:.4g} s for these parameter ranges; "
            f"use at least {_cfl.substeps_for(config.fps, dt_max)} substeps per frame"
        )


def _packed_params(model: Model, params: Params) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The engine's inputs: packed per-particle ``material [N, 14]``, ``friction [max(C, 1)]``, ``damping [1]``."""
    n = model.num_particles
    dev, dtype = model.volume.device, model.volume.dtype
    mu, lam = lame(_per_particle(params.young_modulus, n, "young_modulus"), _per_particle(params.poisson_ratio, n, "poisson_ratio"))
    mass = _per_particle(params.density, n, "density") * model.mass_volume
    shear = normal = cloth_friction = bending = drag = max_stretch = drag_t = None
    if model.cloth:
        if params.shear_stiffness is None or params.normal_stiffness is None:
            raise ValueError("a model with cloth needs shear_stiffness and normal_stiffness")
        cf = params.cloth_friction
        if cf is None:
            if params.friction.numel() != 1:
                raise ValueError("cloth_friction must be given when friction has one value per collider")
            cf = params.friction
        shear = _per_particle(params.shear_stiffness, n, "shear_stiffness")
        normal = _per_particle(params.normal_stiffness, n, "normal_stiffness")
        cloth_friction = _per_particle(cf, n, "cloth_friction")
        if params.bending_stiffness is not None:
            bending = _per_particle(params.bending_stiffness, n, "bending_stiffness")
        if params.drag_coefficient is not None:
            drag = _per_particle(params.drag_coefficient, n, "drag_coefficient")
        if params.max_stretch is not None:
            max_stretch = _per_particle(params.max_stretch, n, "max_stretch")
        if params.drag_tangential is not None:
            drag_t = _per_particle(params.drag_tangential, n, "drag_tangential")
    friction, damping = _friction_and_damping(model, params)
    force = torch.zeros(n, 3, dtype=dtype, device=dev)
    material = pack_material(mu, lam, model.volume, mass, force, shear, normal, cloth_friction, bending, drag, max_stretch,
                             drag_t)
    return material, friction, damping


def _friction_and_damping(model: Model, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-collider friction ``[max(C, 1)]`` and damping ``[1]``, as both solvers take them."""
    n_coll = len(model.colliders)
    friction = params.friction.reshape(-1)
    if n_coll == 0:
        friction = friction.new_zeros(1) if friction.numel() == 1 else friction
    elif friction.numel() == 1 and n_coll > 1:
        friction = friction.expand(n_coll)
    elif friction.numel() != n_coll:
        raise ValueError(f"friction must be a scalar or have one value per collider ({n_coll}), got {friction.numel()}")
    return friction.contiguous(), params.damping.reshape(1).contiguous()


def _mesh_params(model: Model, params: Params) -> tuple:
    """The grid-free cloth solver's inputs (``mesh_cloth.simulate_mesh``): per-particle mu, lam, mass,
    bending, drag and drag's tangential share (None where absent), friction ``[C]`` and damping ``[1]``."""
    check_supported(model, params)
    n = model.num_particles
    mu, lam = lame(_per_particle(params.young_modulus, n, "young_modulus"), _per_particle(params.poisson_ratio, n, "poisson_ratio"))
    mass = _per_particle(params.density, n, "density") * model.mass_volume
    bending = None if params.bending_stiffness is None else _per_particle(params.bending_stiffness, n, "bending_stiffness")
    drag = None if params.drag_coefficient is None else _per_particle(params.drag_coefficient, n, "drag_coefficient")
    drag_t = None if params.drag_tangential is None else _per_particle(params.drag_tangential, n, "drag_tangential")
    return (mu, lam, mass, bending, drag, drag_t) + _friction_and_damping(model, params)


def _control_schedule(control: torch.Tensor | None, control_stride: int, n: int, total: int) -> dict[int, int]:
    """Substep -> index of the control applied before it (checked: ``control [K, N, 3, 3]``, stride >= 1)."""
    ctrl_at: dict[int, int] = {}
    if control is not None:
        if control.dim() != 4 or tuple(control.shape[1:]) != (n, 3, 3):
            raise ValueError(f"control must have shape [K, {n}, 3, 3], got {tuple(control.shape)}")
        if control_stride < 1:
            raise ValueError(f"control_stride must be >= 1, got {control_stride}")
        _check_finite("control", control)
        ctrl_at = {k * control_stride: k for k in range(control.shape[0]) if k * control_stride < total}
    return ctrl_at
