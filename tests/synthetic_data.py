"""A small seeded shop log with planted category migrations, written as RecBole atomic files.

Each user browses a few items of one category, then migrates to the *next* category
(``c -> c + 1 mod C``), with a behaviour type and a timestamp per event. A sequential model that
learns the migration can beat popularity; Pop cannot.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_MODEL = {
    "embedding_size": 16,
    "dilations": [1, 2],
    "n_layers": 1,
    "dropout_prob": 0.0,
}


def write_planted_dataset(
    root: Path,
    name: str = "planted",
    n_users: int = 120,
    n_categories: int = 6,
    items_per_category: int = 8,
    events_per_user: int = 24,
    stay: int = 3,
    seed: int = 7,
) -> Path:
    """Write ``root/name/name.inter`` and ``.item``; return ``root``."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token\titem_id:token\ttimestamp:float\tbehavior_type:token"]
    for user in range(1, n_users + 1):
        category = int(rng.integers(n_categories))
        ts = 1_500_000_000 + int(rng.integers(0, 10_000))
        for step in range(events_per_user):
            if step and step % stay == 0:
                category = (category + 1) % n_categories
            # within a category, items are visited in a fixed order with a little noise
            slot = (step % stay + int(rng.integers(0, 2))) % items_per_category
            item = category * items_per_category + slot + 1
            behavior = "buy" if step % stay == stay - 1 else "pv"
            ts += int(rng.integers(30, 4000))
            inter.append(f"u{user}\ti{item}\t{ts}\t{behavior}")
    # two brands per category (even and odd slots), for models that read item attributes
    items = ["item_id:token\tcategory_id:token\tbrand:token"]
    for category in range(n_categories):
        for slot in range(items_per_category):
            items.append(f"i{category * items_per_category + slot + 1}\tc{category}\tb{category}-{slot % 2}")
    (folder / f"{name}.inter").write_text("\n".join(inter) + "\n")
    (folder / f"{name}.item").write_text("\n".join(items) + "\n")
    return Path(root)


def planted_config(data_root: Path, name: str = "planted", **overrides) -> dict:
    """A RecBole config_dict for the planted dataset: leave-one-out by time, full ranking."""
    config = {
        "data_path": str(data_root),
        "dataset": name,
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {
            "inter": ["user_id", "item_id", "timestamp", "behavior_type"],
            "item": ["item_id", "category_id"],
        },
        "CATEGORY_FIELD": "category_id",
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["Recall", "NDCG", "MRR"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "MAX_ITEM_LIST_LENGTH": 20,
        "train_batch_size": 128,
        "eval_batch_size": 256,
        "epochs": 2,
        "stopping_step": 2,
        "seed": 2020,
        "reproducibility": True,
        "show_progress": False,
        "learning_rate": 0.005,
        **TINY_MODEL,
    }
    config.update(overrides)
    return config
