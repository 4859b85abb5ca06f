"""Codimensional cloth: the anisotropic elastoplastic model of Jiang, Gast and Teran 2017,
"Anisotropic elastoplasticity for cloth, knit and hair frictional contact" (ACM TOG 36(4)).

Particles.  Mesh vertices are Lagrangian particles.  Every triangle carries an element particle
(at its centroid) whose deformation gradient has two in-plane columns from the deformed edges and
a third column d3 advected by the grid:

    F = [ [x1 - x0, x2 - x0] Dm^-1 , d3 ],   d3 <- (I + dt C_e) d3

with Dm the rest edges in the triangle's own 2-D frame, so that F = [t1 t2 n] (a rotation) at
rest (paper, section 4).  The mass is shared: ELEMENT_MASS_FRACTION of each triangle's mass sits on
its element particle, the rest is lumped onto its vertices.  Massless element particles were
unstable here: the d3 stress they scatter reaches grid nodes that the vertices barely touch, whose
tiny mass turned it into an unbounded velocity (a soft cloth folding over a sphere blew up).

Energy on F = Q R (Q a rotation, R upper triangular; section 5):

    psi = mu ||R^ - rot(R^)||^2 + lam/2 (det R^ - 1)^2        in-plane fixed corotated, R^ = R[:2,:2]
        + gamma/2 (r13^2 + r23^2)                              shear  (shear_stiffness)
        + k/3 (1 - r33)^3   if r33 < 1                         normal, compression only (normal_stiffness)

Plasticity is Coulomb friction on R (section 6): separation (r33 > 1) resets r33 = 1 and
r13 = r23 = 0; otherwise the shear (r13, r23) is scaled back onto the cone
gamma |(r13, r23)| <= c_F k (1 - r33)^2 if it lies outside (friction c_F).

Forces.  In-plane forces are Lagrangian, computed on the mesh and added to the vertices'
momentum; the d3 part is Eulerian, scattered from the element particle as an MLS affine term
A = -dt V (4/dx^2) (dpsi/dd3) d3^T.

Gradient through the return mapping: Taichi's autodiff differentiates the projection exactly on
each side of the cone (a piecewise-smooth map).  Inside the cone (sticking) dF'/dc_F = 0; on it
(sliding) the projected shear is c_F k (1 - r33)^2 / gamma along the shear direction, which is
linear in c_F, so friction receives the gradient of the sliding elements.  Friction also acts on
the colliders (see ``colliders``), which gives it a gradient whenever the cloth slides on them.

Every kernel here either has a hand-written adjoint or is a loop-free per-element kernel
differentiated by Taichi's autodiff (``cloth_elements``), whose inputs and outputs are all
indexed by the element itself, so that its adjoint needs no atomics and is deterministic.
"""

import dataclasses

import numpy as np
import taichi as ti
import torch

#: share of each triangle's mass carried by its element particle (the rest goes to its vertices)
ELEMENT_MASS_FRACTION = 0.5

from .cloth_forces import BendingOperator, build_bending
from .layout import ARR, CFRIC, INT, LAM, MASS, MU, NORMAL, SHEAR, VOL, C, F, V, WA, WMASS, WMOM, WX, X, add3, mat3, put3, put33, vec3

# --------------------------------------------------------------------------------------------
# constitutive pieces (Taichi functions, also used by the unit tests through small kernels)


@ti.func
def cloth_qr(Fe):
    """F = Q R by Gram-Schmidt on the two in-plane columns and q2 = q0 x q1.

    Q depends only on the in-plane columns, so R's third column is Q^T d3 and r33 may be negative
    (the cloth pushed through itself); returns Q and (r11, r12, r22, r13, r23, r33)."""
    a0 = ti.Vector([Fe[0, 0], Fe[1, 0], Fe[2, 0]])
    a1 = ti.Vector([Fe[0, 1], Fe[1, 1], Fe[2, 1]])
    a2 = ti.Vector([Fe[0, 2], Fe[1, 2], Fe[2, 2]])
    r11 = a0.norm()
    q0 = a0 / r11
    r12 = q0.dot(a1)
    u1 = a1 - r12 * q0
    r22 = u1.norm()
    q1 = u1 / r22
    q2 = q0.cross(q1)
    Q = ti.Matrix.cols([q0, q1, q2])
    return Q, r11, r12, r22, q0.dot(a2), q1.dot(a2), q2.dot(a2)


