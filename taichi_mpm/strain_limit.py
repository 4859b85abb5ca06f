"""A differentiable strain limit on the cloth mesh: a fit-able maximum principal stretch ``max_stretch``.

Why.  Real woven fabric barely stretches in its plane (membrane stiffness ~1e3-1e4 N/m), and an
explicit membrane that stiff needs a ~4x shorter CFL time step than the default range (a 41x41
cloth of 0.6 m at 0.2 kg/m^2: 2,095 substeps per frame with young_modulus up to 1e4 N/m, 496 up to
500 N/m).  A strain limit keeps the membrane soft (young_modulus sets the small-strain response
and the time step) and caps the stretch by projection, as cloth simulators have done since Provot 1995
("Deformation constraints in a mass-spring model to describe rigid cloth behavior"); the
per-triangle limit on principal stretches follows Thomaszewski, Pabst and Strasser 2009
("Continuum-based strain limiting", Eurographics) and Wang, O'Brien and Ramamoorthi 2010
("Multi-resolution isotropic strain limiting", SIGGRAPH Asia).

The projection (after every substep's grid-to-particle transfer, on the cloth's vertices):

    F = [x1 - x0, x2 - x0] Dm^-1            in-plane deformation of a triangle (3x2)
    F^T F = V diag(l1, l2) V^T,  s_i = sqrt(l_i)   principal stretches, s1 >= s2
    c_i = min(1, s_max / s_i)
    F' = F V diag(c1, c2) V^T = F (c2 I + (c1 - c2) / (l1 - l2) (F^T F - l2 I))

``F'`` keeps ``F``'s rotation and clamps each principal stretch to ``s_max``.  The projector is
written with the divided difference (c1 - c2) / (l1 - l2), which stays bounded where the two
stretches meet (both above the limit: -s_max / (s1 s2 (s1 + s2)); straddling it: bounded by
1 / (2 s1^2)), so no eigenvector is ever formed and the map is Lipschitz everywhere; the
discriminant carries a 1e-12 floor so that its derivative stays finite at isotropic stretch.  The
triangle's target vertices are its new edges ``F' Dm`` placed so that the mass-weighted centroid
stays (a pinned vertex counts as ~infinitely heavy, so the target is placed about it and it never
moves).  The triangles are coloured so that no two of a colour share a vertex; a sweep projects one
colour after the other (Gauss-Seidel across colours, vectorised within one; triangles within the
limit correct nothing), ``ITERATIONS`` sweeps per substep, and each vertex's velocity takes its
correction: ``v += (x_limited - x) / dt``, so the momentum sent to the grid next substep is the
limited motion.  Averaged Jacobi corrections were tried first: they needed ~4x the sweeps for the
same overshoot, and over-relaxed (x4) they diverged on a sheet stretched 20% at once.

Accuracy.  One sweep per substep does not reach the limit exactly; the limit converges across
substeps.  Measured on a sheet hanging from its top edge (benchmarks.fabric.hanging_stretch, 10 N/m):
elongation over the capped analytic profile +8.8% / +3.3% (grid 32 / 64) at max_stretch 1.02, +4.1%
/ +1.6% at 1.03, +0.8% / +0.05% at 1.05; two sweeps: +4.4% / +1.5% at 1.02 for ~1.8x the cost.  A
large violation made at once (a sheet stretched 20% in one step) is not removed within a substep,
and with pinned vertices its worst triangles do not converge: the limit is for stretch that builds
up over substeps, as a fabric's does under gravity and contact.

Gradient.  The map is piecewise smooth like the friction return mapping: inside the limit it is the
identity (dx'/dx = I, d/ds_max = 0); beyond it, torch's autograd differentiates the formulas
above exactly, including d/ds_max of the clamped stretches.  The engine's adjoint recomputes the
projection from the pre-limit state (kept in the substep's tape) under autograd.  Tested against
finite differences in float64 (``tests/taichi_mpm/test_strain_limit.py``).
"""

from __future__ import annotations

import numpy as np
import torch

#: sweeps of the projection per substep (the limit converges across substeps as well; see the
#: module docstring for the measured overshoot)
ITERATIONS = 1
#: a pinned vertex's weight in the triangle centroid, relative to a free one (it must not move)
PINNED_WEIGHT = 1e6
#: floor under the squared discriminant of F^T F's eigenvalues (see the module docstring)
DISC_FLOOR = 1e-12
#: max_stretch of an element with the limit off (0 in the scene): far above any stretch
OFF = 1e6


class LimitMesh:
    """What the projection needs of one cloth mesh: rest edges, faces, vertex weights, and the
    triangles grouped into colours that share no vertex (each colour's projections are independent,
    so one sweep is Gauss-Seidel over colours, vectorised within each)."""

    def __init__(self, faces_local: torch.Tensor, rest_inverse: torch.Tensor, free: torch.Tensor):
        self.faces = faces_local.reshape(-1, 3)
        dtype = rest_inverse.dtype
        Dm_inv = rest_inverse.reshape(-1, 2, 2)
        self.Dm_inv = Dm_inv
        Dm = torch.linalg.inv(Dm_inv.double()).to(dtype)
        self.free = free.to(dtype)
        weight = (1.0 + (PINNED_WEIGHT - 1.0) * (1.0 - self.free))[self.faces]  # [E, 3]
        self.colours = []
        for idx in _colours(self.faces.cpu().numpy()):
            i = torch.as_tensor(idx, device=self.faces.device)
            f = self.faces[i]
            w = weight[i]
            self.colours.append((f, f.reshape(-1), Dm_inv[i], Dm[i], w[:, :, None] / w.sum(dim=1)[:, None, None],
                                 self.free[f][:, :, None], i))


