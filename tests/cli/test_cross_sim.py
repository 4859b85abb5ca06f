"""The cross-simulator check's bundled data (benchmarks/cross_sim.py): Newton-made cloth trajectories
and the dreamcloth scenes that describe them.  Fast: no fit, no Newton; the scoring itself runs in
``dreamcloth bench --section accuracy`` (and in the slow test below, one case)."""

import json

import numpy as np
import pytest
import torch

from dreamcloth.benchmarks import cross_sim as C
from dreamcloth.cli.pipeline.scene import load_scene
from dreamcloth.cli.pipeline.simulation import build


@pytest.mark.parametrize("name", list(C.CASES))
def test_scene_parses_and_its_cloth_is_frame_zero(name):
    x, faces, info = C.load_case(name)
    assert x.shape == (C.FRAMES, C.GRID_N * C.GRID_N, 3)
    assert np.isfinite(x).all()
    scene = load_scene(C.DATA / f"{name}.toml")  # what `dreamcloth scene check` parses
    assert (scene.settings.fps, scene.settings.frames) == (C.FPS, C.FRAMES)
    cloth = scene.objects[0]
    assert cloth.values["density"] == C.AREAL_DENSITY and "density" not in cloth.fit  # given, not fitted
    assert {"young_modulus", "damping", "bending_stiffness", "drag_coefficient"} <= set(cloth.fit)
    sim = build(scene, torch.float64, "cpu", substeps=1)
    r = sim.ranges[0]
    x0 = sim.state0.x[r.start : r.start + r.num_vertices].numpy()
    # the scene's initial cloth is the Newton mesh's frame 0 (up to the storage quantisation, 1.5e-5 m)
    assert np.abs(x0 - x[0]).max() < 2e-5
    np.testing.assert_array_equal(sim.faces[0], faces)
    # pins, colliders and camera are the ones the trajectory was made with
    case = C.CASES[name]
    if case.pinned_ids:
        assert cloth.pinned == case.pinned_ids
    else:
        assert cloth.pinned == (f"corners:{case.pinned_corners}" if case.pinned_corners else ())
    assert C.initial_mesh(case)[2] == info["pinned"]
    assert len(scene.colliders) == len(info["colliders"])
    grow = info["material"]["particle_radius"] if case.collider_offset else 0.0  # where Newton's vertices rest
    for col, ref in zip(scene.colliders, info["colliders"]):
        assert col.kind == ref["kind"]
        want = dict(ref)
        if ref["kind"] == "sphere":
            want["radius"] = ref["radius"] + grow
        else:
            want["point"] = list(np.asarray(ref["point"]) + grow * np.asarray(ref["normal"]))
        for k, v in want.items():
            if k != "kind":
                assert np.allclose(col.params[k], v)
    assert list(scene.camera.eye) == info["camera"]["eye"] and list(scene.camera.look_at) == info["camera"]["look_at"]
    for i in info["pinned"]:  # pinned vertices never move
        assert np.abs(x[:, i] - x[0, i]).max() < 2e-5
    # the stored scene file is what the generator writes for the case
    assert (C.DATA / f"{name}.toml").read_text() == C.scene_toml(C.CASES[name])


def test_se_references_damp_their_contacts_critically_and_rest_where_newton_keeps_the_cloth():
    """Newton's contact spring per vertex, ke = 1,000 N/m, gets critical damping 2 sqrt(ke m) in the
    _se cases (the VBD set's 0.01 N s/m let vertices bounce almost elastically), and the scene's
    colliders grow by the particle radius Newton keeps the vertices off them."""
    case = C.CASES["tilted_se"]
    m = C.AREAL_DENSITY * case.size**2 / C.GRID_N**2
    assert C.contact_kd(case) == pytest.approx(2 * np.sqrt(C.NEWTON_CONTACT_KE * m))
    assert C.contact_kd(C.CASES["tilted_ground"]) == C.NEWTON_CONTACT_KD
    assert C.load_case("tilted_se")[2]["contact"]["soft_contact_kd"] == pytest.approx(C.contact_kd(case))
    x, _, info = C.load_case("tilted_se")
    ground = load_scene(C.DATA / "tilted_se.toml").colliders[0].params["point"][1]
    assert ground == pytest.approx(0.05 + info["material"]["particle_radius"])
    # Newton's cloth at rest on the ground (the last frame): its vertices lie at that height
    assert abs(float(np.median(x[-1][:, 1])) - ground) < 1e-3
    sphere = load_scene(C.DATA / "sphere_se.toml").colliders[0].params["radius"]
    assert sphere == pytest.approx(0.15 + 0.004)
    assert "drag_tangential" in load_scene(C.DATA / "swing_se.toml").objects[0].fit  # the _se cases carry air drag


