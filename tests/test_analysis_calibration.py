"""Calibration of p_shift: pure functions on small hand-checked arrays, then a real checkpoint."""
from __future__ import annotations

import numpy as np
import pytest

from interest_migration.analysis import calibration


def test_reliability_curve_and_ece_by_hand():
    p = [0.05, 0.15, 0.15, 0.95, 1.0]
    y = [0, 1, 0, 1, 1]
    curve = calibration.reliability_curve(p, y, n_bins=10)
    assert curve["count"].tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert curve.loc[1, "mean_predicted"] == pytest.approx(0.15) and curve.loc[1, "observed_rate"] == 0.5
    assert np.isnan(curve.loc[2, "observed_rate"])
    assert curve.loc[9, "mean_predicted"] == pytest.approx(0.975)
    # |0.05-0|*1 + |0.15-0.5|*2 + |0.975-1|*2, over 5
    assert calibration.expected_calibration_error(p, y) == pytest.approx((0.05 + 0.7 + 0.05) / 5)


def test_auc_brier_log_loss_by_hand():
    p = np.array([0.1, 0.4, 0.35, 0.8])
    y = np.array([0, 0, 1, 1])
    # positive pairs: (0.35 vs 0.1) win, (0.35 vs 0.4) lose, (0.8 vs both) win: 3/4
    assert calibration.roc_auc(p, y) == pytest.approx(0.75)
    assert calibration.roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)  # ties count half
    assert np.isnan(calibration.roc_auc([0.2, 0.3], [1, 1]))
    assert calibration.brier_score(p, y) == pytest.approx(np.mean((p - y) ** 2))
    assert calibration.log_loss([0.5, 0.5], [0, 1]) == pytest.approx(np.log(2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration.brier_score([1.2], [1])


def test_history_switch_rate_is_the_naive_predictor():
    history = np.array([
        [1, 1, 2, 2, 3],  # 2 changes in 4 pairs
        [5, 6, 0, 0, 0],  # length 2: 1 change in 1 pair (padding ignored)
        [7, 0, 0, 0, 0],  # one item: no rate, gets the fallback
        [4, 4, 4, 0, 0],  # 0 of 2
    ])
    rate = calibration.history_switch_rate(history, [5, 2, 1, 3])
    assert rate[[0, 1, 3]].tolist() == [0.5, 1.0, 0.0]
    assert rate[2] == pytest.approx(0.5)  # mean of the defined rates
    assert calibration.history_switch_rate(history, [5, 2, 1, 3], fallback=0.2)[2] == 0.2


def test_compare_predictors_prefers_the_informative_one():
    rng = np.random.default_rng(0)
    truth = rng.random(4000)
    y = rng.random(4000) < truth
    table, curves = calibration.compare_predictors(y, {"good": truth, "flat": np.full(4000, y.mean())})
    good, flat = table.set_index("predictor").loc["good"], table.set_index("predictor").loc["flat"]
    assert good["auc"] > 0.8 and flat["auc"] == pytest.approx(0.5)
    assert good["brier"] < flat["brier"] and good["ece"] < 0.05
    assert set(curves) == {"good", "flat"} and curves["good"]["count"].sum() == 4000
