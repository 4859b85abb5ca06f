"""The membrane's exact Hessian per triangle, in its nine unknowns, as one Taichi kernel on the CPU
(what the implicit membrane step, ``membrane_newton``, renews its factor from), and its energy and
vertex forces as another (what the step's iterations and line search evaluate at every trial point).

Why a kernel.  The same formulas in torch (``membrane_newton.energy_hessian`` and
``NewtonMembrane.element_hessians``) made ~40 small tensor operations over the triangles, 6-8 ms
a renewal on a 41x41 cloth (2 cores), half of it beside the banded Cholesky's 7 ms; a renewal is
the implicit step's main cost (2-3 a substep where the cloth folds, and one per substep in the
backward pass).  Written per triangle, the arithmetic is ~1,000 flops a triangle.  The torch
version stays: where ``M / dt^2 + H`` is not positive definite the step clamps each triangle's
negative eigenvalues (``torch.linalg.eigh`` of its 6x6 Hessian in F), and on CUDA the step
keeps to torch (Taichi's float64 on CUDA faulted in this project's tests, ``runtime.config_for``).

The energy density and its Hessian are those of ``membrane_newton.energy_hessian`` (its docstring
gives the formulas); the tests compare this kernel with autograd of the energy.

The energy and force kernel is ``membrane._energy_forces`` (the torch version, which stays for
autograd and for CUDA) per triangle: 0.9 ms an evaluation in torch (~15 tensor operations and two
sparse products), 4-10 evaluations a substep.  Each vertex gathers its triangles' terms in a fixed
order, and the energy is summed by torch, so that a rollout is the same to the last bit from run to
run: the cloth's folds amplify any difference (a Newton tolerance of 1e-9 m instead of 1e-11 moved
the 41x41 drop's vertices by up to 5.5 mm within 11 frames), and the fit's polish compares rollouts'
losses.
"""

import taichi as ti
import torch

from . import runtime
from .membrane import _DET_FLOOR

#: up to this many triangles a kernel's loops run on the calling thread: Taichi's CPU thread pool
#: costs ~60 us a parallel loop to start.  Measured 2026-12-06 (2 cores, us a launch, serial /
#: parallel): energy and forces 50 / 191 (242 triangles, the demo), 96 / 218 (1,458), 155 / 299
#: (3,200, a 41x41 cloth); element Hessians 80 / 156, 376 / 395, 763 / 642
SERIAL_ENERGY_MAX = 8000
SERIAL_HESSIAN_MAX = 2000

F64_1 = ti.types.ndarray(dtype=ti.f64, ndim=1)
F64_2 = ti.types.ndarray(dtype=ti.f64, ndim=2)
I32_1 = ti.types.ndarray(dtype=ti.i32, ndim=1)
I32_2 = ti.types.ndarray(dtype=ti.i32, ndim=2)


@ti.func
def _cross_matrix(a):
    """[a]x, the matrix of a x (.)."""
    return ti.Matrix([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]], dt=ti.f64)


@ti.func
def _columns(y: ti.template(), faces: ti.template(), coef: ti.template(), e):
    """Triangle e's deformation gradient's columns: F[:, j] = sum_v c[j, v] y_v."""
    f0 = ti.Vector.zero(ti.f64, 3)
    f1 = ti.Vector.zero(ti.f64, 3)
    for v in ti.static(range(3)):
        p = ti.Vector([y[faces[e, v], 0], y[faces[e, v], 1], y[faces[e, v], 2]], dt=ti.f64)
        f0 += coef[e, v] * p
        f1 += coef[e, 3 + v] * p
    return f0, f1


