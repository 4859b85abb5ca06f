"""Constitutive models as Taichi functions: first Piola-Kirchhoff stress P(F).

Every function here has a hand-written adjoint below (the kernels that call them are never
differentiated by Taichi's autodiff), so the polar iteration may be a run-time loop: unrolled
with ``ti.static`` it was most of the constitutive kernels' Python front-end time at every start.
Should one ever be differentiated by Taichi, its loops must become ``ti.static`` again
(reverse-mode through non-static loops silently returned wrong gradients on Taichi 1.7.4, see
DESIGN.md section 2).  Nothing calls ``ti.svd``/``ti.polar_decompose`` (they do not compile in
grad kernels).
"""


import taichi as ti

#: Newton iterations of the polar decomposition; scaled Newton converges quadratically, 8 steps
#: reach round-off for stretches up to ~1e3 (Higham 1986, "Computing the polar decomposition").
POLAR_ITERATIONS = 8


@ti.func
def neo_hookean_stress(F, mu, lam):
    """P = mu (F - F^-T) + lam log(J) F^-T  (compressible neo-Hookean, Bonet & Wood 2008, eq. 6.28)."""
    J = F.determinant()
    F_inv_T = F.inverse().transpose()
    return mu * (F - F_inv_T) + lam * ti.log(J) * F_inv_T


@ti.func
def polar_rotation(F):
    """Rotation R of F = R S by scaled Newton iteration X <- (g X + (g X)^-T) / 2, g = (|X^-1| / |X|)^(1/2).

    The scaling factor is what makes a fixed small number of iterations enough (Higham 1986).  A
    run-time loop (see the module docstring): its adjoint is ``polar_rotation_adjoint``.
    """
    X = F
    for _ in range(POLAR_ITERATIONS):
        X_inv = X.inverse()
        g = ti.sqrt(ti.sqrt(X_inv.norm_sqr() / X.norm_sqr()))
        X = 0.5 * (g * X + X_inv.transpose() / g)
    return X


@ti.func
def fixed_corotated_stress(F, mu, lam):
    """P = 2 mu (F - R) + lam (J - 1) J F^-T  (Stomakhin et al. 2012, "Energetically consistent invertible elasticity")."""
    return _fixed_corotated_with(F, polar_rotation(F), mu, lam)


@ti.func
def _fixed_corotated_with(F, R, mu, lam):
    """``fixed_corotated_stress`` with F's rotation R given."""
    J = F.determinant()
    return 2.0 * mu * (F - R) + lam * (J - 1.0) * J * F.inverse().transpose()


# ------------------------------------------------------------------------------------------------
# Hand-written adjoints: for G = dL/dP, return P itself, dL/dF, dL/dmu, dL/dlam.  Taichi's autodiff of the
# unrolled polar iteration compiled for 74 s here; these compile in about a second and are checked
# against finite differences and against PyTorch's autograd of the reference twin.


@ti.func
def neo_hookean_stress_adjoint(F, mu, lam, G):
    """P itself, and dP = mu dF + (mu - lam log J) F^-T dF^T F^-T + lam tr(F^-1 dF) F^-T transposed
    onto G: returns (P, dL/dF, dL/dmu, dL/dlam)."""
    J = F.determinant()
    F_inv_T = F.inverse().transpose()
    logJ = ti.log(J)
    inner = (F_inv_T * G).sum()
    g_F = mu * G + (mu - lam * logJ) * F_inv_T @ G.transpose() @ F_inv_T + lam * inner * F_inv_T
    return neo_hookean_stress(F, mu, lam), g_F, ((F - F_inv_T) * G).sum(), logJ * inner


@ti.func
def _axial(X):
    """ext(X) with <X, [z]_x> = z . ext(X) for every z ([z]_x the cross-product matrix)."""
    return ti.Vector([X[2, 1] - X[1, 2], X[0, 2] - X[2, 0], X[1, 0] - X[0, 1]])


@ti.func
def _cross_matrix(z):
    return ti.Matrix([[0.0, -z[2], z[1]], [z[2], 0.0, -z[0]], [-z[1], z[0], 0.0]])


@ti.func
def polar_rotation_adjoint(F, R, G):
    """dL/dF of L(R(F)) for F = R S, given G = dL/dR.

    dR = R [w]_x with (tr(S) I - S) w = ext(R^T dF) (differentiating F = R S and keeping the skew
    part), hence dL/dF = R [z]_x with z = (tr(S) I - S)^-1 ext(R^T G).
    """
    S = R.transpose() @ F
    S = 0.5 * (S + S.transpose())
    M = S.trace() * ti.Matrix.identity(float, 3) - S
    z = M.inverse() @ _axial(R.transpose() @ G)
    return R @ _cross_matrix(z)


@ti.func
def fixed_corotated_stress_adjoint(F, mu, lam, G):
    """P = 2 mu (F - R) + lam (J^2 - J) F^-T and its adjoint: returns (P, dL/dF, dL/dmu, dL/dlam).
    P comes with it so that a kernel runs the polar iteration once (a run-time loop, which LLVM
    does not merge with a second one: computing it twice cost 15-20% of a solid's backward)."""
    R = polar_rotation(F)
    J = F.determinant()
    F_inv_T = F.inverse().transpose()
    inner = (F_inv_T * G).sum()
    h = lam * (J - 1.0) * J
    g_F = 2.0 * mu * (G - polar_rotation_adjoint(F, R, G))
    # d(F^-T) = -F^-T dF^T F^-T,  dJ = J <F^-T, dF>
    g_F += lam * (2.0 * J - 1.0) * J * inner * F_inv_T - h * F_inv_T @ G.transpose() @ F_inv_T
    return _fixed_corotated_with(F, R, mu, lam), g_F, 2.0 * ((F - R) * G).sum(), (J - 1.0) * J * inner
