"""Population migration: which categories users leave for which, and when.

A transition is a pair of consecutive events of one user; a migration (or flow) is a transition
whose category changes. The matrix counts all transitions, self-transitions included, so that a
row-normalised row is the empirical next-category distribution of shoppers in that category.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from interest_migration.analysis.timelines import Timelines


def _pairs(timelines: Timelines) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (into the event arrays) of the source and destination of every transition."""
    dest = np.flatnonzero(timelines.same_user_as_previous)
    return dest - 1, dest, timelines.category[dest - 1] != timelines.category[dest]


def transition_counts(timelines: Timelines, include_self: bool = True) -> sp.csr_matrix:
    """``counts[a, b]``: how often a user's event in category ``a`` is followed by one in ``b``."""
    src, dst, switched = _pairs(timelines)
    if not include_self:
        src, dst = src[switched], dst[switched]
    n = timelines.n_categories
    return sp.coo_matrix(
        (np.ones(len(src), dtype=np.float64), (timelines.category[src], timelines.category[dst])), shape=(n, n)
    ).tocsr()  # duplicates are summed


def row_normalize(counts: sp.spmatrix) -> sp.csr_matrix:
    """Divide each row by its sum; rows without transitions stay all zero."""
    counts = sp.csr_matrix(counts, dtype=np.float64)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    scale = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
    return sp.diags(scale) @ counts


def transition_matrix(timelines: Timelines, include_self: bool = True) -> sp.csr_matrix:
    """Row-normalised category → next-category matrix (rows sum to 1, or 0 without transitions)."""
    return row_normalize(transition_counts(timelines, include_self)).tocsr()


def top_flows(timelines: Timelines, k: int = 20) -> pd.DataFrame:
    """The ``k`` largest migrations ``from → to`` (category changes only), with counts and shares.

    ``share_of_source`` is the flow divided by all transitions out of the source category
    (self-transitions included): the probability that a shopper in ``from`` next moves to ``to``.
    """
    counts = transition_counts(timelines).tocoo()
    out_total = np.asarray(counts.sum(axis=1)).ravel()
    off = counts.row != counts.col
    frame = pd.DataFrame({"from_code": counts.row[off], "to_code": counts.col[off], "count": counts.data[off]})
    frame = frame.sort_values(["count", "from_code", "to_code"], ascending=[False, True, True], kind="stable").head(k)
    labels = timelines.labels()
    frame["share_of_source"] = frame["count"].to_numpy() / out_total[frame["from_code"].to_numpy()]
    frame.insert(0, "from", labels[frame["from_code"].to_numpy()] if len(frame) else [])
    frame.insert(1, "to", labels[frame["to_code"].to_numpy()] if len(frame) else [])
    frame["count"] = frame["count"].astype(np.int64)
    return frame.reset_index(drop=True)


#: Period codes accepted by :func:`migration_per_period` and :func:`flows_per_period`.
PERIODS = {"D": "day", "W": "week", "M": "month", "Y": "year"}


def _periods(timestamp: np.ndarray, utc_offset_hours: float, period: str) -> np.ndarray:
    """Start date of the calendar day, week (Monday), month or year holding each timestamp, as datetime64[D]."""
    if period not in PERIODS:
        raise ValueError(f"period must be one of {sorted(PERIODS)}, got {period!r}")
    days = np.floor((timestamp + utc_offset_hours * 3600.0) / 86400.0).astype(np.int64).astype("datetime64[D]")
    if period == "W":
        return days - ((days.astype(np.int64) + 3) % 7)  # 1970-01-01 was a Thursday
    if period in ("M", "Y"):
        return days.astype(f"datetime64[{period}]").astype("datetime64[D]")
    return days


def choose_period(timelines: Timelines, utc_offset_hours: float = 0.0, max_rows: int = 62) -> str:
    """The finest of day / week / month / year with at most ``max_rows`` distinct periods in the data."""
    for period in PERIODS:
        if len(np.unique(_periods(timelines.timestamp, utc_offset_hours, period))) <= max_rows:
            return period
    return "Y"


def migration_per_period(timelines: Timelines, utc_offset_hours: float = 0.0, period: str = "D") -> pd.DataFrame:
    """Per calendar day, week, month or year (of the destination event): transitions, migrations and rate.

    ``utc_offset_hours`` sets the local day boundary (Taobao is UTC+8). The ``date`` column holds
    each period's first day.
    """
    _, dst, switched = _pairs(timelines)
    frame = pd.DataFrame({"date": _periods(timelines.timestamp[dst], utc_offset_hours, period),
                          "migrations": switched.astype(np.int64)})
    table = frame.groupby("date").agg(transitions=("migrations", "size"), migrations=("migrations", "sum"))
    table["migration_rate"] = table["migrations"] / table["transitions"]
    table.index = table.index.date
    table.index.name = "date"
    return table.reset_index()


def flows_per_period(timelines: Timelines, utc_offset_hours: float = 0.0, k: int = 5, period: str = "D") -> pd.DataFrame:
    """Counts of the ``k`` largest overall flows per period: one row per period, one column per ``from → to``."""
    src, dst, switched = _pairs(timelines)
    all_periods = np.unique(_periods(timelines.timestamp[dst], utc_offset_hours, period))
    src, dst = src[switched], dst[switched]
    top = top_flows(timelines, k)
    frame = pd.DataFrame({
        "date": _periods(timelines.timestamp[dst], utc_offset_hours, period),
        "from_code": timelines.category[src], "to_code": timelines.category[dst],
    })
    frame = frame.merge(top[["from_code", "to_code", "from", "to"]], on=["from_code", "to_code"])
    frame["flow"] = frame["from"].astype(str) + " → " + frame["to"].astype(str)
    table = frame.pivot_table(index="date", columns="flow", values="from_code", aggfunc="size", fill_value=0)
    table = table.reindex(all_periods, fill_value=0)
    order = [f"{a} → {b}" for a, b in zip(top["from"].astype(str), top["to"].astype(str)) if f"{a} → {b}" in table.columns]
    table = table[order]
    table.index = pd.DatetimeIndex(table.index).date
    table.index.name = "date"
    return table
