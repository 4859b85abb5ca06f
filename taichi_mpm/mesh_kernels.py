"""The cloth's mesh forces (``cloth_forces``: the backward-Euler bending step of a flat-rest mesh
and the quadratic air drag) and their adjoint as two Taichi kernels.

``cloth_forces.mesh_forces`` computes the same numbers with torch and scipy: two sparse products, a
banded Cholesky solve, a dozen gathers and scatters, ~40 small operations per substep, and as many
again in the adjoint, most of their time per-operation overhead on a small cloth (replacing them
took the demo's full-horizon fit iteration from 7.9 to 7.4 s).  Here each direction is one launch that also adds the forces
into the scatter record (``dt f`` on the momentum columns of ``W``), so the torch code stays as the
reference the tests compare with, and the path for meshes with rest curvature and for meshes
above ``solver.MESH_KERNEL_MAX_VERTICES`` (where these serial substitutions, striding through the
factor, were slower than LAPACK's blocked solve).

The banded solve is the forward and backward substitution of scipy's factor
``A = U^T U`` (LAPACK's upper banded storage ``ab[u + i - j, j] = U[i, j]``, transposed so that a
column of U is contiguous), in float64 like scipy's, on the calling thread (it is sequential;
~2 u V multiply-adds per right-hand side).
Every other loop gathers (a CSR row of the stencil L or of L^T, or a vertex's incident triangle
corners), so results do not depend on the loop's parallel order.
"""

import taichi as ti
import torch

from .cloth_forces import AIR_DENSITY
from .layout import ARR, DRAG, DRAG_T, INT, MASS, VEC, WMOM, V, X, add3, vec3


@ti.func
def _row(Y: ti.template(), q):
    """Row ``q`` of a float64 scratch array as a vector of the kernel's precision."""
    return ti.Vector([ti.cast(Y[q, 0], float), ti.cast(Y[q, 1], float), ti.cast(Y[q, 2], float)])


@ti.func
def _solve(Y: ti.template(), band: ti.template()):
    """``Y [V, 3]`` <- A^-1 Y in place, A = U^T U from the banded factor stored by column,
    ``band [V, u + 1]`` with ``band[j, u + i - j] = U[i, j]`` (LAPACK's upper band, transposed).

    Both substitutions read a column of U, contiguous in this layout: U^T z = b by dot products
    (z_j from the column above the diagonal), U y = z by axpys (y_i, then the column above it
    updates the earlier rows).  All three right-hand sides share each read of the factor."""
    u = band.shape[1] - 1
    n = Y.shape[0]
    for j in range(n):  # U^T z = b
        s = ti.Vector([Y[j, 0], Y[j, 1], Y[j, 2]])
        lo = ti.max(0, j - u)
        for i in range(lo, j):
            s -= band[j, u + i - j] * ti.Vector([Y[i, 0], Y[i, 1], Y[i, 2]])
        s /= band[j, u]
        for d in ti.static(range(3)):
            Y[j, d] = s[d]
    for t in range(n):  # U y = z
        i = n - 1 - t
        y = ti.Vector([Y[i, 0], Y[i, 1], Y[i, 2]]) / band[i, u]
        for d in ti.static(range(3)):
            Y[i, d] = y[d]
        for q in range(ti.max(0, i - u), i):
            c = band[i, u + q - i]
            for d in ti.static(range(3)):
                Y[q, d] -= c * y[d]


@ti.func
def _stencil_row(S: ti.template(), v0, l_ptr: ti.template(), l_idx: ti.template(), l_val: ti.template(), dt,
                 LZ: ti.template(), r):
    """Row ``r`` of L (x + dt v) into ``LZ``."""
    acc = ti.Vector.zero(float, 3)
    for k in range(l_ptr[r], l_ptr[r + 1]):
        p = v0 + l_idx[k]
        acc += l_val[k] * (vec3(S, p, X) + dt * vec3(S, p, V))
    for d in ti.static(range(3)):
        LZ[r, d] = acc[d]


