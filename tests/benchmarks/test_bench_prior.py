"""The prior benchmark section runs and reports what it promises (values are never asserted on: no timed tests)."""

import math

from dreamcloth.benchmarks.suite import SECTIONS, run_section


def test_quick_prior_bench_reports_sds_and_training_steps():
    assert SECTIONS["prior"] == "bench_prior"
    rows = run_section("prior", quick=True)
    names = {m.name for m in rows}
    assert "SDS step, builtin 8x64x64" in names and "training step 8x64x64 fp32" in names
    assert all(m.section == "prior" and math.isfinite(m.value) and m.value > 0 for m in rows)