@ti.kernel
def _element_hessians(y: F64_2, faces: I32_2, coef: F64_2, mat: F64_2, out: F64_2, serial: ti.template()):
    """``out [E, 81]``: triangle e's Hessian of ``area psi(F)`` in its unknowns (vertex v, axis i)
    x (vertex w, axis k), row-major ``27 v + 9 i + 3 w + k``, at positions ``y [V, 3]``; ``coef
    [E, 6]``: ``c[j, v]`` at ``3 j + v`` (F's column j is sum_v c[j, v] y_v); ``mat [E, 3]``: rest
    area, mu, lam."""
    floor = ti.sqrt(ti.cast(_DET_FLOOR, ti.f64))
    eye = ti.Matrix.identity(ti.f64, 3)
    ti.loop_config(serialize=serial)
    for e in range(faces.shape[0]):
        f0, f1 = _columns(y, faces, coef, e)
        area, mu, lam = mat[e, 0], mat[e, 1], mat[e, 2]
        cr = f0.cross(f1)
        J = ti.max(cr.norm(), floor)
        n = cr / J
        g0 = f1.cross(n)  # dJ/df0
        g1 = n.cross(f0)  # dJ/df1
        s = ti.sqrt(f0.dot(f0) + f1.dot(f1) + 2.0 * J)
        P = eye - n.outer_product(n)
        X0 = _cross_matrix(f0)
        X1 = _cross_matrix(f1)
        N = _cross_matrix(n)
        # d^2 J in blocks (f0, f0), (f0, f1), (f1, f1); the (f1, f0) block is the transpose of (f0, f1)
        j00 = -(X1 @ P @ X1) / J
        j11 = -(X0 @ P @ X0) / J
        j01 = -N + (X1 @ P @ X0) / J
        xg0 = f0 + g0
        xg1 = f1 + g1
        s3 = s * s * s
        # d^2 psi = 2 mu (I - d^2 s) + lam (g g^T + (J - 1) d^2 J),
        # d^2 s = (I + d^2 J) / s - (x + g)(x + g)^T / s^3
        h00 = 2.0 * mu * (eye - (eye + j00) / s + xg0.outer_product(xg0) / s3) \
            + lam * (g0.outer_product(g0) + (J - 1.0) * j00)
        h11 = 2.0 * mu * (eye - (eye + j11) / s + xg1.outer_product(xg1) / s3) \
            + lam * (g1.outer_product(g1) + (J - 1.0) * j11)
        h01 = 2.0 * mu * (-j01 / s + xg0.outer_product(xg1) / s3) + lam * (g0.outer_product(g1) + (J - 1.0) * j01)
        h10 = h01.transpose()
        for v in ti.static(range(3)):
            for w in ti.static(range(3)):
                c0v, c1v, c0w, c1w = coef[e, v], coef[e, 3 + v], coef[e, w], coef[e, 3 + w]
                B = area * (c0v * c0w * h00 + c0v * c1w * h01 + c1v * c0w * h10 + c1v * c1w * h11)
                for i in ti.static(range(3)):
                    for k in ti.static(range(3)):
                        out[e, 27 * v + 9 * i + 3 * w + k] = B[i, k]


