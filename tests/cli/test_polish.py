"""The fit's Newton polish (cli/pipeline/polish.py): a quadratic model from loss values at the 2%
scale, its step over the box and the trust region, and the iteration that accepts or shrinks it.
Fast: known functions in place of rollouts."""

import math

import torch

from dreamcloth.cli.pipeline import polish as P

LO = torch.tensor([0.0, 0.0], dtype=torch.float64)
HI = torch.tensor([1.0, 1.0], dtype=torch.float64)
A = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)


def _bowl(zstar, ripple=0.0, period=2e-3):
    def f(z):
        d = z - zstar
        return float(0.5 * d @ A @ d + ripple * torch.sin(2 * math.pi * d.sum() / period + 0.3) + 0.1)

    return f


def test_the_model_of_a_quadratic_is_exact():
    zstar = torch.tensor([0.4, 0.55], dtype=torch.float64)
    z0 = torch.tensor([0.5, 0.5], dtype=torch.float64)
    m = P.build_model(_bowl(zstar), z0, LO, HI)
    assert torch.equal(m.center, z0) and m.evaluations == 1 + 4 + 2
    assert torch.allclose(m.H, A, atol=1e-6)
    assert torch.allclose(m.g, A @ (z0 - zstar), atol=1e-8)
    # the centre's value, when known, is not evaluated again
    assert P.build_model(_bowl(zstar), z0, LO, HI, f_at_z0=m.f).evaluations == 6


def test_a_stencil_at_the_box_edge_moves_inward():
    """At the box's edge (damping at 1, say) a centred stencil would step outside, where the values
    are clamped: the stencil is shifted by one step inward, and the model is still exact."""
    zstar = torch.tensor([0.9, 0.5], dtype=torch.float64)
    z0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    m = P.build_model(_bowl(zstar), z0, LO, HI)
    assert torch.allclose(m.center, torch.tensor([1.0 - P.REL_STEP, 0.5], dtype=torch.float64))
    assert torch.allclose(m.H, A, atol=1e-6)
    assert torch.allclose(m.g, A @ (m.center - zstar), atol=1e-8)


def test_the_newton_target_respects_box_and_trust_region():
    # the minimum inside: one Newton step reaches it
    zstar = torch.tensor([0.4, 0.55], dtype=torch.float64)
    z0 = torch.tensor([0.5, 0.5], dtype=torch.float64)
    m = P.build_model(_bowl(zstar), z0, LO, HI)
    assert torch.allclose(P.newton_target(m, z0, LO, HI, radius=1.0), zstar, atol=1e-6)
    # the trust region caps every coordinate's move
    t = P.newton_target(m, z0, LO, HI, radius=0.02)
    assert float((t - z0).abs().max()) <= 0.02 + 1e-12
    # the minimum outside the box (first coordinate at 1.3): it ends on the bound, and the second
    # coordinate is re-solved with the first fixed there (the bowl is tilted: A[0, 1] != 0)
    zstar = torch.tensor([1.3, 0.5], dtype=torch.float64)
    m = P.build_model(_bowl(zstar), z0, LO, HI)
    t = P.newton_target(m, z0, LO, HI, radius=1.0)
    expected_second = 0.5 - A[0, 1] / A[1, 1] * (1.0 - 1.3)
    assert abs(float(t[0]) - 1.0) < 1e-9
    assert abs(float(t[1]) - float(expected_second)) < 1e-6


def test_a_saddle_gets_a_bounded_descent_step():
    """Negative curvature along one axis: the step uses |eigenvalues| (a descent direction) and the
    trust region bounds it; it must lower f."""
    H = torch.tensor([[1.0, 0.0], [0.0, -0.5]], dtype=torch.float64)

    def f(z):
        d = z - 0.5
        return float(0.5 * d @ H @ d + 0.05 * d[1])

    z0 = torch.tensor([0.5, 0.5], dtype=torch.float64)
    m = P.build_model(f, z0, LO, HI)
    t = P.newton_target(m, z0, LO, HI, radius=0.1)
    assert float((t - z0).abs().max()) <= 0.1 + 1e-12
    assert f(t) < f(z0)


def test_the_polish_reaches_a_rippled_minimum_that_exact_gradients_miss():
    """A bowl with a ripple 2e-6 high and 2e-3 long: near the minimum the ripple's slope (~6e-3)
    outweighs the bowl's, as a contact rollout's wiggle does (polish.py's measurement), so a descent
    on exact gradients stalls. The polish must end within its resolution (a quarter of the stencil's
    step) of the bowl's minimum, with the bowl's curvature in its last model."""
    zstar = torch.tensor([0.31, 0.72], dtype=torch.float64)
    f = _bowl(zstar, ripple=2e-6)
    z = torch.tensor([0.5, 0.5], dtype=torch.float64)
    pol = P.ModelPolish(LO, HI)
    losses, steps = [], 0
    for _ in range(10):
        st = pol.step(z, f)
        steps += 1
        z = st.z
        losses.append(st.loss)
        if st.converged:
            break
    assert st.converged and steps < 10, losses
    assert all(b <= a for a, b in zip(losses, losses[1:]))  # accepted steps only lower the loss
    assert float((z - zstar).abs().max()) < P.MIN_STEP * P.REL_STEP, (z, zstar)
    assert torch.allclose(pol.model.H, A, atol=0.05)


