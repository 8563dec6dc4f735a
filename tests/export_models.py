"""Tiny models trained once per test process and shared by the checkpoint and export tests.

The planted dataset is cut so that users have different history lengths (full and partial
sequences), one user has a single interaction (no sequence in RecBole's sequential data) and
one has two.
"""
from __future__ import annotations

import functools
from pathlib import Path

from synthetic_data import planted_config, write_planted_dataset

#: user -> number of interactions kept (the rest of the planted users keep all 24)
SHORT_USERS = {"u1": 1, "u2": 2, "u3": 5, "u4": 11}

SASREC = {
    "n_layers": 1,
    "n_heads": 1,
    "hidden_size": 16,
    "inner_size": 32,
    "hidden_dropout_prob": 0.0,
    "attn_dropout_prob": 0.0,
    "loss_type": "CE",
    "train_neg_sample_args": None,
}


def write_export_dataset(root: Path, name: str = "planted") -> Path:
    """The planted dataset with a few users' histories cut short; returns ``root``."""
    write_planted_dataset(root, name=name, n_users=80, events_per_user=24)
    inter = Path(root) / name / f"{name}.inter"
    lines = inter.read_text().splitlines()
    kept, seen = [lines[0]], {}
    for line in lines[1:]:
        user = line.split("\t", 1)[0]
        seen[user] = seen.get(user, 0) + 1
        if seen[user] <= SHORT_USERS.get(user, 10**9):
            kept.append(line)
    inter.write_text("\n".join(kept) + "\n")
    return Path(root)


def model_config(model: str, data_root: Path, checkpoint_dir: Path, **overrides) -> dict:
    config = planted_config(data_root, epochs=1, checkpoint_dir=str(checkpoint_dir), **overrides)
    if model == "SASRec":
        config.update(SASREC)
    return config


@functools.lru_cache(maxsize=None)
def trained(base: Path, model: str) -> Path:
    """Train ``model`` for one epoch on the export dataset under ``base``; the RecBole checkpoint path."""
    import interest_migration  # noqa: F401
    from interest_migration.experiment import run_model

    data_root = base / "data"
    if not (data_root / "planted").is_dir():
        write_export_dataset(data_root)
    record = run_model(model, "planted", None, model_config(model, data_root, base / "saved"))
    return Path(record.checkpoint)