def test_semi_implicit_bending_is_vbd_times_twice_a_triangle_area():
    """SolverSemiImplicit's dihedral force (k theta L^2 n on a wing) is the gradient of
    0.5 k L (2A) theta^2: on the grid cloth, VBD's rigidity times h^2 (h the grid spacing); the _se
    cases' edge_ke gives their VBD twins' rigidity."""
    x, faces, _ = C.load_case("swing")
    h = C.CASES["swing"].size / (C.GRID_N - 1)
    vbd = C.bending_rigidity_of_edge_ke(1e-3, x[0], faces)
    assert C.bending_rigidity_of_edge_ke(1e-3, x[0], faces, solver="semi_implicit") == pytest.approx(vbd * h * h, rel=1e-9)
    twins = {"swing_se": "swing", "tilted_se": "tilted_ground", "hammock_se": "swing", "sphere_se": "sphere_stiff",
             "corner_se": "swing", "flap_se": "swing"}
    vbd_edge_ke = {"sphere_se": 1e-2, "flap_se": 5e-3}
    for name, twin in twins.items():
        b = C.load_case(name)[2]["material"]["equivalent"]["bending_rigidity_N_m"]
        ref = C.bending_rigidity_of_edge_ke(vbd_edge_ke.get(name, 1e-3), *C.initial_mesh(C.CASES[name])[:2])
        assert b == pytest.approx(ref, rel=1e-6), (name, twin)


