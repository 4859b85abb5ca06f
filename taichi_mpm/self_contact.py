"""Cloth-cloth contact for the grid-free cloth solver (``mesh_cloth``): a vertex-triangle proximity
penalty at a physical thickness.

On the MPM grid, layers of cloth within one cell share the grid's velocity, so a fold cannot pass
through itself but is a cell thick and its layers cannot slide.  Without a grid nothing stops a
fold: the demo's drop with a 31x31 cloth had 3,742 mesh edges through its own triangles after one
second (measured 2026-12-04; the MPM drop on grid 32: 52).  Here every vertex p within ``thickness``
h of a triangle (a, b, c) it is not near on the mesh is pushed out along the closest-point direction
by the energy

    E = k/2 (h - d)^2   for d < h,   d = |p - q|,  q = w_a a + w_b b + w_c c the closest point,

with forces f_p = k (h - d) n on the vertex and -w_j k (h - d) n on the triangle's corners
(n = (p - q) / d; the closest point's weights carry the whole derivative of d, by the envelope
theorem).  q and its weights are computed region by region (the triangle's interior or one of its
three edges; Ericson 2004, "Real-Time Collision Detection", 5.1.5), each a smooth function of the
positions, so torch's autograd differentiates the force exactly inside each region.

Each vertex feels its nearest triangle only, i.e. the distance to the other layer's surface
(continuous where the nearest triangle changes: the two share the closest point there).  Summed
over the triangles around the nearest vertex of the other layer, up to six pairs pushed at once.

Cloth layers do not bounce: a dashpot 2 zeta m_p omega on the normal relative speed (zeta =
DAMPING_RATIO = 0.5; omega = OMEGA_DT / dt) acts with the spring inside the layer, its force along n
like the spring's (so the same weights carry it to the triangle).  2 zeta omega dt = 0.5 per pair
keeps symplectic Euler stable where a triangle's corner carries up to four vertices of the other
layer (critical damping, 1.0 per pair, gave a NaN in the demo's drop).  The tests check the
spring against its energy, and spring and dashpot with gradcheck.

Stiffness: k = m_p (OMEGA_DT / dt)^2, a contact oscillation of OMEGA_DT radians per substep for the
vertex's own mass m_p: stiff enough to stop a vertex at 3 m/s within 2 (dt / OMEGA_DT) v (0.5 mm
at dt = 1e-4 s) of entering the layer, and stable for symplectic Euler (omega dt < 2) with a few
contacts on one vertex.  It stiffens as dt shrinks: the limit is hard contact at distance h.

Pairs: found from detached positions (scipy's cKDTree: vertices against triangle centroids) and
kept as a Verlet list with a margin of h, searched again once the vertices' displacements could
have closed it (``Search``); pairs beyond h add exactly zero, so the search decides the cost, not
the result.  Excluded: each vertex with the triangles around its one-ring (they touch it on the
mesh).  Not handled: edge-edge proximity (two edges can cross between vertices when the mesh
spacing is many times h; README, "Cloth physics", for what was tried) and friction between layers.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from scipy.spatial import cKDTree

#: contact oscillation per substep (radians): k = m (OMEGA_DT / dt)^2
OMEGA_DT = 0.5
#: the contact's dashpot, as a fraction of critical damping (cloth layers do not bounce apart)
DAMPING_RATIO = 0.5
_TINY = 1e-12
#: vertices x triangles up to which the excluded pairs are a dense table (bytes)
DENSE_EXCLUSION_LIMIT = 20_000_000


def closest_points(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Weights ``[P, 3]`` of the point of triangle (a, b, c) closest to p (all ``[P, 3]``)."""
    ab, ac = b - a, c - a
    nrm = torch.linalg.cross(ab, ac, dim=1)
    nn = (nrm * nrm).sum(1).clamp_min(_TINY)
    ap = p - a
    v = (torch.linalg.cross(ap, ac, dim=1) * nrm).sum(1) / nn
    w = (torch.linalg.cross(ab, ap, dim=1) * nrm).sum(1) / nn
    u = 1.0 - v - w
    inside = (u >= 0) & (v >= 0) & (w >= 0)

    def seg(s0, s1):
        e = s1 - s0
        t = ((p - s0) * e).sum(1) / (e * e).sum(1).clamp_min(_TINY)
        t = t.clamp(0.0, 1.0)
        q = s0 + t[:, None] * e
        return ((p - q) ** 2).sum(1), t

    d_ab, t_ab = seg(a, b)
    d_bc, t_bc = seg(b, c)
    d_ca, t_ca = seg(c, a)
    z = torch.zeros_like(t_ab)
    w_ab = torch.stack([1 - t_ab, t_ab, z], 1)
    w_bc = torch.stack([z, 1 - t_bc, t_bc], 1)
    w_ca = torch.stack([t_ca, z, 1 - t_ca], 1)
    best = torch.where(((d_ab <= d_bc) & (d_ab <= d_ca))[:, None], w_ab, torch.where((d_bc <= d_ca)[:, None], w_bc, w_ca))
    return torch.where(inside[:, None], torch.stack([u, v, w], 1), best)


