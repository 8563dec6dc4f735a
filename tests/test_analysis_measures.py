"""Drift measures and population transitions on tiny inputs computed by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon

from interest_migration.analysis import drift, transitions
from interest_migration.analysis.timelines import from_frame

DAY = 86400.0


def _timelines(rows, users=None, names=None):
    frame = pd.DataFrame(rows, columns=["user_id", "category_id", "timestamp"])
    return from_frame(frame, users=users, category_names=names)


@pytest.fixture
def tiny():
    # u1: a a b a c (timestamps out of order in the input on purpose); u2: b b; u3: c; u4: no events.
    rows = [
        ("u1", "a", 3.0), ("u1", "a", 0.0), ("u1", "b", 2.0 * DAY), ("u1", "a", 2.0 * DAY + 5), ("u1", "c", 3.0 * DAY + 1),
        ("u2", "b", 10.0), ("u2", "b", 11.0),
        ("u3", "c", 4.0),
    ]
    return _timelines(rows, users=["u1", "u2", "u3", "u4"], names={"a": "Apples", "c": "Cheese"})


def test_timelines_sorted_by_user_then_time_and_keep_empty_users(tiny):
    assert list(tiny.user_tokens) == ["u1", "u2", "u3", "u4"]
    assert list(tiny.lengths) == [5, 2, 1, 0]
    assert list(tiny.category_tokens[tiny.category]) == ["a", "a", "b", "a", "c", "b", "b", "c"]
    assert list(tiny.position) == [0, 1, 2, 3, 4, 0, 1, 0]
    assert list(tiny.labels()) == ["Apples", "b", "Cheese"]


def test_equal_timestamps_keep_input_order():
    tl = _timelines([("u", "x", 5.0), ("u", "y", 5.0), ("u", "z", 1.0), ("u", "w", 5.0)])
    assert list(tl.category_tokens[tl.category]) == ["z", "x", "y", "w"]


def test_switch_rate_and_entropy_by_hand(tiny):
    rates = drift.switch_rate(tiny)
    # u1: a→a no, a→b yes, b→a yes, a→c yes: 3/4; u2: 0/1; u3 and u4: undefined.
    assert rates[0] == pytest.approx(0.75) and rates[1] == 0.0
    assert np.isnan(rates[2]) and np.isnan(rates[3])
    entropy = drift.category_entropy(tiny)
    # u1: a 3/5, b 1/5, c 1/5.
    expected = -(0.6 * np.log2(0.6) + 2 * 0.2 * np.log2(0.2))
    assert entropy[0] == pytest.approx(expected)
    assert entropy[1] == 0.0 and entropy[2] == 0.0 and np.isnan(entropy[3])


def test_window_jsd_by_count_matches_hand_and_scipy():
    # windows of 2 events: [a a] [a b] [b b] [c]
    tl = _timelines([("u", c, float(i)) for i, c in enumerate("aaabbbc")])
    jsd = drift.window_divergences(tl, window_events=2)
    assert list(jsd["window"]) == [0, 1, 2] and list(jsd["next_window"]) == [1, 2, 3]
    # {a:1} vs {a:.5, b:.5}: M = {a:.75, b:.25}; JSD = H(M) - (0 + 1)/2
    h_m = -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25))
    assert jsd["jsd"].iloc[0] == pytest.approx(h_m - 0.5)
    assert jsd["jsd"].iloc[1] == pytest.approx(h_m - 0.5)
    assert jsd["jsd"].iloc[2] == pytest.approx(1.0)  # disjoint supports
    ref = jensenshannon([1, 0], [0.5, 0.5], base=2) ** 2
    assert jsd["jsd"].iloc[0] == pytest.approx(ref)


def test_window_jsd_by_time_skips_empty_windows_and_users(tiny):
    jsd = drift.window_divergences(tiny, window_seconds=DAY)
    # u1's days relative to its first event: 0: [a a], 2: [b a], 3: [c]; u2 and u3 have one window.
    assert list(jsd["user"]) == [0, 0]
    assert list(jsd["window"]) == [0, 2] and list(jsd["next_window"]) == [2, 3]
    assert jsd["jsd"].iloc[0] == pytest.approx(jensenshannon([1, 0], [0.5, 0.5], base=2) ** 2)
    assert jsd["jsd"].iloc[1] == pytest.approx(jensenshannon([0.5, 0.5, 0], [0, 0, 1], base=2) ** 2)


def test_user_drift_table_handles_empty_single_event_and_single_category_users(tiny):
    table = drift.user_drift(tiny, window_events=2)
    assert list(table["user_id"]) == ["u1", "u2", "u3", "u4"]
    assert list(table["n_events"]) == [5, 2, 1, 0]
    assert list(table["n_categories"]) == [3, 1, 1, 0]
    u2, u3, u4 = table.iloc[1], table.iloc[2], table.iloc[3]
    assert u2["switch_rate"] == 0.0 and u2["entropy_bits"] == 0.0 and np.isnan(u2["mean_window_jsd"])
    assert np.isnan(u3["switch_rate"]) and u3["n_window_pairs"] == 0
    assert np.isnan(u4["switch_rate"]) and np.isnan(u4["entropy_bits"]) and np.isnan(u4["max_window_jsd"])
    # u1 windows [a a] [b a] [c]: JSDs 0.3113 and 1.0.
    assert table.iloc[0]["max_window_jsd"] == pytest.approx(1.0)
    assert table.iloc[0]["mean_window_jsd"] == pytest.approx((jensenshannon([1, 0], [0.5, 0.5], base=2) ** 2 + 1) / 2)


def test_drift_on_no_events_at_all():
    tl = from_frame(pd.DataFrame({"user_id": [], "category_id": [], "timestamp": []}), users=["lonely"])
    table = drift.user_drift(tl)
    assert len(table) == 1 and table["n_events"].iloc[0] == 0
    assert transitions.transition_counts(tl).nnz == 0
    assert transitions.top_flows(tl).empty


def test_transition_matrix_by_hand(tiny):
    counts = transitions.transition_counts(tiny).toarray()
    # categories a, b, c. u1: a→a, a→b, b→a, a→c; u2: b→b; never across users.
    expected = np.array([[1, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=float)
    np.testing.assert_array_equal(counts, expected)
    matrix = transitions.transition_matrix(tiny)
    np.testing.assert_allclose(matrix.toarray(), [[1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0], [0, 0, 0]])
    np.testing.assert_array_equal(transitions.transition_counts(tiny, include_self=False).toarray(),
                                  [[0, 1, 1], [1, 0, 0], [0, 0, 0]])


def test_top_flows_and_daily_migration(tiny):
    flows = transitions.top_flows(tiny, k=2)
    # three flows of count 1 (a→b, a→c, b→a): ties broken by source then destination code.
    assert list(flows["from"]) == ["Apples", "Apples"] and list(flows["to"]) == ["b", "Cheese"]
    assert list(flows["count"]) == [1, 1]
    assert flows["share_of_source"].tolist() == pytest.approx([1 / 3, 1 / 3])
    daily = transitions.migration_per_period(tiny)
    # destinations: day 0: a (u1), b (u2); day 2: b, a; day 3: c.
    assert [str(d) for d in daily["date"]] == ["1970-01-01", "1970-01-03", "1970-01-04"]
    assert daily["transitions"].tolist() == [2, 2, 1]
    assert daily["migrations"].tolist() == [0, 2, 1]
    per_day = transitions.flows_per_period(tiny, k=3)
    assert per_day.to_numpy().sum() == 3 and per_day.shape == (3, 3)
    assert per_day.loc[per_day.index[1]].tolist() == [1, 0, 1]  # a→b and b→a on day 2
    weekly = transitions.migration_per_period(tiny, period="W")
    assert [str(d) for d in weekly["date"]] == ["1969-12-29"]  # the Monday before 1970-01-01
    assert weekly["transitions"].tolist() == [5]
    monthly = transitions.migration_per_period(tiny, period="M", utc_offset_hours=-1)
    assert [str(d) for d in monthly["date"]] == ["1969-12-01", "1970-01-01"]  # u1's first events move to Dec 31
    assert transitions.choose_period(tiny) == "D"
    assert transitions.choose_period(tiny, max_rows=2) == "W" and transitions.choose_period(tiny, max_rows=0) == "Y"
    yearly = transitions.migration_per_period(tiny, period="Y", utc_offset_hours=-1)
    assert [str(d) for d in yearly["date"]] == ["1969-01-01", "1970-01-01"]
