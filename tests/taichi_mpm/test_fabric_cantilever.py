"""Cantilever bending (Peirce 1930; ASTM D1388) against the inextensible elastica at two grid
resolutions (float64; the experiment is ``dreamcloth.benchmarks.fabric.cantilever``)."""

import pytest

from dreamcloth.benchmarks.fabric import cantilever, elastica_tip_deflection


@pytest.mark.slow
@pytest.mark.parametrize("load", [4.0, 12.0])
def test_cantilever_matches_the_elastica_at_two_grids(load):
    ref = elastica_tip_deflection(load)
    for res in (32, 48):  # cell 15.6 and 10.4 mm; the mesh spacing is 10 mm
        d = cantilever(load, res)
        print(f"w g L^3 / B = {load:g}, grid {res}: tip deflection / L {d[-1]:.4f}, elastica {ref:.4f}, "
              f"{100 * (d[-1] - ref) / ref:+.1f}%")
        assert abs(d[-1] - d[-3]) < 0.005 * ref, "not settled"
        assert d[-1] == pytest.approx(ref, rel=0.05)
