"""The render benchmark section runs and reports what it promises (no assertion on time)."""

from dreamcloth.benchmarks.suite import SECTIONS, run_section


def test_render_section_quick_run_reports_speed_ratio_and_accuracy():
    assert SECTIONS["render"] == "bench_render"
    rows = {m.name: m for m in run_section("render", quick=True)}
    fb = rows["portable fwd+bwd 1k/64^2"]
    assert fb.unit == "s" and fb.value > 0
    assert fb.ratio_to == "dense reference" and fb.ratio > 0
    assert "portable compile (first fwd+bwd - steady)" in rows
    assert "portable fwd+bwd 5k/128^2" in rows
    # Accuracy rows are measurements of correctness, so they are checked like the tests are.
    for name in ("max |color - reference| 1k/64^2", "max |alpha - reference| 1k/64^2"):
        assert rows[name].value < 1e-5, name
    for quantity in ("means", "covariances", "colors", "opacities"):
        assert rows[f"VJP relative error {quantity} 1k/64^2"].value < 1e-4, quantity
