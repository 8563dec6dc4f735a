"""Figures of the migration report. Each function draws one PNG and writes it atomically.

matplotlib is imported inside the functions with the Agg backend, so importing this module costs
nothing and never needs a display.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from interest_migration.utils.io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return path


def _short(label, width: int = 22) -> str:
    label = str(label)
    return label if len(label) <= width else label[: width - 1] + "…"


def transition_heatmap(counts: sp.spmatrix, labels: np.ndarray, top: int, path: str | Path) -> Path:
    """Row-normalised transitions among the ``top`` categories with the most transitions.

    Each cell is P(next category = column | current = row), normalised over *all* destinations,
    so a row's cells need not sum to 1; the diagonal (staying) is drawn too.
    """
    plt = _pyplot()
    counts = sp.csr_matrix(counts)
    volume = np.asarray(counts.sum(axis=1)).ravel() + np.asarray(counts.sum(axis=0)).ravel()
    chosen = np.argsort(-volume, kind="stable")[:top]
    chosen = chosen[volume[chosen] > 0]
    out_total = np.asarray(counts.sum(axis=1)).ravel()[chosen]
    sub = counts[chosen][:, chosen].toarray()
    share = np.divide(sub, out_total[:, None], out=np.zeros_like(sub), where=out_total[:, None] > 0)
    size = max(4.0, 0.38 * len(chosen) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(share, cmap="viridis", vmin=0.0, vmax=max(share.max(), 1e-9), aspect="equal")
    names = [_short(labels[c]) for c in chosen]
    ax.set_xticks(range(len(chosen)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(chosen)), names, fontsize=7)
    ax.set_xlabel("next category")
    ax.set_ylabel("current category")
    ax.set_title(f"Category transitions, top {len(chosen)} categories\nP(next | current), all destinations")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def drift_histograms(users: pd.DataFrame, path: str | Path) -> Path:
    """Histograms of the per-user drift measures (users with the measure defined)."""
    plt = _pyplot()
    panels = [("switch_rate", "category switch rate"), ("entropy_bits", "category entropy (bits)"),
              ("mean_window_jsd", "mean JSD between windows (bits)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (column, title) in zip(axes, panels):
        values = users[column].dropna().to_numpy() if column in users else np.zeros(0)
        if len(values):
            ax.hist(values, bins=30, color="#4c72b0", edgecolor="white")
            ax.axvline(np.median(values), color="#c44e52", linestyle="--", label=f"median {np.median(values):.2f}")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no user has this measure", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_ylabel("users")
    fig.suptitle(f"Per-user interest drift ({len(users)} users)")
    fig.tight_layout()
    return _save(fig, path)


def user_timelines(
    timelines, users: np.ndarray, shifts: pd.DataFrame, probability: np.ndarray, path: str | Path
) -> Path:
    """One panel per user: category of each event (categories numbered by first visit), detected
    shift points (dashed) and the posterior shift probability (grey, right axis)."""
    plt = _pyplot()
    users = np.asarray(users, dtype=np.int64)
    fig, axes = plt.subplots(max(len(users), 1), 1, figsize=(11, 2.4 * max(len(users), 1)), squeeze=False)
    for ax, user in zip(axes[:, 0], users):
        lo, hi = timelines.offsets[user], timelines.offsets[user + 1]
        category = timelines.category[lo:hi]
        _, first = np.unique(category, return_index=True)
        rank_of = np.empty(timelines.n_categories, dtype=np.int64)
        order = np.argsort(first)
        rank_of[category[first[order]]] = np.arange(len(first))
        ax.scatter(np.arange(hi - lo), rank_of[category], s=9, c=rank_of[category], cmap="tab20", zorder=3)
        for position in shifts.loc[shifts["user"] == user, "position"]:
            ax.axvline(position - 0.5, color="#c44e52", linestyle="--", linewidth=1.2, zorder=2)
        ax.set_ylabel("category\n(by first visit)", fontsize=8)
        ax.set_title(f"user {timelines.user_tokens[user]}: {hi - lo} events, "
                     f"{len(first)} categories, {int((shifts['user'] == user).sum())} detected shifts", fontsize=9)
        twin = ax.twinx()
        twin.fill_between(np.arange(hi - lo), probability[lo:hi], color="grey", alpha=0.25, step="mid")
        twin.set_ylim(0, 1)
        twin.set_ylabel("P(shift)", fontsize=8)
    if not len(users):
        axes[0, 0].text(0.5, 0.5, "no user with a detected shift", ha="center", va="center")
    axes[-1, 0].set_xlabel("event index in the user's timeline")
    fig.tight_layout()
    return _save(fig, path)


def daily_flows(daily: pd.DataFrame, per_day: pd.DataFrame, path: str | Path, period: str = "day") -> Path:
    """Migrations per day (or week, month) with the migration rate, and the largest flows per period."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    x = np.arange(len(daily))
    top.bar(x, daily["migrations"], color="#4c72b0", label="migrations (category changes)")
    top.set_ylabel("transitions changing category")
    rate = top.twinx()
    rate.plot(x, daily["migration_rate"], color="#c44e52", marker="o", label="migration rate")
    rate.set_ylim(0, 1)
    rate.set_ylabel("share of transitions")
    top.set_title(f"Migration per {period}")
    top.legend(loc="upper left", fontsize=8)
    rate.legend(loc="upper right", fontsize=8)
    per_day = per_day.reindex(daily["date"]).fillna(0)
    for column in per_day.columns:
        bottom.plot(x, per_day[column].to_numpy(), marker=".", label=_short(column, 40))
    bottom.set_ylabel(f"migrations per {period}")
    bottom.set_title(f"Top {per_day.shape[1]} flows, per {period}")
    if per_day.shape[1]:
        bottom.legend(fontsize=7, ncol=2)
    step = max(1, len(x) // 31)
    bottom.set_xticks(x[::step], [str(d) for d in daily["date"]][::step], rotation=45, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def calibration_plot(curves: dict, summary: pd.DataFrame, probability: np.ndarray, path: str | Path) -> Path:
    """Reliability diagram of each predictor against the diagonal, and the histogram of p_shift."""
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6.5, 7.5), gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="black", linestyle=":", label="perfect calibration")
    auc = summary.set_index("predictor")["auc"]
    for name, curve in curves.items():
        used = curve["count"] > 0
        ax.plot(curve["mean_predicted"][used], curve["observed_rate"][used], marker="o",
                label=f"{name} (AUC {auc.get(name, float('nan')):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability of a category shift")
    ax.set_ylabel("observed shift rate")
    ax.set_title("Calibration of p_shift on test interactions")
    ax.legend(fontsize=8)
    hist.hist(probability, bins=20, range=(0, 1), color="#4c72b0", edgecolor="white")
    hist.set_xlabel("p_shift")
    hist.set_ylabel("interactions")
    fig.tight_layout()
    return _save(fig, path)
