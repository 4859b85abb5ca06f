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

Implicit membrane (``SimConfig.membrane_iterations`` n >= 1): the membrane leaves the explicit
forces, and after them (velocity v*) a backward-Euler step solves  M (v - v*) = dt f(x + dt v)  by n
Newton iterations with the Hessian replaced by the constant  K = L^T diag(k) L:  L maps positions to
the triangles' F columns (``MembraneStencil``) and k = (2 mu + lam) A per row, the membrane's
Hessian at rest under uniaxial stretch.  Each iteration is one banded solve of M + dt^2 K (factored
once per rollout, ``cloth_forces.ImplicitBending``; its adjoint is the same solve), i.e. projective
dynamics' local-global step with the fixed-corotated force as the local step.  A fixed point is
the backward-Euler step, so equilibria (stretch, cantilever) come out as with the explicit
membrane at any dt, and dt is no longer bounded by the stiffness (``cfl.CFL_NUMBER_MOTION``).
Motion is not: K treats a triangle's rotation as stiff, so where rotations dominate (a swinging
sheet) the few iterations leave a lag that grows with dt / (the explicit CFL dt), whatever the
stiffness (README "Cloth physics": 3.2 mm per unit of that ratio on a 7x7 swinging cloth).
Starting each solve from the previous substep's membrane velocity change, which would cut the
lag, was unstable (NaN within 4 frames at 24-96 substeps per frame; not kept).

Memory: autograd keeps one frame's substeps at a time (``torch.utils.checkpoint`` around each
frame) plus the frames' states.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from scipy import sparse
from torch.utils.checkpoint import checkpoint

from . import cloth_contact as CC
from . import cloth_forces as CF
from . import self_contact as SC
from .colliders import pack
from .config import SimConfig
from .errors import SimulationError
from .model import Model, Params, State

#: iterations per substep of the implicit membrane step in the fabric benchmarks' "mesh-implicit"
#: solver (README "Cloth physics": the convergence study)
MEMBRANE_ITERATIONS = 2
#: floor of det(F^T F) in the membrane force: a triangle squashed to a line keeps a finite force
_DET_FLOOR = 1e-12


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


def membrane_forces(x: torch.Tensor, faces: torch.Tensor, dm_inv: torch.Tensor, area: torch.Tensor, mu: torch.Tensor,
                    lam: torch.Tensor) -> torch.Tensor:
    """Vertex forces ``[V, 3]`` of the in-plane fixed-corotated membrane (module docstring):
    positions ``x [V, 3]``, ``faces [E, 3]``, ``dm_inv [E, 2, 2]``, rest ``area [E]``, Lamé ``mu, lam [E]``."""
    x0, x1, x2 = x[faces[:, 0]], x[faces[:, 1]], x[faces[:, 2]]
    F = torch.stack([x1 - x0, x2 - x0], 2) @ dm_inv  # [E, 3, 2]
    C = F.transpose(1, 2) @ F
    a, b, d = C[:, 0, 0], C[:, 0, 1], C[:, 1, 1]
    det = (a * d - b * b).clamp_min(_DET_FLOOR)
    J = det.sqrt()
    ssum = (a + d + 2 * J).sqrt()
    # J C^-1 = adj(C) / J
    jci = torch.stack([torch.stack([d, -b], 1), torch.stack([-b, a], 1)], 1) / J[:, None, None]
    eye = torch.eye(2, dtype=x.dtype, device=x.device)
    S = (2 * mu)[:, None, None] * (eye - (eye + jci) / ssum[:, None, None]) + (lam * (J - 1))[:, None, None] * jci
    H = -(area[:, None, None] * (F @ S)) @ dm_inv.transpose(1, 2)  # [E, 3, 2]: forces on vertices 1 and 2
    f = torch.zeros_like(x)
    f = f.index_add(0, faces[:, 1], H[:, :, 0]).index_add(0, faces[:, 2], H[:, :, 1])
    return f.index_add(0, faces[:, 0], -(H[:, :, 0] + H[:, :, 1]))


def membrane_energy(x, faces, dm_inv, area, mu, lam) -> torch.Tensor:
    """The energy whose negative gradient :func:`membrane_forces` is (for the tests)."""
    x0, x1, x2 = x[faces[:, 0]], x[faces[:, 1]], x[faces[:, 2]]
    F = torch.stack([x1 - x0, x2 - x0], 2) @ dm_inv
    s = torch.linalg.svdvals(F)
    return (area * (mu * ((s - 1) ** 2).sum(1) + 0.5 * lam * (s.prod(1) - 1) ** 2)).sum()


@dataclasses.dataclass(frozen=True)
class MembraneStencil:
    """The rows of ``F = [x1 - x0, x2 - x0] Dm^-1`` as combinations of vertex positions: row 2t + j
    is column j of triangle t's F, on its three vertices (``rows``, ``cols``, ``coef`` ``[6 E]``).
    ``L^T diag(k) L`` with k = (2 mu + lam) A per row is the membrane's stiffness matrix for
    ``cloth_forces.ImplicitBending`` (the module docstring, "Implicit membrane")."""

    rows: torch.Tensor
    cols: torch.Tensor
    coef: torch.Tensor
    num_rows: int
    matrix: torch.Tensor  # L [2E, V] as a sparse CSR tensor
    matrix_t: torch.Tensor  # L^T [V, 2E]


