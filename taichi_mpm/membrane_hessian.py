"""The membrane's exact Hessian per triangle, in its nine unknowns, as one Taichi kernel on the CPU
(what the implicit membrane step, ``membrane_newton``, renews its factor from).

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
"""

import taichi as ti
import torch

from . import runtime
from .membrane import _DET_FLOOR

F64_2 = ti.types.ndarray(dtype=ti.f64, ndim=2)
I32_2 = ti.types.ndarray(dtype=ti.i32, ndim=2)


@ti.func
def _cross_matrix(a):
    """[a]x, the matrix of a x (.)."""
    return ti.Matrix([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]], dt=ti.f64)


@ti.kernel
def _element_hessians(y: F64_2, faces: I32_2, coef: F64_2, mat: F64_2, out: F64_2):
    """``out [E, 81]``: triangle e's Hessian of ``area psi(F)`` in its unknowns (vertex v, axis i)
    x (vertex w, axis k), row-major ``27 v + 9 i + 3 w + k``, at positions ``y [V, 3]``; ``coef
    [E, 6]``: ``c[j, v]`` at ``3 j + v`` (F's column j is sum_v c[j, v] y_v); ``mat [E, 3]``: rest
    area, mu, lam."""
    floor = ti.sqrt(ti.cast(_DET_FLOOR, ti.f64))
    eye = ti.Matrix.identity(ti.f64, 3)
    for e in range(faces.shape[0]):
        f0 = ti.Vector.zero(ti.f64, 3)
        f1 = ti.Vector.zero(ti.f64, 3)
        for v in ti.static(range(3)):
            p = ti.Vector([y[faces[e, v], 0], y[faces[e, v], 1], y[faces[e, v], 2]], dt=ti.f64)
            f0 += coef[e, v] * p
            f1 += coef[e, 3 + v] * p
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
    _element_hessians(y.contiguous(), faces, coef, mat.contiguous(), out)
    return out