def _colours(faces) -> list:
    """Greedy colouring of the triangles so that no two of one colour share a vertex (a grid mesh
    takes 6-7 colours); lists of triangle indices."""
    used: dict[int, set] = {}
    colour_of = np.empty(len(faces), dtype=np.int64)
    for t, tri in enumerate(faces):
        taken = set().union(*(used.get(int(v), set()) for v in tri))
        c = 0
        while c in taken:
            c += 1
        colour_of[t] = c
        for v in tri:
            used.setdefault(int(v), set()).add(c)
    return [np.nonzero(colour_of == c)[0] for c in range(int(colour_of.max()) + 1)]


def principal_stretches(x: torch.Tensor, mesh: LimitMesh) -> tuple[torch.Tensor, torch.Tensor]:
    """Each triangle's principal stretches ``(s1, s2)`` ``[E]`` (s1 >= s2) at vertex positions ``x [V, 3]``."""
    _, G = _deformation(x[mesh.faces], mesh.Dm_inv)
    l1, l2, _ = _eigen(G)
    return l1.sqrt(), l2.clamp(min=0.0).sqrt()


def _deformation(p, Dm_inv):
    edges = torch.stack([p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]], dim=2)  # [E, 3, 2]
    F = edges @ Dm_inv
    return F, F.transpose(1, 2) @ F


def _eigen(G):
    a, b, d = G[:, 0, 0], G[:, 0, 1], G[:, 1, 1]
    m = 0.5 * (a + d)
    disc = torch.sqrt((0.5 * (a - d)) ** 2 + b * b + DISC_FLOOR)
    return m + disc, m - disc, disc


def violated(x: torch.Tensor, max_stretch: torch.Tensor, mesh: LimitMesh) -> bool:
    """Whether any triangle's largest principal stretch exceeds its ``max_stretch [E]``."""
    s1, _ = principal_stretches(x, mesh)
    return bool((s1 > max_stretch).any())


def _project(p, smax, Dm_inv, Dm, w):
    """Corrections ``[T, 3, 3]`` that move triangles ``p [T, 3(vertex), 3]`` onto their limit."""
    F, G = _deformation(p, Dm_inv)
    l1, l2, disc = _eigen(G)
    s1 = l1.sqrt()[:, None]
    s2 = l2.clamp(min=1e-12).sqrt()[:, None]
    c1 = smax / torch.maximum(s1, smax)
    c2 = smax / torch.maximum(s2, smax)
    k = (c1 - c2) / (2.0 * disc[:, None])
    eye = torch.eye(2, dtype=p.dtype, device=p.device)
    S = c2[:, :, None] * eye + k[:, :, None] * (G - l2[:, None, None] * eye)
    edges = F @ S @ Dm  # [T, 3, 2] the limited edges
    shape = torch.stack([torch.zeros_like(edges[:, :, 0]), edges[:, :, 0], edges[:, :, 1]], dim=1)
    shift = ((p - shape) * w).sum(dim=1, keepdim=True)  # keeps the weighted centroid
    # triangles within the limit move by nothing, not by round-off (the map is the identity there)
    return (shape + shift - p) * (s1 > smax)[:, :, None]


def limit_positions(x: torch.Tensor, max_stretch: torch.Tensor, mesh: LimitMesh, iterations: int | None = None) -> torch.Tensor:
    """Vertex positions ``[V, 3]`` after ``iterations`` (default ``ITERATIONS``) sweeps of the
    projection (Gauss-Seidel over the mesh's colours)."""
    iterations = ITERATIONS if iterations is None else iterations
    for _ in range(iterations):
        for faces, flat, Dm_inv, Dm, w, free, idx in mesh.colours:
            corr = _project(x[faces], max_stretch[idx][:, None], Dm_inv, Dm, w) * free
            x = x.index_add(0, flat, corr.reshape(-1, 3))
    return x


def limit(x: torch.Tensor, v: torch.Tensor, max_stretch: torch.Tensor, mesh: LimitMesh, dt: float,
          iterations: int | None = None, box: tuple[torch.Tensor, torch.Tensor] | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The projection of one substep: limited positions and velocities ``(x', v')`` (differentiable).

    ``box = (lo [3], hi [3])``: positions are clamped into it afterwards, as g2p clamps them (the
    engine keeps every particle's stencil inside the grid)."""
    xl = limit_positions(x, max_stretch, mesh, iterations)
    if box is not None:
        xl = torch.minimum(torch.maximum(xl, box[0]), box[1])
    return xl, v + (xl - x) / dt


def element_limits(max_stretch: torch.Tensor) -> torch.Tensor:
    """Per-element ``max_stretch`` with 0 (the limit off) replaced by a value no stretch reaches."""
    return torch.where(max_stretch > 0, max_stretch, torch.full_like(max_stretch, OFF))