@ti.func
def cloth_return_mapping(r13, r23, r33, gamma, k, cf):
    """Coulomb friction return mapping on R's third column (Jiang et al. 2017, section 6)."""
    # Branch-free (ti.select, not if/else on local variables): Taichi 1.7.4's autodiff of the
    # if/else form, compiled with advanced_optimization=False (runtime.py) in float32, gave dL/dF
    # 4,000x too large on a cloth lying on a sphere (float64, or the optimisation passes on, were
    # right); the wrong adjoint grew until the fits' gradients overflowed to NaN.
    # r33 > 1 (stretched along the normal): no shear, r33 clamped to 1.  Otherwise the shear
    # (r13, r23) is scaled back onto the cone |shear| <= fn / gamma when outside it.
    squeeze = ti.max(1.0 - r33, 0.0)
    fn = cf * k * squeeze * squeeze
    s2 = r13 * r13 + r23 * r23
    # compare squares: no square root (and no infinite derivative) at zero shear
    slide = gamma * gamma * s2 > fn * fn
    # the divisor is 1 off the sliding branch, so that its (discarded) derivative stays finite
    denom = ti.select(slide, gamma * ti.sqrt(ti.select(slide, s2, 1.0)), 1.0)
    scale = ti.select(r33 > 1.0, 0.0, ti.select(slide, fn / denom, 1.0))
    return r13 * scale, r23 * scale, ti.min(r33, 1.0)


@ti.func
def _inplane_rotation_angle(r11, r12, r22):
    """Angle of the rotation in the polar decomposition of [[r11, r12], [0, r22]]."""
    return ti.atan2(-r12, r11 + r22)


@ti.func
def cloth_energy(r11, r12, r22, r13, r23, r33, mu, lam, gamma, k):
    """Energy density psi(R) (J/m^2); used by tests to check the stress."""
    th = _inplane_rotation_angle(r11, r12, r22)
    c, s = ti.cos(th), ti.sin(th)
    J = r11 * r22
    e = mu * ((r11 - c) ** 2 + (r12 + s) ** 2 + s**2 + (r22 - c) ** 2) + 0.5 * lam * (J - 1.0) ** 2
    e += 0.5 * gamma * (r13 * r13 + r23 * r23)
    if r33 < 1.0:
        e += k / 3.0 * (1.0 - r33) ** 3
    return e


@ti.func
def cloth_stress(Q, r11, r12, r22, r13, r23, r33, mu, lam, gamma, k):
    """First Piola-Kirchhoff stress P = dpsi/dF for F = Q R.

    With M = dpsi/dR (upper triangular) and K = M R^T, P = Q sym_upper(K) R^-T (Jiang et al. 2017,
    eq. 5.3).  Written out column by column the 1/r33 of R^-T cancels, so P stays finite when
    the cloth is flattened (r33 -> 0): P e3 = Q (dpsi/dr13, dpsi/dr23, dpsi/dr33).
    """
    th = _inplane_rotation_angle(r11, r12, r22)
    c, s = ti.cos(th), ti.sin(th)
    J = r11 * r22
    h = lam * (J - 1.0) * J
    # d psi_in / d R^ = 2 mu (R^ - rot) + lam (J - 1) J R^-T; R^-T = [[1/r11, 0], [-r12/J, 1/r22]]
    m00 = 2.0 * mu * (r11 - c) + h / r11
    m01 = 2.0 * mu * (r12 + s)
    m11 = 2.0 * mu * (r22 - c) + h / r22
    m02 = gamma * r13
    m12 = gamma * r23
    squeeze = ti.max(1.0 - r33, 0.0)  # compression along the normal only (branch-free: see the return mapping)
    m22 = -k * squeeze * squeeze
    k00 = m00 * r11 + m01 * r12 + m02 * r13
    k01 = m01 * r22 + m02 * r23
    k11 = m11 * r22 + m12 * r23
    m3 = ti.Vector([m02, m12, m22])
    b0 = ti.Vector([k00, k01, r33 * m02])
    b1 = ti.Vector([k01, k11, r33 * m12])
    col0 = b0 / r11 - b1 * (r12 / J) + m3 * ((r12 * r23 - r13 * r22) / J)
    col1 = b1 / r22 - m3 * (r23 / r22)
    return Q @ ti.Matrix.cols([col0, col1, m3])


# --------------------------------------------------------------------------------------------
# kernels


# The gathers and scatters between a cloth's vertices and its elements are torch index operations:
# each is a few microseconds of work, and a Taichi kernel launch costs 200-400 us here (small cloths
# are launch-bound).  ``index_add_`` on CPU adds in index order (deterministic).


def gather_vertices(S: torch.Tensor, faces: torch.Tensor, EX: torch.Tensor) -> None:
    """EX[e] = (x_a, x_b, x_c) of element e's vertices (so the autodiff kernel reads only its own row)."""
    EX.view(-1, 3).copy_(S[:, X : X + 3].index_select(0, faces))


