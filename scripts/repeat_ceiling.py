"""How far re-visits alone go: rankings of each user's own history, scored as RecBole scores them.

Under the ``repeats`` protocol most test targets are items the user already touched. This script
ranks, for every user, only the distinct items of their last ``--max-len`` events before the target
(leave-one-out by time, as ``recbole_configs/protocol.yaml`` splits), by

* recency (the most recent first),
* decayed frequency: the sum of ``decay ** age`` over the item's occurrences (age 0 = last event),
* with ``--learned``, a gradient-boosted classifier (scikit-learn) of "is this past item the next
  one", trained on the steps of the training split (those before each user's validation target)
  whose target is in the history, settings chosen on validation, from hand-made features of the
  item in the history: recency, counts, decayed counts, behaviour types, time since its last
  occurrence, its category against the last item's and the history's, its popularity in the
  training split.

and reports NDCG@10 on the validation and test targets, and on test split by whether the target is
in that history (a ranking of the history scores 0 on the others). A learned model that does not
beat these on repeat targets has learned nothing about re-visits beyond them.

With ``--new-items`` (per-user files ``<run>.users.csv`` that ``compare`` writes, averaged over
the files given, e.g. one per seed, of a model that ranks only items outside the history) it also
reports what a recommender would score if it knew in advance which targets are re-visits: each
history ranking on those, the model's per-user NDCG@10 on the others. No model knows that, so
this is an upper bound on combining the two.

    python scripts/repeat_ceiling.py --dataset taobao --data-path datasets --learned
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench_report import emit  # scripts/bench_report.py

BEHAVIOURS = ("pv", "cart", "fav", "buy")  # Taobao's behaviour types; others count as none of them


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-path", default="datasets", help="folder holding <dataset>/<dataset>.inter")
    parser.add_argument("--max-len", type=int, default=50, help="history length (MAX_ITEM_LIST_LENGTH)")
    parser.add_argument("--decays", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 1.0])
    parser.add_argument("--learned", action="store_true", help="add the gradient-boosted re-ranker of the history")
    parser.add_argument("--seed", type=int, default=2020, help="seed of the re-ranker")
    parser.add_argument("--new-items", nargs="+", type=Path, default=[], metavar="USERS_CSV",
                        help="per-user NDCG@10 files (compare's *.users.csv) of a model ranking new items only")
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    return parser.parse_args()


@dataclass
class Sequence:
    """One user's events in time order (RecBole's ``order: TO``, ties kept in file order)."""

    user: str
    items: list
    times: np.ndarray
    behaviours: list | None


def read_sequences(folder: Path, dataset: str) -> tuple[list[Sequence], dict]:
    """Users with at least 3 events (a training, a validation and a test step) and item -> category."""
    path = folder / dataset / f"{dataset}.inter"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found (prepare the dataset first, or pass --data-path)")
    inter = pd.read_csv(path, sep="\t", dtype=str)
    inter.columns = [c.split(":")[0] for c in inter.columns]
    for field in ("user_id", "item_id", "timestamp"):
        if field not in inter:
            raise SystemExit(f"error: {path}: no column {field!r} (expected a RecBole atomic .inter file)")
    inter["timestamp"] = pd.to_numeric(inter["timestamp"], errors="raise")
    inter = inter.sort_values(["user_id", "timestamp"], kind="stable")
    has_behaviour = "behavior_type" in inter
    sequences = [
        Sequence(user, list(group["item_id"]), group["timestamp"].to_numpy(float),
                 list(group["behavior_type"]) if has_behaviour else None)
        for user, group in inter.groupby("user_id", sort=False)
        if len(group) >= 3
    ]
    categories = {}
    item_path = folder / dataset / f"{dataset}.item"
    if item_path.is_file():
        items = pd.read_csv(item_path, sep="\t", dtype=str)
        items.columns = [c.split(":")[0] for c in items.columns]
        if "category_id" in items:
            categories = dict(zip(items["item_id"], items["category_id"]))
    return sequences, categories


def ndcg_at_10(ranking: list, target) -> float:
    top = ranking[:10]
    return 1.0 / np.log2(top.index(target) + 2) if target in top else 0.0


def recency(history: list) -> list:
    return list(dict.fromkeys(reversed(history)))


def decayed_frequency(history: list, decay: float) -> list:
    scores: dict = {}
    for age, item in enumerate(reversed(history)):
        scores[item] = scores.get(item, 0.0) + decay**age
    return sorted(scores, key=lambda item: -scores[item])  # ties: most recent first (dict order)


def history_features(seq: Sequence, end: int, max_len: int, categories: dict, popularity: dict):
    """Candidates (the distinct items of the ``max_len`` events before ``end``, most recent first)
    and one feature row per candidate. Only events before ``end`` are read."""
    start = max(0, end - max_len)
    items = seq.items[start:end]
    times = seq.times[start:end]
    behaviours = seq.behaviours[start:end] if seq.behaviours is not None else None
    n = len(items)
    last_category = categories.get(items[-1])
    history_categories = [categories.get(item) for item in items]
    candidates = recency(items)
    rows = []
    for rank, item in enumerate(candidates):
        ages = [n - 1 - k for k in range(n) if items[k] == item]  # ascending: ages[0] = last occurrence
        category = categories.get(item)
        row = [
            rank, ages[0], ages[-1], len(ages),
            sum(age < 5 for age in ages), sum(age < 10 for age in ages),
            sum(0.8**age for age in ages), sum(0.5**age for age in ages),
            np.log1p(max(0.0, times[-1] - times[n - 1 - ages[0]])),
            float(rank == 0), n, len(candidates),
            np.log1p(popularity.get(item, 0)),
            float(category is not None and category == last_category),
            sum(c is not None and c == category for c in history_categories) / n,
        ]
        if behaviours is not None:
            own = [behaviours[n - 1 - age] for age in ages]
            row += [sum(b == kind for b in own) for kind in BEHAVIOURS]
            row += [BEHAVIOURS.index(own[0]) if own[0] in BEHAVIOURS else -1]
        rows.append(row)
    return candidates, np.asarray(rows, dtype=float)


# (max_iter, learning_rate, min_samples_leaf) of scikit-learn's HistGradientBoostingClassifier; the
# script keeps the one with the best validation NDCG@10.
GRID = [(300, 0.05, 20), (100, 0.05, 20), (100, 0.05, 100), (50, 0.1, 200), (200, 0.03, 200)]


def learned_rankings(sequences: list[Sequence], categories: dict, max_len: int, seed: int):
    """Fit each setting of GRID on the training steps whose target is in the history (the others hold
    nothing to rank); return (setting, validation rankings, test rankings) of the best on validation."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    popularity: dict = {}
    for seq in sequences:
        for item in seq.items[:-2]:  # the training split only
            popularity[item] = popularity.get(item, 0) + 1
    features, labels = [], []
    for seq in sequences:
        for end in range(1, len(seq.items) - 2):  # targets before the validation one
            candidates, x = history_features(seq, end, max_len, categories, popularity)
            label = [item == seq.items[end] for item in candidates]
            if any(label):
                features.append(x)
                labels.append(label)
    features, labels = np.vstack(features), np.concatenate(labels)
    evaluated = {end: [(seq, history_features(seq, len(seq.items) - end, max_len, categories, popularity))
                       for seq in sequences] for end in (2, 1)}

    def rank(model, end: int) -> list:
        ranked = []
        for seq, (candidates, x) in evaluated[end]:
            order = np.argsort(-model.predict_proba(x)[:, 1], kind="stable")  # ties: most recent first
            ranked.append([candidates[k] for k in order])
        return ranked

    best = None
    for max_iter, learning_rate, min_leaf in GRID:
        model = HistGradientBoostingClassifier(
            max_iter=max_iter, learning_rate=learning_rate, max_leaf_nodes=15, min_samples_leaf=min_leaf,
            l2_regularization=1.0, early_stopping=False, random_state=seed,
        ).fit(features, labels)
        valid = rank(model, 2)
        score = np.mean([ndcg_at_10(r, seq.items[-2]) for r, seq in zip(valid, sequences)])
        if best is None or score > best[0]:
            best = (score, f"{max_iter} trees, learning rate {learning_rate:g}, leaves of {min_leaf}+", valid,
                    rank(model, 1))
    return best[1:]


