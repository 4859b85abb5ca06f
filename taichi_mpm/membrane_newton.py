"""The mesh solver's implicit membrane step solved to convergence (``SimConfig.membrane
= "implicit"``): backward Euler on the membrane by Newton's method with a lagged Hessian, and its
gradient from the implicit-function theorem.

Why.  The membrane's explicit step needs dt under a CFL bound that shrinks with sqrt(stiffness):
2,095 substeps per frame for a 41x41 cloth at 3,000 N/m.  Backward Euler is stable at any dt, but
solved by a few iterations with a constant matrix (projective dynamics' local-global step) it
leaves a lag that grows with dt / dt_CFL, because that matrix treats a triangle's rotation as stiff
(tried and dropped 2026-12-05, also with L-BFGS on top; README "Cloth physics").  Solved to
convergence, the step is backward Euler itself, whose error on the cloth's motion does not depend
on the stiffness.

What.  After the other forces (velocity v*, ``yhat = x + dt v*``), the new positions y minimise

    Phi(y) = sum_v m_v |y_v - yhat_v|^2 / (2 dt^2) + E(y),   E the fixed-corotated membrane energy
                                                              (``mesh_cloth`` module docstring),

over the free vertices (pinned ones follow yhat, i.e. their pin velocity).  Newton's method on
M / dt^2 + H, H assembled from each triangle's 6x6 Hessian in F (written out) in LAPACK's banded
Cholesky (vertices in ``cloth_forces.banded_order``, three unknowns each): H exact where M / dt^2 + H
is positive definite, else with each triangle's negative eigenvalues clamped to 0.  The factor is
kept across iterations and substeps and renewed when a step shrinks by less than ``REFACTOR_RATIO``
(the converged y does not depend on which factor led there), and each solve starts from the
previous substep's membrane displacement (y - yhat).  A line search halves steps that raise Phi and
doubles those that lower it while that lowers it more (where the cloth buckles, the clamped
Hessian's steps along the buckling mode are far too short; above ``LINE_SEARCH_BELOW``); iterations stop once a step moves no vertex more than
``TOLERANCE`` m (float64 throughout, whatever the model's dtype).

Cost.  Renewing the factor (Hessian and banded Cholesky, 33 ms on a 41x41 cloth) is most of it:
while the cloth falls or swings, 2-3 iterations a substep and a renewal every few substeps; where
it folds onto a collider, ~12 iterations and ~4 renewals a substep (README "Cloth physics").

Gradient.  At the solution the residual  R = M (y - yhat) / dt^2 - f(y; mu, lam)  is zero on the
free vertices, so for any input p, dy/dp = -J^-1 dR/dp with J = M / dt^2 + H the exact Hessian.
The backward pass solves J lambda = dL/dy by conjugate gradients preconditioned with the kept
factor (J's products exact, by autograd of the written-out force; the factor renewed at the
step's solution if 25 iterations do not do) and gives dL/dp = -lambda^T dR/dp
by autograd of R at the fixed solution.  The solutions are kept per substep (like the contact
pairs of ``self_contact``), so the frame's recomputation in the backward pass reuses them.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import torch
from scipy import sparse

from .cloth_forces import banded_order
from .errors import SimulationError
from .membrane import _DET_FLOOR, membrane_stencil, stencil_membrane_forces

#: a Newton step that moves no vertex more than this (m) ends the solve.  The gradient is that of
#: the exact solution; the solves end in Newton's quadratic convergence, so what they leave is far
#: below this, and the tests' central differences (relative step 1e-6) agree with it to 1e-4
TOLERANCE = 1e-11
#: the longest multiple of a Newton step the line search tries (module docstring)
MAX_EXPANSION = 1024.0
#: steps (m) below which no line search is made: Phi's change is then round-off
LINE_SEARCH_BELOW = 1e-7
#: after ``MAX_ITERATIONS``, a last step below this (m) is round-off, not divergence: accepted
STAGNATION = 1e-10
#: renew the factor when a step is more than this fraction of the one before
REFACTOR_RATIO = 0.25
#: iterations per substep before the solve is given up (a SimulationError)
MAX_ITERATIONS = 60
#: conjugate-gradient iterations of the adjoint solve with the kept factor before it is renewed at
#: the step's solution, and with the renewed one before the solve is given up
CG_REFACTOR = 25
MAX_CG = 200
#: the adjoint's residual, relative to the gradient it solves for, that ends it
CG_TOLERANCE = 1e-12


def _identity(t):
    return t


def _own_graph():
    """Autograd inside the step keeps its own tensors: the frame's checkpoint (``mesh_cloth``)
    must not store or recompute them."""
    return torch.autograd.graph.saved_tensors_hooks(_identity, _identity)


def _cross_matrix(a: torch.Tensor) -> torch.Tensor:
    """``[E, 3, 3]``: [a]x, the matrix of a x (.) for ``a [E, 3]``."""
    z = torch.zeros_like(a[:, 0])
    return torch.stack([torch.stack([z, -a[:, 2], a[:, 1]], 1), torch.stack([a[:, 2], z, -a[:, 0]], 1),
                        torch.stack([-a[:, 1], a[:, 0], z], 1)], 1)


def energy_hessian(F: torch.Tensor, mu: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``[E, 3, 2, 3, 2]``: d^2 psi / dF dF of the membrane energy density (``mesh_cloth``)
    psi = mu (tr C - 2 s + 2) + lam/2 (J - 1)^2,  s = s1 + s2 = sqrt(tr C + 2 J),  J = |f0 x f1|
    for F = [f0 f1], written out in x = (f0, f1):  with g = dJ/dx = (f1 x n, n x f0) (n the unit
    normal) and P = I - n n^T,

        d^2 J / df0^2 = -[f1]x P [f1]x / J,   d^2 J / df1^2 = -[f0]x P [f0]x / J,
        d^2 J / df0 df1 = [n]x + [f1]x P [f0]x / J   (d/df1 of dJ/df0, rows f0),
        d^2 s = (I + d^2 J) / s - (x + g)(x + g)^T / s^3,
        d^2 psi = 2 mu (I - d^2 s) + lam (g g^T + (J - 1) d^2 J).

    The tests compare it with autograd."""
    f0, f1 = F[:, :, 0], F[:, :, 1]
    cr = torch.linalg.cross(f0, f1, dim=1)
    J = cr.norm(dim=1).clamp_min(_DET_FLOOR ** 0.5)
    n = cr / J[:, None]
    x = torch.cat([f0, f1], 1)  # [E, 6]
    g = torch.cat([torch.linalg.cross(f1, n, dim=1), torch.linalg.cross(n, f0, dim=1)], 1)
    s = (F * F).sum((1, 2)).add(2 * J).sqrt()
    P = torch.eye(3, dtype=F.dtype, device=F.device) - n[:, :, None] * n[:, None, :]
    X0, X1, N = _cross_matrix(f0), _cross_matrix(f1), _cross_matrix(n)
    Jr = J[:, None, None]
    h00 = -X1 @ P @ X1 / Jr
    h11 = -X0 @ P @ X0 / Jr
    h01 = -N + X1 @ P @ X0 / Jr  # d(dJ/df0)/df1
    HJ = torch.cat([torch.cat([h00, h01], 2), torch.cat([h01.transpose(1, 2), h11], 2)], 1)  # [E, 6, 6]
    eye6 = torch.eye(6, dtype=F.dtype, device=F.device)
    xg = x + g
    sr = s[:, None, None]
    Hs = (eye6 + HJ) / sr - xg[:, :, None] * xg[:, None, :] / sr**3
    H = (2 * mu)[:, None, None] * (eye6 - Hs) + lam[:, None, None] * (g[:, :, None] * g[:, None, :] + (J - 1)[:, None, None] * HJ)
    # x = (f0, f1): index 3 j + i for F[i, j]; to (i, j, k, l)
    return H.reshape(-1, 2, 3, 2, 3).permute(0, 2, 1, 4, 3)