def test_a_rejected_step_shrinks_until_one_is_accepted():
    """A bowl whose minimum lies behind a cliff 0.03 from the start: the model (its stencil sees
    only the bowl) proposes the trust region's full step, which is rejected; the next trial is a
    quarter as long, and so on, until one lands before the cliff and is accepted."""
    z0 = torch.tensor([0.5, 0.5], dtype=torch.float64)
    bowl = _bowl(torch.tensor([0.9, 0.5], dtype=torch.float64))

    def f(z):
        return bowl(z) if float((z - z0).abs().max()) <= 0.03 else 10.0

    pol = P.ModelPolish(LO, HI, radius=0.25)
    st = pol.step(z0, f)
    trials = [v for v, _ in st.evaluated[7:]]
    assert st.accepted and st.loss < bowl(z0)
    assert trials[:-1] == [10.0] * (len(trials) - 1) and len(trials) == 3
    assert float((st.z - z0).abs().max()) <= 0.03 and pol.radius < 0.25


def test_a_kink_at_the_start_ends_the_polish_there():
    """f = 0.1 + |z - z0|_1: every direction rises, and the model's step is nothing."""
    z0 = torch.tensor([0.5, 0.5], dtype=torch.float64)
    pol = P.ModelPolish(LO, HI)
    st = pol.step(z0, lambda z: float(0.1 + (z - z0).abs().sum()))
    assert not st.accepted and st.converged and torch.equal(st.z, z0) and st.loss == 0.1


def _well(z):
    """A slope towards z = 0.6 with a narrow, shallow well at 0.2: the fine model sees the well's
    curvature and stalls in it; at four times the scale the slope shows."""
    z = float(z[0])
    return (z - 0.6) ** 2 - 0.01 * math.exp(-(((z - 0.2) / 0.015) ** 2))


def test_the_coarse_check_leaves_a_wiggle_the_fine_model_stalls_in():
    lo, hi = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    opt = P.ModelPolish(lo, hi)
    z0 = torch.tensor([0.2], dtype=torch.float64)
    fine = opt.step(z0, _well)
    assert fine.length <= P.REL_STEP  # the fit's stall: a step inside the stencil
    step, taken = opt.coarse_check(fine.z, _well, rtol=1e-4)
    assert taken and step.loss < fine.loss - 0.05 and float(step.z[0]) > 0.3, (step, fine)
    assert opt.h == P.REL_STEP and opt.f == step.loss  # the fine scale again, from the new point


def test_the_coarse_check_keeps_the_fine_model_at_a_true_minimum():
    zstar = torch.tensor([0.4, 0.55], dtype=torch.float64)
    f = _bowl(zstar)
    opt = P.ModelPolish(LO, HI)
    fine = opt.step(zstar.clone(), f)
    assert fine.converged
    model, radius, f0 = opt.model, opt.radius, opt.f
    step, taken = opt.coarse_check(zstar.clone(), f, rtol=1e-4)
    assert not taken and step.evaluations == 2 * 2 + 2  # the coarse stencil, centre known
    assert opt.model is model and opt.radius == radius and opt.f == f0 and opt.model.step == P.REL_STEP


def test_the_fits_coarse_check_reports_a_step_from_a_clamped_point():
    """The fit forgets the polish's loss (``opt.f = None``) when it clamps the step's point to the
    box where sigmoid saturates (a value at its range's edge); the coarse check that follows must
    still report what it gained (it raised a TypeError formatting None, 2026-12-06)."""
    import types

    from dreamcloth.cli.pipeline import fit as Fm

    class Polish:
        f = None  # as after the clamp

        def coarse_check(self, z0, f, many, rtol):
            return P.PolishStep(z0 + 0.5, 0.05, 3, True, 0.1, [], False, 0.5), True

    space = types.SimpleNamespace(natural=lambda u: u, from_natural=lambda z: z, values=lambda u: {(0, "x"): u[0]})
    st = types.SimpleNamespace(iteration=7, best=None, events=[])
    rec = {"evaluations": 2, "loss": 0.15}
    u = torch.zeros(1, dtype=torch.float64)
    logged = []
    assert Fm._coarse_progress(types.SimpleNamespace(prior=None), space, Polish(), u, st, rec, logged.append)
    assert float(u[0]) == 0.5 and st.best["loss"] == 0.05 and rec == {"evaluations": 5, "loss": 0.05, "values": {"0:x": 0.5}}
    assert "stalled at loss 0.15" in logged[0] and "lowered it to 0.05" in logged[0] and st.events == logged