def main() -> int:
    args = parse_args()
    sequences, categories = read_sequences(Path(args.data_path), args.dataset)
    valid = [(seq.items[:-2][-args.max_len:], seq.items[-2]) for seq in sequences]
    test = [(seq.items[:-1][-args.max_len:], seq.items[-1]) for seq in sequences]
    in_history = np.array([target in history for history, target in test])
    rankers = {"recency": recency}
    rankers.update({f"decayed frequency, decay {d:g}": (lambda h, d=d: decayed_frequency(h, d)) for d in args.decays})
    rankings = {name: ([rank(h) for h, _ in valid], [rank(h) for h, _ in test]) for name, rank in rankers.items()}
    if args.learned:
        setting, *ranked = learned_rankings(sequences, categories, args.max_len, args.seed)
        rankings[f"learned re-ranker ({setting}; chosen on validation)"] = ranked

    lines = [
        f"{args.dataset}: {len(sequences)} users; test target already in the last {args.max_len} events: "
        f"{in_history.mean():.1%}",
        "",
        "| ranking of the user's own history | validation NDCG@10 | NDCG@10 | on targets in history | on other targets |",
        "|---|---:|---:|---:|---:|",
    ]
    test_scores = {}
    for name, (valid_ranked, test_ranked) in rankings.items():
        valid_scores = np.array([ndcg_at_10(r, target) for r, (_, target) in zip(valid_ranked, valid)])
        scores = test_scores[name] = np.array([ndcg_at_10(r, target) for r, (_, target) in zip(test_ranked, test)])
        lines.append(f"| {name} | {valid_scores.mean():.4f} | {scores.mean():.4f} | "
                     f"{scores[in_history].mean():.4f} | 0 |")
    if args.new_items:
        new_scores = new_item_scores(args.new_items, [seq.user for seq in sequences])
        lines += [
            "",
            f"Knowing which test targets are re-visits: the history ranking on those, and on the others the "
            f"per-user NDCG@10 of {', '.join(path.name for path in args.new_items)} "
            f"({new_scores[~in_history].mean():.4f} there):",
            "",
            "| on re-visit targets | NDCG@10 |",
            "|---|---:|",
        ]
        for name, scores in test_scores.items():
            lines.append(f"| {name} | {np.where(in_history, scores, new_scores).mean():.4f} |")
    emit("\n".join(lines), args.out)
    return 0


def new_item_scores(paths: list[Path], users: list[str]) -> np.ndarray:
    """Per-user test NDCG@10 in ``users``' order, averaged over the files (one per seed)."""
    columns = []
    for path in paths:
        table = pd.read_csv(path, dtype={"user_id": str})
        for field in ("user_id", "ndcg@10"):
            if field not in table:
                raise SystemExit(f"error: {path}: no column {field!r} (expected a compare *.users.csv file)")
        scores = table.set_index("user_id")["ndcg@10"]
        missing = [user for user in users if user not in scores.index]
        if missing:
            raise SystemExit(f"error: {path}: no row for {len(missing)} test user(s), e.g. {missing[0]!r}")
        columns.append(scores.loc[users].to_numpy(float))
    return np.mean(columns, axis=0)


if __name__ == "__main__":
    raise SystemExit(main())
