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


def test_blow_up_is_reported_with_its_substep(monkeypatch):
    model, state, cfg = _scene(substeps=2)
    # bounds that understate the stiffness are refused: they would choose a dt the values are unstable at
    lying = Bounds((1e3, 1e3), (0.3, 0.3), (1e3, 1e3))
    with pytest.raises(ValueError, match=r"params\.young_modulus \(1e\+09\.\.1e\+09\) lies outside bounds\.young_modulus"):
        simulate(model, state, Params.create(1e9, 0.3, 1e3, dtype=F64), cfg, 40, bounds=lying)
    # with the CFL check out of the way the far too large dt goes through, and the rollout explodes
    import importlib

    monkeypatch.setattr(importlib.import_module("dreamcloth.taichi_mpm.simulate"), "check_cfl", lambda config, bounds: None)
    with pytest.raises(SimulationError, match=r"NaN/inf at substep \d+ \(during frame \d+\)") as info:
        simulate(model, state, Params.create(1e9, 0.3, 1e3, dtype=F64), cfg, 40)
    assert info.value.substep is not None and info.value.substep >= 1


def test_a_state_of_another_size_or_shape_is_refused():
    """Found by a researcher's pass (2026-12-06): one particle too few segfaulted the engine, extra
    particles ran as garbage."""
    model, state, cfg = _scene()
    p = Params.create(1e3, 0.3, 1e3, dtype=F64)
    for x in (state.x[:-1], torch.cat([state.x, state.x[:4]])):
        with pytest.raises(ValueError, match=rf"state\.x has shape \({x.shape[0]}, 3\), the model's {model.num_particles} particles"):
            simulate(model, State.at_rest(x), p, cfg, 3)
    with pytest.raises(ValueError, match=r"state\.C has shape"):
        simulate(model, State(state.x, state.v, state.C[:, :2], state.F), p, cfg, 3)
    with pytest.raises(ValueError, match=r"params\.density is torch\.float32"):
        simulate(model, state, Params.create(1e3, 0.3, torch.tensor(1e3), dtype=F64), cfg, 3)
    with pytest.raises(ValueError, match=r"params\.young_modulus has shape \(2,\)"):
        simulate(model, state, Params.create(torch.tensor([1e3, 2e3], dtype=F64), 0.3, 1e3, dtype=F64), cfg, 3)


def test_bounds_grids_configs_and_controls_are_checked():
    model, state, cfg = _scene()
    p = Params.create(1e3, 0.3, 1e3, dtype=F64)
    with pytest.raises(ValueError, match=r"bounds\.young_modulus must be finite with low <= high"):
        simulate(model, state, p, cfg, 3, bounds=Bounds((1e4, 1e2), (0.3, 0.3), (1e3, 1e3)))
    with pytest.raises(ValueError, match=r"bounds\.density must be finite"):
        simulate(model, state, p, cfg, 3, bounds=Bounds((1e2, 1e4), (0.3, 0.3), (float("nan"), 1e3)))
    n = model.num_particles
    with pytest.raises(ValueError, match=r"control must be a \[K, 27, 3, 3\] tensor"):
        simulate(model, state, p, cfg, 3, control=torch.eye(3, dtype=F64).expand(2, n - 1, 3, 3))
    with pytest.raises(ValueError, match="control contains NaN"):
        simulate(model, state, p, cfg, 3, control=torch.full((1, n, 3, 3), float("nan"), dtype=F64))
    for kw, message in ((dict(dx=0.0), "grid dx must be a positive finite number"),
                        (dict(dx=float("nan")), "grid dx must be"), (dict(res=(0, 16, 16)), "grid res must be positive"),
                        (dict(origin=(float("nan"), 0, 0)), "grid origin must be finite")):
        args = {"origin": (0.0, 0.0, 0.0), "dx": 0.1, "res": (16, 16, 16), **kw}
        with pytest.raises(ValueError, match=message):
            GridSpec(**args)
    with pytest.raises(ValueError, match="substeps_per_frame must be an integer >= 1, got 2.5"):
        SimConfig(grid=cfg.grid, fps=30.0, substeps_per_frame=2.5)
    vol = model.volume
    for kw, message in ((dict(mass_volume=torch.full_like(vol, float("nan"))), "mass_volume must be"),
                        (dict(mass_volume=-vol), "mass_volume must be"),
                        (dict(pin_velocity=torch.tensor([float("nan"), 0.0, 0.0], dtype=F64)), "pin_velocity must be finite")):
        with pytest.raises(ValueError, match=message):
            Model.create(vol, "neo_hookean", **kw)


def test_non_finite_meshes_are_named(tmp_path):
    import numpy as np

    from dreamcloth.taichi_mpm import ModelBuilder, grid_mesh, load_mesh

    obj = tmp_path / "tet.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 nan\nf 1 3 2\nf 1 2 4\nf 2 3 4\nf 1 4 3\n")
    with pytest.raises(ValueError, match=r"tet\.obj: 1 vertices have NaN or infinite coordinates \(the first is vertex 3\)"):
        load_mesh(obj)
    v, f = grid_mesh(3, 3, (0.2, 0.2), (0.5, 0.5, 0.5))
    v[4, 1] = np.nan
    with pytest.raises(ValueError, match="cloth 's': vertices must be finite"):
        ModelBuilder(F64).add_cloth("s", v, f)