@ti.func
def _rhs_row(free: ti.template(), lt_ptr: ti.template(), lt_idx: ti.template(), lt_val: ti.template(),
             k_row: ti.template(), perm: ti.template(), dt, LZ: ti.template(), Y: ti.template(), q):
    """Row ``q`` (solver order) of the bending step's right-hand side dt P f, f = -L^T diag(k) LZ."""
    j = perm[q]
    acc = ti.Vector.zero(float, 3)
    for k in range(lt_ptr[j], lt_ptr[j + 1]):
        r = lt_idx[k]
        acc += (lt_val[k] * k_row[r]) * vec3(LZ, r, 0)
    for d in ti.static(range(3)):
        Y[q, d] = -dt * free[j] * acc[d]


@ti.func
def _triangle(S: ti.template(), faces: ti.template(), v0, e):
    """Edge vectors, twice the area vector (e1 x e2) and the mean velocity of triangle ``e``."""
    a, b, c = faces[e, 0], faces[e, 1], faces[e, 2]
    xa = vec3(S, v0 + a, X)
    e1 = vec3(S, v0 + b, X) - xa
    e2 = vec3(S, v0 + c, X) - xa
    vm = (vec3(S, v0 + a, V) + vec3(S, v0 + b, V) + vec3(S, v0 + c, V)) / 3.0
    return e1, e2, e1.cross(e2), vm