def test_semi_implicit_bending_force_is_that_energys_gradient():
    """Newton's own kernel (skipped without the crosssim extra): a hinge of two right triangles
    (legs h) bent by theta, the wing vertex's force against -d/dx [0.5 k h (2A) theta^2]."""
    wp = pytest.importorskip("warp")
    pytest.importorskip("newton")
    from newton._src.solvers.semi_implicit.kernels_particle import eval_bending

    wp.config.quiet = True
    h, a, ke = 0.03, 0.2, 7.0
    x3, x4 = np.zeros(3), np.array([0.0, 0.0, h])  # the shared edge
    x1, x2 = np.array([-h, 0.0, 0.0]), np.array([h * np.cos(a), h * np.sin(a), 0.0])
    pts = np.stack([x1, x2, x3, x4])
    f = wp.zeros(4, dtype=wp.vec3, device="cpu")
    wp.launch(eval_bending, dim=1, device="cpu",
              inputs=[wp.array(pts, dtype=wp.vec3, device="cpu"), wp.zeros(4, dtype=wp.vec3, device="cpu"),
                      wp.array([[0, 1, 2, 3]], dtype=int, device="cpu"), wp.zeros(1, dtype=float, device="cpu"),
                      wp.array([[ke, 0.0]], dtype=float, device="cpu"), f])
    force = f.numpy()[0]

    def theta(p1):
        n1, n2 = np.cross(x3 - p1, x4 - p1), np.cross(x4 - x2, x3 - x2)
        n1, n2 = n1 / np.linalg.norm(n1), n2 / np.linalg.norm(n2)
        return np.arctan2(np.dot(np.cross(n1, n2), (x4 - x3) / h), np.dot(n1, n2))

    k = ke * h * (h * h)  # k L 2A, A = h^2 / 2
    grad = np.array([(0.5 * k * theta(x1 + e) ** 2 - 0.5 * k * theta(x1 - e) ** 2) / 2e-7 for e in 1e-7 * np.eye(3)])
    np.testing.assert_allclose(force, -grad, rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("ke, ka", [(1e3, 1e3), (1e3, 3e3), (500.0, 2e3)])
def test_semi_implicit_membrane_conversion_is_the_energy_linearised(ke, ka):
    """SolverSemiImplicit's energy mu/2 |F|^2 + ka/2 (J - 1 - mu/ka)^2 (mu = ke) under uniaxial stress
    (the other stretch relaxed) has the 2-D Young's modulus and Poisson ratio of the conversion."""
    from scipy.optimize import minimize_scalar

    alpha = 1 + ke / ka

    def relaxed(e):  # energy density and lateral stretch at axial strain e
        r = minimize_scalar(lambda s2: ke / 2 * ((1 + e) ** 2 + s2**2) + ka / 2 * ((1 + e) * s2 - alpha) ** 2,
                            bounds=(0.5, 1.5), method="bounded", options={"xatol": 1e-13})
        return r.fun, r.x

    h = 1e-3
    (wm, _), (w0, _), (wp, s2) = relaxed(-h), relaxed(0.0), relaxed(h)
    e2d, nu = C.membrane_young_modulus(C.NewtonCloth(tri_ke=ke, tri_ka=ka), "semi_implicit")
    assert (wp - 2 * w0 + wm) / h**2 == pytest.approx(e2d, rel=1e-3)
    assert -(s2 - 1) / h == pytest.approx(nu, abs=2e-3)


def test_copy_last_baseline():
    masks = np.zeros((5, 4, 4), bool)
    masks[:, 0, 0] = True
    masks[3, 0, 1] = True  # frame 3: two pixels, one shared with frame 2's
    masks[4] = False
    masks[4, 3, 3] = True  # frame 4: disjoint
    assert C.copy_last_iou(masks, 3) == [0.5, 0.0]
    assert C.copy_last_iou(masks, 2) == [1.0, 0.5, 0.0]


def test_exact_masks_show_the_cloth_and_move():
    name = "swing"
    x, faces, _ = C.load_case(name)
    scene = load_scene(C.DATA / f"{name}.toml")
    m = C.exact_masks(x[[0, C.CONTEXT - 1, C.FRAMES - 1]], faces, scene)
    assert m.shape == (3, scene.camera.height, scene.camera.width)
    assert all(mm.sum() > 50 for mm in m)  # the cloth is in view
    assert C.mask_iou(m[0], m[1]) < 0.9  # and the video is not static


def test_bending_rigidity_conversion_scales_with_edge_ke():
    x, faces, _ = C.load_case("sphere_soft")
    b1 = C.bending_rigidity_of_edge_ke(1e-3, x[0], faces)
    b2 = C.bending_rigidity_of_edge_ke(1e-1, x[0], faces)
    assert b2 == pytest.approx(100 * b1, rel=1e-6)
    # a dihedral energy 0.5 k L theta^2 on edges of ~3 cm spacing: B ~ k * (a few cm)
    assert 5e-6 < b1 < 1e-4
    e, nu = C.membrane_young_modulus(C.NewtonCloth(tri_ke=1e3, tri_ka=1e3))
    assert e == pytest.approx(8e3 / 3) and nu == pytest.approx(1 / 3)


def test_info_records_the_newton_setup():
    for name, case in C.CASES.items():
        _, _, info = C.load_case(name)
        solver = C.SOLVER_CLASS[case.solver]
        assert info["solver"]["name"] == solver and solver in info["simulator"] and "newton" in info["simulator"]
        assert info["solver"]["substeps_per_frame"] == (case.substeps or C.NEWTON_SUBSTEPS)
        assert info["material"]["areal_density"] == C.AREAL_DENSITY
        assert info["material"].get("tri_drag", 0.0) == case.newton.tri_drag  # made before the field existed: none
        json.dumps(info)


def test_se_cases_are_made_by_symplectic_euler_and_fitted_with_the_mesh_solver():
    """The ``_se`` references: Newton's semi-implicit solver (which converges in dt where the cloth
    does not fold, unlike the VBD videos), with air drag; their scenes run dreamcloth's grid-free
    solver and let young_modulus reach Newton's membrane (2,000 N/m)."""
    se = [n for n, c in C.CASES.items() if c.solver == "semi_implicit"]
    assert sorted(se) == ["corner_se", "flap_se", "hammock_se", "sphere_se", "swing_se", "tilted_se"]
    e2d, _ = C.membrane_young_modulus(C.CASES["swing_se"].newton, "semi_implicit")
    for name in se:
        scene = load_scene(C.DATA / f"{name}.toml")
        assert scene.settings.cloth_solver == "mesh"
        lo, hi = scene.objects[0].fit["young_modulus"]
        assert lo < e2d < hi
        x, _, info = C.load_case(name)
        assert info["material"]["tri_drag"] > 0
        # Newton's triangle-particle contact keeps them apart but for 3 edges of sphere_se from frame 19 on
        assert max(C.self_crossings(x[t], C.initial_mesh(C.CASES[name])[1]) for t in (6, 11, 17, 23)) <= 3, name
    # with_solver replaces a scene's own cloth_solver
    assert load_scene(C.with_solver("swing_se", "mpm") / "swing_se.toml").settings.cloth_solver == "mpm"


def test_score_case_bookkeeping(tmp_path, monkeypatch):
    """score_case without the fit: a stand-in predict that "predicts" the true masks must score 1.0,
    and the baseline is the copy-last IoU of the exact masks (the real predict runs in the bench)."""
    from dreamcloth.cli.pipeline import predict as P
    from dreamcloth.render import write_png_frames

    name = "tilted_ground"
    x, faces, _ = C.load_case(name)
    truth = C.exact_masks(x, faces, load_scene(C.DATA / f"{name}.toml"))

    def fake_predict(video, scene_path, out, context, horizon, cfg, masks=None, **kw):
        assert masks is not None and masks.is_file() and video.is_file()
        write_png_frames(truth[context : context + horizon].astype(np.float32), out / "predicted_masks", prefix="mask")
        (out / "params.json").write_text(json.dumps({"parameters": [{"name": "young_modulus", "value": 500.0, "range": [10, 500],
                                                                     "at_range_edge": "high"}], "substeps_per_frame": 1}))
        return P.Prediction({"mean_mask_iou": 1.0}, None)

    monkeypatch.setattr(P, "predict_video", fake_predict)
    r = C.score_case(name, tmp_path, iterations=1)
    assert r["predict_iou"] == [1.0] * C.HORIZON
    assert r["copy_last_iou"] == pytest.approx(C.copy_last_iou(truth, C.CONTEXT))
    assert r["at_range_edge"] == {"young_modulus": "high"}
    saved = np.load(tmp_path / "video" / "masks.npz")["masks"]
    np.testing.assert_array_equal(saved, truth)


def test_self_contact_cases_do_not_pass_through_themselves():
    """Without VBD's self-contact, two of the cases' cloths pass through themselves (hundreds of
    mesh edges through its own triangles), which no fabric does; the ``_sc`` cases were made again
    with it on.  sphere_soft_sc keeps 3 crossings at frames 11-13, a contact VBD resolves later."""
    frames = (6, 11, 17, 23)
    for name in ("sphere_soft_sc", "tilted_ground_sc"):
        x, faces, info = C.load_case(name)
        assert info["solver"]["self_contact"] and C.CASES[name].self_contact
        assert max(C.self_crossings(x[t], faces) for t in frames) <= 3, name
    for name in ("sphere_soft", "tilted_ground"):
        x, faces, info = C.load_case(name)
        assert not info["solver"]["self_contact"]
        assert max(C.self_crossings(x[t], faces) for t in frames) > 90, name
    # the check itself: a flat sheet never crosses itself, and one folded through itself does
    x, faces, _ = C.load_case("swing")
    assert C.self_crossings(x[0], faces) == 0
    pierced = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0.2, 0.2, -0.5], [0.2, 0.2, 0.5], [0.6, 0.2, 0.5]], float)
    assert C.self_crossings(pierced, np.array([[0, 1, 2], [3, 4, 5]])) == 2
    apart = pierced + np.array([[0.0, 0.0, 0.0]] * 3 + [[0.0, 0.0, 2.0]] * 3)  # the second triangle moved up
    assert C.self_crossings(apart, np.array([[0, 1, 2], [3, 4, 5]])) == 0