def membrane_stencil(faces: torch.Tensor, dm_inv: torch.Tensor, num_vertices: int) -> MembraneStencil:
    """The :class:`MembraneStencil` of triangles ``faces [E, 3]`` with rest inverses ``dm_inv [E, 2, 2]``."""
    ne = int(faces.shape[0])
    # column j of F: Dm^-1[0, j] (x1 - x0) + Dm^-1[1, j] (x2 - x0)
    a, c = dm_inv[:, 0, :], dm_inv[:, 1, :]  # [E, 2]: Dm^-1[0, j], Dm^-1[1, j]
    coef = torch.stack([-(a + c), a, c], 2).reshape(-1)  # [E, 2 (column), 3 (vertex)]
    rows = torch.arange(2 * ne, device=faces.device).reshape(ne, 2, 1).expand(ne, 2, 3).reshape(-1)
    cols = faces[:, None, :].expand(ne, 2, 3).reshape(-1)
    m = sparse.csr_matrix((coef.detach().cpu().double().numpy(), (rows.cpu().numpy(), cols.cpu().numpy())),
                          shape=(2 * ne, num_vertices))
    return MembraneStencil(rows, cols, coef, 2 * ne, CF.torch_csr(m, coef.dtype, coef.device),
                           CF.torch_csr(m.T.tocsr(), coef.dtype, coef.device))


def stencil_membrane_forces(x: torch.Tensor, stencil: MembraneStencil, area: torch.Tensor, mu: torch.Tensor,
                            lam: torch.Tensor) -> torch.Tensor:
    """:func:`membrane_forces` as two sparse products: F's columns ``L x`` and the forces
    ``-L^T (A dpsi/dF)`` (the force is the transpose of the map from positions to F).  3x faster on a
    41x41 cloth; the tests compare the two."""
    fr = CF.sparse_product(x, stencil.matrix, stencil.matrix_t)  # [2E, 3]: rows 2t + j, column j of F_t
    f0, f1 = fr[0::2], fr[1::2]
    a, b, d = (f0 * f0).sum(1), (f0 * f1).sum(1), (f1 * f1).sum(1)  # C = F^T F
    J = (a * d - b * b).clamp_min(_DET_FLOOR).sqrt()
    c = 2 * mu / (a + d + 2 * J).sqrt()
    l = lam * (J - 1) / J
    # S = 2 mu I - c (I + adj(C) / J) + lam (J - 1) adj(C) / J,  adj(C) = [[d, -b], [-b, a]]
    s00 = 2 * mu - c * (1 + d / J) + l * d
    s11 = 2 * mu - c * (1 + a / J) + l * a
    s01 = (c / J - l) * b
    w = area[:, None]
    p = torch.stack([w * (f0 * s00[:, None] + f1 * s01[:, None]), w * (f0 * s01[:, None] + f1 * s11[:, None])], 1)
    return -CF.sparse_product(p.reshape(-1, 3), stencil.matrix_t, stencil.matrix)


