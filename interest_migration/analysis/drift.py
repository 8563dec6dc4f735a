"""How much each user's interest drifts: switch rate, entropy and window-to-window divergence.

All measures are in bits (log base 2), so entropy is the number of yes/no questions needed to
guess a user's category and the Jensen–Shannon divergence lies in [0, 1]. Users without enough
events for a measure get NaN rather than a misleading 0.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from interest_migration.analysis.timelines import Timelines


def switch_rate(timelines: Timelines) -> np.ndarray:
    """Share of consecutive event pairs whose category differs, per user (NaN below 2 events)."""
    switched = np.zeros(timelines.n_events, dtype=np.int64)
    same = timelines.same_user_as_previous
    switched[1:] = (timelines.category[1:] != timelines.category[:-1]) & same[1:]
    switches = np.bincount(timelines.user, weights=switched, minlength=timelines.n_users)
    pairs = timelines.lengths - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, switches / np.maximum(pairs, 1), np.nan)


def _group_entropy(group: np.ndarray, category: np.ndarray, n_groups: int, n_cat: int) -> np.ndarray:
    """Entropy in bits of the category distribution of each group (NaN for empty groups)."""
    unique, inverse = np.unique(group.astype(np.int64) * n_cat + category, return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)
    cell_group = unique // n_cat
    totals = np.bincount(cell_group, weights=counts, minlength=n_groups)
    p = counts / totals[cell_group]
    h = np.bincount(cell_group, weights=-p * np.log2(p), minlength=n_groups)
    return np.where(totals > 0, h + 0.0, np.nan)


def category_entropy(timelines: Timelines) -> np.ndarray:
    """Entropy (bits) of each user's category distribution: 0 for a single-category user, NaN for none."""
    return _group_entropy(timelines.user, timelines.category, timelines.n_users, max(timelines.n_categories, 1))


def window_ids(timelines: Timelines, window_events: int | None = None, window_seconds: float | None = None) -> np.ndarray:
    """Window index of each event within its user, by count or by time (exactly one must be given).

    By count, window ``k`` holds events ``k*n .. (k+1)*n - 1``. By time, window ``k`` holds the
    events in ``[t0 + k*s, t0 + (k+1)*s)`` where ``t0`` is the user's first event, so windows are
    aligned to each user's start; empty time windows are skipped by the divergence.
    """
    if (window_events is None) == (window_seconds is None):
        raise ValueError("give exactly one of window_events and window_seconds")
    if window_events is not None:
        if window_events < 1:
            raise ValueError(f"window_events must be >= 1, got {window_events}")
        return timelines.position // int(window_events)
    if not window_seconds > 0:
        raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
    first = timelines.timestamp[timelines.offsets[timelines.user]]  # each event's user's first event
    return np.floor((timelines.timestamp - first) / float(window_seconds)).astype(np.int64)


def window_divergences(
    timelines: Timelines, window_events: int | None = None, window_seconds: float | None = None
) -> pd.DataFrame:
    """Jensen–Shannon divergence (bits) between each pair of consecutive non-empty windows.

    Returns one row per pair: ``user`` (code), ``window`` (index of the earlier window),
    ``next_window`` and ``jsd``. JSD(P, Q) = H((P+Q)/2) - (H(P) + H(Q)) / 2.
    """
    empty = pd.DataFrame({"user": np.zeros(0, np.int64), "window": np.zeros(0, np.int64),
                          "next_window": np.zeros(0, np.int64), "jsd": np.zeros(0)})
    if timelines.n_events == 0:
        return empty
    window = window_ids(timelines, window_events, window_seconds)
    # Number the non-empty (user, window) pairs globally, in sorted order.
    new_window = np.ones(timelines.n_events, dtype=bool)
    new_window[1:] = (window[1:] != window[:-1]) | ~timelines.same_user_as_previous[1:]
    wid = np.cumsum(new_window) - 1
    n_windows = int(wid[-1]) + 1
    win_user = timelines.user[new_window]
    win_index = window[new_window]
    # Category distribution of each window.
    n_cat = timelines.n_categories
    cells, inverse = np.unique(wid * n_cat + timelines.category, return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)
    cell_win = cells // n_cat
    cell_cat = cells % n_cat
    p = counts / np.bincount(cell_win, weights=counts, minlength=n_windows)[cell_win]
    h_win = np.bincount(cell_win, weights=-p * np.log2(p), minlength=n_windows)
    # Pair k = (window k, window k + 1) when both belong to the same user.
    has_next = np.zeros(n_windows, dtype=bool)
    has_next[:-1] = win_user[1:] == win_user[:-1]
    as_first = has_next[cell_win]
    as_second = np.zeros(len(cells), dtype=bool)
    as_second[cell_win > 0] = has_next[cell_win[cell_win > 0] - 1]
    pair = np.concatenate([cell_win[as_first], cell_win[as_second] - 1])
    cat = np.concatenate([cell_cat[as_first], cell_cat[as_second]])
    half = np.concatenate([p[as_first], p[as_second]]) / 2.0
    mix_cells, mix_inverse = np.unique(pair * n_cat + cat, return_inverse=True)
    m = np.bincount(mix_inverse, weights=half)
    h_mix = np.bincount(mix_cells // n_cat, weights=-m * np.log2(m), minlength=n_windows)
    pairs = np.flatnonzero(has_next)
    jsd = h_mix[pairs] - 0.5 * (h_win[pairs] + h_win[pairs + 1])
    return pd.DataFrame({
        "user": win_user[pairs], "window": win_index[pairs], "next_window": win_index[pairs + 1],
        "jsd": np.clip(jsd, 0.0, 1.0),
    })


def user_drift(
    timelines: Timelines, window_events: int | None = 20, window_seconds: float | None = None
) -> pd.DataFrame:
    """One row per user: events, distinct categories, switch rate, entropy and window JSD (mean, max).

    The window defaults to 20 events; pass ``window_events=None, window_seconds=86400`` for days.
    """
    distinct = np.zeros(timelines.n_users, dtype=np.int64)
    if timelines.n_events:
        cells = np.unique(timelines.user * timelines.n_categories + timelines.category)
        distinct = np.bincount(cells // timelines.n_categories, minlength=timelines.n_users)
    jsd = window_divergences(timelines, window_events, window_seconds)
    n_pairs = np.bincount(jsd["user"], minlength=timelines.n_users)
    total = np.bincount(jsd["user"], weights=jsd["jsd"], minlength=timelines.n_users)
    peak = np.full(timelines.n_users, np.nan)
    if len(jsd):
        per_user_max = jsd.groupby("user")["jsd"].max()
        peak[per_user_max.index.to_numpy()] = per_user_max.to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_jsd = np.where(n_pairs > 0, total / np.maximum(n_pairs, 1), np.nan)
    return pd.DataFrame({
        "user_id": timelines.user_tokens,
        "n_events": timelines.lengths,
        "n_categories": distinct,
        "switch_rate": switch_rate(timelines),
        "entropy_bits": category_entropy(timelines),
        "n_window_pairs": n_pairs,
        "mean_window_jsd": mean_jsd,
        "max_window_jsd": peak,
    })
