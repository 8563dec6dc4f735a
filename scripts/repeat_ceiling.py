"""How far re-visits alone go: non-learned rankings of each user's own history, as RecBole scores them.

Under the ``repeats`` protocol most test targets are items the user already touched. This script
ranks, for every user, only the items of their last ``--max-len`` events before the test target
(leave-one-out by time, as ``recbole_configs/protocol.yaml`` splits), by

* recency (the most recent first), and
* decayed frequency: the sum of ``decay ** age`` over the item's occurrences (age 0 = last event),

and reports NDCG@10, overall and split by whether the target is in that history. A learned model
that does not beat these on repeat targets has learned nothing about re-visits beyond them.

    python scripts/repeat_ceiling.py --dataset taobao --data-path datasets
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from bench_report import emit  # scripts/bench_report.py


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-path", default="datasets", help="folder holding <dataset>/<dataset>.inter")
    parser.add_argument("--max-len", type=int, default=50, help="history length (MAX_ITEM_LIST_LENGTH)")
    parser.add_argument("--decays", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 1.0])
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    return parser.parse_args()


def read_sequences(path: Path) -> list[tuple[list, object]]:
    """(history, target) per user with at least 3 events: the test split of leave-one-out."""
    inter = pd.read_csv(path, sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    inter = inter.sort_values(["user_id", "timestamp"], kind="stable")
    return [
        (items[:-1], items[-1])
        for items in inter.groupby("user_id", sort=False)["item_id"].agg(list)
        if len(items) >= 3
    ]


def ndcg_at_10(ranking: list, target) -> float:
    top = ranking[:10]
    return 1.0 / np.log2(top.index(target) + 2) if target in top else 0.0


def decayed_frequency(history: list, decay: float) -> list:
    scores: dict = {}
    for age, item in enumerate(reversed(history)):
        scores[item] = scores.get(item, 0.0) + decay**age
    return sorted(scores, key=lambda item: -scores[item])  # ties: most recent first (dict order)


def main() -> int:
    args = parse_args()
    path = Path(args.data_path) / args.dataset / f"{args.dataset}.inter"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found (prepare the dataset first, or pass --data-path)")
    sequences = [(history[-args.max_len:], target) for history, target in read_sequences(path)]
    in_history = np.array([target in history for history, target in sequences])
    rankings = {"recency": lambda h: list(dict.fromkeys(reversed(h)))}
    rankings.update({f"decayed frequency, decay {d:g}": (lambda h, d=d: decayed_frequency(h, d)) for d in args.decays})

    lines = [
        f"{args.dataset}: {len(sequences)} users; test target already in the last {args.max_len} events: "
        f"{in_history.mean():.1%}",
        "",
        "| ranking of the user's own history | NDCG@10 | on targets in history | on other targets |",
        "|---|---:|---:|---:|",
    ]
    for name, rank in rankings.items():
        scores = np.array([ndcg_at_10(rank(history), target) for history, target in sequences])
        lines.append(f"| {name} | {scores.mean():.4f} | {scores[in_history].mean():.4f} | 0 |")
    emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