def test_with_solver_sets_the_scene_cloth_solver():
    folder = C.with_solver("swing", "mesh")
    scene = load_scene(folder / "swing.toml")
    assert scene.settings.cloth_solver == "mesh"
    assert C.load_case("swing", folder)[0].shape == C.load_case("swing")[0].shape
    assert build(scene, torch.float64, "cpu", substeps=1).config.cloth_solver == "mesh"


def _rows_of_fake_scores(monkeypatch, fake: dict) -> dict:
    """``run_cross_sim``'s rows, by name, with each case scored as ``fake[name]`` says: (predict IoU,
    copy-last IoU, time-step agreement or None)."""

    def score(name, iterations):
        p, c, agree = fake[name]
        return {"case": name, "predict_mean_iou": p, "copy_last_mean_iou": c, "context": C.CONTEXT, "horizon": C.HORIZON,
                "iterations": iterations, "seconds": 1.0, "at_range_edge": {}, "time_step_agreement": agree}

    monkeypatch.setattr(C, "score_case", score)
    return {m.name: m for m in C.run_cross_sim(quick=True, names=list(fake))}


def test_bench_rows_report_each_reference_family_on_its_own(monkeypatch):
    """The VBD videos (unconverged in Newton's own settings) and the symplectic-Euler ones
    get a mean each; a case counts as beating copy-last only when its IoU is higher."""
    fake = {"swing": (0.5, 0.2, None), "tilted_ground": (0.7, 0.8, None), "swing_se": (0.9, 0.6, 0.99), "sphere_se": (0.8, 0.85, 0.88)}

    rows = _rows_of_fake_scores(monkeypatch, fake)
    vbd = rows["cross-sim, VBD references: mean predict mask IoU (unseen frames)"]
    se = rows["cross-sim, symplectic Euler references: mean predict mask IoU (unseen frames)"]
    assert vbd.value == pytest.approx(0.6) and "beats it on 1/2" in vbd.note
    assert se.value == pytest.approx(0.85) and "beats it on 1/2" in se.note
    assert "DOES NOT beat" in rows["cross-sim sphere_se: predict mask IoU (unseen frames)"].note
    assert "SolverSemiImplicit" in rows["cross-sim sphere_se: predict mask IoU (unseen frames)"].note
    # predict's own time-step check splits the cases it calls sensitive off (they stay in the mean)
    assert "half the time step 0.880 (sensitive)" in rows["cross-sim sphere_se: predict mask IoU (unseen frames)"].note
    assert "(sensitive)" not in rows["cross-sim swing_se: predict mask IoU (unseen frames)"].note
    assert "on the 1 whose prediction predict does not call sensitive: mean 0.900, beats copy-last on 1/1" in se.note
    assert "sensitive" not in vbd.note


