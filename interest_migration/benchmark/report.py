"""The comparison's outputs: one row per (protocol, model) over seeds, as CSV, Markdown, JSON and plots.

Metrics are means over seeds (± the standard deviation across seeds when there are several);
the 95 % interval of NDCG@10 is over users, from the seed-averaged per-user values. Timings are
wall-clock on whatever machine ran the command: on a shared machine they are noisy, so the
load average at the start and end of each run is kept in the run files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from interest_migration.utils.io import atomic_path, atomic_write_text

HEADLINE = ["ndcg@10", "recall@10", "mrr@10", "hit@10", "ndcg@20", "recall@20", "mrr@20", "hit@20"]
COST = ["epochs", "seconds_per_epoch", "cpu_seconds_per_epoch", "train_seconds", "test_eval_seconds",
        "peak_rss_mb", "n_params"]


def summarise(results: list[dict], per_user: dict) -> pd.DataFrame:
    """One row per (protocol, label): mean and std over seeds, costs, CI over users, failures."""
    rows = []
    frame = pd.DataFrame(results)
    for (protocol, label), group in frame.groupby(["protocol", "label"], sort=False):
        ok = group[group["status"] == "ok"]
        row = {"protocol": protocol, "model": label, "runs_ok": len(ok), "runs": len(group)}
        if len(ok):
            test = pd.DataFrame(list(ok["test"]))
            for metric in [m for m in HEADLINE if m in test.columns]:
                row[metric] = float(test[metric].mean())
                row[f"{metric}_std"] = float(test[metric].std(ddof=1)) if len(test) > 1 else float("nan")
            valid = pd.DataFrame(list(ok["best_valid"]))
            if "ndcg@10" in valid.columns:
                row["valid_ndcg@10"] = float(valid["ndcg@10"].mean())
            for key in COST:
                row[key] = float(ok[key].mean()) if key in ok else float("nan")  # older run files lack CPU time
            row["n_test_users"] = int(ok["n_test_users"].max())
            users = per_user.get((protocol, label))
            if users is not None and "ndcg@10" in users:
                from interest_migration.benchmark.per_user import mean_ci

                _, row["ndcg@10_ci_low"], row["ndcg@10_ci_high"] = mean_ci(users["ndcg@10"])
        failed = group[group["status"] != "ok"]
        errors = failed.get("error", pd.Series(dtype=object)).dropna()
        row["error"] = "; ".join(sorted(set(errors)))[:300] if len(errors) else ""
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(value, digits=4) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def markdown_table(summary: pd.DataFrame, protocol: str) -> str:
    """The Markdown table of one protocol."""
    rows = summary[summary["protocol"] == protocol]
    header = ("| model | NDCG@10 | 95% CI | Recall@10 | MRR@10 | Hit@10 | NDCG@20 | Recall@20 | valid NDCG@10 "
              "| epochs | s/epoch | CPU s/epoch | train s | eval s | peak RSS MB | params | note |")
    lines = [header, "|---|" + "---:|" * 15 + "---|"]
    for _, r in rows.iterrows():
        def metric(name):
            value = r.get(name)
            text = _fmt(value)
            std = r.get(f"{name}_std")
            if text != "–" and std is not None and np.isfinite(std):
                text += f" ± {std:.4f}"
            return text

        ci = (f"[{r['ndcg@10_ci_low']:.3f}, {r['ndcg@10_ci_high']:.3f}]"
              if np.isfinite(r.get("ndcg@10_ci_low", np.nan)) else "–")
        note = r.get("error") or ""
        if r["runs_ok"] < r["runs"]:
            note = f"{r['runs'] - r['runs_ok']} of {r['runs']} runs failed: {note}"
        lines.append(
            f"| {r['model']} | {metric('ndcg@10')} | {ci} | {metric('recall@10')} | {metric('mrr@10')} "
            f"| {metric('hit@10')} | {metric('ndcg@20')} | {metric('recall@20')} | {_fmt(r.get('valid_ndcg@10'))} "
            f"| {_fmt(r.get('epochs'), 1)} | {_fmt(r.get('seconds_per_epoch'), 2)} "
            f"| {_fmt(r.get('cpu_seconds_per_epoch'), 2)} | {_fmt(r.get('train_seconds'), 1)} "
            f"| {_fmt(r.get('test_eval_seconds'), 2)} | {_fmt(r.get('peak_rss_mb'), 0)} "
            f"| {_fmt(int(r['n_params'])) if np.isfinite(r.get('n_params', np.nan)) else '–'} | {note.replace('|', '/')} |"
        )
    return "\n".join(lines)


def bucket_markdown(table: pd.DataFrame) -> str:
    models = [c for c in table.columns if c != "users"]
    lines = ["| switch-rate bucket | users | " + " | ".join(models) + " |",
             "|---|---:|" + "---:|" * len(models)]
    for bucket, r in table.iterrows():
        lines.append(f"| {bucket} | {int(r['users'])} | " + " | ".join(_fmt(r[m]) for m in models) + " |")
    return "\n".join(lines)


def write_tables(out: Path, summary: pd.DataFrame, info: dict) -> None:
    """``results.csv``, ``results.json`` and ``results.md``."""
    with atomic_path(out / "results.csv") as tmp:
        summary.to_csv(tmp, index=False)
    payload = {**info, "rows": json.loads(summary.to_json(orient="records"))}
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2, default=str))
    atomic_write_text(out / "results.md", render_markdown(summary, info))


def render_markdown(summary: pd.DataFrame, info: dict) -> str:
    parts = [f"# {info['dataset']}: model comparison", "",
             f"Command: `{info['command']}`  ", f"Commit: `{info['commit']}`  ",
             f"Seeds: {', '.join(map(str, info['seeds']))}. Timings are wall-clock on {info['machine']}.", ""]
    for protocol, details in info["protocols"].items():
        parts += [f"## Protocol `{protocol}`", "",
                  f"- data filter: {details['data_filter']}",
                  f"- candidates: {details['candidates']}",
                  f"- interactions: {details.get('rows_kept') or details.get('rows_in') or 'as in the dataset'}; "
                  f"test users evaluated: {details.get('n_test_users', '–')}", "",
                  markdown_table(summary, protocol), ""]
        test = info.get("paired_tests", {}).get(protocol)
        if test:
            parts += [f"Paired test on per-user NDCG@10 ({test['n_users']} users, seed-averaged): "
                      f"{test['a']} {test['mean_a']:.4f} vs best baseline {test['b']} {test['mean_b']:.4f}, "
                      f"relative {test['relative_gain'] * 100:+.1f} %, Wilcoxon p = {test['wilcoxon_p']:.3g}, "
                      f"paired t p = {test['ttest_p']:.3g}.", ""]
        buckets = info.get("buckets", {}).get(protocol)
        if buckets:
            parts += [f"NDCG@10 per drift bucket (terciles of the category switch rate in each user's "
                      f"training history):", "", buckets["markdown"], ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return path


def plot_metric_bars(summary: pd.DataFrame, path: Path, metrics=("ndcg@10", "recall@10", "mrr@10")) -> Path:
    plt = _pyplot()
    protocols = list(dict.fromkeys(summary["protocol"]))
    fig, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4), squeeze=False)
    for ax, protocol in zip(axes[0], protocols):
        rows = summary[summary["protocol"] == protocol]
        x = np.arange(len(rows))
        width = 0.8 / len(metrics)
        for i, metric in enumerate(metrics):
            values = rows[metric] if metric in rows else pd.Series(np.nan, index=rows.index)
            errors = rows.get(f"{metric}_std")
            ax.bar(x + i * width, values.fillna(0), width, label=metric,
                   yerr=None if errors is None else errors.fillna(0))
        for i, ok in enumerate(rows["runs_ok"] > 0):
            if not ok:
                ax.text(x[i] + width * (len(metrics) - 1) / 2, 0.01, "failed", ha="center", rotation=90, fontsize=8)
        ax.set_xticks(x + width * (len(metrics) - 1) / 2)
        ax.set_xticklabels(rows["model"], rotation=45, ha="right")
        ax.set_title(f"protocol: {protocol}")
        ax.legend()
    return _save(fig, path)


def plot_quality_vs_time(summary: pd.DataFrame, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for protocol, marker in zip(dict.fromkeys(summary["protocol"]), "os^vD"):
        rows = summary[(summary["protocol"] == protocol) & summary.get("ndcg@10", pd.Series(dtype=float)).notna()]
        ax.scatter(rows["train_seconds"].clip(lower=0.01), rows["ndcg@10"], marker=marker, label=protocol)
        for _, r in rows.iterrows():
            ax.annotate(r["model"], (max(r["train_seconds"], 0.01), r["ndcg@10"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("total train time (s, log scale; measured on a shared machine)")
    ax.set_ylabel("test NDCG@10")
    ax.legend()
    return _save(fig, path)


def plot_buckets(tables: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4), squeeze=False)
    for ax, (protocol, table) in zip(axes[0], tables.items()):
        models = [c for c in table.columns if c != "users"]
        x = np.arange(len(table))
        width = 0.8 / max(len(models), 1)
        for i, model in enumerate(models):
            ax.bar(x + i * width, table[model].fillna(0), width, label=model)
        ax.set_xticks(x + width * (len(models) - 1) / 2)
        ax.set_xticklabels([f"{b}\n({int(n)} users)" for b, n in zip(table.index, table["users"])], fontsize=8)
        ax.set_ylabel("test NDCG@10")
        ax.set_title(f"{protocol}: by category switch rate")
        ax.legend(fontsize=7)
    return _save(fig, path)