def gather_vertices_adjoint(G_EX: torch.Tensor, faces: torch.Tensor, G_in: torch.Tensor) -> None:
    """dL/dx of the vertices += the element rows' dL/dEX."""
    G_in[:, X : X + 3].index_add_(0, faces, G_EX.reshape(-1, 3))


def sync_centroids(faces: torch.Tensor, e0: int, S_out: torch.Tensor) -> None:
    """Element particles sit at the centroid of their (new) vertices."""
    v = S_out[:, X : X + 3].index_select(0, faces).view(-1, 3, 3)
    S_out[e0 : e0 + v.shape[0], X : X + 3] = (v[:, 0] + v[:, 1] + v[:, 2]) / 3.0


def sync_centroids_adjoint(faces: torch.Tensor, e0: int, G: torch.Tensor) -> None:
    """In place on dL/dS_next: element x gradients move, a third each, to their vertices (and are zeroed)."""
    n_el = faces.shape[0] // 3
    g = G[e0 : e0 + n_el, X : X + 3] / 3.0
    G[:, X : X + 3].index_add_(0, faces, g.repeat_interleave(3, dim=0))
    G[e0 : e0 + n_el, X : X + 3] = 0.0


@ti.func
def cloth_element(
    e, EX: ti.template(), S: ti.template(), M: ti.template(), rest: ti.template(), dt, inv_dx, e0,
    S_out: ti.template(), W: ti.template(), EF: ti.template(),
):
    """One element particle (row ``e0 + e``); shared by the kernel and the autodiff-validation test."""
    p = e0 + e
    x0, x1, x2 = vec3(EX, e, 0), vec3(EX, e, 3), vec3(EX, e, 6)
    e1, e2 = x1 - x0, x2 - x0
    # [f0 f1] = [e1 e2] Dm^-1, rest = Dm^-1 row-major
    f0 = e1 * rest[e, 0] + e2 * rest[e, 2]
    f1 = e1 * rest[e, 1] + e2 * rest[e, 3]
    Cp = mat3(S, p, C)
    Fp = mat3(S, p, F)
    d3 = (ti.Matrix.identity(float, 3) + dt * Cp) @ ti.Vector([Fp[0, 2], Fp[1, 2], Fp[2, 2]])
    Q, r11, r12, r22, r13, r23, r33 = cloth_qr(ti.Matrix.cols([f0, f1, d3]))
    gamma, k = M[p, SHEAR], M[p, NORMAL]
    # New names for the mapped values: bound back to r13, r23, r33, Taichi 1.7.4's autodiff of this
    # kernel was not linear in the cotangent in float32 (the vertices' dL/dx grew with its square),
    # and a fit's backward pass over a cloth sliding on a sphere overflowed to NaN (2026-12-04;
    # tests/taichi_mpm/test_cloth_model.py::test_the_element_kernel_adjoint_is_linear_in_the_cotangent)
    s13, s23, s33 = cloth_return_mapping(r13, r23, r33, gamma, k, M[p, CFRIC])
    d3n = Q @ ti.Vector([s13, s23, s33])
    put33(S_out, p, F, ti.Matrix.cols([f0, f1, d3n]))
    P = cloth_stress(Q, r11, r12, r22, s13, s23, s33, M[p, MU], M[p, LAM], gamma, k)
    area = M[p, VOL]
    # in-plane forces on the vertices: -area dpsi/d(e1, e2) = -area P[:, :2] Dm^-T
    p0 = ti.Vector([P[0, 0], P[1, 0], P[2, 0]])
    p1 = ti.Vector([P[0, 1], P[1, 1], P[2, 1]])
    fa = -area * (p0 * rest[e, 0] + p1 * rest[e, 1])
    fb = -area * (p0 * rest[e, 2] + p1 * rest[e, 3])
    put3(EF, e, 0, -(fa + fb))
    put3(EF, e, 3, fa)
    put3(EF, e, 6, fb)
    mp = M[p, MASS]
    put3(W, p, WX, (x0 + x1 + x2) / 3.0)
    W[p, WMASS] = mp
    put3(W, p, WMOM, mp * vec3(S, p, V))
    p2 = ti.Vector([P[0, 2], P[1, 2], P[2, 2]])
    put33(W, p, WA, -dt * 4.0 * inv_dx * inv_dx * area * p2.outer_product(d3n) + mp * Cp)


