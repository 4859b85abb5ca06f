"""The cloth constitutive model in isolation (float64): QR, stress = d energy / dF term by term,
rotation invariance, and the return mapping's cone; and the engine's element kernel's float32
gradient against its float64 one."""


import pytest
import taichi as ti
import torch

from dreamcloth.taichi_mpm.cloth import cloth_energy, cloth_qr, cloth_return_mapping, cloth_stress

M3 = ti.types.ndarray(dtype=ti.math.mat3, ndim=1)
ARR = ti.types.ndarray(ndim=2)
VEC = ti.types.ndarray(ndim=1)


@ti.kernel
def _evaluate(F: M3, params: ARR, energy: VEC, P: M3, Q_out: M3, R_out: M3):
    for i in range(F.shape[0]):
        Q, r11, r12, r22, r13, r23, r33 = cloth_qr(F[i])
        mu, lam, gamma, k = params[i, 0], params[i, 1], params[i, 2], params[i, 3]
        energy[i] = cloth_energy(r11, r12, r22, r13, r23, r33, mu, lam, gamma, k)
        P[i] = cloth_stress(Q, r11, r12, r22, r13, r23, r33, mu, lam, gamma, k)
        Q_out[i] = Q
        R_out[i] = ti.Matrix([[r11, r12, r13], [0.0, r22, r23], [0.0, 0.0, r33]])


@ti.kernel
def _return_map(r: ARR, params: ARR, out: ARR):
    for i in range(r.shape[0]):
        a, b, c = cloth_return_mapping(r[i, 0], r[i, 1], r[i, 2], params[i, 0], params[i, 1], params[i, 2])
        out[i, 0], out[i, 1], out[i, 2] = a, b, c


def _random_F(n, seed, normal_scale=(0.3, 1.4)):
    gen = torch.Generator().manual_seed(seed)
    F = torch.eye(3, dtype=torch.float64) + 0.25 * torch.randn(n, 3, 3, generator=gen, dtype=torch.float64)
    # third columns from compressed (r33 < 1) to separated (r33 > 1), with shear
    lo, hi = normal_scale
    F[:, :, 2] = F[:, :, 2] * (lo + (hi - lo) * torch.rand(n, 1, generator=gen, dtype=torch.float64))
    return F.contiguous()


def _eval(F, params):
    n = F.shape[0]
    e = torch.zeros(n, dtype=torch.float64)
    P, Q, R = (torch.zeros(n, 3, 3, dtype=torch.float64) for _ in range(3))
    _evaluate(F, params.contiguous(), e, P, Q, R)
    return e, P, Q, R