class _Cloth:
    """One cloth's constant data for the rollout (local vertex indices)."""

    def __init__(self, c, model: Model, mass: torch.Tensor, mu: torch.Tensor, lam: torch.Tensor, bending, drag,
                 thickness: float, dt: float, membrane_iterations: int = 0):
        dtype, dev = model.volume.dtype, model.volume.device
        self.v_rows = slice(c.vertex_start, c.vertex_start + c.num_vertices)
        self.e_rows = slice(c.element_start, c.element_start + c.num_elements)
        self.faces = c.faces_local.to(dev)
        self.dm_inv = c.rest_inverse.reshape(-1, 2, 2).to(dtype)
        self.area = model.volume[self.e_rows]
        self.mu, self.lam = mu[self.e_rows], lam[self.e_rows]
        # lumped mass: the vertices' own plus a third of each incident element particle's
        m = mass[self.v_rows].clone()
        m = m.index_add(0, self.faces.reshape(-1), (mass[self.e_rows] / 3).repeat_interleave(3))
        self.mass = m
        pinned = model.pinned[self.v_rows] != 0
        self.free = (~pinned).to(dtype)
        self.free_bool = ~pinned
        self.pin_velocity = model.pin_velocity[self.v_rows]
        self.bending = None if bending is None else bending[self.e_rows]
        self.drag = None if drag is None else drag[self.e_rows]
        self.system = CF.ImplicitBending(c.bending, self.free) if self.bending is not None and c.bending.num_rows else None
        self.search = SC.Search(c.local_faces, c.num_vertices, thickness) if thickness > 0 else None
        self.stencil = membrane_stencil(self.faces, self.dm_inv, c.num_vertices)
        self.membrane = None
        if membrane_iterations:
            self.membrane = CF.ImplicitBending(self.stencil, self.free)
            # the rows' weights: the membrane's Hessian at rest under uniaxial stretch (docstring)
            self.membrane_k = ((2 * self.mu + self.lam) * self.area).repeat_interleave(2)

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
                  packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor], progress: Callable[[int, int], None] | None = None):
    """The rollout of :func:`simulate` on the mesh alone (module docstring): every frame's positions
    ``[T, N, 3]`` and deformation gradients ``[T, N, 3, 3]``, the final state, and the substeps run.

    ``packed`` is ``simulate``'s per-particle (mu, lam, mass, bending, drag, friction [C], damping [1]),
    for a model that :func:`check_supported` accepted."""
    mu, lam, mass, bending, drag, friction, damping = packed
    dtype, dev = model.volume.dtype, model.volume.device
    dt, spf = config.dt, config.substeps_per_frame
    iterations = int(config.membrane_iterations)
    cloths = [_Cloth(c, model, mass, mu, lam, bending, drag, config.cloth_thickness, dt, iterations) for c in model.cloth]
    kinds, rows, _ = pack(model.colliders)
    rows = torch.as_tensor(rows, dtype=dtype, device=dev)
    box = tuple(torch.tensor(corner, dtype=dtype, device=dev) for corner in config.grid.stencil_box)
    gravity = torch.tensor(config.gravity, dtype=dtype, device=dev)
    keep = damping.reshape(()) ** dt

    def substep(c: _Cloth, x, v, step: int):
        t_end = (step + 1) * dt
        f = torch.zeros_like(x) if c.membrane is not None else c.membrane_force(x)
        if c.search is not None:
            vi, ti = c.search.pairs(x, step)
            f = f + SC.forces(x, v, c.mass, c.faces, vi, ti, config.cloth_thickness, dt)
        if c.drag is not None:
            fe = CF.drag_force(x, v, c.drag, c.faces)
            f = f.index_add(0, c.faces.reshape(-1), (fe / 3).repeat_interleave(3, dim=0))
        if c.system is not None:
            f = f + CF.implicit_bending_force(x, v, c.bending, c.mass, c.free, dt, c.system, c.faces)
        v = v + dt * (f / c.mass[:, None] + gravity)
        if c.membrane is not None:
            v = torch.where(c.free_bool[:, None], v, c.pin_velocity)
            v = implicit_membrane(c, x, v, dt, iterations)
        v = keep * v
        v = torch.where(c.free_bool[:, None], v, c.pin_velocity)
        x = x + dt * v
        if kinds:
            x, v = CC.contact(x, v, kinds, rows, friction, t_end, dt, c.free_bool, box)
        return x, v

    def frame(k: int, c: _Cloth, x, v):
        for j in range(spf):
            x, v = substep(c, x, v, k * spf + j)
        return x, v

    xv = [(state.x[c.v_rows], state.v[c.v_rows]) for c in cloths]
    X, F = state.x, state.F
    xs, Fs = [X.unsqueeze(0)], [F.unsqueeze(0)]
    grad = torch.is_grad_enabled()
    total = (num_frames - 1) * spf
    for k in range(num_frames - 1):
        nxt = []
        for c, (x, v) in zip(cloths, xv):
            if grad:
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
        V = V.index_copy(0, _rows(c.v_rows, dev), v).index_copy(0, _rows(c.e_rows, dev), v[c.faces].mean(1))
    final = State(X, V, torch.zeros_like(state.C), F)
    return torch.cat(xs), torch.cat(Fs), final, total


def implicit_membrane(c: _Cloth, x: torch.Tensor, v_star: torch.Tensor, dt: float, iterations: int) -> torch.Tensor:
    """The velocity after a backward-Euler membrane step from ``x`` with the other forces' velocity
    ``v_star``: ``iterations`` Newton steps on  M (v - v*) = dt f(x + dt v)  with the Hessian
    replaced by the constant ``L^T diag(k) L`` (module docstring, "Implicit membrane")."""
    v = v_star
    free = c.free[:, None]
    for _ in range(iterations):
        f = c.membrane_force(x + dt * v)
        r = free * (dt * f + c.mass[:, None] * (v_star - v))
        v = v + CF.banded_solve(r, c.mass, c.membrane_k, c.membrane, dt)
    return v


def _particles(state: State, cloths: list[_Cloth], xv) -> tuple[torch.Tensor, torch.Tensor]:
    """Every particle's position and deformation gradient from the cloths' vertex positions
    (vertex particles keep their initial F)."""
    X, F = state.x, state.F
    for c, (x, _) in zip(cloths, xv):
        xe, Fe = c.element_state(x)
        X = X.index_copy(0, _rows(c.v_rows, x.device), x).index_copy(0, _rows(c.e_rows, x.device), xe)
        F = F.index_copy(0, _rows(c.e_rows, x.device), Fe)
    return X, F


def _rows(rows: slice, device) -> torch.Tensor:
    return torch.arange(rows.start, rows.stop, device=device)
