"""How far item-to-item transitions alone go: InterestShiftCNN's transition term with no learning.

Every item i is scored by ``sum_b w_b * log(1 + P_K(i | j_b) / 0.01)`` over the user's last items
``j_0`` (the last), ``j_1``, ... with fixed weights ``w_b``, where ``P_K(i | j)`` is the share of
the training split's transitions out of ``j`` that went to ``i``, a transition being any item
within ``K`` steps after ``j`` (the model's ``transition_span``). The training split is each
user's events before the validation target (leave-one-out by time, as
``recbole_configs/protocol.yaml`` splits); validation and test targets are ranked over all items
(without the user's earlier items unless ``--keep-seen``), ties broken at random. It shows which
span and how many items back carry signal before a model is trained with them.

    python scripts/transition_baseline.py --dataset amazon-beauty-novel \\
        --data-path results/amazon-beauty/<run>/data --spans 1 2 3 --weights 1 0.5 0.3
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bench_report import emit  # scripts/bench_report.py
from repeat_ceiling import read_sequences  # scripts/repeat_ceiling.py

FLOOR = 0.01  # the model's _TRANSITION_FLOOR


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-path", default="datasets", help="folder holding <dataset>/<dataset>.inter")
    parser.add_argument("--spans", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.5, 0.3],
                        help="weight of the last item, the one before it, ...; each prefix is one row")
    parser.add_argument("--keep-seen", action="store_true", help="rank the user's earlier items too")
    parser.add_argument("--seed", type=int, default=2020, help="seed of the tie-breaking")
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    return parser.parse_args()


def transition_scores(train: list[np.ndarray], n_items: int, span: int) -> sp.csr_matrix:
    """[n_items, n_items]: log(1 + P_span(i | j) / FLOOR) from the training sequences."""
    src, dst = [], []
    for seq in train:
        for back in range(1, span + 1):
            keep = seq[:-back] != seq[back:]
            src.append(seq[:-back][keep])
            dst.append(seq[back:][keep])
    src, dst = np.concatenate(src), np.concatenate(dst)
    counts = sp.csr_matrix((np.ones(src.size), (src, dst)), shape=(n_items, n_items))
    counts.sum_duplicates()
    p_next = sp.diags(1.0 / np.maximum(np.asarray(counts.sum(1)).ravel(), 1)) @ counts
    p_next.data = np.log1p(p_next.data / FLOOR)
    return p_next.tocsr()


def ndcg_at_10(histories: list[np.ndarray], targets: np.ndarray, table: sp.csr_matrix, weights: list[float],
               n_items: int, keep_seen: bool, rng: np.random.Generator) -> float:
    rows, cols, vals = [], [], []
    for u, history in enumerate(histories):
        for back, weight in enumerate(weights[: len(history)]):
            rows.append(u)
            cols.append(history[-1 - back])
            vals.append(weight)
    scores = (sp.csr_matrix((vals, (rows, cols)), shape=(len(histories), n_items)) @ table).tocsr()
    gains = np.zeros(len(histories))
    for u, (history, target) in enumerate(zip(histories, targets)):
        row = scores[u]
        excluded = set() if keep_seen else set(history.tolist()) - {target}
        excluded.add(0)  # the padding id
        positive = {i: s for i, s in zip(row.indices.tolist(), row.data.tolist()) if s > 0 and i not in excluded}
        own = positive.get(target, 0.0)
        if own > 0:
            above = sum(s > own for s in positive.values())
            ties = sum(s == own for s in positive.values()) - 1
        else:  # among every unscored candidate
            above = len(positive)
            ties = n_items - len(excluded) - len(positive) - 1
        rank = above + rng.integers(0, ties + 1)
        gains[u] = 1.0 / np.log2(rank + 2) if rank < 10 else 0.0
    return float(gains.mean())


def main() -> int:
    args = parse_args()
    sequences, _ = read_sequences(Path(args.data_path), args.dataset)
    ids = {item: k + 1 for k, item in enumerate(dict.fromkeys(i for seq in sequences for i in seq.items))}
    n_items = len(ids) + 1
    coded = [np.array([ids[i] for i in seq.items]) for seq in sequences]
    train = [seq[:-2] for seq in coded]
    splits = {"validation": ([seq[:-2] for seq in coded], np.array([seq[-2] for seq in coded])),
              "test": ([seq[:-1] for seq in coded], np.array([seq[-1] for seq in coded]))}
    lines = [
        f"{args.dataset}: {len(coded)} users, {n_items - 1} items; "
        f"{'earlier items ranked too' if args.keep_seen else 'earlier items excluded'}",
        "",
        "| span K | items back (weights) | validation NDCG@10 | test NDCG@10 |",
        "|---:|---|---:|---:|",
    ]
    for span in args.spans:
        table = transition_scores(train, n_items, span)
        for back in range(1, len(args.weights) + 1):
            weights = args.weights[:back]
            rng = np.random.default_rng(args.seed)
            valid, test = (ndcg_at_10(*splits[name], table, weights, n_items, args.keep_seen, rng)
                           for name in ("validation", "test"))
            lines.append(f"| {span} | {back} ({', '.join(f'{w:g}' for w in weights)}) | {valid:.4f} | {test:.4f} |")
    emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
