"""The fit's polish: Newton steps on a quadratic model of the loss, built from loss values at the 2%
scale, in natural coordinates (log value for stiffnesses and densities, value / range width
otherwise).

Why loss values and not exact gradients: a rollout with contact has a loss that is smooth at the 2%
scale and wiggles below it, and the exact gradient follows the wiggles. Measured on the bundled
demo at the end of its Adam stage (2026-12-04): along minus the exact gradient the loss rose for
every step from 1% to 100% of the gradient's largest coordinate (+5.9e-5 at 1%, where the gradient
predicted -9.0e-4), and fell only below 0.3% (-1.1e-5 at 0.1%, predicted -9.0e-5). A line search
on exact gradients (L-BFGS with backtracking, tried) found no step and ended the fit there; torch's
L-BFGS with a strong-Wolfe search found steps only through its long first trial (a step of ~1 in u)
and spent 3.5 rollouts and backwards per iteration (110 s of the demo's 235 s).

The model is the one the identifiability analysis reads (the same stencil: 1 + 2p + p(p-1)
forward rollouts, no backward), so the point the fit reports and the curvature it reports for it
come from one measurement. A stencil that would leave the box is shifted inward; the step
minimises the model, its Hessian made positive definite (|eigenvalues|, floored), over the box and
a trust region.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

#: the stencil's step in natural coordinates: the resolution a fitted value is read at
REL_STEP = 0.02
#: a Newton step shorter than this fraction of the stencil's step is below what the model resolves
MIN_STEP = 0.25
#: where the polish stalls, one model at this many times the stencil's step checks that the loss does
#: not fall further at a coarser scale (``ModelPolish.coarse_check``).  Measured 2026-12-05 on the
#: bundled demo with the mesh solver: a fit stalled at damping 0.41 (truth 0.3; mean silhouette IoU
#: against the truth's 0.954 there and 0.971 at damping 0.3 with the same young_modulus), on a wiggle
#: of the loss at the 2% scale, while a model at the 8% scale found the way on.
COARSE_FACTOR = 4.0
#: eigenvalues of the model's Hessian are floored at this fraction of the largest (a flat or
#: negatively curved direction gets a step bounded by the trust region, not an infinite one)
EIGEN_FLOOR = 1e-3


class NonFiniteLoss(FloatingPointError):
    """A loss value the model needs was not finite."""


@dataclasses.dataclass
class QuadraticModel:
    """f(z) ~ f + g.(z - center) + 0.5 (z - center)' H (z - center), from loss values at ``step``."""

    center: torch.Tensor
    f: float
    g: torch.Tensor
    H: torch.Tensor
    step: float
    evaluations: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict | None) -> "QuadraticModel | None":
        return QuadraticModel(**d) if d else None


def stencil_center(z0: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, h: float) -> torch.Tensor:
    """``z0``, moved inward where a step of ``h`` would leave the box [lo, hi]."""
    c = z0.clone()
    for k in range(len(c)):
        if float(hi[k] - lo[k]) > 2 * h:
            c[k] = min(max(float(z0[k]), float(lo[k]) + h), float(hi[k]) - h)
        else:
            c[k] = 0.5 * float(lo[k] + hi[k])
    return c


def build_model(f: Callable[[torch.Tensor], float], z0: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                h: float = REL_STEP, f_at_z0: float | None = None,
                many: Callable[[list[torch.Tensor]], list[float]] | None = None) -> QuadraticModel:
    """Central differences of ``f`` around ``z0`` (shifted inward at the box's edges): the diagonal
    from f(c +- h e_i), each pair from f(c +- h (e_i + e_j)). ``f_at_z0`` saves the centre's
    evaluation when the centre is ``z0``; ``many``, if given, evaluates the whole stencil in one
    call (the fit's rollout workers, ``rollouts``), with the values ``f`` would give."""
    c = stencil_center(z0, lo, hi, h)
    p = len(c)
    eye = torch.eye(p, dtype=torch.float64) * h
    known = f_at_z0 is not None and torch.equal(c, z0)
    points = [] if known else [c]
    for i in range(p):
        points += [c + eye[i], c - eye[i]]
    pairs = [(i, j) for i in range(p) for j in range(i + 1, p)]
    for i, j in pairs:
        points += [c + eye[i] + eye[j], c - eye[i] - eye[j]]
    values = list(many(points)) if many is not None else [f(z) for z in points]
    for v in values:
        if not math.isfinite(v):
            raise NonFiniteLoss(f"a non-finite loss ({v}) while modelling the loss around the fitted point")
    f0 = f_at_z0 if known else values.pop(0)
    g = torch.zeros(p, dtype=torch.float64)
    H = torch.zeros(p, p, dtype=torch.float64)
    for i in range(p):
        fp, fm = values[2 * i], values[2 * i + 1]
        g[i] = (fp - fm) / (2 * h)
        H[i, i] = (fp - 2 * f0 + fm) / h**2
    for k, (i, j) in enumerate(pairs):
        # f(+i+j) + f(-i-j) - 2 f0 = h^2 (H_ii + H_jj + 2 H_ij) + O(h^4)
        pp, mm = values[2 * p + 2 * k], values[2 * p + 2 * k + 1]
        H[i, j] = H[j, i] = ((pp + mm - 2 * f0) / h**2 - H[i, i] - H[j, j]) / 2
    return QuadraticModel(c, f0, g, H, h, len(points))


