"""Bad input gets a clear error; a rollout that blows up names the substep."""

import pytest
import torch

from dreamcloth.taichi_mpm import GridSpec, Model, Params, Plane, SimConfig, SimulationError, Bounds, State, simulate

from .scenes import F64, lattice


def _scene(substeps=10):
    grid = GridSpec.from_domain((0, 0, 0), (1, 1, 1), 12)
    x = lattice(3, grid.dx * 0.5, (0.45, 0.4, 0.45))
    model = Model.create(torch.full((x.shape[0],), (grid.dx * 0.5) ** 3, dtype=F64), "neo_hookean",
                         colliders=[Plane(point=(0, 0.3, 0))])
    return model, State.at_rest(x), SimConfig(grid=grid, fps=30.0, substeps_per_frame=substeps)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("young_modulus", float("nan"), "young_modulus contains NaN"),
        ("young_modulus", -5.0, "young_modulus must be > 0"),
        ("poisson_ratio", 0.5, "poisson_ratio must be in"),
        ("density", float("inf"), "density contains NaN or infinite"),
        ("damping", 1.5, "damping must be in"),
        ("friction", -0.1, "friction must be >= 0"),
    ],
)
def test_bad_parameters(field, value, message):
    model, state, cfg = _scene()
    values = dict(young_modulus=1e3, poisson_ratio=0.3, density=1e3, damping=0.9, friction=0.3)
    values[field] = value
    with pytest.raises(ValueError, match=message):
        simulate(model, state, Params.create(**values, dtype=F64), cfg, 3)


def test_particle_outside_domain():
    model, state, cfg = _scene()
    x = state.x.clone()
    x[5, 1] = 1.5
    with pytest.raises(ValueError, match="particle 5 .* starts outside the simulation domain"):
        simulate(model, State.at_rest(x), Params.create(1e3, 0.3, 1e3, dtype=F64), cfg, 3)


def test_nan_in_initial_state():
    model, state, cfg = _scene()
    v = torch.zeros_like(state.x)
    v[2, 0] = float("nan")
    with pytest.raises(ValueError, match="initial v contains NaN"):
        simulate(model, State.at_rest(state.x, v), Params.create(1e3, 0.3, 1e3, dtype=F64), cfg, 3)


def test_dt_above_cfl_bound():
    model, state, cfg = _scene(substeps=1)
    with pytest.raises(ValueError, match=r"above the CFL bound .* use at least \d+ substeps per frame"):
        simulate(model, state, Params.create(1e6, 0.3, 1e3, dtype=F64), cfg, 3)


def test_blow_up_is_reported_with_its_substep():
    model, state, cfg = _scene(substeps=2)
    # bounds that understate the stiffness let a far too large dt through; the rollout explodes
    lying = Bounds((1e3, 1e3), (0.3, 0.3), (1e3, 1e3))
    with pytest.raises(SimulationError, match=r"NaN/inf at substep \d+ \(during frame \d+\)") as info:
        simulate(model, state, Params.create(1e9, 0.3, 1e3, dtype=F64), cfg, 40, bounds=lying)
    assert info.value.substep is not None and info.value.substep >= 1
