"""Scene files: every mistake is one line naming the key, the value and the file; a non-zero exit."""

import pytest
from typer.testing import CliRunner

from dreamcloth.cli.app import app
from dreamcloth.cli.pipeline.scene import SceneError, load_scene, to_toml

from .scenes import drape_text, write_drape


def _text(**kw):
    return drape_text(**kw)


@pytest.mark.parametrize(
    "edit,message",
    [
        (("fov_y_deg = 40", "fov_y_deg = 40\nzoom = 2"), r"camera\.zoom is not a known key"),
        (("[object.material]", "[object.material]\nyoungs_modulus = 3"), r"object\[0\]\.material\.youngs_modulus is not a known key"),
        (("poisson_ratio = 0.3", "poisson_ratio = 0.7"), r"object\[0\]\.material\.poisson_ratio = 0\.7 is out of range \[0, 0\.5\)"),
        (("young_modulus = [20.0, 400.0]", "young_modulus = [400.0, 20.0]"), r"object\[0\]\.fit\.young_modulus range \[400, 20\] has low > high"),
        (("fps = 24", "fps = -3"), r"scene\.fps = -3 is out of range"),
        (("fps = 24", "fps = 24\nflip = 1.0"), r"scene\.flip = 1 is out of range \[0, 0\.999\]"),
        (('kind = "sphere"', 'kind = "cylinder"'), r"collider\[0\]\.kind = 'cylinder' is not one of"),
        (('mesh = "grid:8x8"', 'mesh = "grid:1x8"'), r"at least 2x2"),
        (("damping = 0.3", "damping = nan"), r"damping must be a finite number"),
        # found by a new user's pass (2026-12-06): these were tracebacks, or passed
        (("size = [0.6, 0.6]", "size = [[0.6], [0.6]]"), r"object\[0\]\.size must be a list of 2 number\(s\)"),
        (("size = [0.6, 0.6]", 'size = ["a", 0.6]'), r"object\[0\]\.size must be a list of 2 number\(s\)"),
        (("size = [0.6, 0.6]", "size = [true, 0.6]"), r"object\[0\]\.size must be a list of 2 number\(s\)"),
        (("size = [0.6, 0.6]", "size = [1e-9, 1e-9]"), r"object\[0\]\.size must lie in \[0\.0001, 1e\+06\] m"),
        (("center = [0.57, 0.72, 0.55]", "center = [0.57, 0.72, 1e300]"), r"object\[0\]\.center components must lie within"),
        (('mesh = "grid:8x8"', 'mesh = "grid:100000x100000"'), r"at most 1000 vertices a side"),
        (('name = "sheet"', 'name = "../../escaped"'), r"object\[0\]\.name = '\.\./\.\./escaped' cannot be part of a file name"),
        (("young_modulus = [20.0, 400.0]", "young_modulus = [100.0, 100.0]"), r"young_modulus range \[100, 100\] is a single value"),
        (("color = [0.85, 0.35, 0.2]", "color = [0.85, 0.35, 0.2]\nvelocity = [0, 1e200, 0]"),
         r"object\[0\]\.velocity components must lie within \+-1e\+06"),
        (("color = [0.85, 0.35, 0.2]", "color = [0.85, 0.35, 0.2]\nvelocity = [999, 999, 999]"),
         r"object\[0\]\.velocity must have a magnitude of at most 1000, got 1730"),
        (('kind = "sphere"\ncenter = [0.5, 0.45, 0.5]\nradius = 0.15', 'kind = "mesh"\nmotion = "/tmp/*.obj"'),
         r"collider\[0\]\.motion = '/tmp/\*\.obj' is not a pattern relative to the scene's folder"),
        (('kind = "sphere"\ncenter = [0.5, 0.45, 0.5]\nradius = 0.15', 'kind = "mesh"\nmotion = ""'),
         r"collider\[0\]\.motion must be a glob of OBJ files"),
    ],
)
def test_mistakes_name_key_value_and_file(tmp_path, edit, message):
    old, new = edit
    text = _text()
    assert old in text
    path = write_drape(tmp_path, text=text.replace(old, new, 1))
    with pytest.raises(SceneError, match=message) as info:
        load_scene(path)
    assert str(path) in str(info.value)
    result = CliRunner().invoke(app, ["scene", "check", str(path)])
    assert result.exit_code == 2
    lines = [l for l in result.output.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and str(path.name) in lines[0]


def test_colliders_must_be_tables(tmp_path):
    text = "collider = 5\n" + _text().split("[[collider]]")[0]
    path = write_drape(tmp_path, text=text)
    with pytest.raises(SceneError, match=r"collider must be an array of tables \(\[\[collider\]\]\), got 5"):
        load_scene(path)


def test_scene_check_refuses_substeps_above_the_cfl_bound(tmp_path):
    path = write_drape(tmp_path, text=_text().replace("frames = 10", "frames = 10\nsubsteps = 1"))
    result = CliRunner().invoke(app, ["scene", "check", str(path)])
    (line,) = [l for l in result.output.splitlines() if l.startswith("error:")]
    assert result.exit_code == 2 and "scene.substeps = 1 gives dt" in line and "use at least" in line, result.output


def test_not_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[scene\nfps = ")
    with pytest.raises(SceneError, match="not valid TOML"):
        load_scene(bad)
    with pytest.raises(FileNotFoundError):
        load_scene(tmp_path / "nope.toml")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        load_scene(tmp_path)


def test_object_outside_domain(tmp_path):
    path = write_drape(tmp_path, text=_text().replace("center = [0.57, 0.72, 0.55]", "center = [0.57, 1.72, 0.55]"))
    result = CliRunner().invoke(app, ["scene", "check", str(path)])
    assert result.exit_code == 2
    assert "outside the scene domain" in result.output


def test_check_summary_and_roundtrip(tmp_path):
    path = write_drape(tmp_path)
    result = CliRunner().invoke(app, ["scene", "check", str(path)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "64 vertices + 98 elements" in result.output
    scene = load_scene(path)
    again = tmp_path / "again.toml"
    again.write_text(to_toml(scene))
    s2 = load_scene(again)
    assert s2.objects == scene.objects and s2.settings == scene.settings and s2.camera == scene.camera


def test_bending_and_drag_are_fittable_with_fabric_default_ranges(tmp_path):
    text = drape_text().replace("[object.fit]", "[object.fit]\nbending_stiffness = true\ndrag_coefficient = [0.5, 2.0]")
    scene = load_scene(write_drape(tmp_path, text=text))
    assert scene.objects[0].fit["bending_stiffness"] == (1e-6, 2e-4)
    assert scene.objects[0].fit["drag_coefficient"] == (0.5, 2.0)
    assert scene.objects[0].values["bending_stiffness"] == 2e-5  # the default, a t-shirt knit
    bad = drape_text().replace("[object.material]", "[object.material]\nbending_stiffness = -1e-5")
    with pytest.raises(SceneError, match=r"object\[0\]\.material\.bending_stiffness = -1e-05 is out of range"):
        load_scene(write_drape(tmp_path, "bad.toml", text=bad))


@pytest.mark.parametrize("name, default, value, fit_range, bad, message", [
    # no limit: older scenes behave as before
    ("max_stretch", 0.0, 1.03, (1.0, 1.2), 0.97, r"max_stretch = 0.97 is out of range \[1, inf\) \(or 0: no limit\)"),
    # older scenes keep their drag normal to the sheet
    ("drag_tangential", 0.0, 1.0, (0.0, 1.0), 1.5, r"drag_tangential = 1.5 is out of range \[0, 1\]"),
])
def test_newer_cloth_parameters_default_to_off_are_fittable_and_validated(tmp_path, name, default, value, fit_range, bad, message):
    scene = load_scene(write_drape(tmp_path, "plain.toml"))
    assert scene.objects[0].values[name] == default
    text = drape_text().replace("[object.material]", f"[object.material]\n{name} = {value}")
    scene = load_scene(write_drape(tmp_path, "set.toml", text=text.replace("[object.fit]", f"[object.fit]\n{name} = true")))
    assert scene.objects[0].values[name] == value
    assert scene.objects[0].fit[name] == fit_range
    text = drape_text().replace("[object.material]", f"[object.material]\n{name} = {bad}")
    with pytest.raises(SceneError, match=message):
        load_scene(write_drape(tmp_path, "bad.toml", text=text))


def test_a_max_stretch_fit_range_cannot_reach_its_off_value(tmp_path):
    # a fit range moves through its inside: from the off value it would cross inadmissible values
    bad = drape_text().replace("[object.fit]", "[object.fit]\nmax_stretch = [0.0, 1.1]")
    with pytest.raises(SceneError, match=r"max_stretch = 0 is out of range \[1, inf\) \(a fit range cannot reach 0: no limit\)"):
        load_scene(write_drape(tmp_path, "bad_range.toml", text=bad))


def test_fitted_values_at_a_range_edge_are_flagged(tmp_path):
    """Within 2% of an edge in fit space (log space for stiffnesses): flagged in params.json with a note."""
    import json
    import types

    from dreamcloth.cli.pipeline.fit import ParamSpace
    from dreamcloth.cli.pipeline.report import write_params_json

    text = drape_text().replace("[object.fit]", "[object.fit]\ndamping = [0.05, 1.0]")
    scene = load_scene(write_drape(tmp_path, text=text))
    space = ParamSpace(scene)
    names = space.names(scene)
    k_e, k_d = names.index("young_modulus"), names.index("damping")
    assert space.range_edge(k_e, 395.0) == "high"  # log fraction 0.996
    assert space.range_edge(k_e, 300.0) is None  # 0.90
    assert space.range_edge(k_e, 20.5) == "low"
    assert space.range_edge(k_d, 0.06) == "low"  # linear fraction 0.0105
    assert space.range_edge(k_d, 0.5) is None
    values = {space.keys[k_e]: 399.0, space.keys[k_d]: 0.5}
    result = types.SimpleNamespace(values=values, initial=values, loss=0.1, history=[], state=types.SimpleNamespace(events=[]))
    doc = write_params_json(tmp_path / "params.json", scene, space, result, None, [], {})
    saved = json.loads((tmp_path / "params.json").read_text())
    flags = {p["name"]: p["at_range_edge"] for p in saved["parameters"]}
    assert flags == {"young_modulus": "high", "damping": None}
    assert any("young_modulus = 399 ended at the top of its range [20, 400]" in n and "widen" in n for n in doc["notes"])
    # damping 1 (no damping) and drag 0 (no drag) are physical limits: flagged, but nothing to widen
    drag = drape_text().replace("[object.fit]", "[object.fit]\ndamping = [0.05, 1.0]\ndrag_coefficient = [0.0, 3.0]\n"
                                                 "drag_tangential = true")
    scene = load_scene(write_drape(tmp_path, "limits.toml", text=drag))
    space = ParamSpace(scene)
    values = {key: {"young_modulus": 100.0, "damping": 0.999, "drag_coefficient": 0.01, "drag_tangential": 0.999}[key[1]]
              for key in space.keys}
    result = types.SimpleNamespace(values=values, initial=values, loss=0.1, history=[], state=types.SimpleNamespace(events=[]))
    doc = write_params_json(tmp_path / "limits.json", scene, space, result, None, [], {})
    flags = {p["name"]: (p["at_range_edge"], p.get("at_physical_limit", False)) for p in doc["parameters"]}
    assert flags == {"young_modulus": (None, False), "damping": ("high", True), "drag_coefficient": ("low", True),
                     "drag_tangential": ("high", True)}
    assert any("damping = 0.999 ended at 1, the physical limit of damping (1 keeps all the velocity: no damping)" in n
               and "as little of it" in n for n in doc["notes"])
    # drag along the velocity is the most of drag_tangential there is
    assert any(n.startswith("drag_tangential = 0.999 ended at 1") and "as much of it" in n for n in doc["notes"])
    assert not any("fit again" in n for n in doc["notes"])
    assert not any("starting values" in n for n in doc["notes"])  # no iterations: nothing to say
    # a fit whose iterations never beat its start says so (the cross-simulator sphere_se fit, 2026-12-05)
    result.history = [{"loss": 0.2}] * 11
    doc = write_params_json(tmp_path / "stuck.json", scene, space, result, None, [], {})
    assert any("the fit ended at its starting values after 11 iterations" in n for n in doc["notes"])
    result.values = {**values, space.keys[0]: 101.0}
    doc = write_params_json(tmp_path / "moved.json", scene, space, result, None, [], {})
    assert not any("starting values" in n for n in doc["notes"])


def test_scene_check_says_when_the_grid_sets_the_folds(tmp_path):
    """A cell coarser than half the bending length (B / (rho g))^(1/3): on the MPM solver the grid,
    not the fabric, bends the cloth."""
    soft = write_drape(tmp_path, "soft.toml", text=drape_text().replace("[object.material]", "[object.material]\nbending_stiffness = 1e-5"),
                       solver="mpm")
    out = CliRunner().invoke(app, ["scene", "check", str(soft)], terminal_width=400)
    assert out.exit_code == 0, out.output
    assert "not converged" in out.output and "bending length" in out.output
    stiff = write_drape(tmp_path, "stiff.toml", text=drape_text().replace("[object.material]", "[object.material]\nbending_stiffness = 0.05"),
                        solver="mpm")
    out = CliRunner().invoke(app, ["scene", "check", str(stiff)], terminal_width=400)
    assert out.exit_code == 0, out.output
    assert "not converged" not in out.output


def test_scene_check_with_the_mesh_cloth_solver(tmp_path):
    """The grid-free solver: named with its contact thickness instead of a grid, and no grid note."""
    text = drape_text().replace("[object.material]", "[object.material]\nbending_stiffness = 1e-5")
    mesh = write_drape(tmp_path, "mesh.toml", text=text.replace("[scene]\n", '[scene]\ncloth_solver = "mesh"\n', 1))
    out = CliRunner().invoke(app, ["scene", "check", str(mesh)], terminal_width=400)
    assert out.exit_code == 0, out.output
    assert "cloth solver: mesh (no grid; cloth-cloth contact at 4 mm; membrane implicit)" in " ".join(out.output.split())
    assert "not converged" not in out.output and "dx " not in out.output
    explicit = write_drape(tmp_path, "explicit.toml", text=mesh.read_text().replace("[scene]\n", '[scene]\nmembrane = "explicit"\n', 1))
    out = CliRunner().invoke(app, ["scene", "check", str(explicit)], terminal_width=400)
    assert out.exit_code == 0, out.output
    assert "membrane explicit)" in " ".join(out.output.split())  # rich wraps at its own width


def test_scene_check_measures_convergence_on_a_finer_grid(tmp_path):
    """``--convergence`` simulates the scene on its grid and on a finer one and compares the
    silhouettes frame by frame: frame 0 (the rest geometry, the same on both) is identical, later
    frames are not (the 8x8 drape on grid 16 against 32 folds differently over the sphere)."""
    from dreamcloth.cli.pipeline.simulate import CONVERGED_IOU, measured_convergence

    path = write_drape(tmp_path, "drape.toml", frames=8, solver="mpm")
    c = measured_convergence(load_scene(path), frames=8)
    print(c)
    assert (c["coarse"], c["fine"], c["frames"], len(c["iou"])) == (16, 32, 8, 8)
    assert c["iou"][0] == 1.0 and 0.0 < c["worst"] < 1.0 and c["worst"] == min(c["iou"])
    assert c["converged"] == (c["worst"] >= CONVERGED_IOU)
    out = CliRunner().invoke(app, ["scene", "check", str(path), "--convergence", "--frames", "3"], terminal_width=400)
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())  # rich wraps at its own width
    assert "measured: grid 16 against grid 32" in text and "worst per-frame silhouette IoU" in text
    out = CliRunner().invoke(app, ["scene", "check", str(path), "--convergence", "--fine", "16"], terminal_width=400)
    assert out.exit_code != 0 and "--fine 16 must be above the scene's grid (16)" in " ".join(out.output.split())


def test_color_back_defaults_to_color_and_is_validated_like_it(tmp_path):
    text = _text()
    assert "kind = \"cloth\"" in text
    scene = load_scene(write_drape(tmp_path, text=text))
    cloth = scene.objects[0]
    assert cloth.color_back == cloth.color
    two = text.replace('kind = "cloth"', 'kind = "cloth"\ncolor_back = [0.1, 0.2, 0.9]', 1)
    scene = load_scene(write_drape(tmp_path, name="two.toml", text=two))
    assert scene.objects[0].color_back == (0.1, 0.2, 0.9)
    again = tmp_path / "again.toml"
    again.write_text(to_toml(scene))
    assert load_scene(again).objects == scene.objects
    for bad, message in (("[0.1, 0.2, 1.5]", r"object\[0\]\.color_back.*components must lie in \[0, 1\]"),
                         ("[0.1, 0.2]", r"object\[0\]\.color_back must be a list of 3 numbers")):
        path = write_drape(tmp_path, name="bad.toml", text=text.replace('kind = "cloth"', f'kind = "cloth"\ncolor_back = {bad}', 1))
        with pytest.raises(SceneError, match=message) as info:
            load_scene(path)
        assert str(path) in str(info.value)


def test_the_default_cloth_solver_is_the_mesh_where_it_applies(tmp_path):
    """``cloth_solver = "auto"`` (the default): the grid-free solver for a scene made only of cloth
    with analytic colliders and no strain limit; MPM otherwise.  The file records the choice."""
    from types import SimpleNamespace as NS

    from dreamcloth.cli.pipeline.demo import DEMO_SCENE
    from dreamcloth.cli.pipeline.scene import resolve_cloth_solver

    assert load_scene(DEMO_SCENE).settings.cloth_solver == "mesh"
    assert 'cloth_solver = "mesh"' in to_toml(load_scene(DEMO_SCENE))
    pinned = write_drape(tmp_path, "mpm.toml", solver="mpm")
    assert load_scene(pinned).settings.cloth_solver == "mpm"
    cloth = NS(kind="cloth", values={"max_stretch": 0.0}, fit={"young_modulus": (20.0, 400.0)})
    sphere = NS(kind="sphere")
    assert resolve_cloth_solver([cloth], [sphere, NS(kind="plane"), NS(kind="box")]) == "mesh"
    assert resolve_cloth_solver([cloth, NS(kind="solid", values={}, fit={})], [sphere]) == "mpm"
    assert resolve_cloth_solver([cloth], [NS(kind="mesh")]) == "mpm"
    assert resolve_cloth_solver([NS(kind="cloth", values={"max_stretch": 1.02}, fit={})], [sphere]) == "mpm"
    assert resolve_cloth_solver([NS(kind="cloth", values={}, fit={"max_stretch": (1.0, 1.1)})], [sphere]) == "mpm"


def test_scene_check_measures_the_mesh_solvers_time_step(tmp_path):
    """The mesh solver has no grid: ``--convergence`` compares the scene's substeps per frame with
    twice as many (``--fine``: the finer count)."""
    from dreamcloth.cli.pipeline.simulate import measured_convergence

    path = write_drape(tmp_path, "drape.toml", frames=4)
    c = measured_convergence(load_scene(path), frames=4)
    assert c["knob"] == "substeps per frame" and c["fine"] == 2 * c["coarse"] and len(c["iou"]) == 4
    assert c["iou"][0] == 1.0 and 0.5 < c["worst"] <= 1.0
    out = CliRunner().invoke(app, ["scene", "check", str(path), "--convergence", "--frames", "3", "--fine", str(c["fine"] + 1)],
                             terminal_width=400)
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert f"measured: {c['coarse']} against {c['fine'] + 1} substeps per frame" in text
    out = CliRunner().invoke(app, ["scene", "check", str(path), "--convergence", "--fine", str(c["coarse"])], terminal_width=400)
    assert out.exit_code != 0 and "must be above the scene's substeps per frame" in " ".join(out.output.split())
