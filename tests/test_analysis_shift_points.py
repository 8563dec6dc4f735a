"""Shift-point detector: validated against the migration simulator's known shift points."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from interest_migration.analysis.shift_points import ShiftPointDetector, match_shift_points
from interest_migration.analysis.simulate import MigrationSimulator, simulate_migration
from interest_migration.analysis.timelines import from_frame


def test_detector_precision_and_recall_on_default_simulator_at_least_0_9():
    """The acceptance criterion: within ±2 events, precision >= 0.9 and recall >= 0.9 on the
    simulator's default (Taobao-like) settings, detector at its defaults."""
    sim = simulate_migration()
    assert sim.settings == MigrationSimulator()
    assert len(sim.shift_points) > 1000  # enough shifts for the figures to mean something
    found = ShiftPointDetector().detect(sim.timelines)
    score = match_shift_points(sim.shift_points, found, tolerance=2)
    assert score["precision"] >= 0.9, score
    assert score["recall"] >= 0.9, score
    # The decoder's confidence is a posterior hit probability: it should roughly match precision.
    assert abs(found["confidence"].mean() - score["precision"]) < 0.05


def test_simulator_truth_respects_its_settings():
    settings = MigrationSimulator(n_users=50, seed=3)
    sim = settings.run()
    tl = sim.timelines
    assert tl.n_users == 50 and tl.lengths.min() >= settings.min_events
    assert np.all(np.diff(tl.timestamp)[tl.same_user_as_previous[1:]] >= 0)
    truth = sim.shift_points
    assert (truth["position"] >= settings.min_segment).all()
    ends = tl.lengths[truth["user"].to_numpy()]
    assert (ends - truth["position"].to_numpy() >= settings.min_segment).all()
    gaps = truth.groupby("user")["position"].diff().dropna()
    assert (gaps >= settings.min_segment).all()
    # Same seed, same population.
    again = settings.run()
    np.testing.assert_array_equal(again.timelines.category, tl.category)


def _one_user(categories):
    frame = pd.DataFrame({"user_id": "u", "category_id": list(categories), "timestamp": np.arange(len(categories))})
    return from_frame(frame)


def test_clear_switch_found_exactly_and_posterior_is_a_probability():
    rng = np.random.default_rng(0)
    first = rng.choice(["a", "b", "c"], 30)
    second = rng.choice(["x", "y", "z"], 30)
    tl = _one_user(np.concatenate([first, second]))
    detector = ShiftPointDetector()
    probability = detector.shift_probability(tl)
    assert probability[0] == 0.0 and ((probability >= 0) & (probability <= 1)).all()
    # A segmentation has at most one start per event, so the expected number of shifts is the sum.
    assert 0.9 < probability.sum() < 1.5
    found = detector.detect(tl)
    assert found["position"].tolist() == [30]
    assert found["confidence"].iloc[0] > 0.9


def test_no_shift_in_stable_users_and_degenerate_users():
    rng = np.random.default_rng(1)
    frame = pd.concat([
        pd.DataFrame({"user_id": "mixed", "category_id": rng.choice(["a", "b", "c", "d"], 80), "timestamp": np.arange(80.0)}),
        pd.DataFrame({"user_id": "single_category", "category_id": "a", "timestamp": np.arange(50.0)}),
        pd.DataFrame({"user_id": "single_event", "category_id": ["b"], "timestamp": [0.0]}),
        pd.DataFrame({"user_id": "short", "category_id": ["a", "b", "c"], "timestamp": [0.0, 1.0, 2.0]}),
    ])
    tl = from_frame(frame, users=["mixed", "single_category", "single_event", "short", "empty"])
    detector = ShiftPointDetector()
    probability = detector.shift_probability(tl)
    assert len(probability) == tl.n_events and np.isfinite(probability).all()
    assert detector.detect(tl).empty


def test_detection_does_not_depend_on_batching():
    sim = MigrationSimulator(n_users=60, seed=5).run()
    whole = ShiftPointDetector().shift_probability(sim.timelines)
    small = ShiftPointDetector(batch_cells=20_000).shift_probability(sim.timelines)
    np.testing.assert_allclose(whole, small, atol=1e-9)


def test_match_is_one_to_one():
    true = pd.DataFrame({"user": [0, 0, 1], "position": [10, 30, 5]})
    found = pd.DataFrame({"user": [0, 0, 0, 1], "position": [11, 12, 40, 9]})
    score = match_shift_points(true, found, tolerance=2)
    assert score["hits"] == 1 and score["precision"] == pytest.approx(0.25) and score["recall"] == pytest.approx(1 / 3)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="hazard"):
        ShiftPointDetector(hazard=0.0)
    with pytest.raises(ValueError, match="min_segment"):
        ShiftPointDetector(min_segment=0)
