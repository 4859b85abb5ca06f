"""Forces on a cloth's mesh besides its membrane: bending and air drag.

Both act on the vertex particles (added to their momentum in the scatter record, like the
membrane forces of ``cloth``).  This module builds the bending operator and computes the forces
with torch and scipy on the ``[V, 3]`` vertex positions and velocities, with a written-out adjoint
(``mesh_forces_adjoint``) and torch's autograd as references.  The engine runs the same arithmetic
as two Taichi kernels (``mesh_kernels``: one launch forward, one backward, tested against these
functions in float64) on a flat-rest mesh, and these functions on a mesh with rest curvature.

Bending (``bending_stiffness`` B, N m: the bending rigidity per unit width of KES and the Peirce
cantilever).  A thin plate with Poisson ratio 0 stores (B/2) (k1^2 + k2^2) per unit area.  For an
isometric deformation of the flat rest sheet (cloth barely stretches) the second derivatives of
the position in rest coordinates (u, v) are normal to the surface and equal the second
fundamental form, so k1^2 + k2^2 = |x_uu|^2 + 2 |x_uv|^2 + |x_vv|^2: the energy is quadratic in
the positions with a constant Hessian, the idea of the quadratic bending model of Bergou,
Wardetzky, Harmon, Zorin and Grinspun (SGP 2006, "A quadratic bending model for inextensible
surfaces").  Discretised per vertex i:

    E = sum_i (B_i / 2) A_i (|x_uu|^2 + 2 |x_uv|^2 + |x_vv|^2)  +  (B_i / 2) A_i |Delta_i x - (x_uu + x_vv)|^2

with x_uu, x_uv, x_vv from a least-squares quadratic fit over the vertex's 2-ring in its rest
tangent plane (exact for quadratic sheets, one-sided on the boundary, where the energy's natural
boundary conditions give the free edge), A_i the mixed Voronoi area (Meyer, Desbrun, Schroeder,
Barr 2003, fig. 4) and Delta_i the cotangent Laplacian (ibid., eq. 8) at interior vertices.  The
second term vanishes on smooth sheets (both estimate the mean-curvature normal) and stops the
zigzags between neighbours that the wide fit does not see.  What was measured before this form was
chosen: per-edge energies (Bergou's, and the dihedral-angle energy of discrete shells, Grinspun et
al. 2003) gave 1.5x the energy for a cylinder rolled along the diagonal of dreamcloth's grid meshes
as along their rows; the squared Laplacian alone (energy of (k1 + k2)^2) is isotropic but has no
Gaussian-curvature term, so a strip could twist and saddle for free and its first bending mode ran
at 0.51x the beam frequency; the fit alone, 0.58x (zigzags).  This form: a cylinder's energy
within 0.3% in every direction (41 x 41 mesh), a free strip's first mode at 0.98x, and a clamped
strip's tip deflection within 4% of the elastica.

Rest curvature.  A mesh that is not flat at rest has L x_rest = k_rest != 0 on some rows.  The
energy uses (L_r x - R_i k_rest_r) with R_i the vertex's current frame (normal from the incident
triangles, tangent towards a fixed neighbour) applied to k_rest expressed in the rest frame, so
that a rigid rotation stores no energy; rows with k_rest = 0 (all of a flat mesh) skip it.

Time integration of bending (``ImplicitBending``).  Explicit, the stiffest bending mode of a mesh
with spacing h has omega^2 ~ B / (rho h^4): for a 41 x 41 cloth (15 mm) at B = 2e-4 N m and
0.2 kg/m^2 it bounded dt to 1,163 substeps per frame where the membrane needs ~400.  So the force
that enters the vertices' momentum is one backward-Euler step of the bending alone (the linear part
of the force is f = -K x with a constant K = L^T diag(B w) L):

    (M + dt^2 P K P) dv = dt P f(x + dt v),        f_impl = M dv / dt

(M the vertex particles' masses, P zeroes the pinned vertices; for f = -K x this is exactly
v + dv = v + dt M^-1 f(x + dt (v + dv)) on the free vertices; Baraff and Witkin 1998, "Large steps
in cloth simulation", eq. 6-7, for the bending term only).  On a mode of stiffness k the force is
-k m / (m + dt^2 k) (x + dt v): k_eff dt^2 / m <= 1 whatever B, so the bending no longer bounds dt,
and modes with omega dt << 1 (every wavelength the video sees: at dt = 1e-4 s and B = 2e-4 N m a
2 cm wave has omega dt ~ 0.1) keep their stiffness.  The system is symmetric positive definite
and banded (``banded_order``: reverse Cuthill-McKee, or the mesh's own vertex order where that is
narrower, as on a grid cloth: 168 against 312 on a 41 x 41 mesh, from the 2-ring stencils);
scipy's LAPACK banded Cholesky factors it once per parameter value and solves in ~0.5 ms.  Its adjoint is the same solve (see ``_BandedSolve``).

Air drag (``drag_coefficient`` C_d, ``drag_tangential`` r): each triangle moving through still air
feels f = -1/2 rho_air C_d A |v_n| (v_n n + r v_t), v_n = v . n, v_t = v - v_n n, v the mean
velocity of its vertices, a third on each vertex.  With r = 0 it is the quadratic pressure drag of a
flat plate, normal to it (Hoerner 1965, "Fluid-dynamic drag", ch. 3); the force on an inclined
porous sheet turns toward the flow (Taylor and Davies 1944, ARC R&M 2237), and r = 1 is a force
along -v (the model of NVIDIA Warp's and Newton's cloth, k A |v . n| v).  With c = e1 x e2 = 2 A n:
f = -rho_air C_d [(1 - r) (v . c) |v . c| c / |c|^2 + r |v . c| v] / 4, smooth in x and v but for
the kink of |v . c| at zero normal speed.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sparse
import torch
from scipy.sparse.csgraph import reverse_cuthill_mckee

#: density of air at 20 C and sea level, kg/m^3
AIR_DENSITY = 1.2
#: weight of the zigzag stabilisation (see build_bending) relative to the Hessian energy
STABILISATION = 1.0
#: the Laplacian minus the fit's trace (the sign with which the trace enters that row)
STABILISATION_SIGN = -1.0


@dataclasses.dataclass(frozen=True)
class BendingOperator:
    """The per-vertex bending stencil of one cloth (local vertex indices).

    Attributes:
        rows: ``[nnz]`` int64 stencil row of each entry (four rows per interior vertex: x_uu, x_uv,
            x_vv and the stabilisation; three on the boundary); ``cols``: ``[nnz]`` its vertex.
        coef: ``[nnz]`` coefficients of L; ``row_weight``: ``[R]`` the rows' area weights (module docstring).
        row_vertex: ``[R]`` int64 vertex of each row.
        row_elements / element_weight: ``[m]`` (row, element) pairs averaging the per-element
            bending stiffness onto each row (weights sum to 1 per row).
        curved: ``[Rc]`` int64 rows with rest curvature; ``curved_rest``: ``[Rc, 3]`` k_rest in the
            rest frame (t1, t2, n); ``curved_neighbour``: ``[Rc]`` the vertex the tangent points to.
        matrix / matrix_t: L ``[R, V]`` and L^T ``[V, R]`` as sparse CSR tensors (``rows``, ``cols``,
            ``coef`` summed): the products the forces use.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    coef: torch.Tensor
    row_weight: torch.Tensor
    row_vertex: torch.Tensor
    row_of_pair: torch.Tensor
    element_of_pair: torch.Tensor
    pair_weight: torch.Tensor
    curved: torch.Tensor
    curved_rest: torch.Tensor
    curved_neighbour: torch.Tensor
    matrix: torch.Tensor
    matrix_t: torch.Tensor

    @property
    def num_rows(self) -> int:
        return int(self.row_weight.shape[0])


