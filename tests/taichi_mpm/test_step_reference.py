"""One substep of the Taichi kernels against the dense PyTorch twin: values and VJPs (float64)."""


import dataclasses

import pytest
import torch

from dreamcloth.taichi_mpm import _torch_ref as ref
from dreamcloth.taichi_mpm.simulate import lame
from dreamcloth.taichi_mpm import kernels as K
from dreamcloth.taichi_mpm.solver import Engine, StepParams, pack_material, pack_state, unpack_state

from .scenes import F64, mixed_model, random_state, tiny_config


def _setup(scatter: str, seed=0, n=60, flip=0.0):
    cfg = dataclasses.replace(tiny_config(scatter=scatter), flip=flip)
    model = mixed_model(n, cfg.grid)
    st = random_state(n, cfg.grid, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    E = 2e3 * (1 + torch.rand(n, generator=gen, dtype=F64))
    nu = 0.2 + 0.2 * torch.rand(n, generator=gen, dtype=F64)
    mu, lam = lame(E, nu)
    mass = 1e3 * model.volume * (1 + torch.rand(n, generator=gen, dtype=F64))
    force = torch.randn(n, 3, generator=gen, dtype=F64) * 1e-3
    friction = torch.tensor([0.4, 0.8, 0.2], dtype=F64)
    damping = torch.tensor([0.7], dtype=F64)
    return cfg, model, st, (mu, lam, mass, force, friction, damping)


def _params(model, raw):
    mu, lam, mass, force, friction, damping = raw
    return StepParams(pack_material(mu, lam, model.volume, mass, force), friction, damping)


@pytest.mark.parametrize("scatter,flip", [("colored", 0.0), ("atomic", 0.0), ("colored", 0.95), ("atomic", 0.95)])
def test_step_matches_reference(scatter, flip):
    cfg, model, st, raw = _setup(scatter, flip=flip)
    eng = Engine(model, cfg)
    S1, _ = eng.run(pack_state(st.x, st.v, st.C, st.F), _params(model, raw), start=3, count=1)
    x1, v1, C1, F1 = unpack_state(S1)
    rx, rv, rC, rF = ref.step(model, cfg, st.x, st.v, st.C, st.F, *raw, 3)
    for a, b, name in ((x1, rx, "x"), (v1, rv, "v"), (C1, rC, "C"), (F1, rF, "F")):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-11), f"{name}: max diff {(a - b).abs().max():.3g}"
    # the scene exercises every branch: particles touch colliders and the walls are not involved
    assert (v1 - st.v).abs().max() > 1e-3


@pytest.mark.parametrize("scatter,flip", [("colored", 0.0), ("atomic", 0.0), ("colored", 0.95), ("atomic", 0.95)])
def test_step_vjp_matches_reference(scatter, flip):
    cfg, model, st, raw = _setup(scatter, seed=3, flip=flip)
    eng = Engine(model, cfg)
    gen = torch.Generator().manual_seed(7)
    n = st.x.shape[0]
    cot = [torch.randn(n, 3, generator=gen, dtype=F64), torch.randn(n, 3, generator=gen, dtype=F64),
           torch.randn(n, 3, 3, generator=gen, dtype=F64) * 1e-2, torch.randn(n, 3, 3, generator=gen, dtype=F64)]
    G0, GP = eng.backward_segment(pack_state(st.x, st.v, st.C, st.F), _params(model, raw), 3, 1, (), pack_state(*cot), None)
    g_state = unpack_state(G0)
    gm = GP.material
    ours = list(g_state) + [gm[:, K.MU], gm[:, K.LAM], gm[:, K.MASS], gm[:, K.FORCE : K.FORCE + 3], GP.friction, GP.damping]

    leaves = [t.clone().requires_grad_(True) for t in (st.x, st.v, st.C, st.F, *raw)]
    out = ref.step(model, cfg, *leaves, 3)
    loss = sum((o * c).sum() for o, c in zip(out, cot))
    grads = torch.autograd.grad(loss, leaves)
    names = ["x", "v", "C", "F", "mu", "lam", "mass", "force", "friction", "damping"]
    for a, b, name in zip(ours, grads, names):
        scale = b.abs().max().clamp(min=1e-12)
        err = (a - b).abs().max() / scale
        assert err < 1e-8, f"d/d{name}: relative error {err:.3g}"
        assert b.abs().max() > 0, f"reference gradient for {name} is zero: the scene does not exercise it"