@ti.kernel
def _energy_forces(y: F64_2, faces: I32_2, coef: F64_2, mat: F64_2, start: I32_1, incident: I32_2, stress: F64_2,
                   energy: F64_1, force: F64_2, serial: ti.template()):
    """``energy [E]``: each triangle's ``area psi(F)``; ``force [V, 3]``: -dE/dy, each vertex's sum over
    ``incident[start[v]:start[v + 1]]`` (triangle, corner) in that order; ``stress [E, 6]``: scratch
    (area dpsi/dF's columns).  Layouts as :func:`_element_hessians`."""
    floor = ti.cast(_DET_FLOOR, ti.f64)
    ti.loop_config(serialize=serial)
    for e in range(faces.shape[0]):
        f0, f1 = _columns(y, faces, coef, e)
        area, mu, lam = mat[e, 0], mat[e, 1], mat[e, 2]
        a, b, d = f0.dot(f0), f0.dot(f1), f1.dot(f1)  # C = F^T F
        J = ti.sqrt(ti.max(a * d - b * b, floor))
        root = ti.sqrt(a + d + 2.0 * J)  # s1 + s2
        c = 2.0 * mu / root
        l = lam * (J - 1.0) / J
        energy[e] = area * (mu * (a + d - 2.0 * root + 2.0) + 0.5 * lam * (J - 1.0) * (J - 1.0))
        # dpsi/dF = F S,  S = 2 mu I - c (I + adj(C) / J) + lam (J - 1) adj(C) / J
        s00 = 2.0 * mu - c * (1.0 + d / J) + l * d
        s11 = 2.0 * mu - c * (1.0 + a / J) + l * a
        s01 = (c / J - l) * b
        p0 = area * (s00 * f0 + s01 * f1)
        p1 = area * (s01 * f0 + s11 * f1)
        for i in ti.static(range(3)):
            stress[e, i] = p0[i]
            stress[e, 3 + i] = p1[i]
    ti.loop_config(serialize=serial)
    for v in range(force.shape[0]):
        acc = ti.Vector.zero(ti.f64, 3)
        for k in range(start[v], start[v + 1]):
            e, corner = incident[k, 0], incident[k, 1]
            for i in ti.static(range(3)):
                acc[i] += coef[e, corner] * stress[e, i] + coef[e, 3 + corner] * stress[e, 3 + i]
        for i in ti.static(range(3)):
            force[v, i] = -acc[i]


def incidence(faces: torch.Tensor, num_vertices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(start [V + 1], incident [3E, 2])`` (int32): vertex v's (triangle, corner) pairs are
    ``incident[start[v]:start[v + 1]]``, in triangle order (what :func:`energy_forces` gathers)."""
    flat = faces.reshape(-1).long()
    order = torch.sort(flat, stable=True).indices
    incident = torch.stack([order // 3, order % 3], 1).int().contiguous()
    start = torch.zeros(num_vertices + 1, dtype=torch.int64)
    start[1:] = torch.bincount(flat, minlength=num_vertices).cumsum(0)
    return start.int().contiguous(), incident


def available(dtype: torch.dtype) -> bool:
    """Whether the kernel can run now: Taichi runs on the CPU, or runs nowhere yet and is started on
    the CPU with the precision of a model of ``dtype`` (what the rest of its simulation would ask for;
    the kernel itself is float64 whatever Taichi's default)."""
    live = runtime.current()
    if live is None:
        live = runtime.ensure("cpu", dtype)
    return live.arch == "cpu"


def element_hessians(y: torch.Tensor, faces: torch.Tensor, coef: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """``[E, 81]`` (layout of :func:`_element_hessians`) for float64 CPU tensors ``y [V, 3]``,
    ``faces [E, 3]`` (int32), ``coef [E, 6]`` and ``mat [E, 3]`` (area, mu, lam); Taichi must run on
    the CPU (``runtime.ensure``)."""
    out = torch.empty(int(faces.shape[0]), 81, dtype=torch.float64)
    # without Taichi's per-call analysis; detached (a kept solution is also the step's autograd output)
    runtime.launch(_element_hessians, [y.detach().contiguous(), faces, coef, mat.detach().contiguous(), out,
                                       out.shape[0] <= SERIAL_HESSIAN_MAX])
    return out


def energy_forces(y: torch.Tensor, faces: torch.Tensor, coef: torch.Tensor, mat: torch.Tensor, start: torch.Tensor,
                  incident: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The membrane energy (a 0-d tensor) and forces ``[V, 3]`` at ``y [V, 3]`` (float64 CPU tensors,
    the arguments of :func:`element_hessians` and :func:`incidence`'s); Taichi must run on the CPU."""
    ne, nv = int(faces.shape[0]), int(y.shape[0])
    stress = torch.empty(ne, 6, dtype=torch.float64)
    energy = torch.empty(ne, dtype=torch.float64)
    force = torch.empty(nv, 3, dtype=torch.float64)
    runtime.launch(_energy_forces, [y.detach().contiguous(), faces, coef, mat.detach().contiguous(), start, incident, stress,
                                    energy, force, ne <= SERIAL_ENERGY_MAX])
    return energy.sum(), force
