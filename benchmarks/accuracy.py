"""Parameter recovery on videos that dreamcloth simulates from values the fit is not told.

Four scenarios (the issue's list): (a) a cloth draped over a sphere, (b) a cloth pinned at two
corners swinging, (c) a cloth sliding on a tilted plane, (d) an elastic solid dropped on the
ground.  For each: the scene with the true values is simulated and rendered (``dreamcloth
simulate``), the fit scene (the same scene with placeholder values for the fitted parameters)
is fitted to that video, and the relative error of every identifiable parameter is reported
(stiffnesses in log space: |log(fit / truth)|).  ``predict`` is scored on (b): its first frames
already show the stiffness and the damping (a drape shows them only after the contact).

The tests run the ``small`` sizes; ``dreamcloth bench --section accuracy`` the ``full`` ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

from .common import Measurement

SECTION = "accuracy"

_SCENE = """
[scene]
fps = 24
frames = {{frames}}
grid = {{grid}}
domain = [[0.0, 0.0, 0.0], {top}]
"""

_CAMERA = """
[camera]
width = {width}
height = {height}
fov_y_deg = {fov}
eye = {eye}
look_at = {look_at}
background = [1.0, 1.0, 1.0]
"""

_CLOTH = """
[[object]]
name = "sheet"
kind = "cloth"
mesh = "grid:{n}x{n}"
"""

_CLOTH_MATERIAL = """
[object.material]
young_modulus = {young_modulus}
poisson_ratio = 0.3
density = 1.0
damping = {damping}
friction = {friction}
shear_stiffness = 200.0
normal_stiffness = 200.0
"""

SCENES = {
    "drape": _SCENE.format(top="[1.0, 1.0, 1.0]") + _CAMERA.format(width="{width}", height="{height}", fov=40, eye="[0.5, 1.05, 1.75]", look_at="[0.5, 0.45, 0.5]") + """
""" + _CLOTH + """size = [0.6, 0.6]
center = [0.57, 0.72, 0.55]
rotation_deg = [0.0, 25.0, 0.0]
color = [0.85, 0.35, 0.2]
""" + _CLOTH_MATERIAL + """
{fit}

[[collider]]
kind = "sphere"
center = [0.5, 0.45, 0.5]
radius = 0.15

[[collider]]
kind = "plane"
point = [0.0, 0.05, 0.0]
""",
    "swing": _SCENE.format(top="[1.0, 1.0, 1.0]") + _CAMERA.format(width="{width}", height="{height}", fov=40, eye="[1.35, 0.95, 1.45]", look_at="[0.42, 0.55, 0.5]") + """
""" + _CLOTH + """size = [0.45, 0.45]
center = [0.5, 0.8, 0.5]
rotation_deg = [0.0, 90.0, 0.0]
color = [0.2, 0.45, 0.85]
pinned = "corners:2"
""" + _CLOTH_MATERIAL + """
{fit}
""",
    "slide": _SCENE.format(top="[1.0, 0.6, 0.6]") + _CAMERA.format(width="{width}", height="{height}", fov=40, eye="[0.5, 0.9, 1.6]", look_at="[0.5, 0.25, 0.3]") + """
""" + _CLOTH + """size = [0.25, 0.25]
center = [0.72, 0.29, 0.3]
rotation_deg = [0.0, 0.0, 30.0]
color = [0.3, 0.7, 0.35]
""" + _CLOTH_MATERIAL + """
{fit}

[[collider]]
kind = "plane"
point = [0.5, 0.15, 0.3]
normal = [-0.5, 0.8660254, 0.0]
""",
    "solid": _SCENE.format(top="[1.0, 1.0, 1.0]") + _CAMERA.format(width="{width}", height="{height}", fov=40, eye="[0.62, 0.42, 1.2]", look_at="[0.5, 0.33, 0.5]") + """
