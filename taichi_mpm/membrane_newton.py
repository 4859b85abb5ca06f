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
M / dt^2 + H, H assembled from each triangle's Hessian (written out: ``membrane_hessian``'s kernel on
the CPU, :func:`energy_hessian` in torch elsewhere) in LAPACK's banded Cholesky (vertices in
``cloth_forces.banded_order``, three unknowns each): H exact where M / dt^2 + H is positive
definite, else shifted by the first multiple of M / dt^2 in ``SHIFTS`` that makes it so, else with
each triangle's negative eigenvalues clamped to 0.  The factor (float32: ``FACTOR_DTYPE``) is kept across
iterations and substeps and renewed when the steps' contraction would need more than
``NewtonMembrane.renew_after`` further iterations (8 on a large cloth, down to 2 on a small one; the
converged y does not depend on which factor led there), and
each solve starts from the previous substep's membrane displacement (y - yhat).  A line search
halves steps that raise Phi (above ``LINE_SEARCH_BELOW``) and, when the factor is shifted or
clamped, lengthens them by secants on Phi's slope along the step (where the cloth buckles, such a
factor's steps along the buckling mode are far too short).  Each trial point's energy and
force come from one evaluation, the force being the next iteration's.  Iterations stop once a step moves no
vertex more than ``TOLERANCE`` m (float64 throughout, whatever the model's dtype).

Cost.  A renewal (Hessian 1.4 ms, its banded form 1.6 ms, Cholesky 7-8 ms in float64 and 2-3x
less in float32, on a 41x41 cloth, 2 cores) costs about six iterations (energy and force 0.3 ms by
``membrane_hessian``'s kernel, 0.6 ms in torch; a banded solve 0.4 ms): while the cloth
falls or swings, 2-3 iterations a substep and a renewal every few substeps; where it folds onto a
collider, ~10 iterations and 2-3 renewals a substep, and one renewal per substep in the backward
pass (README "Cloth physics").

Gradient.  At the solution the residual  R = M (y - yhat) / dt^2 - f(y; mu, lam)  is zero on the
free vertices, so for any input p, dy/dp = -J^-1 dR/dp with J = M / dt^2 + H the exact Hessian.
The backward pass solves J lambda = dL/dy by conjugate gradients preconditioned with the factor
renewed at the step's solution (J's own where it is positive definite, so that the first residual
confirms the direct solve; J's products exact, from the element Hessians that renewal assembles) and
gives dL/dp = -lambda^T dR/dp written out: M lambda / dt^2 for yhat, -lambda . (y - yhat) / dt^2 for
the masses, and for mu and lam the force's products with lambda (the force is linear in each).
Before (2026-12-06) the products and dR/dp came from autograd of the force, ~4 ms of the demo's
~6 ms backward substep.  The solutions are kept per substep (like the contact
pairs of ``self_contact``), so the frame's recomputation in the backward pass reuses them.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg as sla
import torch
from scipy import sparse

from . import membrane_hessian as MH
from .cloth_forces import banded_order
from .errors import SimulationError
from .membrane import _DET_FLOOR, membrane_stencil, stencil_membrane_energy_forces

#: a Newton step that moves no vertex more than this (m) ends the solve.  The gradient is that of
#: the exact solution; the last steps shrink fast (the factor is renewed when they would not), so
#: what they leave is below this, and the tests' central differences (relative step 1e-6) agree
#: with it to 1e-4
TOLERANCE = 1e-11
#: the longest multiple of a Newton step the line search tries, and its trials beyond the full step
#: (module docstring)
MAX_EXPANSION = 1024.0
EXTEND_TRIALS = 4
#: where M / dt^2 + H is not positive definite, the factor is that of M / dt^2 + H + s M / dt^2 with
#: the first s of these that makes it so (else each triangle's negative curvature is clamped).
#: Measured 2026-12-05 on a substep of the 41x41 drop's fit that sat at the buckling point (the
#: exact Hessian indefinite at every iterate until the last few): clamping alone took 202
#: iterations (it stepped off the saddle in 8-22% steps), the shifts 31
SHIFTS = (0.01, 0.1, 1.0)
#: the Newton iterations' factor's precision: it only preconditions (the residual is float64, so the
#: solution is float64's), and LAPACK's float32 banded Cholesky is 2-3x faster (11 frames of the
#: 41x41 drop, forward: 48 against 52 ms a substep).  The adjoint's is float64: it would need more
#: conjugate-gradient products (each an autograd Hessian product) than the float32 factor saves
FACTOR_DTYPE = np.float32
#: steps (m) below which no line search is made: Phi's change is then round-off
LINE_SEARCH_BELOW = 1e-7
#: after ``MAX_ITERATIONS``, a last step below this (m) is round-off, not divergence: accepted
STAGNATION = 1e-10
#: renew the factor when the steps' contraction (each step over the one before) would take more
#: than this many further iterations to reach ``TOLERANCE`` (a renewal costs about six iterations;
#: measured 2026-12-05 on the first 11 frames of the 41x41 drop, forward and backward, ms a substep:
#: 6.5 -> 73, 8 -> 70-72, 10 -> 71, 12 -> 79; the rule it replaced, renew unless a step shrinks 4x
#: from the one before, 79)
RENEW_AFTER = 8.0
#: ... on a large cloth.  A small one renews sooner: the factor costs n u^2 (n unknowns, band u)
#: against n u for an iteration, so on few unknowns a renewal costs little more than the launches
#: of an iteration.  The threshold is ``RENEW_AFTER_SMALL`` + (``RENEW_AFTER`` - it) * min(1, n u^2 /
#: ``RENEW_COST_LARGE``) (deterministic: the path of the iterates does not depend on the machine).
#: Measured 2026-12-05, one thread, forward, whole rollouts: the demo's 12x12 cloth (n 432, u 41)
#: 2.57 s at 8, 2.10 s at 4, 1.82 s at 2, 1.83 s at 1; the 41x41 drop (n 5,043, u 128), 14 frames:
#: 20.2 s at 8, 20.6 s at 5, 21.6 s at 3, 22.8 s at 2.
RENEW_AFTER_SMALL = 2.0
RENEW_COST_LARGE = 5043 * 128**2
#: iterations per substep before the solve is given up (a SimulationError)
MAX_ITERATIONS = 60
#: conjugate-gradient iterations of the adjoint solve before it is given up
MAX_CG = 200
#: the adjoint's residual, relative to the gradient it solves for, that ends it
CG_TOLERANCE = 1e-12


def _iterations_left(size: float, last: float) -> float:
    """Iterations from a step of ``size`` to ``TOLERANCE`` if steps keep shrinking by ``size / last``."""
    if size < TOLERANCE:
        return 0.0
    rate = size / last
    return math.inf if rate >= 1.0 else math.log(TOLERANCE / size) / math.log(rate)


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
        # the element Hessians by ``membrane_hessian``'s kernel for a model on the CPU, else by torch
        self.kernel_dtype = area.dtype if area.device.type == "cpu" else None
        nv = int(free.shape[0])
        self.stencil = membrane_stencil(self.faces, dm_inv.detach().cpu().double(), nv)
        self.coef = self.stencil.coef  # [E, column j, vertex]: F[:, j] = sum_v c x_v
        self.faces32, self.coef6 = self.faces.int().contiguous(), self.coef.reshape(-1, 6).contiguous()  # the kernels'
        self.start, self.incident = MH.incidence(self.faces, nv)
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
        self.dof_flat = self.dof_of.reshape(-1).numpy()  # (vertex, axis) -> banded unknown
        self.vertex_of_dof = torch.from_numpy(np.argsort(self.dof_flat))
        d = self.dof_of[self.faces].reshape(-1, 9).numpy()  # [E, 9]: (vertex, axis) -> unknown
        r, c = np.repeat(d, 9, axis=1), np.tile(d, (1, 9))  # [E, 81]
        pinned_dof = ~np.repeat(self.free.numpy(), 3)[self.vertex_of_dof.numpy()]
        keep = (r <= c) & ~pinned_dof[r] & ~pinned_dof[c]
        self.u = int((c - r)[keep].max()) if keep.any() else 0
        self.keep = torch.from_numpy(keep.reshape(-1))
        self.index = torch.from_numpy(((self.u + r - c) * self.n + c).reshape(-1)[keep.reshape(-1)])
        self.diag = self.u * self.n + np.arange(self.n)  # the band's diagonal row, flattened
        self.pinned_dof = pinned_dof
        self.renew_after = RENEW_AFTER_SMALL + (RENEW_AFTER - RENEW_AFTER_SMALL) * min(1.0, self.n * self.u**2 / RENEW_COST_LARGE)
        self.factor: np.ndarray | None = None
        self.exact = True  # the factor is the exact M / dt^2 + H's (not shifted or clamped)
        self.solutions: dict[int, torch.Tensor] = {}
        self.last_change: torch.Tensor | None = None

    # -- energy, force, Hessian --------------------------------------------------------------------

    def _F(self, y: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ejv,evi->eij", self.coef, y[self.faces])  # [E, 3, 2]

    def phi_force(self, y, yhat, mass, mu, lam, dt) -> tuple[float, torch.Tensor]:
        """Phi at positions ``y [V, 3]`` and the membrane force there (one evaluation of F; by
        ``membrane_hessian``'s kernel for a model on the CPU, else by torch)."""
        if self.kernel_dtype is not None and MH.available(self.kernel_dtype):
            mat = torch.stack([self.area, mu, lam], 1)
            energy, force = MH.energy_forces(y, self.faces32, self.coef6, mat, self.start, self.incident)
        else:
            energy, force = stencil_membrane_energy_forces(y, self.stencil, self.area, mu, lam)
        inertia = 0.5 * (mass[:, None] * (y - yhat) ** 2)[self.free].sum() / (dt * dt)
        return float(inertia + energy), force

    def element_hessians(self, H: torch.Tensor) -> torch.Tensor:
        """``[E, 81]``: each triangle's Hessian in its 9 unknowns (vertex, axis) from its energy's
        Hessian in F, ``H [E, 6, 6]`` (:func:`energy_hessian`)."""
        He = torch.einsum("ejv,eijkl,elw->eviwk", self.coef, H.reshape(-1, 3, 2, 3, 2), self.coef)
        return (He * self.area[:, None, None, None, None]).reshape(-1, 81)

    def _banded(self, He: torch.Tensor, inertia: np.ndarray) -> np.ndarray:
        """The band of M / dt^2 + H from the element Hessians ``He [E, 81]`` and :meth:`_inertia`
        (a pinned unknown's row is the identity's)."""
        ab = np.bincount(self.index.numpy(), weights=He.reshape(-1)[self.keep].numpy(), minlength=(self.u + 1) * self.n)
        ab[self.diag] += np.where(self.pinned_dof, 1.0, inertia)
        return ab.reshape(self.u + 1, self.n)

    def _inertia(self, mass: torch.Tensor, dt: float) -> np.ndarray:
        """M / dt^2's diagonal in the banded unknowns' order, 0 on pinned ones."""
        return np.where(self.pinned_dof, 0.0, np.repeat(mass.numpy(), 3)[self.vertex_of_dof.numpy()] / (dt * dt))

    def _refactor(self, y, mass, mu, lam, dt, dtype=None) -> torch.Tensor:
        """Factor M / dt^2 + H at y: H exact where that is positive definite (Newton's own step),
        else M / dt^2 + H shifted by the smallest of ``SHIFTS`` times M / dt^2 that makes it so, else
        with each triangle's negative curvature clamped.  The exact element Hessians come from
        ``membrane_hessian``'s kernel for a model on the CPU, else from torch.  The factor is in
        ``dtype`` (default ``FACTOR_DTYPE``).  Returns the exact element Hessians ``[E, 81]`` (for
        :meth:`hessian_product`), whatever the factor's."""
        dtype = dtype or FACTOR_DTYPE
        H = None
        if self.kernel_dtype is not None and MH.available(self.kernel_dtype):
            He = MH.element_hessians(y, self.faces32, self.coef6, torch.stack([self.area, mu, lam], 1))
        else:
            H = energy_hessian(self._F(y), mu, lam).reshape(-1, 6, 6)
            He = self.element_hessians(H)
        inertia = self._inertia(mass, dt)
        ab = self._banded(He, inertia)
        for shift in (0.0, *SHIFTS):
            shifted = ab
            if shift:
                shifted = ab.copy()
                shifted[self.u] += shift * inertia  # the band's diagonal (upper storage)
            try:
                self.factor = self._cholesky(shifted, dtype)
                self.exact = not shift
                return He
            except np.linalg.LinAlgError:
                pass
        if H is None:
            H = energy_hessian(self._F(y), mu, lam).reshape(-1, 6, 6)
        w, Q = torch.linalg.eigh(H)
        H = (Q * w.clamp_min(0)[:, None, :]) @ Q.transpose(1, 2)
        self.exact = False
        clamped = self._banded(self.element_hessians(H), inertia)
        # positive definite in exact arithmetic (inertia + a sum of PSD terms), but where the membrane
        # outweighs the vertex's inertia by ~1e7 (a 1e-6 kg/m^2 cloth, 1e12 N/m) float32 loses it
        for factor_dtype in dict.fromkeys((dtype, np.float64)):
            try:
                self.factor = self._cholesky(clamped, factor_dtype)
                return He
            except np.linalg.LinAlgError:
                pass
        raise SimulationError(f"the implicit membrane's Newton system is not positive definite even in float64 (stiffness "
                              f"{float(mu.max()) + float(lam.max()):.3g} N/m against a vertex mass of {float(mass.min()):.3g} kg at "
                              f"dt {dt:.3g} s): the material is outside what the solver can integrate; check density and young_modulus")

    @staticmethod
    def _cholesky(ab: np.ndarray, dtype) -> np.ndarray:
        """The banded Cholesky factor of ``ab`` in ``dtype`` (a LinAlgError where that is not
        positive definite)."""
        return sla.cholesky_banded(ab.astype(dtype, copy=False), lower=False, check_finite=False)

    def solve_with(self, factor: np.ndarray, rhs: torch.Tensor) -> torch.Tensor:
        """``P^-1 rhs`` for ``rhs [V, 3]`` (zero on pinned vertices) with a banded Cholesky factor."""
        b = np.zeros(self.n, dtype=factor.dtype)
        b[self.dof_flat] = rhs.reshape(-1).numpy()
        z = sla.cho_solve_banded((factor, False), b, check_finite=False)
        out = torch.from_numpy(z[self.dof_flat].astype(np.float64)).reshape(-1, 3)
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
        phi, f = self.phi_force(y, yhat, mass, mu, lam, dt)
        for it in range(MAX_ITERATIONS):
            g = free * (mass[:, None] * (y - yhat) / (dt * dt) - f)
            dy = -self.solve_with(self.factor, g)
            size = float(dy.abs().max())
            if last is not None and not fresh and _iterations_left(size, last) > self.renew_after:
                self._refactor(y, mass, mu, lam, dt)
                dy = -self.solve_with(self.factor, g)
                size = float(dy.abs().max())
            fresh = False
            if size < TOLERANCE:
                y = y + dy
                break
            # a step that raises Phi is halved (the factor is a projected, possibly lagged, Hessian);
            # below LINE_SEARCH_BELOW the change of Phi is round-off and full steps are taken.
            # Where the cloth buckles, M / dt^2 + H is indefinite and the clamped Hessian's steps along
            # the buckling mode are far too short (the 41x41 drop stalled at frame 22 without what
            # follows, and a polish rollout of its fit took 60 steps that each shrank 8% from 2e-7 m):
            # with a shifted or clamped factor the step is extended to where Phi's slope along it vanishes.
            # Each trial point's force is the next iteration's.
            t = 1.0
            phi_t, f_t = self.phi_force(y + dy, yhat, mass, mu, lam, dt)
            slope = float((g * dy).sum())
            if size > LINE_SEARCH_BELOW:
                while t > 1e-4 and phi_t > phi + 1e-4 * t * slope:
                    t *= 0.5
                    phi_t, f_t = self.phi_force(y + t * dy, yhat, mass, mu, lam, dt)
            if not self.exact and t >= 1.0:
                t, phi_t, f_t = self._extend(y, dy, t, phi_t, f_t, slope, size, yhat, mass, mu, lam, dt)
            y, phi, f = y + t * dy, phi_t, f_t
            last = size
        else:
            if not last < STAGNATION:  # below it: round-off, accepted
                raise SimulationError(f"the implicit membrane step did not converge in {MAX_ITERATIONS} Newton iterations "
                                      f"(last step {last:.3g} m)", substep=step)
        self.solutions[step] = y
        self.last_change = y - yhat
        return y

    def _extend(self, y, dy, t, phi_t, f_t, slope, size, yhat, mass, mu, lam, dt):
        """The step ``t dy`` lengthened by secants on Phi's slope along ``dy`` (exact where Phi is
        quadratic along it) while the slope at the step is still negative, up to ``MAX_EXPANSION``
        (``EXTEND_TRIALS`` trials); a trial is kept only if it lowers Phi where that is resolved
        (steps above ``LINE_SEARCH_BELOW``).  The slope comes from each trial's force, so the test
        holds for steps far too small for Phi's differences."""
        free = self.free[:, None]
        for _ in range(EXTEND_TRIALS):
            y_t = y + t * dy
            slope_t = float((free * (mass[:, None] * (y_t - yhat) / (dt * dt) - f_t) * dy).sum())
            if not slope_t < 0.0:  # Phi rises beyond t
                break
            curvature = (slope_t - slope) / t  # of Phi along dy, by the secant between 0 and t
            t_new = min(MAX_EXPANSION, -slope / curvature if curvature > 0 else 2 * t)
            if not t_new > 1.01 * t:
                break
            phi_n, f_n = self.phi_force(y + t_new * dy, yhat, mass, mu, lam, dt)
            if t_new * size > LINE_SEARCH_BELOW and not phi_n < phi_t:
                break
            t, phi_t, f_t = t_new, phi_n, f_n
        return t, phi_t, f_t

    def hessian_product(self, He: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``H v [V, 3]`` (every vertex, pinned ones included) with H assembled from the element
        Hessians ``He [E, 81]`` (:meth:`_refactor`'s): one batched product and one scatter, where
        autograd's Hessian product through the force took ~25 operations each way (1.4 ms on the
        demo's cloth against ~0.1 ms)."""
        he = torch.bmm(He.view(-1, 9, 9), v[self.faces].reshape(-1, 9, 1)).reshape(-1, 3)
        return torch.zeros_like(v).index_add_(0, self.faces.reshape(-1), he)

    def jacobian_product(self, He: torch.Tensor, v: torch.Tensor, mass: torch.Tensor, dt: float) -> torch.Tensor:
        """``J v`` on the free vertices, J = M / dt^2 + H with H exact (``He`` from :meth:`_refactor`,
        whose kernel and torch twin the tests compare with autograd of the energy)."""
        return self.free[:, None] * (mass[:, None] * v / (dt * dt) + self.hessian_product(He, v))

    def force_parameter_products(self, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``w . df/dmu_e`` and ``w . df/dlam_e`` ``[E]`` for the force at ``y`` and a direction ``w
        [V, 3]``: the force is linear in each triangle's mu and lam, ``f = -A_e L^T (F S)`` with F S
        = mu (2 F - 2 (F + G) / (s1 + s2)) + lam (J - 1) G, ``G = F adj(C) / J`` (``mesh_cloth``'s
        docstring; the same clamped J as ``membrane._energy_forces``), so each product is ``-A_e``
        times a contraction with ``dF(w) = L w``.  Written as these contractions rather than by
        ``_energy_forces``' stress at (mu, lam) = (1, 0) and (0, 1): that took the demo's backward
        from 1.6 to 1.8 s (2026-12-06, one thread)."""
        F, dF = self._F(y), self._F(w)
        f0, f1, d0, d1 = F[:, :, 0], F[:, :, 1], dF[:, :, 0], dF[:, :, 1]
        a, b, d = (f0 * f0).sum(1), (f0 * f1).sum(1), (f1 * f1).sum(1)
        J = (a * d - b * b).clamp_min(_DET_FLOOR).sqrt()
        root = (a + d + 2 * J).sqrt()
        f0d0, f1d1, f0d1, f1d0 = (f0 * d0).sum(1), (f1 * d1).sum(1), (f0 * d1).sum(1), (f1 * d0).sum(1)
        gd = (d * f0d0 - b * f1d0 + a * f1d1 - b * f0d1) / J  # G : dF
        fd = f0d0 + f1d1  # F : dF
        return -self.area * (2 * fd - 2 * (fd + gd) / root), -self.area * (J - 1) * gd

    def adjoint(self, step: int, g: torch.Tensor, mass, mu, lam, dt) -> tuple[torch.Tensor, torch.Tensor]:
        """``J^-1 g`` on the free vertices by conjugate gradients preconditioned with a factor renewed
        at this step's solution: J's own where J is positive definite (then the first residual
        confirms the direct solve), else the clamped one; a SimulationError if they do not converge.
        Also returns the solution's exact element Hessians (for the backward pass's products; None
        where ``g`` is zero and nothing was factored).
        (The factor the forward solve kept is not used: measured 2026-12-05 on the 41x41 drop, its
        conjugate gradients took 53 ms an adjoint, mostly to reach 25 iterations and renew it
        anyway, against 15 ms with the renewal first.)"""
        y = self.solutions[step]
        b = g * self.free[:, None]
        scale = float(b.abs().max())
        if scale == 0.0:
            return torch.zeros_like(b), None
        He = self._refactor(y, mass, mu, lam, dt, np.float64)
        x = self.solve_with(self.factor, b)
        r = b - self.jacobian_product(He, x, mass, dt)
        z = self.solve_with(self.factor, r)
        p, rz = z, float((r * z).sum())
        for _ in range(MAX_CG):
            if float(r.abs().max()) <= CG_TOLERANCE * scale:
                return x, He
            Ap = self.jacobian_product(He, p, mass, dt)
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
            return x, He
        raise SimulationError(f"the implicit membrane step's adjoint did not converge at substep {step} "
                              f"(residual {float(r.abs().max()) / scale:.2g} of the gradient)", substep=step)


class _Step(torch.autograd.Function):
    """y = argmin Phi(y; yhat, mass, mu, lam) with pinned vertices at yhat (module docstring)."""

    @staticmethod
    def forward(ctx, yhat, mass, mu, lam, solver: NewtonMembrane, dt: float, step: int):
        args = [t.detach().to("cpu", torch.float64) for t in (yhat, mass, mu, lam)]
        y = solver.solve(*args, dt, step)
        ctx.solver, ctx.dt, ctx.step = solver, dt, step
        ctx.save_for_backward(yhat, mass, mu, lam)
        return y.to(yhat.device, yhat.dtype)

    @staticmethod
    def backward(ctx, gy):
        yhat, mass, mu, lam = ctx.saved_tensors
        solver, dt, step = ctx.solver, ctx.dt, ctx.step
        g = gy.detach().to("cpu", torch.float64)
        m64, mu64, lam64, yh = (t.detach().to("cpu", torch.float64) for t in (mass, mu, lam, yhat))
        lam_adj, He = solver.adjoint(step, g, m64, mu64, lam64, dt)  # zero on pinned vertices
        y = solver.solutions[step]
        free = solver.free[:, None]
        # dL/dp = -lam_adj^T dR/dp for R = free (M (y - yhat) / dt^2 - f(y; mu, lam)), where y's pinned
        # rows are yhat's: a free yhat enters through the inertia, a pinned one through the force on
        # its neighbours (-H) and as its own y
        pinned = g if He is None else g - solver.hessian_product(He, lam_adj)
        g_yhat = torch.where(free, m64[:, None] * lam_adj / (dt * dt), pinned)
        g_mass = -(lam_adj * (y - yh)).sum(1) / (dt * dt)
        g_mu, g_lam = solver.force_parameter_products(y, lam_adj)
        out = [t.to(gy.device, gy.dtype) for t in (g_yhat, g_mass, g_mu, g_lam)]
        return out[0], out[1], out[2], out[3], None, None, None


def newton_step(solver: NewtonMembrane, yhat: torch.Tensor, mass: torch.Tensor, mu: torch.Tensor, lam: torch.Tensor,
                dt: float, step: int) -> torch.Tensor:
    """The positions ``[V, 3]`` after the converged backward-Euler membrane step from ``yhat`` (the
    positions the other forces lead to; module docstring), differentiable in every input."""
    return _Step.apply(yhat, mass, mu, lam, solver, dt, step)