@ti.kernel
def cloth_elements(
    EX: ARR, S: ARR, M: ARR, rest: ARR, dt: float, inv_dx: float, e0: int, S_out: ARR, W: ARR, EF: ARR,
):
    """Element particles ``e0 + e``: d3 advection, return mapping, stress; writes F', the scatter
    record (centroid, mass, momentum, affine matrix of the d3 stress plus APIC) and the three
    vertex forces ``EF``.  Differentiated by Taichi's autodiff (loop-free, every access indexed by
    the element itself)."""
    for e in range(EX.shape[0]):
        cloth_element(e, EX, S, M, rest, dt, inv_dx, e0, S_out, W, EF)


@ti.kernel
def cloth_vertices(
    S: ARR, M: ARR, EF: ARR, incidence: INT, offsets: INT, dt: float, v0: int, S_out: ARR, W: ARR, serial: ti.template(),
):
    """Vertex particles ``v0 + i``: sum the element forces on each vertex (a gather over its
    incident element corners, in a fixed order), then the scatter record (x, m, m v + dt f, m C)."""
    ti.loop_config(serialize=serial)
    for i in range(offsets.shape[0] - 1):
        p = v0 + i
        f = ti.Vector.zero(float, 3)
        for j in range(offsets[i], offsets[i + 1]):
            slot = incidence[j]  # 3 * element + corner
            f += vec3(EF, slot // 3, 3 * (slot % 3))
        mp = M[p, MASS]
        put3(W, p, WX, vec3(S, p, X))
        W[p, WMASS] = mp
        put3(W, p, WMOM, mp * vec3(S, p, V) + dt * f)
        put33(W, p, WA, mp * mat3(S, p, C))
        put33(S_out, p, F, mat3(S, p, F))


@ti.kernel
def cloth_vertices_adjoint(
    S: ARR, M: ARR, incidence: INT, offsets: INT, dt: float, v0: int, G_out: ARR, G_W: ARR, G_in: ARR, G_M: ARR, G_EF: ARR, serial: ti.template(),
):
    """Adjoint of ``cloth_vertices``: accumulates dL/dx and writes dL/dv, dL/dC, dL/dF of the vertex
    rows into ``G_in``; dL/dmass into ``G_M``; writes dL/dEF (``G_EF``) for the vertices' corners."""
    ti.loop_config(serialize=serial)
    for i in range(offsets.shape[0] - 1):
        p = v0 + i
        mp = M[p, MASS]
        gmom = vec3(G_W, p, WMOM)
        gA = mat3(G_W, p, WA)
        add3(G_in, p, X, vec3(G_W, p, WX))
        put3(G_in, p, V, mp * gmom)
        put33(G_in, p, C, mp * gA)
        put33(G_in, p, F, mat3(G_out, p, F))
        G_M[p, MASS] += G_W[p, WMASS] + gmom.dot(vec3(S, p, V)) + (gA * mat3(S, p, C)).sum()
        for j in range(offsets[i], offsets[i + 1]):
            slot = incidence[j]
            put3(G_EF, slot // 3, 3 * (slot % 3), dt * gmom)


# --------------------------------------------------------------------------------------------
# meshes


@dataclasses.dataclass(frozen=True)
class ClothGroup:
    """One cloth object: vertex particles ``[vertex_start, vertex_start + V)`` and element
    particles ``[element_start, element_start + E)`` of the simulation.

    Attributes:
        faces: ``[E * 3]`` int64 global particle indices of each triangle's vertices (flattened; int64
            for torch's index operations, which move data between vertices and elements).
        rest_inverse: ``[E, 4]`` Dm^-1 (row-major) of the rest edges in each triangle's 2-D frame.
        incidence: ``[3 E]`` int32 element corners ``3 e + c`` grouped by vertex (CSR values).
        offsets: ``[V + 1]`` int32 CSR offsets of ``incidence``.
        rest_frame: ``[E, 3, 3]`` initial element deformation gradients ``[t1 t2 n]``.
        areas: ``[E]`` rest triangle areas; ``vertex_areas: [V]`` lumped areas (a third of each face).
        local_faces: ``[E, 3]`` int32 numpy triangle indices into the cloth's own vertices;
            ``faces_local`` the same as an int64 tensor (the bending and drag forces index with it).
        bending: the per-vertex bending stencil (see ``cloth_forces``).
    """

    vertex_start: int
    num_vertices: int
    element_start: int
    num_elements: int
    faces: torch.Tensor
    rest_inverse: torch.Tensor
    incidence: torch.Tensor
    offsets: torch.Tensor
    rest_frame: torch.Tensor
    areas: torch.Tensor
    vertex_areas: torch.Tensor
    local_faces: np.ndarray
    faces_local: torch.Tensor
    bending: BendingOperator

    @staticmethod
    def build(vertices: np.ndarray, faces: np.ndarray, vertex_start: int, element_start: int, dtype=torch.float32, device="cpu") -> "ClothGroup":
        """Rest state of a triangle mesh whose vertices become particles from ``vertex_start`` on."""
        vertices = np.asarray(vertices, dtype=np.float64)
        faces = np.asarray(faces, dtype=np.int64)
        if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
            raise ValueError(f"cloth faces must be [E, 3] triangles, got shape {faces.shape}")
        if faces.min() < 0 or faces.max() >= len(vertices):
            raise ValueError("cloth faces index vertices that do not exist")
        x0, x1, x2 = (vertices[faces[:, c]] for c in range(3))
        e1, e2 = x1 - x0, x2 - x0
        nrm = np.cross(e1, e2)
        area2 = np.linalg.norm(nrm, axis=1)
        if np.any(area2 <= 1e-14 * max(1.0, float(np.abs(vertices).max()) ** 2)):
            bad = int(np.argmin(area2))
            raise ValueError(f"cloth triangle {bad} is degenerate (zero area)")
        n = nrm / area2[:, None]
        t1 = e1 / np.linalg.norm(e1, axis=1, keepdims=True)
        t2 = np.cross(n, t1)
        Dm = np.stack(
            [np.stack([(e1 * t1).sum(1), (e2 * t1).sum(1)], 1), np.stack([(e1 * t2).sum(1), (e2 * t2).sum(1)], 1)], 1
        )  # [E, 2, 2]: rows = frame axes, cols = edges
        Dinv = np.linalg.inv(Dm)
        area = 0.5 * area2
        nv = len(vertices)
        vertex_area = np.zeros(nv)
        for c in range(3):
            np.add.at(vertex_area, faces[:, c], area / 3.0)
        if np.any(vertex_area == 0):
            raise ValueError(f"cloth mesh has {int((vertex_area == 0).sum())} vertices that belong to no triangle")
        corner_vertex = faces.reshape(-1)
        order = np.argsort(corner_vertex, kind="stable")
        counts = np.bincount(corner_vertex, minlength=nv)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        frame = np.stack([t1, t2, n], axis=2)  # columns t1, t2, n
        t = dict(dtype=dtype, device=device)
        i32 = dict(dtype=torch.int32, device=device)
        return ClothGroup(
            vertex_start=vertex_start,
            num_vertices=nv,
            element_start=element_start,
            num_elements=len(faces),
            faces=torch.tensor((faces + vertex_start).reshape(-1), dtype=torch.int64, device=device),
            rest_inverse=torch.tensor(Dinv.reshape(-1, 4), **t),
            incidence=torch.tensor(order, **i32),
            offsets=torch.tensor(offsets, **i32),
            rest_frame=torch.tensor(frame, **t),
            areas=torch.tensor(area, **t),
            vertex_areas=torch.tensor(vertex_area, **t),
            local_faces=faces.astype(np.int32),
            faces_local=torch.tensor(faces, dtype=torch.int64, device=device),
            bending=build_bending(vertices, faces, dtype, device),
        )


def grid_mesh(nx: int, ny: int, size=(1.0, 1.0), center=(0.0, 0.0, 0.0), rotation_deg=(0.0, 0.0, 0.0)):
    """A rectangle of ``nx`` x ``ny`` vertices in the local x-z plane (normal +y before rotation).

    Returns (vertices [nx*ny, 3], faces [2 (nx-1)(ny-1), 3]) with alternating diagonals.
    """
    from .colliders import euler_xyz

    if nx < 2 or ny < 2:
        raise ValueError(f"a cloth grid needs at least 2x2 vertices, got {nx}x{ny}")
    u = np.linspace(-0.5, 0.5, nx) * size[0]
    w = np.linspace(-0.5, 0.5, ny) * size[1]
    U, Wg = np.meshgrid(u, w, indexing="ij")
    verts = np.stack([U.reshape(-1), np.zeros(nx * ny), Wg.reshape(-1)], 1)
    faces = []
    for i in range(nx - 1):
        for j in range(ny - 1):
            a, b, c, d = i * ny + j, (i + 1) * ny + j, (i + 1) * ny + j + 1, i * ny + j + 1
            # counter-clockwise seen from +y, so the rest normal points up
            if (i + j) % 2 == 0:
                faces += [(a, d, b), (b, d, c)]
            else:
                faces += [(a, d, c), (a, c, b)]
    verts = verts @ euler_xyz(rotation_deg).T + np.asarray(center, dtype=np.float64)
    return verts, np.asarray(faces, dtype=np.int64)
