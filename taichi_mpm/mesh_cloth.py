"""A grid-free cloth solver (``SimConfig.cloth_solver = "mesh"``): the same cloth material integrated on
its mesh alone, differentiated by torch's autograd.

Why.  On the MPM grid a cloth's vertices take the grid's velocity each substep, averaged over a
3x3x3 stencil of cells, so the grid spacing sets how much of the motion survives each transfer and
how thick a fold is.  Measured (README, "Cloth physics"): the demo's drop at grid 32 against grid 64
scored 0.65-0.68 worst per-frame IoU whatever the transfer (APIC, FLIP 0.95-0.999), and the
cross-simulator swing (a cloth pinned at two corners, no contact) run forward with the reference's
own values scored 0.18 mean IoU against it on grid 24 (copying the last frame: 0.22).  This solver
has no grid: the result cannot depend on one.  The same swing scored 0.54 with it (2026-12-04).

What it integrates, per substep of length dt (symplectic Euler, the vertices carrying the whole
mass: each triangle's element-particle share is lumped onto its three vertices):

    f = f_membrane(x) + f_drag(x, v)                      explicit
    v <- v + dt (f / m + g) + dt f_bend / m               f_bend: the implicit bending step of
                                                          ``cloth_forces`` (Baraff-Witkin, bending only)
    v <- damping**dt v;  pinned vertices take their pin velocity
    x <- x + dt v;  then the analytic colliders' vertex contact (``cloth_contact.contact``)

The membrane is the in-plane part of ``cloth``'s energy (Jiang et al. 2017, section 5), per unit
rest area:  psi = mu ((s1 - 1)^2 + (s2 - 1)^2) + lam/2 (s1 s2 - 1)^2 with s1, s2 the principal
stretches of F = [x1 - x0, x2 - x0] Dm^-1 (3x2), i.e. mu ||R^ - rot(R^)||^2 + lam/2 (det R^ - 1)^2.
With C = F^T F, J = s1 s2 = sqrt(det C) and s1 + s2 = sqrt(tr C + 2 J):

    dpsi/dF = F S,   S = 2 mu (I - (I + J C^-1) / (s1 + s2)) + lam (J - 1) J C^-1,

and a triangle of rest area A puts -A (dpsi/dF) Dm^-T on its vertices 1 and 2 (columns) and minus
their sum on vertex 0.  The force is written out, so autograd's backward pass needs first
derivatives only.  Bending, drag and contact are ``cloth_forces`` / ``cloth_contact``'s torch
functions, each already checked against float64 finite differences or gradcheck.

Cloth-cloth contact: with ``SimConfig.cloth_thickness`` h > 0, a vertex-triangle penalty keeps the
layers of a fold h apart (``self_contact``; its forces join f above).  It replaces the element
particle's d3 (shear and normal) terms, which on the grid stop a fold a cell thick.  The strain
limit is not applied (an error says so), and only cloth scenes with analytic colliders run here.

Implicit membrane (``SimConfig.membrane = "implicit"``): the membrane leaves the explicit forces,
and after them (velocity v*) a backward-Euler step solved to convergence by Newton's method gives
the new positions (``membrane_newton``).  dt is then bounded by the motion, not the stiffness
(``cfl.CFL_NUMBER_MOTION``).

Precision: on the CPU the rollout runs in float64 whatever the model's dtype (its inputs are cast at
the start, its outputs back; autograd sees both casts).  A cloth folding onto a collider amplifies
round-off: on the bundled demo's drop a change of float32 round-off alone (the vertex contact by
kernels instead of torch, the same map) moved the vertices up to 2.1 mm by the last frame, and
the demo's fit then ended 7.5% off in damping with a quadratic model of negative curvature; in
float64 the same two paths stay within 3e-12 m.  On a cloth this small the arithmetic is not what
costs (forward and backward 3.1 s in float32, 3.4 s in float64, one thread; measured 2026-12-06).
Elsewhere (CUDA) the model's dtype.

Memory: a frame's autograd tape is kept while the tapes kept so far stay within ``keep_bytes``
(``simulate.KEEP_TAPE_BYTES``, measured per frame from the tensors autograd saves); frames beyond it
run under ``torch.utils.checkpoint`` (one frame's substeps at a time, re-simulated in the backward
pass).  On the demo's drop (386 particles, 630 substeps) keeping the whole tape took forward and
backward from 9.7 to 5.7 s with the same gradient: the checkpoint's hooks on ~150 saved tensors a
substep cost more than the re-simulation.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from . import cloth_contact as CC
from . import cloth_forces as CF
from . import membrane_newton as MN
from .membrane import membrane_stencil, stencil_membrane_forces
from . import runtime
from . import self_contact as SC
from .colliders import pack
from .config import SimConfig
from .errors import SimulationError
from .model import Model, Params, State



def check_supported(model: Model, params: Params) -> None:
    """A one-line error for what the grid-free solver does not simulate."""
    if model.groups or not model.cloth:
        raise ValueError("cloth_solver 'mesh' simulates scenes made only of cloth; this scene has a solid "
                         "(use cloth_solver = 'mpm')")
    bad = [c.kind for c in model.colliders if c.kind not in CC.ANALYTIC]
    if bad:
        raise ValueError(f"cloth_solver 'mesh' needs analytic colliders (sphere, plane, box), got {bad[0]!r}")
    if params.max_stretch is not None and bool((params.max_stretch.detach() > 0).any()):
        raise ValueError("cloth_solver 'mesh' does not apply max_stretch (the strain limit); use cloth_solver = 'mpm'")


class _Cloth:
    """One cloth's constant data for the rollout (local vertex indices)."""

    def __init__(self, c, model: Model, mass: torch.Tensor, mu: torch.Tensor, lam: torch.Tensor, bending, drag,
                 thickness: float, dt: float, implicit: bool = False, drag_tangential=None):
        dtype, dev = mass.dtype, model.volume.device  # the rollout's precision (``work_dtype``)
        self.v_rows = slice(c.vertex_start, c.vertex_start + c.num_vertices)
        self.e_rows = slice(c.element_start, c.element_start + c.num_elements)
        self.faces = c.faces_local.to(dev)
        self.dm_inv = c.rest_inverse.reshape(-1, 2, 2).to(dtype)
        self.area = model.volume[self.e_rows].to(dtype)
        self.mu, self.lam = mu[self.e_rows], lam[self.e_rows]
        # lumped mass: the vertices' own plus a third of each incident element particle's
        m = mass[self.v_rows].clone()
        m = m.index_add(0, self.faces.reshape(-1), (mass[self.e_rows] / 3).repeat_interleave(3))
        self.mass = m
        pinned = model.pinned[self.v_rows] != 0
        self.free = (~pinned).to(dtype)
        self.free_bool = ~pinned
        self.pin_velocity = model.pin_velocity[self.v_rows].to(dtype)
        self.bending = None if bending is None else bending[self.e_rows]
        self.drag = None if drag is None else drag[self.e_rows]
        self.drag_t = None if drag is None or drag_tangential is None else drag_tangential[self.e_rows]
        operator = _with_dtype(c.bending, dtype)
        self.system = CF.ImplicitBending(operator, self.free) if self.bending is not None and operator.num_rows else None
        self.search = SC.Search(c.local_faces, c.num_vertices, thickness) if thickness > 0 else None
        # the explicit membrane's stencil, or the implicit step's solver (which keeps its own, in float64)
        self.newton = MN.NewtonMembrane(self.faces, self.dm_inv, self.area, self.free) if implicit else None
        self.stencil = None if implicit else membrane_stencil(self.faces, self.dm_inv, c.num_vertices)

    def membrane_force(self, x: torch.Tensor) -> torch.Tensor:
        return stencil_membrane_forces(x, self.stencil, self.area, self.mu, self.lam)

    def element_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Element particles' positions (centroids) and deformation gradients ``[Dm^-1 columns | n]``."""
        f = self.faces
        x0, x1, x2 = x[f[:, 0]], x[f[:, 1]], x[f[:, 2]]
        Fi = torch.stack([x1 - x0, x2 - x0], 2) @ self.dm_inv
        n = torch.linalg.cross(Fi[:, :, 0], Fi[:, :, 1], dim=1)
        n = n / n.norm(dim=1, keepdim=True).clamp_min(1e-30)
        return (x0 + x1 + x2) / 3.0, torch.cat([Fi, n[:, :, None]], 2)


