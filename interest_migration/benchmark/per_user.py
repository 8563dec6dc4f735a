"""Statistics over per-user test metrics: confidence intervals, paired tests and drift buckets.

With a few hundred test users a difference of a few NDCG points can be noise, so every mean
comes with a 95 % interval (Student t over users) and the headline comparison with a paired
test on the same users. Drift buckets group users by how often their category changes within
their *training* history, to show where modelling migration helps.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

METRIC = "ndcg@10"


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a per-user metric; the interval is Student t over users."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.sem(values) * stats.t.ppf((1 + confidence) / 2, len(values) - 1))
    return mean, mean - half, mean + half


def read_users(path) -> pd.DataFrame:
    """One run's per-user test metrics (the ``*.users.csv`` that ``compare`` writes), indexed by user token."""
    return pd.read_csv(path, dtype={"user_id": str}).set_index("user_id")


def seed_average(frames) -> pd.DataFrame:
    """Per-user metrics averaged over several runs (seeds) of one model, user by user."""
    return pd.concat(frames).groupby(level=0).mean()


def paired_test(a: pd.Series, b: pd.Series) -> dict:
    """Paired comparison of two per-user metric series indexed by user: Wilcoxon and t-test."""
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    diff = joined["a"] - joined["b"]
    out = {"n_users": int(len(joined)), "mean_a": float(joined["a"].mean()), "mean_b": float(joined["b"].mean()),
           "mean_difference": float(diff.mean()) if len(diff) else float("nan"),
           "wilcoxon_p": float("nan"), "ttest_p": float("nan")}
    if len(joined) >= 2 and np.any(diff != 0):
        out["wilcoxon_p"] = float(stats.wilcoxon(joined["a"], joined["b"]).pvalue)
        out["ttest_p"] = float(stats.ttest_rel(joined["a"], joined["b"]).pvalue)
    out["relative_gain"] = (out["mean_a"] / out["mean_b"] - 1) if out["mean_b"] else float("nan")
    return out


def training_switch_rate(folder, category_field: str, holdout: int = 2) -> pd.Series:
    """Each user's category switch rate over the training part of their sequence, indexed by user token.

    The training part is everything but the last ``holdout`` events (leave-one-out by time holds
    out the validation and test targets), so the bucket of a user never depends on the target.
    """
    from interest_migration.analysis.drift import switch_rate
    from interest_migration.analysis.timelines import from_frame, load_atomic

    timelines = load_atomic(folder, category_field=category_field)
    events = timelines.to_frame()
    length = np.bincount(timelines.user, minlength=timelines.n_users)[timelines.user]
    train = events[timelines.position < length - holdout]
    train_timelines = from_frame(train, category="category", users=timelines.user_tokens)
    rates = switch_rate(train_timelines)
    return pd.Series(rates, index=pd.Index(train_timelines.user_tokens.astype(str), name="user_id"),
                     name="switch_rate")


def drift_buckets(rates: pd.Series, users, n_buckets: int = 3) -> pd.Series:
    """Quantile bucket (terciles by default) of each evaluated user's switch rate, labelled with its range."""
    rates = rates.reindex(pd.Index([str(u) for u in users])).dropna()
    if rates.empty:
        return pd.Series(dtype=object, name="bucket")
    n = min(n_buckets, rates.nunique())
    codes = pd.qcut(rates.rank(method="first"), n, labels=False)
    names = ["low", "mid", "high"] if n == 3 else [f"q{i + 1}" for i in range(n)]
    labels = {}
    for code in range(n):
        member = rates[codes == code]
        labels[code] = f"{names[code]} [{member.min():.2f}, {member.max():.2f}]"
    return codes.map(labels).rename("bucket")


def bucket_table(per_user: dict, buckets: pd.Series, metric: str = METRIC) -> pd.DataFrame:
    """Mean ``metric`` per bucket (rows) and model (columns), plus the bucket sizes."""
    columns = {}
    for label, frame in per_user.items():
        values = frame[metric].reindex(buckets.index)
        columns[label] = values.groupby(buckets).mean()
    table = pd.DataFrame(columns)
    table.insert(0, "users", buckets.value_counts().reindex(table.index))
    order = sorted(table.index, key=lambda b: ["low", "mid", "high"].index(b.split()[0])
                   if b.split()[0] in ("low", "mid", "high") else b)
    return table.loc[order]