class NewtonMembrane:
    """One cloth's Newton solver (module docstring): rest data, the banded pattern and the kept factor."""

    def __init__(self, faces: torch.Tensor, dm_inv: torch.Tensor, area: torch.Tensor, free: torch.Tensor):
        self.faces = faces.cpu()
        nv = int(free.shape[0])
        self.stencil = membrane_stencil(self.faces, dm_inv.detach().cpu().double(), nv)
        self.coef = self.stencil.coef  # [E, column j, vertex]: F[:, j] = sum_v c x_v
        self.area = area.detach().cpu().double()
        self.free = free.detach().cpu().bool()
        self.nv, self.n = nv, 3 * nv
        f = self.faces.numpy()
        rows = np.repeat(np.arange(len(f)), 3)
        inc = sparse.csr_matrix((np.ones(3 * len(f)), (f.reshape(-1), rows)), shape=(nv, len(f)))
        perm = banded_order((inc @ inc.T).tocsr())
        pos = np.empty(nv, dtype=np.int64)
        pos[perm] = np.arange(nv)
        self.dof_of = torch.from_numpy(3 * pos[:, None] + np.arange(3)[None, :])  # [V, 3]: banded unknown
        self.vertex_of_dof = torch.from_numpy(np.argsort(self.dof_of.reshape(-1).numpy()))
        d = self.dof_of[self.faces].reshape(-1, 9).numpy()  # [E, 9]: (vertex, axis) -> unknown
        r, c = np.repeat(d, 9, axis=1), np.tile(d, (1, 9))  # [E, 81]
        pinned_dof = ~np.repeat(self.free.numpy(), 3)[self.vertex_of_dof.numpy()]
        keep = (r <= c) & ~pinned_dof[r] & ~pinned_dof[c]
        self.u = int((c - r)[keep].max()) if keep.any() else 0
        self.keep = torch.from_numpy(keep.reshape(-1))
        self.index = torch.from_numpy(((self.u + r - c) * self.n + c).reshape(-1)[keep.reshape(-1)])
        self.diag = self.u * self.n + np.arange(self.n)  # the band's diagonal row, flattened
        self.pinned_dof = pinned_dof
        self.factor: np.ndarray | None = None
        self.solutions: dict[int, torch.Tensor] = {}
        self.last_change: torch.Tensor | None = None

    # -- energy, force, Hessian --------------------------------------------------------------------

    def _F(self, y: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ejv,evi->eij", self.coef, y[self.faces])  # [E, 3, 2]

    def phi(self, y, yhat, mass, mu, lam, dt) -> float:
        inertia = 0.5 * (mass[:, None] * (y - yhat) ** 2)[self.free].sum() / (dt * dt)
        return float(inertia + self.energy(y, mu, lam))

    def energy(self, y: torch.Tensor, mu: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """The membrane energy of positions ``y [V, 3]`` (the line search's)."""
        F = self._F(y)
        C = F.transpose(1, 2) @ F
        a, b, d = C[:, 0, 0], C[:, 0, 1], C[:, 1, 1]
        J = (a * d - b * b).clamp_min(_DET_FLOOR).sqrt()
        return (self.area * (mu * (a + d - 2 * (a + d + 2 * J).sqrt() + 2) + 0.5 * lam * (J - 1) ** 2)).sum()

    def force(self, y: torch.Tensor, mu: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """-dE/dy ``[V, 3]``, written out (``membrane.stencil_membrane_forces``; autograd-differentiable)."""
        return stencil_membrane_forces(y, self.stencil, self.area, mu, lam)

    def element_hessians(self, H: torch.Tensor) -> torch.Tensor:
        """``[E, 81]``: each triangle's Hessian in its 9 unknowns (vertex, axis) from its energy's
        Hessian in F, ``H [E, 6, 6]`` (:func:`energy_hessian`)."""
        He = torch.einsum("ejv,eijkl,elw->eviwk", self.coef, H.reshape(-1, 3, 2, 3, 2), self.coef)
        return (He * self.area[:, None, None, None, None]).reshape(-1, 81)

    def _banded(self, He: torch.Tensor, mass: torch.Tensor, dt: float) -> np.ndarray:
        ab = np.bincount(self.index.numpy(), weights=He.reshape(-1)[self.keep].numpy(), minlength=(self.u + 1) * self.n)
        m = np.repeat(mass.numpy(), 3)[self.vertex_of_dof.numpy()] / (dt * dt)
        m[self.pinned_dof] = 1.0
        ab[self.diag] += m
        return ab.reshape(self.u + 1, self.n)

    def _refactor(self, y, mass, mu, lam, dt) -> None:
        """Factor M / dt^2 + H at y: H exact where that is positive definite (Newton's own step),
        else with each triangle's negative curvature clamped."""
        H = energy_hessian(self._F(y), mu, lam).reshape(-1, 6, 6)
        try:
            self.factor = sla.cholesky_banded(self._banded(self.element_hessians(H), mass, dt), lower=False, check_finite=False)
            return
        except np.linalg.LinAlgError:
            pass
        w, Q = torch.linalg.eigh(H)
        H = (Q * w.clamp_min(0)[:, None, :]) @ Q.transpose(1, 2)
        self.factor = sla.cholesky_banded(self._banded(self.element_hessians(H), mass, dt), lower=False, check_finite=False)

    def solve_with(self, factor: np.ndarray, rhs: torch.Tensor) -> torch.Tensor:
        """``P^-1 rhs`` for ``rhs [V, 3]`` (zero on pinned vertices) with a banded Cholesky factor."""
        b = np.zeros(self.n)
        b[self.dof_of.reshape(-1).numpy()] = rhs.reshape(-1).numpy()
        z = sla.cho_solve_banded((factor, False), b, check_finite=False)
        out = torch.from_numpy(z[self.dof_of.reshape(-1).numpy()]).reshape(-1, 3)
        return out * self.free[:, None]

    # -- the step -------------------------------------------------------------------------------------

    def solve(self, yhat, mass, mu, lam, dt: float, step: int) -> torch.Tensor:
        """The minimiser of Phi from ``yhat`` (float64 CPU tensors); kept per ``step``."""
        if step in self.solutions:
            return self.solutions[step]
        free = self.free[:, None]
        # start where the membrane took the vertices in the previous substep, relative to yhat
        # (the solution does not depend on the start; the iterations do)
        y = yhat if self.last_change is None else yhat + free * self.last_change
        fresh = self.factor is None  # the factor was made at this iterate: renewing it changes nothing
        if fresh:
            self._refactor(y, mass, mu, lam, dt)
        last = None
        for it in range(MAX_ITERATIONS):
            g = free * (mass[:, None] * (y - yhat) / (dt * dt) - self.force(y, mu, lam))
            dy = -self.solve_with(self.factor, g)
            size = float(dy.abs().max())
            if last is not None and size > REFACTOR_RATIO * last and not fresh:
                self._refactor(y, mass, mu, lam, dt)
                dy = -self.solve_with(self.factor, g)
                size = float(dy.abs().max())
            fresh = False
            if size < TOLERANCE:
                y = y + dy
                break
            # a step that raises Phi is halved (the factor is a projected, possibly lagged, Hessian);
            # below LINE_SEARCH_BELOW the change of Phi is round-off and full steps are taken
            # ... and a full step that lowers it is doubled while that lowers it more: where the cloth
            # buckles, M / dt^2 + H is indefinite and the clamped Hessian's steps along the buckling
            # mode are far too short (the 41x41 drop stalled at frame 22 without it)
            t = 1.0
            if size > LINE_SEARCH_BELOW:
                phi0, slope = self.phi(y, yhat, mass, mu, lam, dt), float((g * dy).sum())
                phi_t = self.phi(y + dy, yhat, mass, mu, lam, dt)
                while t > 1e-4 and phi_t > phi0 + 1e-4 * t * slope:
                    t *= 0.5
                    phi_t = self.phi(y + t * dy, yhat, mass, mu, lam, dt)
                while t >= 1.0 and t < MAX_EXPANSION:
                    phi_2t = self.phi(y + 2 * t * dy, yhat, mass, mu, lam, dt)
                    if not phi_2t < phi_t:
                        break
                    t, phi_t = 2 * t, phi_2t
            y = y + t * dy
            last = size
        else:
            if not last < STAGNATION:  # below it: round-off, accepted
                raise SimulationError(f"the implicit membrane step did not converge in {MAX_ITERATIONS} Newton iterations "
                                      f"(last step {last:.3g} m)", substep=step)
        self.solutions[step] = y
        self.last_change = y - yhat
        return y

    def jacobian_product(self, y, v, mass, mu, lam, dt) -> torch.Tensor:
        """``J v`` with J = M / dt^2 + H, H the exact Hessian (autograd of the force: a vector-Jacobian
        product, which is the Jacobian-vector product, H being symmetric)."""
        with torch.enable_grad(), _own_graph():
            z = y.detach().requires_grad_(True)
            (hv,) = torch.autograd.grad(self.force(z, mu, lam), z, grad_outputs=-v)
        return self.free[:, None] * (mass[:, None] * v / (dt * dt) + hv)

    def adjoint(self, step: int, g: torch.Tensor, mass, mu, lam, dt) -> torch.Tensor:
        """``J^-1 g`` on the free vertices by conjugate gradients, preconditioned with the kept
        factor, renewed at this step's solution when it no longer serves (``CG_REFACTOR``
        iterations); a SimulationError if they do not converge."""
        y = self.solutions[step]
        b = g * self.free[:, None]
        scale = float(b.abs().max())
        if scale == 0.0:
            return torch.zeros_like(b)
        for attempt in range(2):
            if attempt or self.factor is None:
                self._refactor(y, mass, mu, lam, dt)
            x = self.solve_with(self.factor, b)
            r = b - self.jacobian_product(y, x, mass, mu, lam, dt)
            z = self.solve_with(self.factor, r)
            p, rz = z, float((r * z).sum())
            for _ in range(CG_REFACTOR if attempt == 0 else MAX_CG):
                if float(r.abs().max()) <= CG_TOLERANCE * scale:
                    return x
                Ap = self.jacobian_product(y, p, mass, mu, lam, dt)
                pAp = float((p * Ap).sum())
                if pAp <= 0:  # J is not positive definite along p: conjugate gradients cannot go on
                    break
                alpha = rz / pAp
                x = x + alpha * p
                r = r - alpha * Ap
                z = self.solve_with(self.factor, r)
                rz_new = float((r * z).sum())
                p = z + (rz_new / rz) * p
                rz = rz_new
            if float(r.abs().max()) <= CG_TOLERANCE * scale:
                return x
        raise SimulationError(f"the implicit membrane step's adjoint did not converge at substep {step} "
                              f"(residual {float(r.abs().max()) / scale:.2g} of the gradient)", substep=step)


class _Step(torch.autograd.Function):
    """y = argmin Phi(y; yhat, mass, mu, lam) with pinned vertices at yhat (module docstring)."""

    @staticmethod
    def forward(ctx, yhat, mass, mu, lam, solver: NewtonMembrane, dt: float, step: int):
        args = [t.detach().to("cpu", torch.float64) for t in (yhat, mass, mu, lam)]
        with _own_graph():
            y = solver.solve(*args, dt, step)
        ctx.solver, ctx.dt, ctx.step = solver, dt, step
        ctx.save_for_backward(yhat, mass, mu, lam)
        return y.to(yhat.device, yhat.dtype)

    @staticmethod
    def backward(ctx, gy):
        yhat, mass, mu, lam = ctx.saved_tensors
        solver, dt, step = ctx.solver, ctx.dt, ctx.step
        g = gy.detach().to("cpu", torch.float64)
        m64, mu64, lam64 = (t.detach().to("cpu", torch.float64) for t in (mass, mu, lam))
        with _own_graph():
            lam_adj = solver.adjoint(step, g, m64, mu64, lam64, dt)
            y = solver.solutions[step]
            free = solver.free[:, None]
            inputs = [t.detach().to("cpu", torch.float64).requires_grad_(True) for t in (yhat, mass, mu, lam)]
            with torch.enable_grad():
                yh, m, u, l = inputs
                z = torch.where(free, y, yh)  # pinned vertices follow yhat
                R = free * (m[:, None] * (z - yh) / (dt * dt) - solver.force(z, u, l))
                grads = torch.autograd.grad(R, inputs, grad_outputs=-lam_adj)
        g_yhat = grads[0] + torch.where(free, torch.zeros_like(g), g)  # a pinned vertex's y is its yhat
        out = [t.to(gy.device, gy.dtype) for t in (g_yhat, *grads[1:])]
        return out[0], out[1], out[2], out[3], None, None, None


def newton_step(solver: NewtonMembrane, yhat: torch.Tensor, mass: torch.Tensor, mu: torch.Tensor, lam: torch.Tensor,
                dt: float, step: int) -> torch.Tensor:
    """The positions ``[V, 3]`` after the converged backward-Euler membrane step from ``yhat`` (the
    positions the other forces lead to; module docstring), differentiable in every input."""
    return _Step.apply(yhat, mass, mu, lam, solver, dt, step)
