"""Fabric-standard tests against analytic solutions, each at two grid resolutions (float64); the
experiments live in ``dreamcloth.benchmarks.fabric`` (``dreamcloth bench --section cloth`` reports them too).
They are slow (tens of thousands of substeps each) and marked so; the cantilever is in its own file
(``test_fabric_cantilever.py``) so that the two test workers share the work."""

import pytest

from dreamcloth.benchmarks.fabric import elastica_tip_deflection, falling_sheet, hanging_stretch


def test_elastica_reference_limits():
    """The reference itself: small loads follow linear beam theory (w L^4 / (8 B)), large ones hang down."""
    assert elastica_tip_deflection(0.4) == pytest.approx(0.4 / 8, rel=0.02)
    assert 0.85 < elastica_tip_deflection(25.0) < 0.9


@pytest.mark.slow
def test_stretch_under_self_weight_at_two_grids():
    for res in (32, 64):
        d, ref = hanging_stretch(res)
        print(f"grid {res}: elongation {1e3 * d[-1]:.3f} mm, analytic {1e3 * ref:.3f} mm, {100 * (d[-1] - ref) / ref:+.2f}%")
        assert abs(d[-1] - d[-3]) < 0.002 * ref, "not settled"
        assert d[-1] == pytest.approx(ref, rel=0.05)


@pytest.mark.slow
def test_terminal_speed_at_two_grids():
    for res in (32, 64):
        v, ref = falling_sheet(res)
        print(f"grid {res}: speed after 0.6 s {v:.4f} m/s, terminal {ref:.4f} m/s, {100 * (v - ref) / ref:+.2f}%")
        assert v == pytest.approx(ref, rel=0.05)