def test_qr_reconstructs_F():
    F = _random_F(200, 0)
    _, _, Q, R = _eval(F, torch.ones(200, 4, dtype=torch.float64))
    assert torch.allclose(Q @ R, F, atol=1e-12)
    assert torch.allclose(Q.transpose(1, 2) @ Q, torch.eye(3, dtype=torch.float64).expand(200, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(Q), torch.ones(200, dtype=torch.float64), atol=1e-12)
    assert (R[:, 0, 0] > 0).all() and (R[:, 1, 1] > 0).all()


@pytest.mark.parametrize(
    "term,values",
    [("in-plane", (3.0, 5.0, 0.0, 0.0)), ("shear", (0.0, 0.0, 7.0, 0.0)), ("normal", (0.0, 0.0, 0.0, 11.0)), ("all", (3.0, 5.0, 7.0, 11.0))],
)
def test_stress_is_the_energy_derivative(term, values):
    n = 60
    F = _random_F(n, 1)
    params = torch.tensor(values, dtype=torch.float64).expand(n, 4)
    _, P, _, R = _eval(F, params)
    h = 1e-6
    fd = torch.zeros_like(P)
    for a in range(3):
        for b in range(3):
            Fp, Fm = F.clone(), F.clone()
            Fp[:, a, b] += h
            Fm[:, a, b] -= h
            fd[:, a, b] = (_eval(Fp.contiguous(), params)[0] - _eval(Fm.contiguous(), params)[0]) / (2 * h)
    err = (P - fd).abs().max() / fd.abs().max()
    print(f"{term}: max |P - dpsi/dF| / max |P| = {err:.2e} over {n} random F (r33 in {R[:, 2, 2].min():.2f}..{R[:, 2, 2].max():.2f})")
    assert fd.abs().max() > 0
    assert err < 1e-7


def test_stress_stays_finite_when_flattened():
    F = _random_F(20, 2)
    Q, _ = torch.linalg.qr(F[:, :, :2])
    F[:, :, 2] = 0.3 * Q[:, :, 0]  # d3 in the cloth plane: r33 = 0
    _, P, _, R = _eval(F.contiguous(), torch.tensor([3.0, 5.0, 7.0, 11.0], dtype=torch.float64).expand(20, 4))
    assert R[:, 2, 2].abs().max() < 1e-12
    assert torch.isfinite(P).all()


def test_energy_and_stress_are_rotation_invariant():
    n = 50
    F = _random_F(n, 3)
    params = torch.tensor([3.0, 5.0, 7.0, 11.0], dtype=torch.float64).expand(n, 4)
    gen = torch.Generator().manual_seed(4)
    Rot, _ = torch.linalg.qr(torch.randn(n, 3, 3, generator=gen, dtype=torch.float64))
    Rot = Rot * torch.sign(torch.linalg.det(Rot))[:, None, None]
    e0, P0, _, _ = _eval(F, params)
    e1, P1, _, _ = _eval((Rot @ F).contiguous(), params)
    assert torch.allclose(e0, e1, rtol=1e-12, atol=1e-12)
    assert torch.allclose(Rot @ P0, P1, atol=1e-10)


def test_return_mapping_lands_on_or_inside_the_cone():
    n = 500
    gen = torch.Generator().manual_seed(5)
    r = torch.randn(n, 3, generator=gen, dtype=torch.float64) * torch.tensor([0.5, 0.5, 0.4], dtype=torch.float64)
    r[:, 2] += 0.9
    r[:, :2] *= 10 ** (-3 * torch.rand(n, 1, generator=gen, dtype=torch.float64))  # shear over three decades
    params = torch.stack([
        100 + 900 * torch.rand(n, generator=gen, dtype=torch.float64),  # gamma
        100 + 900 * torch.rand(n, generator=gen, dtype=torch.float64),  # k
        torch.rand(n, generator=gen, dtype=torch.float64),  # c_F
    ], 1)
    out = torch.zeros_like(r)
    _return_map(r.contiguous(), params.contiguous(), out)
    gamma, k, cf = params.unbind(1)
    shear = gamma * out[:, :2].norm(dim=1)
    cone = cf * k * (1 - out[:, 2]).clamp(min=0) ** 2
    assert (out[:, 2] <= 1 + 1e-15).all()
    assert (shear <= cone * (1 + 1e-12) + 1e-12).all()
    separated = r[:, 2] > 1
    assert (out[separated, :2] == 0).all() and (out[separated, 2] == 1).all()
    inside = (~separated) & (gamma * r[:, :2].norm(dim=1) <= cf * k * (1 - r[:, 2]) ** 2)
    assert torch.equal(out[inside], r[inside])  # elastic: untouched
    projected = (~separated) & (~inside)
    assert projected.sum() > 50 and inside.sum() > 50 and separated.sum() > 20
    # projected points lie on the cone, along their original shear direction
    assert torch.allclose(shear[projected], cone[projected], rtol=1e-10)
    cosang = (out[projected, :2] * r[projected, :2]).sum(1) / (out[projected, :2].norm(dim=1) * r[projected, :2].norm(dim=1))
    assert torch.allclose(cosang, torch.ones_like(cosang), atol=1e-12)
    # idempotent
    again = torch.zeros_like(out)
    _return_map(out.contiguous(), params.contiguous(), again)
    assert torch.allclose(again, out, atol=1e-14)


def _element_kernel_grads(dtype, seed=7, scale=1.0):
    """dL/d(inputs) of the engine's cloth element kernel (``cloth_elements``, Taichi's autodiff) under
    the engine's own runtime settings, for elements on both sides of r33 = 1 and of the friction cone;
    ``scale`` multiplies the outputs' cotangents."""
    from dreamcloth.taichi_mpm import layout as K
    from dreamcloth.taichi_mpm import runtime
    from dreamcloth.taichi_mpm.cloth import ClothGroup, cloth_elements, grid_mesh

    runtime.ensure("cpu", dtype)
    verts, faces = grid_mesh(5, 5, (0.3, 0.3), (0.5, 0.5, 0.5))
    group = ClothGroup.build(verts, faces, 0, len(verts), torch.float64)
    E = len(faces)
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    EX = torch.tensor(verts, dtype=f64)[torch.as_tensor(faces).reshape(-1)].reshape(E, 9)
    EX = EX + 0.01 * torch.randn(E, 9, generator=gen, dtype=f64)
    S = torch.zeros(E, K.STATE_DIM, dtype=f64)
    S[:, K.C : K.C + 9] = 2.0 * torch.randn(E, 9, generator=gen, dtype=f64)
    # d3 (F's third column; the kernel reads only that column of F): along the mesh's normal (+y),
    # stretched or compressed (r33 in 0.85-1.15), with shear inside and outside the friction cone
    d3 = torch.stack([0.02 * torch.randn(E, generator=gen, dtype=f64), 0.85 + 0.3 * torch.rand(E, generator=gen, dtype=f64),
                      0.02 * torch.randn(E, generator=gen, dtype=f64)], dim=1)
    S[:, [K.F + 2, K.F + 5, K.F + 8]] = d3
    M = torch.zeros(E, K.MAT_DIM, dtype=f64)
    M[:, K.MU], M[:, K.LAM], M[:, K.VOL], M[:, K.MASS] = 40.0, 60.0, 1e-3, 2e-4
    M[:, K.SHEAR], M[:, K.NORMAL], M[:, K.CFRIC] = 300.0, 200.0, 0.3
    gS = torch.randn(E, K.STATE_DIM, generator=gen, dtype=f64)
    gW = torch.randn(E, K.W_DIM, generator=gen, dtype=f64)
    gE = torch.randn(E, 9, generator=gen, dtype=f64)
    gS, gW, gE = scale * gS, scale * gW, scale * gE

    def leaf(t, grad=None):
        t = t.to(dtype).clone().contiguous().requires_grad_(True)
        t.grad = torch.zeros_like(t) if grad is None else grad.to(dtype).clone().contiguous()
        return t

    args = [leaf(EX), leaf(S), leaf(M), group.rest_inverse.to(dtype).contiguous(), 1e-4, 32.0, 0,
            leaf(S, gS), leaf(torch.zeros(E, K.W_DIM, dtype=f64), gW), leaf(torch.zeros(E, 9, dtype=f64), gE)]
    cloth_elements(*args)
    cloth_elements.grad(*args)
    return [a.grad.to(f64) for a in (args[0], args[1], args[2])]


def test_the_element_kernel_float32_gradient_is_its_float64_gradient():
    """Taichi 1.7.4, with the runtime's advanced_optimization=False, differentiated the return
    mapping's if/else form wrongly in float32 (dL/dF of the normal 4,000x too large on a cloth lying
    on a sphere; float64 was right), and the fits' gradients overflowed to NaN.  Same inputs, both
    precisions: the gradients agree to float32 round-off."""
    g64 = _element_kernel_grads(torch.float64)
    g32 = _element_kernel_grads(torch.float32)
    for name, a, b in zip(("EX", "S", "M"), g32, g64):
        scale = float(b.abs().max())
        assert scale > 0
        err = float((a - b).abs().max()) / scale
        print(f"{name}: max |grad| {scale:.3e}, float32 vs float64 {err:.1e}")
        assert err < 1e-3, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_element_kernel_adjoint_is_linear_in_the_cotangent(dtype):
    """An adjoint is linear in the gradient it is given.  Taichi 1.7.4's autodiff of the element
    kernel was not, in float32, while the return mapping's results were bound back to its inputs'
    names (``r13, r23, r33 = cloth_return_mapping(r13, r23, r33, ...)``): dL/dx of the vertices
    grew with the square of the cotangent's size.  In a fit's backward pass over a cloth sliding on
    a sphere (cotangents ~100) it multiplied ~80x a substep and overflowed to NaN ("a non-finite
    loss or gradient", 2026-12-04).  The same kernel with 1000x the cotangents gives 1000x the
    gradients."""
    g1 = _element_kernel_grads(dtype)
    g1000 = _element_kernel_grads(dtype, scale=1000.0)
    for name, a, b in zip(("EX", "S", "M"), g1, g1000):
        scale = float(a.abs().max())
        assert scale > 0
        err = float((b / 1000.0 - a).abs().max()) / scale
        print(f"{name}: max |grad| {scale:.3e}, 1000x cotangent / 1000 vs 1x: {err:.1e}")
        assert err < 1e-4, name