def _cot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(np.cross(a, b), axis=-1)


def _vertex_normals_np(x: np.ndarray, faces: np.ndarray) -> np.ndarray:
    n = np.zeros_like(x)
    cr = np.cross(x[faces[:, 1]] - x[faces[:, 0]], x[faces[:, 2]] - x[faces[:, 0]])
    for c in range(3):
        np.add.at(n, faces[:, c], cr)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)


def _mixed_voronoi_areas(x: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Each vertex's mixed Voronoi area (Meyer et al. 2003, fig. 4): the Voronoi part of every
    non-obtuse incident triangle, else half (at the obtuse corner) or a quarter of its area.

    Not the barycentric third: on a grid mesh with alternating diagonals the vertices with four and
    with eight incident triangles have barycentric areas 2h^2/3 and 4h^2/3 but the same 5-point
    stencil, which biased the energy by +12%; their Voronoi areas are both h^2."""
    out = np.zeros(len(x))
    p = [x[faces[:, c]] for c in range(3)]
    tri_area = 0.5 * np.linalg.norm(np.cross(p[1] - p[0], p[2] - p[0]), axis=1)
    cots = [_cot(p[(c + 1) % 3] - p[c], p[(c + 2) % 3] - p[c]) for c in range(3)]  # cot of the angle at corner c
    obtuse = np.stack([c < 0 for c in cots], 1)  # cot < 0 <=> angle > 90 degrees
    any_obtuse = obtuse.any(1)
    for c in range(3):
        a, b = (c + 1) % 3, (c + 2) % 3
        # Voronoi area at c: (|c a|^2 cot(angle at b) + |c b|^2 cot(angle at a)) / 8
        vor = ((p[a] - p[c]) ** 2).sum(1) * cots[b] / 8.0 + ((p[b] - p[c]) ** 2).sum(1) * cots[a] / 8.0
        mixed = np.where(any_obtuse, np.where(obtuse[:, c], tri_area / 2.0, tri_area / 4.0), vor)
        np.add.at(out, faces[:, c], mixed)
    return out


def build_bending(vertices: np.ndarray, faces: np.ndarray, dtype=torch.float32, device="cpu") -> BendingOperator:
    """The stencil of a triangle mesh (``vertices [V, 3]``, ``faces [E, 3]`` local)."""
    x = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    nv = len(x)
    count: dict[tuple[int, int], int] = {}
    for c in range(3):
        for a, b in zip(faces[:, c].tolist(), faces[:, (c + 1) % 3].tolist()):
            key = (min(a, b), max(a, b))
            count[key] = count.get(key, 0) + 1
    ring: list[set[int]] = [set() for _ in range(nv)]
    for (a, b), n in count.items():
        if n > 2:
            raise ValueError(f"cloth mesh edge ({a}, {b}) is shared by {n} triangles (non-manifold)")
        ring[a].add(b)
        ring[b].add(a)
    normals = _vertex_normals_np(x, faces)
    area = _mixed_voronoi_areas(x, faces)
    # cotangent weights (cot a + cot b) / 2 of each edge, and the interior vertices (all edges shared)
    cot_w: list[dict[int, float]] = [{} for _ in range(nv)]
    for c in range(3):
        i_, j_, k_ = faces[:, c], faces[:, (c + 1) % 3], faces[:, (c + 2) % 3]
        cot_k = _cot(x[i_] - x[k_], x[j_] - x[k_])  # the angle at k is opposite edge (i, j)
        for a, b, w in zip(i_.tolist(), j_.tolist(), cot_k.tolist()):
            cot_w[a][b] = cot_w[a].get(b, 0.0) + 0.5 * w
            cot_w[b][a] = cot_w[b].get(a, 0.0) + 0.5 * w
    on_boundary = {v for (a, b), n in count.items() if n == 1 for v in (a, b)}
    interior = set(range(nv)) - on_boundary

    rows, cols, coef, row_weight, row_vertex = [], [], [], [], []
    first_nb = np.zeros(nv, np.int64)
    frames = np.zeros((nv, 3, 3))
    for i in range(nv):
        if not ring[i]:
            continue
        # the 2-ring: the 1-ring of a grid mesh's valence-4 vertices (5 points) cannot fit a quadratic
        pts = sorted(set().union(*(ring[j] for j in ring[i])) | ring[i] | {i})
        n = normals[i]
        j0 = min(ring[i])
        d = x[j0] - x[i]
        t1 = d - (d @ n) * n
        t1 /= np.linalg.norm(t1)
        t2 = np.cross(n, t1)
        first_nb[i] = j0
        frames[i] = np.stack([t1, t2, n])
        rel = x[pts] - x[i]
        u, v = rel @ t1, rel @ t2
        P = np.stack([np.ones_like(u), u, v, 0.5 * u * u, u * v, 0.5 * v * v], 1)
        if np.linalg.matrix_rank(P) < 6:
            continue  # too few points around (a tiny mesh): no curvature estimate here
        hessian = np.linalg.pinv(P)[3:]  # x_uu, x_uv, x_vv as combinations of the points' positions
        # |II|^2 = x_uu^2 + 2 x_uv^2 + x_vv^2 for an isometry of the flat rest sheet
        stencils = [(pts, hessian[0], area[i]), (pts, hessian[1], 2.0 * area[i]), (pts, hessian[2], area[i])]
        if i in interior:
            # stabilisation: the compact cotangent Laplacian (1/A) sum_j w_ij (x_j - x_i) and the fit's
            # trace x_uu + x_vv estimate the same vector (zero difference on a quadratic sheet), but
            # the wide fit barely sees a zigzag between neighbours that the Laplacian sees at full
            # strength; without this term a free strip's first bending mode was 0.58x too slow
            lap = {j: w / area[i] for j, w in cot_w[i].items()}
            lap[i] = -sum(lap.values())
            comb = dict(zip(pts, (STABILISATION_SIGN * (hessian[0] + hessian[2])).tolist()))
            for j, w in lap.items():
                comb[j] = comb.get(j, 0.0) + w
            keys = sorted(comb)
            stencils.append((keys, np.array([comb[j] for j in keys]), STABILISATION * area[i]))
        for idx, c, w in stencils:
            r = len(row_weight)
            rows += [r] * len(idx)
            cols += list(idx)
            coef += list(c)
            row_weight.append(w)
            row_vertex.append(i)
    rows_a, cols_a, coef_a = np.asarray(rows, np.int64), np.asarray(cols, np.int64), np.asarray(coef)
    rw_a, rv_a = np.asarray(row_weight), np.asarray(row_vertex, np.int64)
    nr = len(rw_a)

    # each row's stiffness: the mean of its vertex's triangles' (per-element) values
    vf: list[list[int]] = [[] for _ in range(nv)]
    for e, f in enumerate(faces.tolist()):
        for v in f:
            vf[v].append(e)
    pr, pe, pw = [], [], []
    for r, v in enumerate(rv_a.tolist()):
        for e in vf[v]:
            pr.append(r)
            pe.append(e)
            pw.append(1.0 / len(vf[v]))

    # rest curvature, in each row's rest frame
    k_rest = np.zeros((nr, 3))
    np.add.at(k_rest, rows_a, coef_a[:, None] * x[cols_a])
    # flat rows: k_rest is round-off, ~1e-16 of sum_j |c_j| |x|; a curvature radius 1e6 times the mesh's size is flat
    row_scale = np.zeros(nr)
    np.add.at(row_scale, rows_a, np.abs(coef_a))
    extent = float(np.ptp(x, axis=0).max())
    curved = np.nonzero(np.linalg.norm(k_rest, axis=1) > 1e-9 * row_scale * extent)[0]
    c_local = np.zeros((len(curved), 3))
    if len(curved):
        fr = frames[rv_a[curved]]  # rows t1, t2, n of each row's vertex
        c_local = np.einsum("rij,rj->ri", fr, k_rest[curved])
    first_nb = first_nb[rv_a]

    t = dict(dtype=dtype, device=device)
    i64 = dict(dtype=torch.int64, device=device)
    stencil = sparse.csr_matrix((coef_a, (rows_a, cols_a)), shape=(nr, nv))
    return BendingOperator(
        rows=torch.tensor(rows_a, **i64), cols=torch.tensor(cols_a, **i64), coef=torch.tensor(coef_a, **t),
        row_weight=torch.tensor(rw_a, **t), row_vertex=torch.tensor(rv_a, **i64),
        row_of_pair=torch.tensor(np.asarray(pr, np.int64), **i64), element_of_pair=torch.tensor(np.asarray(pe, np.int64), **i64),
        pair_weight=torch.tensor(np.asarray(pw), **t),
        curved=torch.tensor(curved.astype(np.int64), **i64), curved_rest=torch.tensor(c_local, **t),
        curved_neighbour=torch.tensor(first_nb[curved], **i64),
        matrix=torch_csr(stencil, **t), matrix_t=torch_csr(stencil.T.tocsr(), **t),
    )


def torch_csr(m: sparse.csr_matrix, dtype: torch.dtype, device) -> torch.Tensor:
    """scipy's sparse matrix ``m`` as a torch sparse CSR tensor.

    The stencil products run as CSR matrix products: on the 41x41 cloth (144k entries) one took
    0.14 ms against 1.6 ms for the same product as a gather, a multiply and an ``index_add``
    (measured 2026-12-02, one CPU thread, torch 2.13)."""
    m = m.tocsr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta state"
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int64)),
                                       torch.from_numpy(m.data), size=m.shape, dtype=dtype, device=device)


def _product(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``matrix @ x`` for a constant sparse operator (a float32 operator applied to float64 positions, as in gradient checks, is converted)."""
    if matrix.dtype != x.dtype:
        matrix = matrix.to(x.dtype)
    return matrix @ x.contiguous()


class _SparseProduct(torch.autograd.Function):
    """``M x`` for a constant sparse ``M`` given with its transpose ``Mt``: dL/dx = M^T dL/d(Mx)."""

    @staticmethod
    def forward(ctx, x, matrix, matrix_t):
        ctx.matrix_t = matrix_t
        return _product(matrix, x)

    @staticmethod
    def backward(ctx, g):
        return _product(ctx.matrix_t, g), None, None


def sparse_product(x: torch.Tensor, matrix: torch.Tensor, matrix_t: torch.Tensor) -> torch.Tensor:
    """``matrix @ x`` for a constant sparse CSR ``matrix`` given with its transpose, differentiable in ``x``."""
    return _SparseProduct.apply(x, matrix, matrix_t)


def _vertex_normals(x: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    cr = torch.linalg.cross(x[faces[:, 1]] - x[faces[:, 0]], x[faces[:, 2]] - x[faces[:, 0]], dim=1)
    n = torch.zeros_like(x).index_add_(0, faces.reshape(-1), cr.repeat_interleave(3, dim=0))
    return n / n.norm(dim=1, keepdim=True).clamp_min(1e-30)


def row_stiffness(stiffness: torch.Tensor, op: BendingOperator) -> torch.Tensor:
    """Each stencil row's weight ``B_row w_row`` from the per-element ``stiffness [E]``: ``K = L^T diag(.) L``."""
    b_row = torch.zeros(op.num_rows, dtype=stiffness.dtype, device=stiffness.device).index_add(
        0, op.row_of_pair, op.pair_weight * stiffness.index_select(0, op.element_of_pair))
    return b_row * op.row_weight


def rows_to_elements(g_row: torch.Tensor, op: BendingOperator, num_elements: int) -> torch.Tensor:
    """The adjoint of :func:`row_stiffness`'s averaging: dL/d(per-row stiffness) ``[R]`` (area
    weight included) -> dL/d(per-element stiffness) ``[E]``."""
    return torch.zeros(num_elements, dtype=g_row.dtype, device=g_row.device).index_add_(
        0, op.element_of_pair, op.pair_weight.to(g_row.dtype) * g_row.index_select(0, op.row_of_pair))


def _apply_stencil(op: BendingOperator, x: torch.Tensor) -> torch.Tensor:
    """``L x``: ``[V, 3]`` -> ``[R, 3]``."""
    return _SparseProduct.apply(x.contiguous(), op.matrix, op.matrix_t)


def _apply_stencil_t(op: BendingOperator, y: torch.Tensor) -> torch.Tensor:
    """``L^T y``: ``[R, 3]`` -> ``[V, 3]``."""
    return _SparseProduct.apply(y.contiguous(), op.matrix_t, op.matrix)


def bending_force(x: torch.Tensor, stiffness: torch.Tensor, op: BendingOperator, faces: torch.Tensor) -> torch.Tensor:
    """-dE/dx of the bending energy (module docstring): ``x [V, 3]``, per-element ``stiffness [E]``
    -> ``[V, 3]``.  With rest curvature the current frame R_i is held fixed in the derivative (a
    co-rotational force), and the gradient of that map is what the adjoint differentiates."""
    if op.num_rows == 0:
        return torch.zeros_like(x)
    lx = _apply_stencil(op, x)
    if op.curved.numel():
        rv = op.row_vertex[op.curved]
        n = _vertex_normals(x, faces).index_select(0, rv)
        d = x.index_select(0, op.curved_neighbour) - x.index_select(0, rv)
        t1 = d - (d * n).sum(1, keepdim=True) * n
        t1 = t1 / t1.norm(dim=1, keepdim=True)
        t2 = torch.linalg.cross(n, t1, dim=1)
        k = op.curved_rest
        target = k[:, 0:1] * t1 + k[:, 1:2] * t2 + k[:, 2:3] * n
        lx = lx.index_add(0, op.curved, -target)
    y = row_stiffness(stiffness, op)[:, None] * lx
    return -_apply_stencil_t(op, y)


def bending_energy(x: torch.Tensor, stiffness: torch.Tensor, op: BendingOperator) -> torch.Tensor:
    """The energy of a flat-rest mesh (tests and benchmarks): ``sum_i (B_i / 2) w_i |L_i x|^2``."""
    lx = _apply_stencil(op, x)
    return 0.5 * (row_stiffness(stiffness, op) * (lx * lx).sum(1)).sum()


def _bandwidth(pattern: sparse.coo_matrix, order: np.ndarray) -> int:
    pos = np.empty(len(order), dtype=np.int64)
    pos[order] = np.arange(len(order))
    return int(np.abs(pos[pattern.row] - pos[pattern.col]).max()) if pattern.nnz else 0


def banded_order(pattern: sparse.spmatrix) -> np.ndarray:
    """An order of a symmetric ``pattern``'s rows for a banded factor: reverse Cuthill-McKee, or
    the rows' own order when its band is narrower (a grid cloth's rows of vertices: on a 41x41 grid
    42 vertices for the membrane's pattern against RCM's 81, whose levels run along the triangles'
    diagonals; a banded Cholesky costs n u^2 for band u)."""
    rcm = reverse_cuthill_mckee(pattern.tocsr(), symmetric_mode=True).astype(np.int64)
    own = np.arange(pattern.shape[0])
    coo = pattern.tocoo()
    return own if _bandwidth(coo, own) <= _bandwidth(coo, rcm) else rcm


class ImplicitBending:
    """The banded system ``A = M + dt^2 P K P`` of one cloth's bending step (module docstring),
    factored once per (masses, row stiffnesses, dt) and reused by every substep that has them.

    ``free [V]`` is 1 on free vertices, 0 on pinned ones.  Works in float64 on the CPU (scipy's
    LAPACK); tensors of other dtypes or devices are converted at the boundary.
    """

    def __init__(self, op: BendingOperator, free: torch.Tensor):
        self.op = op
        nv = int(free.shape[0])
        self.nv = nv
        keep = free.detach().to("cpu", torch.float64).numpy()
        rows, cols = op.rows.cpu().numpy(), op.cols.cpu().numpy()
        # L P: the pinned vertices' columns zeroed (their motion is prescribed, not solved for)
        lp = sparse.csr_matrix((op.coef.cpu().double().numpy() * keep[cols], (rows, cols)), shape=(op.num_rows, nv))
        self.lp_matrix = torch_csr(lp, op.coef.dtype, op.coef.device)  # for the adjoint's dL/dk
        pattern = (abs(lp).T @ abs(lp) + sparse.identity(nv)).tocsr()
        self.perm = banded_order(pattern)
        self.inverse_perm = np.argsort(self.perm)
        self.lp = lp[:, self.perm].tocsr()
        coo = pattern[self.perm][:, self.perm].tocoo()
        self.bandwidth = int((coo.col - coo.row).max()) if coo.nnz else 0
        self._key: tuple | None = None  # (mass, row_k, dt) of the current factor
        self._factor: np.ndarray | None = None

    def factor(self, mass: torch.Tensor, row_k: torch.Tensor, dt: float) -> None:
        """Factor ``A`` for vertex ``mass [V]`` and ``row_k [R]`` (``row_stiffness``) unless already done."""
        last = self._key
        if (last is not None and last[2] == dt and last[0].dtype == mass.dtype and last[1].dtype == row_k.dtype
                and torch.equal(last[0], mass) and torch.equal(last[1], row_k)):
            return  # the common case, every substep of a rollout: checked without leaving torch
        m = mass.detach().to("cpu", torch.float64).numpy()
        k = row_k.detach().to("cpu", torch.float64).numpy()
        a = (dt * dt) * (self.lp.T @ sparse.diags(k) @ self.lp) + sparse.diags(m[self.perm])
        a = sparse.triu(a).tocoo()
        u = self.bandwidth
        ab = np.zeros((u + 1, self.nv))
        ab[u + a.row - a.col, a.col] = a.data  # LAPACK's upper banded storage
        self._factor = sla.cholesky_banded(ab, lower=False, check_finite=False)
        self._key = (mass.detach().clone(), row_k.detach().clone(), dt)

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """``A^-1 rhs`` for ``rhs [V, 3]`` with the current factor."""
        b = rhs.detach().to("cpu", torch.float64).numpy()[self.perm]
        y = sla.cho_solve_banded((self._factor, False), b, check_finite=False)[self.inverse_perm]
        return torch.from_numpy(np.ascontiguousarray(y)).to(rhs.device, rhs.dtype)


class _BandedSolve(torch.autograd.Function):
    """``y = A(m, k)^-1 r`` with ``A = diag(m) + dt^2 L_P^T diag(k) L_P`` (``ImplicitBending``).

    Adjoint: A is symmetric, so lambda = A^-1 g; dL/dr = lambda, and from dA y = -A dy:
    dL/dm_i = -lambda_i . y_i, dL/dk_r = -dt^2 (L_P lambda)_r . (L_P y)_r."""

    @staticmethod
    def forward(ctx, rhs, mass, row_k, system: ImplicitBending, dt: float):
        system.factor(mass, row_k, dt)
        y = system.solve(rhs)
        ctx.system, ctx.dt = system, dt
        ctx.save_for_backward(y, mass, row_k)
        return y

    @staticmethod
    def backward(ctx, g):
        y, mass, row_k = ctx.saved_tensors
        system, dt = ctx.system, ctx.dt
        system.factor(mass, row_k, dt)
        lam = system.solve(g)
        g_mass = -(lam * y).sum(1) if ctx.needs_input_grad[1] else None
        g_k = None
        if ctx.needs_input_grad[2]:
            lp = system.lp_matrix
            g_k = -(dt * dt) * ((lp @ lam.to(lp.dtype)) * (lp @ y.to(lp.dtype))).sum(1).to(y.dtype)
        return lam, g_mass, g_k, None, None


def implicit_bending_force(x: torch.Tensor, v: torch.Tensor, stiffness: torch.Tensor, mass: torch.Tensor,
                           free: torch.Tensor, dt: float, system: ImplicitBending, faces: torch.Tensor) -> torch.Tensor:
    """The bending force of one backward-Euler step (module docstring) on ``[V, 3]`` vertices of
    masses ``mass [V]``; zero on the pinned ones (``free [V]`` 0)."""
    op = system.op
    if op.num_rows == 0:
        return torch.zeros_like(x)
    rhs = dt * free[:, None] * bending_force(x + dt * v, stiffness, op, faces)
    dv = _BandedSolve.apply(rhs, mass, row_stiffness(stiffness, op), system, dt)
    return (mass / dt)[:, None] * dv


def drag_force(x: torch.Tensor, v: torch.Tensor, drag: torch.Tensor, faces: torch.Tensor,
               tangential: torch.Tensor | None = None) -> torch.Tensor:
    """Quadratic air drag on each triangle (module docstring): ``x, v [V, 3]``, per-element
    ``drag [E]`` and ``tangential [E]`` (r; None: 0), ``faces [E, 3]`` -> ``[E, 3]``."""
    xa, xb, xc = x[faces[:, 0]], x[faces[:, 1]], x[faces[:, 2]]
    cr = torch.linalg.cross(xb - xa, xc - xa, dim=1)  # 2 A n
    vm = (v[faces[:, 0]] + v[faces[:, 1]] + v[faces[:, 2]]) / 3.0
    # v_n |v_n| (2A)^2 = (v . cr) |v . cr|; f = -rho C_d |v_n| v_n (A n) / 2 = -rho C_d (v.cr)|v.cr| cr / (4 |cr|^2)
    vc = (vm * cr).sum(1)
    sq = (cr * cr).sum(1)
    if tangential is None:
        return (-AIR_DENSITY * drag * vc * vc.abs() / (4.0 * sq))[:, None] * cr
    # |v_n| (v_n n + r v_t) A = [(1 - r) (v.cr)|v.cr| cr / |cr|^2 + r |v.cr| v] / 2
    c = -AIR_DENSITY * drag / 4.0
    return (c * (1.0 - tangential) * vc * vc.abs() / sq)[:, None] * cr + (c * tangential * vc.abs())[:, None] * vm


def mesh_forces(x: torch.Tensor, v: torch.Tensor, bending: torch.Tensor, drag: torch.Tensor, op: BendingOperator,
                faces: torch.Tensor, element_share: float, use_bending: bool, use_drag: bool,
                implicit: tuple[ImplicitBending, torch.Tensor, torch.Tensor, float] | None = None,
                tangential: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bending plus drag: forces on the vertices ``[V, 3]`` and on the element particles ``[E, 3]``
    (None without drag); either term is skipped when its flag is off.  ``tangential [E]``: drag's
    tangential share r (None: 0).

    With ``implicit = (system, vertex mass [V], free [V], dt)`` the bending force is the
    backward-Euler one (``implicit_bending_force``, zero on pinned vertices), else the plain
    ``bending_force`` of the current positions.

    Drag is a body force of the triangle: ``element_share`` of it (the element particle's share of
    the triangle's mass) acts on the element particle, the rest in thirds on the vertices, so that
    it accelerates every particle of the sheet alike, also on a grid fine enough that the element
    particles and the vertices share few nodes (all of it on the vertices let the element particles
    fall 26% faster than the terminal speed on such a grid).  Bending acts on the vertices (it is
    the derivative of an energy of their positions).
    """
    f = torch.zeros_like(x)
    if use_bending:
        if implicit is None:
            f = f + bending_force(x, bending, op, faces)
        else:
            system, mass, free, dt = implicit
            f = f + implicit_bending_force(x, v, bending, mass, free, dt, system, faces)
    fe = None
    if use_drag:
        tri = drag_force(x, v, drag, faces, tangential)
        fe = element_share * tri
        per_vertex = ((1.0 - element_share) / 3.0) * tri
        f = f + torch.zeros_like(x).index_add(0, faces.reshape(-1), per_vertex.repeat_interleave(3, dim=0))
    return f, fe


def mesh_forces_adjoint(x: torch.Tensor, v: torch.Tensor, bending: torch.Tensor, drag: torch.Tensor, op: BendingOperator,
                        faces: torch.Tensor, element_share: float, use_bending: bool, use_drag: bool,
                        implicit: tuple[ImplicitBending, torch.Tensor, torch.Tensor, float] | None,
                        g_f: torch.Tensor, g_fe: torch.Tensor | None, params: tuple[bool, bool, bool] = (True, True, True),
                        tangential: torch.Tensor | None = None):
    """The vector-Jacobian product of :func:`mesh_forces`, written out: cotangents ``g_f [V, 3]``
    (vertex forces) and ``g_fe [E, 3]`` (element forces, with drag) -> dL/d(x, v, bending, drag,
    mass, tangential), each None where it does not depend on it (``params``: whether to compute
    those of bending, of drag and its tangential share, and of mass).

    The same numbers as torch's autograd on a recomputation of ``mesh_forces`` (tested to
    round-off), without building its graph: on the demo's 12x12 cloth autograd's engine alone took
    ~0.8 ms a substep, more than the arithmetic.  Covers the implicit bending of a flat-rest mesh
    and drag; a mesh with rest curvature (co-rotational targets) or explicit bending returns None,
    and the caller falls back to autograd.
    """
    if use_bending and (implicit is None or op.curved.numel()):
        return None
    gx = gv = g_bend = g_drag = g_mass = g_tan = None
    want_bend, want_drag, want_mass = params
    if use_bending and op.num_rows:
        system, mass, free, dt = implicit
        # forward: z = x + dt v; fb = -L^T (k * L z); dv = A^-1 (dt free fb); f = (m / dt) dv
        k = row_stiffness(bending, op).to(x.dtype)
        system.factor(mass, k, dt)
        g_dv = (mass / dt)[:, None] * g_f
        lam = system.solve(g_dv)
        g_fb = dt * free[:, None] * lam
        l_gfb = _product(op.matrix, g_fb)
        g_z = -_product(op.matrix_t, k[:, None] * l_gfb)
        gx, gv = g_z, dt * g_z
        if want_bend or want_mass:  # the forward's dv (and L z), recomputed
            lz = _product(op.matrix, x + dt * v)
            dv = system.solve(dt * free[:, None] * -_product(op.matrix_t, k[:, None] * lz))
        if want_mass:
            g_mass = (dv * g_f).sum(1) / dt - (lam * dv).sum(1)
        if want_bend:
            lp = system.lp_matrix
            g_k = -(dt * dt) * (_product(lp, lam) * _product(lp, dv)).sum(1) - (l_gfb * lz).sum(1)
            g_k = g_k * op.row_weight.to(x.dtype)
            g_bend = rows_to_elements(g_k, op, bending.shape[0]).to(bending.dtype)
    if use_drag:
        fa, fb_, fc = faces[:, 0], faces[:, 1], faces[:, 2]
        xa = x.index_select(0, fa)
        e1, e2 = x.index_select(0, fb_) - xa, x.index_select(0, fc) - xa
        cr = torch.linalg.cross(e1, e2, dim=1)
        vm = (v.index_select(0, fa) + v.index_select(0, fb_) + v.index_select(0, fc)) / 3.0
        vc = (vm * cr).sum(1)
        sq = (cr * cr).sum(1)
        c0 = -AIR_DENSITY / 4.0
        r = torch.zeros_like(drag) if tangential is None else tangential
        s = c0 * drag * (1.0 - r) * vc * vc.abs() / sq
        b = c0 * drag * r * vc.abs()
        # tri = s cr + b vm; fe = share tri; each vertex gets (1 - share) / 3 tri
        g_tri = ((1.0 - element_share) / 3.0) * (g_f.index_select(0, fa) + g_f.index_select(0, fb_) + g_f.index_select(0, fc))
        if g_fe is not None:
            g_tri = g_tri + element_share * g_fe
        g_s = (g_tri * cr).sum(1)
        g_b = (g_tri * vm).sum(1)
        g_vc = g_s * (2.0 * c0) * drag * (1.0 - r) * vc.abs() / sq + g_b * c0 * drag * r * torch.sign(vc)
        if want_drag:
            g_drag = g_s * c0 * (1.0 - r) * vc * vc.abs() / sq + g_b * c0 * r * vc.abs()
            if tangential is not None:
                g_tan = -g_s * c0 * drag * vc * vc.abs() / sq + g_b * c0 * drag * vc.abs()
        g_cr = s[:, None] * g_tri + g_vc[:, None] * vm - (2.0 * g_s * s / sq)[:, None] * cr
        g_vm = ((g_vc[:, None] * cr + b[:, None] * g_tri) / 3.0).repeat_interleave(3, dim=0)
        g_e1 = torch.linalg.cross(e2, g_cr, dim=1)
        g_e2 = torch.linalg.cross(g_cr, e1, dim=1)
        g_corner = torch.stack([-(g_e1 + g_e2), g_e1, g_e2], 1).reshape(-1, 3)
        flat = faces.reshape(-1)
        gx = (torch.zeros_like(x) if gx is None else gx).index_add_(0, flat, g_corner)
        gv = (torch.zeros_like(v) if gv is None else gv).index_add_(0, flat, g_vm)
    return gx, gv, g_bend, g_drag, g_mass, g_tan
