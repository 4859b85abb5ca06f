"""Parameter recovery and prediction on the swinging cloth (the accuracy suite's scenario (b)).

Its own file, so that ``--dist loadfile`` runs it beside the other three scenarios
(``test_accuracy.py``), not after them on the same worker: together they are most of the suite's time.
"""

import pytest

from dreamcloth.benchmarks.accuracy import run_scenario

from .test_accuracy import _check


@pytest.mark.slow
def test_swing_recovery_and_prediction(tmp_path):
    report = run_scenario("swing", "small", tmp_path, predict=True)
    _check(report)
    print(f"predict: mean mask IoU {report['predict_mean_mask_iou']:.3f}, last frame {report['predict_last_mask_iou']:.3f}")
    assert report["predict_mean_mask_iou"] >= 0.9
    assert report["predict_last_mask_iou"] >= 0.9
    # a smooth swing: predict's own time-step check does not call it sensitive
    assert report["predict_time_step_agreement"] >= 0.95