@ti.kernel
def mesh_forces(S: ARR, M: ARR, W: ARR, v0: int, e0: int, free: VEC, l_ptr: INT, l_idx: INT, l_val: VEC,
                lt_ptr: INT, lt_idx: INT, lt_val: VEC, k_row: VEC, band: ARR, perm: INT, inverse_perm: INT,
                faces: ARR, incidence: INT, offsets: INT, dt: float, share: float, LZ: ARR, Y: ARR, T: ARR,
                bend: ti.template(), drag: ti.template(), serial: ti.template()):
    """Adds ``dt f`` of cloth (vertices ``v0 ..``, elements ``e0 ..``) to the momentum columns of
    ``W``: the implicit bending force and (1 - share) of each triangle's drag, in thirds, on the
    free vertices, ``share`` of it on the element particles (``cloth_forces.mesh_forces``; the drag
    with its tangential share from the material's ``DRAG_T`` column).

    ``LZ [R, 3]``, ``Y [V, 3]`` (float64) and ``T [E, 3]`` are scratch: afterwards ``LZ`` holds
    L (x + dt v) and ``Y`` the bending step's dv in the solver's (permuted) order."""
    if ti.static(drag):
        ti.loop_config(serialize=serial)
        for e in range(faces.shape[0]):
            _, _, cr, vm = _triangle(S, faces, v0, e)
            vc = vm.dot(cr)
            c = -AIR_DENSITY * M[e0 + e, DRAG] / 4.0
            r = M[e0 + e, DRAG_T]  # the tangential share (cloth_forces.drag_force)
            tri = (c * (1.0 - r) * vc * ti.abs(vc) / cr.dot(cr)) * cr + (c * r * ti.abs(vc)) * vm
            for d in ti.static(range(3)):
                T[e, d] = tri[d]
            add3(W, e0 + e, WMOM, (dt * share) * tri)
    if ti.static(bend):
        ti.loop_config(serialize=serial)
        for r in range(LZ.shape[0]):  # L (x + dt v)
            _stencil_row(S, v0, l_ptr, l_idx, l_val, dt, LZ, r)
        ti.loop_config(serialize=serial)
        for q in range(perm.shape[0]):  # right-hand side dt P f(x + dt v), f = -L^T diag(k) L z
            _rhs_row(free, lt_ptr, lt_idx, lt_val, k_row, perm, dt, LZ, Y, q)
        ti.loop_config(serialize=True)
        for _ in range(1):
            _solve(Y, band)
    ti.loop_config(serialize=serial)
    for j in range(free.shape[0]):
        f = ti.Vector.zero(float, 3)
        if ti.static(bend):
            q = inverse_perm[j]
            f += (M[v0 + j, MASS] / dt) * _row(Y, q)
        if ti.static(drag):
            t = ti.Vector.zero(float, 3)
            for k in range(offsets[j], offsets[j + 1]):
                t += vec3(T, incidence[k] // 3, 0)
            f += ((1.0 - share) / 3.0) * t
        add3(W, v0 + j, WMOM, (dt * free[j]) * f)


@ti.kernel
def mesh_forces_adjoint(S: ARR, M: ARR, G_W: ARR, G_out: ARR, G_M: ARR, v0: int, e0: int, free: VEC, l_ptr: INT,
                        l_idx: INT, l_val: VEC, lt_ptr: INT, lt_idx: INT, lt_val: VEC, k_row: VEC, row_weight: VEC,
                        band: ARR, perm: INT, inverse_perm: INT, faces: ARR, incidence: INT, offsets: INT, dt: float,
                        share: float, LZ: ARR, LG: ARR, Y: ARR, Y2: ARR, GC: ARR, g_k: VEC,
                        bend: ti.template(), drag: ti.template(), want_k: ti.template(), want_drag: ti.template(),
                        want_mass: ti.template(), serial: ti.template()):
    """The vector-Jacobian product of :func:`mesh_forces` with the momentum rows of ``G_W``
    (dL/dW): adds dL/dx and dL/dv of the vertices to ``G_out``, dL/d drag and its tangential share (``want_drag``) and
    dL/d mass (``want_mass``) to ``G_M``, and writes dL/d k_row into ``g_k [R]`` (``want_k``;
    the caller spreads it onto the elements' bending stiffness).

    Adjoint of the bending step (``cloth_forces._BandedSolve``): A is symmetric, so lambda =
    A^-1 (m / dt) g_f, dL/dz = -L^T diag(k) L (dt P lambda) with z = x + dt v; with dv the
    forward's step, dL/dm = dv . g_f / dt - lambda . dv and dL/dk_r = -dt^2 (L P lambda)_r .
    (L P dv)_r - (L dt P lambda)_r . (L z)_r.  Scratch: ``LZ``, ``LG [R, 3]``, ``Y``, ``Y2 [V, 3]``
    (float64), ``GC [E, 18]`` (each triangle corner's dL/dx, dL/dv)."""
    if ti.static(bend):
        ti.loop_config(serialize=serial)
        for q in range(perm.shape[0]):
            j = perm[q]
            c = M[v0 + j, MASS] * free[j]  # (m / dt) g_f, g_f = dt dL/dmom on free vertices
            for d in ti.static(range(3)):
                Y[q, d] = c * G_W[v0 + j, WMOM + d]
        ti.loop_config(serialize=True)
        for _ in range(1):
            _solve(Y, band)
        ti.loop_config(serialize=serial)
        for r in range(LG.shape[0]):  # L (dt P lambda)
            acc = ti.Vector.zero(float, 3)
            for k in range(l_ptr[r], l_ptr[r + 1]):
                j = l_idx[k]
                q = inverse_perm[j]
                acc += (l_val[k] * dt * free[j]) * _row(Y, q)
            for d in ti.static(range(3)):
                LG[r, d] = acc[d]
        ti.loop_config(serialize=serial)
        for j in range(free.shape[0]):
            acc = ti.Vector.zero(float, 3)
            for k in range(lt_ptr[j], lt_ptr[j + 1]):
                r = lt_idx[k]
                acc += (lt_val[k] * k_row[r]) * vec3(LG, r, 0)
            add3(G_out, v0 + j, X, -acc)
            add3(G_out, v0 + j, V, -dt * acc)
        if ti.static(want_k or want_mass):  # the forward's L z and dv, recomputed
            ti.loop_config(serialize=serial)
            for r in range(LZ.shape[0]):
                _stencil_row(S, v0, l_ptr, l_idx, l_val, dt, LZ, r)
            ti.loop_config(serialize=serial)
            for q in range(perm.shape[0]):
                _rhs_row(free, lt_ptr, lt_idx, lt_val, k_row, perm, dt, LZ, Y2, q)
            ti.loop_config(serialize=True)
            for _ in range(1):
                _solve(Y2, band)
        if ti.static(want_mass):
            ti.loop_config(serialize=serial)
            for j in range(free.shape[0]):
                q = inverse_perm[j]
                G_M[v0 + j, MASS] += _row(Y2, q).dot(free[j] * vec3(G_W, v0 + j, WMOM) - _row(Y, q))
        if ti.static(want_k):
            ti.loop_config(serialize=serial)
            for r in range(LZ.shape[0]):
                ldv = ti.Vector.zero(float, 3)
                for k in range(l_ptr[r], l_ptr[r + 1]):
                    j = l_idx[k]
                    q = inverse_perm[j]
                    ldv += (l_val[k] * free[j]) * _row(Y2, q)
                lg = vec3(LG, r, 0)
                g_k[r] = row_weight[r] * (-dt * lg.dot(ldv) - lg.dot(vec3(LZ, r, 0)))
    if ti.static(drag):
        ti.loop_config(serialize=serial)
        for e in range(faces.shape[0]):
            e1, e2, cr, vm = _triangle(S, faces, v0, e)
            c0 = -AIR_DENSITY / 4.0
            cd = M[e0 + e, DRAG]
            r = M[e0 + e, DRAG_T]
            vc = vm.dot(cr)
            sq = cr.dot(cr)
            s = c0 * cd * (1.0 - r) * vc * ti.abs(vc) / sq
            b = c0 * cd * r * ti.abs(vc)
            sgn = 0.0
            if vc > 0:
                sgn = 1.0
            elif vc < 0:
                sgn = -1.0
            # tri = s cr + b vm; the element particle gets share tri, each vertex (1 - share) / 3 tri
            g_tri = share * dt * vec3(G_W, e0 + e, WMOM)
            for c in ti.static(range(3)):
                a = faces[e, c]
                g_tri += ((1.0 - share) / 3.0 * dt * free[a]) * vec3(G_W, v0 + a, WMOM)
            g_s = g_tri.dot(cr)
            g_b = g_tri.dot(vm)
            g_vc = g_s * (2.0 * c0) * cd * (1.0 - r) * ti.abs(vc) / sq + g_b * c0 * cd * r * sgn
            if ti.static(want_drag):
                G_M[e0 + e, DRAG] += g_s * c0 * (1.0 - r) * vc * ti.abs(vc) / sq + g_b * c0 * r * ti.abs(vc)
                G_M[e0 + e, DRAG_T] += -g_s * c0 * cd * vc * ti.abs(vc) / sq + g_b * c0 * cd * ti.abs(vc)
            g_cr = s * g_tri + g_vc * vm - (2.0 * g_s * s / sq) * cr
            g_vm = (g_vc * cr + b * g_tri) / 3.0
            g_e1 = e2.cross(g_cr)
            g_e2 = g_cr.cross(e1)
            corner = [-(g_e1 + g_e2), g_e1, g_e2]
            for c in ti.static(range(3)):
                for d in ti.static(range(3)):
                    GC[e, 6 * c + d] = corner[c][d]
                    GC[e, 6 * c + 3 + d] = g_vm[d]
        ti.loop_config(serialize=serial)
        for j in range(free.shape[0]):
            gx = ti.Vector.zero(float, 3)
            gv = ti.Vector.zero(float, 3)
            for k in range(offsets[j], offsets[j + 1]):
                slot = incidence[k]
                base = 6 * (slot % 3)
                gx += vec3(GC, slot // 3, base)
                gv += vec3(GC, slot // 3, base + 3)
            add3(G_out, v0 + j, X, gx)
            add3(G_out, v0 + j, V, gv)


def csr_arrays(matrix: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A torch sparse CSR matrix as the kernels' (row pointers int32, columns int32, values)."""
    return (matrix.crow_indices().to(torch.int32).contiguous(), matrix.col_indices().to(torch.int32).contiguous(),
            matrix.values().to(dtype).contiguous())

