"""Parameter recovery at small sizes (the issue's four scenarios): every identifiable parameter
within 10% (log space for stiffnesses), and predict's mask IoU >= 0.9 on unseen frames.

Each test simulates a video from values the fit is not told (benchmarks/accuracy.py holds the
scenes), fits it from the middle of the ranges and prints the figures (-s).  Full sizes run in
``dreamcloth bench --section accuracy``.
"""

import json

import pytest

from dreamcloth.benchmarks.accuracy import SCENARIOS, run_scenario


def _check(report):
    print(json.dumps({k: report[k] for k in ("scenario", "fitted", "truth", "relative_error", "seconds")}))
    for name, err in report["relative_error"].items():
        assert report["identifiable"][name], f"{name} reported as not identifiable"
        assert err < 0.10, f"{report['scenario']}: {name} fitted {report['fitted'][name]:.4g}, true {report['truth'][name]:.4g}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["drape", "slide", "solid"])
def test_recovers_parameters(name, tmp_path):
    _check(run_scenario(name, "small", tmp_path))


def test_scenarios_cover_the_issue_list():
    assert set(SCENARIOS) == {"drape", "swing", "slide", "solid"}