def simulate_mesh(model: Model, state: State, params: Params, config: SimConfig, num_frames: int,
                  packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor], progress: Callable[[int, int], None] | None = None,
                  keep_bytes: int = 0):
    """The rollout of :func:`simulate` on the mesh alone (module docstring): every frame's positions
    ``[T, N, 3]`` and deformation gradients ``[T, N, 3, 3]``, the final state, and the substeps run.

    ``packed`` is ``simulate``'s per-particle (mu, lam, mass, bending, drag, drag's tangential share,
    friction [C], damping [1]), for a model that :func:`check_supported` accepted.  ``keep_bytes``:
    autograd tape kept without re-simulation (module docstring, "Memory")."""
    dtype, dev = model.volume.dtype, model.volume.device
    work = work_dtype(dev, dtype)
    mu, lam, mass, bending, drag, drag_t, friction, damping = (None if t is None else t.to(work) for t in packed)
    dt, spf = config.dt, config.substeps_per_frame
    implicit = config.membrane == "implicit"
    cloths = [_Cloth(c, model, mass, mu, lam, bending, drag, config.cloth_thickness, dt, implicit, drag_t) for c in model.cloth]
    kinds, rows, _ = pack(model.colliders)
    rows = torch.as_tensor(rows, dtype=work, device=dev)
    box = tuple(torch.tensor(corner, dtype=work, device=dev) for corner in config.grid.stencil_box)
    contact = _contact_function(kinds, rows, box, work, dev)
    gravity = torch.tensor(config.gravity, dtype=work, device=dev)
    keep = damping.reshape(()) ** dt

    def substep(c: _Cloth, x, v, step: int):
        t_end = (step + 1) * dt
        f = torch.zeros_like(x) if c.newton is not None else c.membrane_force(x)
        if c.search is not None:
            vi, ti = c.search.pairs(x, step)
            f = f + SC.forces(x, v, c.mass, c.faces, vi, ti, config.cloth_thickness, dt)
        if c.drag is not None:
            fe = CF.drag_force(x, v, c.drag, c.faces, c.drag_t)
            f = f.index_add(0, c.faces.reshape(-1), (fe / 3).repeat_interleave(3, dim=0))
        if c.system is not None:
            f = f + CF.implicit_bending_force(x, v, c.bending, c.mass, c.free, dt, c.system, c.faces)
        v = v + dt * (f / c.mass[:, None] + gravity)
        if c.newton is not None:
            v = torch.where(c.free_bool[:, None], v, c.pin_velocity)
            yhat = x + dt * v  # where the other forces take the vertices; pinned ones go there
            v = (MN.newton_step(c.newton, yhat, c.mass, c.mu, c.lam, dt, step) - x) / dt
        v = keep * v
        v = torch.where(c.free_bool[:, None], v, c.pin_velocity)
        x = x + dt * v
        if kinds:
            x, v = contact(x, v, friction, t_end, dt, c)
        return x, v

    def frame(k: int, c: _Cloth, x, v):
        for j in range(spf):
            x, v = substep(c, x, v, k * spf + j)
        return x, v

    xv = [(state.x[c.v_rows].to(work), state.v[c.v_rows].to(work)) for c in cloths]
    X, F = state.x, state.F
    xs, Fs = [X.unsqueeze(0)], [F.unsqueeze(0)]
    grad = torch.is_grad_enabled()
    total = (num_frames - 1) * spf
    kept, largest = 0, 0  # tape bytes kept so far; the largest frame's
    for k in range(num_frames - 1):
        nxt = []
        for c, (x, v) in zip(cloths, xv):
            if grad and keep_bytes > 0 and kept + 2 * largest <= keep_bytes:
                meter = _TapeMeter()
                with meter:
                    x, v = frame(k, c, x, v)
                kept += meter.bytes
                largest = max(largest, meter.bytes)
            elif grad:
                x, v = checkpoint(frame, k, c, x, v, use_reentrant=False)
            else:
                x, v = frame(k, c, x, v)
            if not (torch.isfinite(x).all() and torch.isfinite(v).all()):
                raise SimulationError(f"simulation produced NaN/inf during frame {k + 1}; dt={dt:.3g} s may be above "
                                      "the stability limit for these parameters", substep=(k + 1) * spf, frame=k + 1)
            nxt.append((x, v))
        xv = nxt
        X, F = _particles(state, cloths, xv)
        xs.append(X.unsqueeze(0))
        Fs.append(F.unsqueeze(0))
        if progress is not None:
            progress((k + 1) * spf, total)
    V = state.v
    for c, (_, v) in zip(cloths, xv):
        V = V.index_copy(0, _rows(c.v_rows, dev), v.to(dtype)).index_copy(0, _rows(c.e_rows, dev), v[c.faces].mean(1).to(dtype))
    final = State(X, V, torch.zeros_like(state.C), F)
    return torch.cat(xs), torch.cat(Fs), final, total