def forces(x: torch.Tensor, v: torch.Tensor, mass: torch.Tensor, faces: torch.Tensor, vi: torch.Tensor, ti: torch.Tensor,
           thickness: float, dt: float) -> torch.Tensor:
    """Penalty and damping forces ``[V, 3]`` of the (vertex ``vi``, triangle ``ti``) pairs (module docstring)."""
    if vi.numel() == 0:
        return torch.zeros_like(x)
    tri = faces[ti]
    p, a, b, c = x[vi], x[tri[:, 0]], x[tri[:, 1]], x[tri[:, 2]]
    W = closest_points(p, a, b, c)
    q = W[:, 0:1] * a + W[:, 1:2] * b + W[:, 2:3] * c
    diff = p - q
    d = diff.norm(dim=1).clamp_min(_TINY)
    # each vertex feels its nearest triangle only: the distance to the other layer's surface (the
    # triangles around a vertex of that layer would otherwise push up to six times at once)
    nearest = torch.from_numpy(_nearest(vi.cpu().numpy(), d.detach().cpu().numpy())).to(vi.device)
    vi, tri, W, diff, d = vi[nearest], tri[nearest], W[nearest], diff[nearest], d[nearest]
    n = diff / d[:, None]
    omega = OMEGA_DT / dt
    m = mass[vi]
    vrel = v[vi] - (W[:, 0:1] * v[tri[:, 0]] + W[:, 1:2] * v[tri[:, 1]] + W[:, 2:3] * v[tri[:, 2]])
    # spring k (h - d) plus a critically damped dashpot 2 m omega on the normal relative speed
    spring = m * omega * omega * (thickness - d) - 2.0 * DAMPING_RATIO * m * omega * (vrel * n).sum(1)
    mag = torch.where(d < thickness, spring, torch.zeros_like(d))
    fp = mag[:, None] * n
    f = torch.zeros_like(x).index_add(0, vi, fp)
    for j in range(3):
        f = f.index_add(0, tri[:, j], -W[:, j : j + 1] * fp)
    return f


def _nearest(vi: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Index of each vertex's nearest pair (the first on ties)."""
    order = np.lexsort((d, vi))
    first = np.ones(len(order), dtype=bool)
    first[1:] = vi[order[1:]] != vi[order[:-1]]
    return order[first]


class Search:
    """The candidate pairs of one cloth: every (vertex, triangle) within ``thickness`` + margin at the
    last search, searched again when a pair may have closed the margin (``pairs``)."""

    def __init__(self, faces: np.ndarray, num_vertices: int, thickness: float):
        self.faces = np.asarray(faces, dtype=np.int64)
        self.nv, self.ne = num_vertices, len(self.faces)
        self.h = thickness
        self.margin = thickness
        rows = np.repeat(np.arange(self.ne), 3)
        inc = sparse.csr_matrix((np.ones(3 * self.ne), (self.faces.reshape(-1), rows)), shape=(self.nv, self.ne))
        adj = (inc @ inc.T).tocsr()  # vertices sharing a triangle (and each vertex itself)
        near = (adj @ inc).tocoo()  # triangles touching the one-ring
        # the excluded (vertex, triangle) pairs: a lookup table while it is small, else sorted codes
        self._dense = self.excluded = None
        if self.nv * self.ne <= DENSE_EXCLUSION_LIMIT:
            self._dense = np.zeros((self.nv, self.ne), dtype=bool)
            self._dense[near.row, near.col] = True
        else:
            self.excluded = np.unique(near.row.astype(np.int64) * self.ne + near.col)
        self._pairs = None
        self._x_search = None
        self._by_step: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def pairs(self, x: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pairs of substep ``step``.  Kept per substep, so that the backward pass's re-run of a
        frame (``torch.utils.checkpoint``) sees the very pairs of the forward pass."""
        if step in self._by_step:
            return self._by_step[step]
        xd = x.detach()
        if self._pairs is None:
            self._search(xd)
        else:
            # a Verlet list: search again once two vertices may have closed the margin, i.e. when
            # twice the largest displacement since the search (about the mean one) reaches it
            dx = xd - self._x_search
            if 2 * float((dx - dx.mean(0)).norm(dim=1).max()) >= self.margin:
                self._search(xd)
        self._by_step[step] = self._pairs
        return self._pairs

    def _search(self, x: torch.Tensor) -> None:
        device = x.device
        self._x_search = x.clone()
        xd = x.cpu().double().numpy()
        tri = xd[self.faces]
        centroid = tri.mean(1)
        reach = np.linalg.norm(tri - centroid[:, None], axis=2).max()
        r = self.h + self.margin + reach  # a point within h + margin of a triangle is within r of its centroid
        pairs = cKDTree(xd).sparse_distance_matrix(cKDTree(centroid), r, output_type="ndarray")
        vi, ti = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64)
        keep = ~self._is_excluded(vi, ti)
        vi, ti = vi[keep], ti[keep]
        with torch.no_grad():
            xt = torch.from_numpy(xd)
            tt = torch.from_numpy(self.faces[ti])
            W = closest_points(xt[vi], xt[tt[:, 0]], xt[tt[:, 1]], xt[tt[:, 2]])
            q = (W[:, :, None] * xt[tt]).sum(1)
            d = (xt[vi] - q).norm(dim=1).numpy()
        keep = d < self.h + self.margin
        self._pairs = (torch.from_numpy(vi[keep]).to(device), torch.from_numpy(ti[keep]).to(device))

    def _is_excluded(self, vi: np.ndarray, ti: np.ndarray) -> np.ndarray:
        if self._dense is not None:
            return self._dense[vi, ti]
        return np.isin(vi * self.ne + ti, self.excluded)
