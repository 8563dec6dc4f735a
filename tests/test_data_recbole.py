"""Converted real datasets load in RecBole with the leave-one-out protocol and train InterestShiftCNN.

One epoch each, with the committed dataset YAML and protocol. To keep the suite fast, RecBole's own
load-time filters keep only the most active users (12 on Taobao, 94 on Beauty) and the items
they touched: the model's cost grows with samples x catalogue size. The whole converted files are
still read and parsed by RecBole; only training and evaluation see the subset.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from interest_migration.data import amazon, taobao

REPO = Path(__file__).resolve().parents[1]


def _train_one_epoch(name: str, filters: dict) -> dict:
    import interest_migration  # noqa: F401  (registers InterestShiftCNN with RecBole)
    from recbole.quick_start import run_recbole

    config = {
        "data_path": "datasets/", "epochs": 1, "embedding_size": 16, "n_layers": 1, "MAX_ITEM_LIST_LENGTH": 20,
        "train_batch_size": 512, "eval_batch_size": 256, "show_progress": False, "state": "ERROR",
        "save_dataset": False, "save_dataloaders": False, **filters,
    }
    files = [str(REPO / "recbole_configs" / "protocol.yaml"), str(REPO / "recbole_configs" / "datasets" / f"{name}.yaml")]
    return run_recbole(model="InterestShiftCNN", dataset=name, config_file_list=files, config_dict=config)


@pytest.mark.parametrize("source", ["taobao", "amazon-beauty"])
def test_converted_dataset_trains_in_recbole(source, shared_datasets):
    if source == "taobao":
        manifest = taobao.convert(shared_datasets / "taobao-userbehavior-head" / "UserBehavior.csv", "datasets")
        filters = {"user_inter_num_interval": "[400,inf)", "item_inter_num_interval": "[1,inf)"}
    else:
        manifest = amazon.convert(shared_datasets / "amazon-5core", "datasets")
        filters = {"user_inter_num_interval": "[60,inf)", "item_inter_num_interval": "[1,inf)"}
    result = _train_one_epoch(manifest["name"], filters)
    test = result["test_result"]
    assert set(test) >= {"recall@10", "ndcg@10"}
    assert all(math.isfinite(v) and 0 <= v <= 1 for v in test.values())
    assert math.isfinite(result["best_valid_score"])