def work_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The precision of the grid-free rollout for a model of ``dtype`` on ``device``: float64 on the
    CPU (module docstring, "Precision"), the model's own elsewhere (Taichi's float64 on CUDA faulted,
    ``runtime.config_for``)."""
    return torch.float64 if torch.device(device).type == "cpu" else dtype


def _with_dtype(op: CF.BendingOperator, dtype: torch.dtype) -> CF.BendingOperator:
    """The bending stencil with its floating-point tensors in ``dtype``."""
    return dataclasses.replace(op, **{f.name: getattr(op, f.name).to(dtype) for f in dataclasses.fields(op)
                                      if getattr(op, f.name).is_floating_point()})


def _torch_contact(kinds, rows, box):
    """:func:`_contact_function`'s map by ``cloth_contact.contact`` (torch, autograd)."""
    return lambda x, v, friction, time, dt, c: CC.contact(x, v, kinds, rows, friction, time, dt, c.free_bool, box)


def _contact_function(kinds, rows, box, dtype, dev):
    """The vertex contact as ``(x, v, friction, time, dt, cloth) -> (x, v)``: ``cloth_contact``'s
    kernels where Taichi can run on these tensors' device and precision (one launch each way), else
    its torch functions (``contact``, differentiated by autograd)."""
    try:
        runtime.ensure(dev, dtype)
    except ValueError:  # e.g. float64 on CUDA
        return _torch_contact(kinds, rows, box)
    corners = tuple(float(a) for corner in box for a in corner.tolist())
    rows = rows.contiguous()
    serial = dev.type == "cpu"  # per-vertex work: the thread pool's start costs more on a cloth this size
    return lambda x, v, friction, time, dt, c: CC.vertex_contact(x, v, kinds, rows, friction, time, dt, c.free, corners,
                                                                 serial)


class _TapeMeter(torch.autograd.graph.saved_tensors_hooks):
    """Counts the bytes of the tensors autograd saves inside it (a tensor saved twice, or sharing
    storage with another, is counted each time: an upper bound)."""

    def __init__(self):
        self.bytes = 0

        def pack(t: torch.Tensor):
            self.bytes += t.numel() * t.element_size()
            return t

        super().__init__(pack, lambda t: t)


def _particles(state: State, cloths: list[_Cloth], xv) -> tuple[torch.Tensor, torch.Tensor]:
    """Every particle's position and deformation gradient from the cloths' vertex positions
    (vertex particles keep their initial F)."""
    X, F = state.x, state.F
    for c, (x, _) in zip(cloths, xv):
        xe, Fe = c.element_state(x)
        X = X.index_copy(0, _rows(c.v_rows, x.device), x.to(X.dtype)).index_copy(0, _rows(c.e_rows, x.device), xe.to(X.dtype))
        F = F.index_copy(0, _rows(c.e_rows, x.device), Fe.to(F.dtype))
    return X, F


def _rows(rows: slice, device) -> torch.Tensor:
    return torch.arange(rows.start, rows.stop, device=device)