[[object]]
name = "block"
kind = "solid"
mesh = "box"
size = [0.24, 0.16, 0.2]
center = [0.5, 0.5, 0.5]
rotation_deg = [0.0, 20.0, 10.0]
color = [0.75, 0.6, 0.2]

[object.material]
model = "neo_hookean"
young_modulus = {young_modulus}
poisson_ratio = 0.3
density = 1000.0
damping = {damping}
friction = 0.5
{fit}

[[collider]]
kind = "plane"
point = [0.0, 0.1, 0.0]
""",
}


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A scene template, the truth, what is fitted (with ranges) and the sizes."""

    name: str
    truth: dict[str, float]
    fit: dict[str, tuple[float, float]]
    fixed: dict[str, float]
    small: dict
    full: dict
    iterations: tuple[int, int]  # small, full


SCENARIOS = {
    "drape": Scenario(
        "drape", {"young_modulus": 60.0, "damping": 0.3}, {"young_modulus": (20.0, 400.0), "damping": (0.05, 1.0)},
        {"friction": 0.3}, dict(frames=12, grid=16, n=8, width=96, height=72), dict(frames=16, grid=24, n=12, width=128, height=96),
        (20, 30)),
    "swing": Scenario(
        "swing", {"young_modulus": 80.0, "damping": 0.4}, {"young_modulus": (20.0, 400.0), "damping": (0.05, 1.0)},
        {"friction": 0.3}, dict(frames=20, grid=16, n=7, width=96, height=72), dict(frames=24, grid=24, n=11, width=128, height=96),
        (20, 30)),
    "slide": Scenario(
        "slide", {"friction": 0.3}, {"friction": (0.0, 0.55)},
        {"young_modulus": 100.0, "damping": 1.0}, dict(frames=12, grid=20, n=6, width=96, height=72), dict(frames=16, grid=32, n=8, width=128, height=96),
        (15, 25)),
    "solid": Scenario(
        "solid", {"young_modulus": 8e4, "damping": 0.5}, {"young_modulus": (2e4, 5e5), "damping": (0.05, 1.0)},
        {}, dict(frames=12, grid=20, width=96, height=72), dict(frames=16, grid=32, width=128, height=96),
        (20, 30)),
}


def scene_text(sc: Scenario, size: str, values: dict[str, float], with_fit: bool) -> str:
    dims = sc.small if size == "small" else sc.full
    vals = {"young_modulus": 100.0, "damping": 0.5, "friction": 0.3, **sc.fixed, **values}
    fit = ""
    if with_fit:
        fit = "[object.fit]\n" + "\n".join(f"{k} = [{lo}, {hi}]" for k, (lo, hi) in sc.fit.items())
    return SCENES[sc.name].format(fit=fit, **dims, **vals)


def _placeholders(sc: Scenario) -> dict[str, float]:
    # values for the fitted parameters that the fit scene carries: deliberately wrong, ignored by the fit
    return {k: (math.sqrt(lo * hi) if k in ("young_modulus",) else 0.5 * (lo + hi)) for k, (lo, hi) in sc.fit.items()}