@pytest.mark.slow
def test_time_step_check_tells_a_folding_drop_from_a_smooth_swing():
    """predict's sensitivity check (the prediction against itself at half the time step) at Newton's
    values: the sphere drop folds and agrees with itself below ``STEP_AGREEMENT`` (0.845 measured with
    exact masks; Newton's own video at half its dt: 0.84), the swing above it (0.992)."""
    from dreamcloth.cli.pipeline.fit import Appearance, FitConfig, FitProblem, ParamSpace
    from dreamcloth.cli.pipeline.predict import STEP_AGREEMENT, check_time_step
    from dreamcloth.cli.pipeline.simulation import DEFAULT_OPACITY, SceneRenderer

    def logit(p):
        return torch.log(p / (1 - p))

    for name, sensitive in (("swing_se", False), ("sphere_se", True)):
        scene = load_scene(C.DATA / f"{name}.toml")
        sim = build(scene, torch.float32, "cpu")
        renderer = SceneRenderer(sim)
        opacity = torch.full((renderer.num_gaussians,), float(logit(torch.tensor(DEFAULT_OPACITY))))
        appearance = Appearance(logit(renderer.default_colors), opacity, logit(renderer.default_back_colors))
        info = C.load_case(name)[2]["material"]
        newton = {"young_modulus": info["equivalent"]["membrane_young_modulus_N_per_m"], "bending_stiffness":
                  info["equivalent"]["bending_rigidity_N_m"], "drag_coefficient": 1.0, "drag_tangential": 1.0, "damping": 1.0,
                  "friction": info["mu"]}
        space = ParamSpace(scene)
        u = space.to_u({key: newton[key[1]] for key in space.keys})
        problem = FitProblem(sim, renderer, None, space, FitConfig(), appearance)
        k = sim.config.substeps_per_frame
        with torch.no_grad():
            _, alpha = problem.render(problem.rollout(u, C.FRAMES), range(C.FRAMES))
        check = check_time_step(problem, u, alpha, C.CONTEXT, C.FRAMES)
        print(name, check["mean_mask_iou"], check["worst_mask_iou"])
        assert check["sensitive"] is sensitive and (check["mean_mask_iou"] < STEP_AGREEMENT) is sensitive, name
        assert (check["substeps_per_frame"], check["against_substeps_per_frame"]) == (k, 2 * k)
        assert sim.config.substeps_per_frame == k  # the fit's time step is given back
        assert [f["frame"] for f in check["per_frame"]] == list(range(C.CONTEXT, C.FRAMES))
        assert 0.0 <= check["worst_mask_iou"] <= check["mean_mask_iou"] <= 1.0


def test_a_case_without_a_time_step_figure_is_not_counted_as_sensitive(monkeypatch):
    """The mean row splits off only the cases the check measured and called sensitive: one whose
    check has no figure (a failed fine rollout) is neither."""
    fake = {"swing_se": (0.9, 0.6, 0.99), "tilted_se": (0.95, 0.58, None)}

    rows = _rows_of_fake_scores(monkeypatch, fake)
    se = rows["cross-sim, symplectic Euler references: mean predict mask IoU (unseen frames)"]
    assert se.value == pytest.approx(0.925) and "sensitive" not in se.note
    assert "half the time step" not in rows["cross-sim tilted_se: predict mask IoU (unseen frames)"].note
