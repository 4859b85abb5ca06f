"""The fit benchmark section runs and reports what it promises (no assertion on time)."""

import re

from dreamcloth.benchmarks.suite import SECTIONS, run_section


def test_fit_section_quick_run_times_the_mesh_solver_iteration_and_a_whole_predict():
    assert SECTIONS["fit"] == "bench_fit"
    rows = {m.name: m for m in run_section("fit", quick=True)}
    assert rows["fit iteration (demo, 4 frames)"].value > 0
    name = "41x41 cloth, real-fabric stiffness, mesh solver, implicit membrane"
    iteration = rows[f"fit iteration ({name}, 4 frames)"]
    assert iteration.unit == "s" and iteration.value > 0
    predict = rows[f"predict --context 3 --horizon 1 ({name})"]
    assert predict.unit == "min" and predict.value > 0
    # what the issue asks the row to say: substeps per frame, and the prediction's score
    assert re.search(r"\d+ substeps/frame", predict.note)
    iou = float(re.search(r"mask IoU ([0-9.]+)", predict.note).group(1))
    assert 0.5 < iou <= 1.0  # one unseen frame of its own video, after one iteration
    # predict's sensitivity check ran: a smooth drop agrees with itself at half the time step
    assert float(re.search(r"half the time step ([0-9.]+)", predict.note).group(1)) > 0.9
