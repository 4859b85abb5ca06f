"""The identifiability analysis reads the loss's curvature at the 2% scale from loss values, so a
loss that wiggles below that scale (contact events in a rollout) does not flip its sign."""

import math
from types import SimpleNamespace

import torch

from dreamcloth.cli.pipeline import fit as Fm

A = torch.tensor([[0.2, 0.1], [0.1, 3.0]], dtype=torch.float64)  # curvature in natural coordinates
Z0 = torch.tensor([math.log(60.0), 0.3 / 0.95], dtype=torch.float64)


def _problem(wiggle: float):
    space = object.__new__(Fm.ParamSpace)
    space.keys = [(0, "young_modulus"), (0, "damping")]
    space.ranges = [(20.0, 400.0), (0.05, 1.0)]
    space.log = [True, False]

    def loss(u, horizon):
        d = space.natural(u) - Z0
        # a quadratic bowl plus a 2e-6-high ripple of period 2e-3 in log young_modulus: its slope
        # (6e-3) is what exact gradients of a contact rollout look like at this scale
        return 0.5 * d @ A @ d + wiggle * torch.sin(2 * math.pi * d[0] / 2e-3 + 0.7)

    return SimpleNamespace(space=space, target=SimpleNamespace(frames=torch.zeros(5, 3, 2, 2)), loss=loss)


def _u_at(problem, z):
    (lo, hi), (lo2, hi2) = problem.space.ranges
    f = torch.stack([(z[0] - math.log(lo)) / (math.log(hi) - math.log(lo)), (z[1] * (hi2 - lo2) - lo2) / (hi2 - lo2)])
    return torch.log(f / (1 - f))


def test_curvature_of_a_rippled_bowl_is_the_bowls():
    problem = _problem(2e-6)
    u = _u_at(problem, Z0 + torch.tensor([0.004, -0.01], dtype=torch.float64))
    rep = Fm.identifiability(problem, u, ["young_modulus", "damping"])
    H = torch.tensor(rep["hessian"], dtype=torch.float64)
    assert torch.allclose(H, A, atol=0.05), H
    assert rep["parameters"]["young_modulus"]["identifiable"] and rep["parameters"]["damping"]["identifiable"]
    # the independence of young_modulus: 1 / [A^-1]_00 / A_00
    indep = 1 / torch.linalg.inv(A)[0, 0] / A[0, 0]
    assert abs(rep["parameters"]["young_modulus"]["independence"] - float(indep)) < 0.05


def test_a_valley_along_a_combination_is_reported():
    problem = _problem(0.0)
    # exactly flat along (3, 1): a pseudo-inverse would report both parameters as independent
    problem.loss = lambda u, h: (lambda d: 0.5 * (d[0] - 3 * d[1]) ** 2)(problem.space.natural(u) - Z0)
    rep = Fm.identifiability(problem, _u_at(problem, Z0), ["young_modulus", "damping"])
    assert not rep["parameters"]["young_modulus"]["identifiable"]
    direction = rep["sloppiest"]["direction"]
    assert abs(direction["damping"] / direction["young_modulus"] - 1 / 3) < 0.02
    # nearly flat: a curvature of 1e-4 along the valley leaves both determined only in combination
    problem.loss = lambda u, h: (lambda d: 0.5 * (d[0] - 3 * d[1]) ** 2 + 5e-5 * (d @ d))(problem.space.natural(u) - Z0)
    rep = Fm.identifiability(problem, _u_at(problem, Z0), ["young_modulus", "damping"])
    assert not rep["parameters"]["young_modulus"]["identifiable"] and not rep["parameters"]["damping"]["identifiable"]


def test_the_video_prior_is_left_out_and_kept():
    """A score-distillation term draws new noise at every call: it must not enter the curvature."""
    problem = _problem(0.0)
    data = problem.loss
    gen = torch.Generator().manual_seed(0)
    problem.prior = lambda: float(torch.rand((), generator=gen))
    problem.loss = lambda u, h: data(u, h) + (problem.prior() if problem.prior is not None else 0.0)
    rep = Fm.identifiability(problem, _u_at(problem, Z0), ["young_modulus", "damping"])
    assert torch.allclose(torch.tensor(rep["hessian"], dtype=torch.float64), A, atol=1e-6)
    assert problem.prior is not None