def run_scenario(name: str, size: str = "small", folder: Path | None = None, predict: bool = False) -> dict:
    """Simulate the truth, fit it, report errors (and optionally score ``predict``)."""
    from dreamcloth.cli.pipeline.fit import FitConfig
    from dreamcloth.cli.pipeline.fit_video import fit_video
    from dreamcloth.cli.pipeline.predict import predict_video
    from dreamcloth.cli.pipeline.simulate import run_simulation

    sc = SCENARIOS[name]
    folder = Path(folder or tempfile.mkdtemp(prefix=f"accuracy_{name}_"))
    folder.mkdir(parents=True, exist_ok=True)
    # the truth is simulated with the fit ranges in the scene, so that the CFL time step is the one the fit uses
    truth_scene = folder / "truth.toml"
    truth_scene.write_text(scene_text(sc, size, sc.truth, with_fit=True))
    fit_scene = folder / "fit.toml"
    fit_scene.write_text(scene_text(sc, size, _placeholders(sc), with_fit=True))
    t0 = time.perf_counter()
    run_simulation(truth_scene, folder / "truth")
    video = folder / "truth" / "video.mp4"
    iters = sc.iterations[0 if size == "small" else 1]
    cfg = FitConfig(iterations=iters, appearance_steps=60 if size == "small" else 80)
    doc = fit_video(video, fit_scene, folder / "fit", cfg, identify=True).doc
    errors = {}
    for p in doc["parameters"]:
        tv = sc.truth[p["name"]]
        if p["space"] == "log":
            errors[p["name"]] = abs(math.log(p["value"] / tv))  # relative error in log space
        else:
            errors[p["name"]] = abs(p["value"] - tv) / abs(tv)
    report = {"scenario": name, "size": size, "fitted": {p["name"]: p["value"] for p in doc["parameters"]},
              "truth": sc.truth, "relative_error": errors,
              "identifiable": {p["name"]: p.get("identifiable") for p in doc["parameters"]},
              "seconds": round(time.perf_counter() - t0, 1), "folder": str(folder)}
    if predict:
        frames = (sc.small if size == "small" else sc.full)["frames"]
        context = frames * 2 // 3
        pred = predict_video(video, fit_scene, folder / "predict", context, frames - context,
                             FitConfig(iterations=iters, horizon_start=min(6, context))).report
        report["predict_mean_mask_iou"] = pred["mean_mask_iou"]
        report["predict_last_mask_iou"] = pred["last_frame"]["mask_iou"]
        report["predict_last_psnr"] = pred["last_frame"]["psnr"]
        report["predict_time_step_agreement"] = pred["time_step_check"]["mean_mask_iou"]  # the prediction against itself at dt/2
    (folder / "accuracy.json").write_text(json.dumps(report, indent=2))
    return report


def run(quick: bool = False) -> list[Measurement]:
    """The accuracy section of ``dreamcloth bench`` (``quick``: the small sizes)."""
    size = "small" if quick else "full"
    out = []
    for name in SCENARIOS:
        r = run_scenario(name, size, predict=(name == "swing"))
        for p, err in r["relative_error"].items():
            out.append(Measurement(SECTION, f"{name}: {p} error", 100 * err, "%",
                                   f"fit {r['fitted'][p]:.4g} vs true {r['truth'][p]:.4g}; goal < 10%; {r['seconds']} s"))
        if "predict_last_mask_iou" in r:
            out.append(Measurement(SECTION, f"{name}: predict mask IoU (last frame)", r["predict_last_mask_iou"], "",
                                   f"mean over unseen frames {r['predict_mean_mask_iou']:.3f}; goal >= 0.9"))
    from .cross_sim import run_cross_sim  # videos another simulator (Newton) made: benchmarks/cross_sim.py

    out += run_cross_sim(quick)
    return out


def regenerate_demo(folder: Path | None = None) -> Path:
    """Re-make the bundled demo video: demo_drape.toml with the values of demo_drape.truth.json
    (its fit table kept, so the time step is the one the fit uses), simulated and rendered.

    ``python -c "from dreamcloth.benchmarks.accuracy import regenerate_demo; print(regenerate_demo())"``
    """
    from dreamcloth.cli.pipeline.demo import DEMO_SCENE, DEMO_TRUTH
    from dreamcloth.cli.pipeline.scene import load_scene, to_toml
    from dreamcloth.cli.pipeline.simulate import run_simulation

    folder = Path(folder or tempfile.mkdtemp(prefix="demo_"))
    folder.mkdir(parents=True, exist_ok=True)
    truth = json.loads(DEMO_TRUTH.read_text())
    scene = load_scene(DEMO_SCENE).with_values({(0, k): v for k, v in truth.items()})
    (folder / "truth.toml").write_text(to_toml(scene))
    run_simulation(folder / "truth.toml", folder / "sim")
    return folder / "sim" / "video.mp4"