def newton_target(model: QuadraticModel, z0: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, radius: float) -> torch.Tensor:
    """The model's minimiser over the box and the trust region |z - z0|_inf <= radius, its Hessian
    made positive definite, approximately: coordinates whose unconstrained step leaves the region
    are fixed at its bound and the rest re-solved (a pass per newly fixed coordinate; a fixed one is
    never freed again, and no multiplier is checked). The trial that follows is accepted only if the
    loss falls, so an inexact target costs a rollout, not a worse fit."""
    lam, V = torch.linalg.eigh(model.H)
    lam = lam.abs().clamp_min(EIGEN_FLOOR * max(float(lam.abs().max()), 1e-12))
    Hp = V @ torch.diag(lam) @ V.T
    lower = torch.maximum(lo, z0 - radius)
    upper = torch.minimum(hi, z0 + radius)
    c, g = model.center, model.g
    z = z0.clone()
    fixed = torch.zeros(len(z), dtype=torch.bool)
    for _ in range(len(z) + 1):
        free = ~fixed
        if not free.any():
            break
        rhs = -(g[free] + Hp[free][:, fixed] @ (z[fixed] - c[fixed]))
        z[free] = c[free] + torch.linalg.solve(Hp[free][:, free], rhs)
        out = free & ((z < lower) | (z > upper))
        z = torch.minimum(torch.maximum(z, lower), upper)
        if not out.any():
            break
        fixed |= out
    return z


@dataclasses.dataclass
class PolishStep:
    z: torch.Tensor  # where the step ended (the start when nothing was accepted)
    loss: float
    evaluations: int  # forward rollouts spent
    accepted: bool
    gain: float  # loss decrease of the accepted step (0 when none)
    evaluated: list[tuple[float, torch.Tensor]]  # (loss, z) of every rollout
    converged: bool  # the model's minimum is where the step started, within its resolution
    length: float = 0.0  # |step|_inf in natural coordinates (0 when nothing was accepted)


class ModelPolish:
    """One iteration: a model at the current point, then up to ``max_trials`` Newton steps on it,
    each shorter than the last (a quarter), until one lowers the loss."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, h: float = REL_STEP, radius: float = 0.25, max_trials: int = 3):
        self.lo, self.hi, self.h, self.max_trials = lo, hi, h, max_trials
        self.radius = radius
        self.f: float | None = None  # the loss at the current point, when known
        self.model: QuadraticModel | None = None  # the last model built

    def state_dict(self) -> dict:
        return {"polish": True, "radius": self.radius, "f": self.f, "model": self.model.as_dict() if self.model else None}

    def load_state_dict(self, d: dict) -> None:
        self.radius, self.f, self.model = d["radius"], d["f"], QuadraticModel.from_dict(d["model"])

    def step(self, z0: torch.Tensor, f: Callable[[torch.Tensor], float],
             many: Callable[[list[torch.Tensor]], list[float]] | None = None,
             before_trials: Callable[[torch.Tensor], None] | None = None) -> PolishStep:
        """One iteration from ``z0``; ``f`` is the loss, ``many`` (optional) the loss at a list of
        points in one call (``build_model``); ``before_trials(z0)`` is called once the model is
        built, before the steps are tried (the fit starts its report's rollout there)."""
        evaluated: list[tuple[float, torch.Tensor]] = []

        def F(z):
            v = f(z)
            evaluated.append((v, z.clone()))
            return v

        def F_many(zs):
            vs = list(many(zs))
            evaluated.extend((v, z.clone()) for v, z in zip(vs, zs))
            return vs

        self.model = model = build_model(F, z0, self.lo, self.hi, self.h, self.f, F_many if many is not None else None)
        if self.f is None:
            self.f = model.f if torch.equal(model.center, z0) else F(z0)
        f0 = self.f
        if not math.isfinite(f0):
            raise NonFiniteLoss(f"a non-finite loss ({f0}) at the polish's starting point")
        target = newton_target(model, z0, self.lo, self.hi, self.radius)
        if before_trials is not None:
            before_trials(z0)
        for _ in range(self.max_trials):
            length = float((target - z0).abs().max())
            if length < MIN_STEP * self.h:
                break
            ft = F(target)
            if math.isfinite(ft) and ft < f0:
                if length >= 0.99 * self.radius:
                    self.radius = min(2 * self.radius, 1.0)
                self.f = ft
                return PolishStep(target, ft, len(evaluated), True, f0 - ft, evaluated, False, length)
            self.radius = length / 4
            if self.radius < MIN_STEP * self.h:
                self.radius = MIN_STEP * self.h
                break
            target = newton_target(model, z0, self.lo, self.hi, self.radius)
        return PolishStep(z0.clone(), f0, len(evaluated), False, 0.0, evaluated, True)

    def coarse_check(self, z0: torch.Tensor, f: Callable[[torch.Tensor], float],
                     many: Callable[[list[torch.Tensor]], list[float]] | None = None,
                     rtol: float = 0.0) -> tuple[PolishStep, bool]:
        """One iteration with the stencil ``COARSE_FACTOR`` times wider, where the fine model stalls:
        a loss that wiggles at the stencil's scale can hold the fine model at a point the coarser one
        leads away from.  Returns the step and whether it counts: it lowers the loss by more than
        ``rtol`` of it and leaves the fine stencil.  When it does not, the fine model, trust region
        and loss are kept (the identifiability analysis reads the fine model)."""
        fine_h, fine_model, fine_radius, fine_f = self.h, self.model, self.radius, self.f
        self.h = COARSE_FACTOR * fine_h
        self.radius = max(self.radius, 2 * self.h)
        try:
            step = self.step(z0, f, many)
        finally:
            self.h = fine_h
        taken = step.accepted and step.gain >= rtol * abs(step.loss) and step.length > fine_h
        if not taken:
            self.model, self.radius, self.f = fine_model, fine_radius, fine_f
        return step, taken
