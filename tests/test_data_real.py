"""Converting the shared real datasets reproduces the counts their SOURCE.md states, and the
converted datasets load in RecBole with the leave-one-out protocol and train InterestShiftCNN.

The training tests run one epoch with the committed dataset YAML and protocol. To keep the suite
fast, RecBole's own load-time filters keep only the most active users (12 on Taobao, 43 on Beauty)
and the items they touched, since the model's cost grows with samples x catalogue size. RecBole
still reads and parses the whole converted files; only training and evaluation see the subset.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from interest_migration.data import amazon, diginetica, taobao
from interest_migration.data.cleaning import CleaningOptions

REPO = Path(__file__).resolve().parents[1]


def _inter(folder: Path, name: str) -> pd.DataFrame:
    frame = pd.read_csv(folder / name / f"{name}.inter", sep="\t", dtype=str)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    frame["timestamp"] = frame["timestamp"].astype(float)
    return frame


def _committed_config(name: str) -> str:
    return (REPO / "recbole_configs" / "datasets" / f"{name}.yaml").read_text()


@pytest.fixture(scope="module")
def taobao_head(shared_datasets, tmp_path_factory):
    out = tmp_path_factory.mktemp("taobao")
    source = shared_datasets / "taobao-userbehavior-head" / "UserBehavior.csv"
    return out, taobao.convert(source, out, "taobao"), source


@pytest.fixture(scope="module")
def beauty(shared_datasets, tmp_path_factory):
    out = tmp_path_factory.mktemp("amazon")
    return out, amazon.convert(shared_datasets / "amazon-5core", out), shared_datasets / "amazon-5core"


def test_taobao_head_counts(taobao_head):
    out, manifest, source = taobao_head
    assert manifest["rows_read"] == 84_476
    assert manifest["rows_kept"] == 84_475
    assert manifest["rows_dropped"] == {"truncated_last_line": 1}
    assert manifest["drop_examples"]["truncated_last_line"][0]["value"] == "100370,1968385,1875258,pv"
    assert (manifest["users"], manifest["items"], manifest["categories"]) == (815, 55_368, 2_914)
    assert manifest["behaviors"] == {"pv": 75_872, "cart": 4_497, "fav": 2_356, "buy": 1_750}
    assert manifest["time_span"]["min_utc"].startswith("2017-09-11")  # the 35 early rows SOURCE.md mentions
    assert manifest["sources"][0]["sha256"] == __import__("hashlib").sha256(source.read_bytes()).hexdigest()
    assert json.loads((out / "taobao" / "manifest.json").read_text()) == manifest
    assert (out / "taobao" / "taobao.yaml").read_text() == _committed_config("taobao")


def test_taobao_output_is_the_source_sorted_by_user_and_time(taobao_head):
    out, _, source = taobao_head
    raw = pd.read_csv(source, header=None, names=["user_id", "item_id", "category_id", "behavior_type", "timestamp"],
                      dtype=str, nrows=84_475)
    raw["timestamp"] = raw["timestamp"].astype(float)
    expected = raw.sort_values(["user_id", "timestamp"], kind="stable")
    inter = _inter(out, "taobao")
    assert inter.groupby("user_id", sort=False).ngroups == 815
    for key, group in inter.groupby("user_id", sort=False):  # one block per user, time-ordered
        assert np.all(np.diff(group["timestamp"].to_numpy()) >= 0)
    ordered = inter.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(ordered, expected[ordered.columns].reset_index(drop=True))
    items = pd.read_csv(out / "taobao" / "taobao.item", sep="\t", dtype=str)
    assert len(items) == 55_368 and items["item_id:token"].is_unique


def test_taobao_time_window(shared_datasets, tmp_path):
    source = shared_datasets / "taobao-userbehavior-head" / "UserBehavior.csv"
    start, end = taobao.OFFICIAL_WINDOW
    from interest_migration.data.cleaning import parse_time_bound
    options = CleaningOptions(start=parse_time_bound(start), end=parse_time_bound(end))
    manifest = taobao.convert(source, tmp_path, "w", options)
    assert manifest["rows_dropped"]["outside_time_window"] == 35  # SOURCE.md: 35 rows before the window
    assert manifest["rows_read"] == manifest["rows_kept"] + sum(manifest["rows_dropped"].values())


def test_beauty_counts_and_categories(beauty):
    out, manifest, _ = beauty
    assert manifest["rows_read"] == manifest["rows_kept"] == 198_502
    assert manifest["rows_dropped"] == {}
    assert (manifest["users"], manifest["items"], manifest["categories"]) == (22_363, 12_101, 6)
    items = pd.read_csv(out / "amazon-beauty" / "amazon-beauty.item", sep="\t", dtype=str, keep_default_na=False)
    assert set(items["category_id:token"]) == {"Skin Care", "Hair Care", "Makeup", "Tools & Accessories",
                                               "Bath & Body", "Fragrance"}
    first = items.set_index("item_id:token").loc["B004756YJA"]  # SOURCE.md: item 1 -> OPI, Makeup, Nails, Nail Polish
    assert (first["brand:token"], first["category_id:token"], first["subcategory:token"],
            first["leaf_category:token"]) == ("OPI", "Makeup", "Nails", "Nail Polish")
    assert (out / "amazon-beauty" / "amazon-beauty.yaml").read_text() == _committed_config("amazon-beauty")


def test_beauty_keeps_source_order_within_day_ties(beauty):
    out, _, folder = beauty
    maps = json.loads((folder / "p5-datamaps" / "beauty_datamaps.json").read_text())
    users, items, days = [], [], []
    for line, day_line in zip((folder / "s3rec" / "Beauty.txt").read_text().splitlines(),
                              (folder / "ticoserec" / "Beauty_time_org_rank.txt").read_text().splitlines()):
        user, *seq = line.split()
        users += [maps["id2user"][user]] * len(seq)
        items += [maps["id2item"][i] for i in seq]
        days += day_line.split()[1:]
    source = pd.DataFrame({"user_id": users, "item_id": items, "day": np.asarray(days, dtype=float)})
    assert source.duplicated(["user_id", "day"]).sum() > 50_000  # many same-day ties a plain sort could shuffle
    inter = _inter(out, "amazon-beauty")
    # RecBole sorts each user's events by time: that order must be the S3-Rec sequence order, on the same day
    ordered = inter.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    expected = source.sort_values("user_id", kind="stable").reset_index(drop=True)
    assert ordered["item_id"].tolist() == expected["item_id"].tolist()
    assert np.array_equal(ordered["timestamp"].to_numpy() // 86400 * 86400, expected["day"].to_numpy())
    assert not ordered.duplicated(["user_id", "timestamp"]).any()


def test_diginetica_counts_and_anonymous_sessions(shared_datasets, tmp_path):
    folder = shared_datasets / "diginetica"
    as_users = diginetica.convert(folder, tmp_path, "dg")
    assert as_users["rows_read"] == 12_391 + 18_025 == as_users["rows_kept"]
    assert as_users["behaviors"] == {"pv": 12_391, "buy": 18_025}
    assert as_users["sources"][2]["rows_read"] == 184_047  # the full item -> category table
    dropped = diginetica.convert(folder, tmp_path, "dg_logged_in", anonymous="drop")
    # SOURCE.md: 4,710 view rows and 6,703 purchase rows carry a user id
    assert dropped["rows_kept"] == 4_710 + 6_703
    assert dropped["rows_dropped"] == {"anonymous_session": 12_391 + 18_025 - 4_710 - 6_703}
    inter = _inter(tmp_path, "dg_logged_in")
    assert inter["user_id"].str.startswith("u").all()
    assert (tmp_path / "dg" / "dg.yaml").read_text().split("\n", 1)[1] == \
        _committed_config("diginetica").split("\n", 1)[1]


def _train_one_epoch(data_path: Path, name: str, filters: dict) -> dict:
    import interest_migration  # noqa: F401  (registers InterestShiftCNN with RecBole)
    from recbole.quick_start import run_recbole

    config = {
        "data_path": f"{data_path}/", "epochs": 1, "embedding_size": 16, "n_layers": 1, "MAX_ITEM_LIST_LENGTH": 20,
        "train_batch_size": 512, "eval_batch_size": 256, "show_progress": False, "state": "ERROR",
        "save_dataset": False, "save_dataloaders": False, **filters,
    }
    files = [str(REPO / "recbole_configs" / "protocol.yaml"), str(REPO / "recbole_configs" / "datasets" / f"{name}.yaml")]
    result = run_recbole(model="InterestShiftCNN", dataset=name, config_file_list=files, config_dict=config)
    test = result["test_result"]
    assert set(test) >= {"recall@10", "ndcg@10"}
    assert all(math.isfinite(v) and 0 <= v <= 1 for v in test.values())
    assert math.isfinite(result["best_valid_score"])
    return result


def test_taobao_trains_in_recbole(taobao_head):
    out, manifest, _ = taobao_head
    _train_one_epoch(out, manifest["name"], {"user_inter_num_interval": "[400,inf)",
                                             "item_inter_num_interval": "[1,inf)"})


def test_beauty_trains_in_recbole(beauty):
    out, manifest, _ = beauty
    _train_one_epoch(out, manifest["name"], {"user_inter_num_interval": "[80,inf)",
                                             "item_inter_num_interval": "[1,inf)"})
