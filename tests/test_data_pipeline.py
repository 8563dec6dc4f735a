"""The shared conversion pipeline: partitioned sorting, duplicates, k-core, time window, atomic output, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from interest_migration.cli import main
from interest_migration.data import csv as generic
from interest_migration.data import taobao
from interest_migration.data.cleaning import CleaningOptions, DataError


def _shop_log(path: Path, rows: int = 6000, seed: int = 0) -> pd.DataFrame:
    """A Taobao-shaped log with ties, duplicates and rare users/items, in shuffled order."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "user": rng.integers(1, 400, rows),
        "item": rng.zipf(1.6, rows) % 900 + 1,
        "behavior": rng.choice(["pv", "cart", "fav", "buy"], rows, p=[0.85, 0.07, 0.05, 0.03]),
        "timestamp": 1511539200 + rng.integers(0, 3000, rows),  # many same-second ties
    })
    frame.insert(2, "category", frame["item"] % 37)
    frame = pd.concat([frame, frame.sample(150, random_state=seed)], ignore_index=True)  # exact duplicates
    frame.to_csv(path, header=False, index=False)
    return frame


def _inter(folder: Path) -> pd.DataFrame:
    frame = pd.read_csv(folder / f"{folder.name}.inter", sep="\t")
    frame.columns = ["user", "item", "timestamp", "behavior"]
    return frame


def _reference_k_core(frame: pd.DataFrame, ku: int, ki: int) -> pd.DataFrame:
    while True:
        users, items = frame["user"].value_counts(), frame["item"].value_counts()
        keep = frame["user"].map(users).ge(ku) & frame["item"].map(items).ge(ki)
        if keep.all():
            return frame
        frame = frame[keep]


@pytest.mark.parametrize("partitions", [1, 3])
def test_dedup_kcore_and_order_match_an_in_memory_reference(partitions, tmp_path):
    source = _shop_log(tmp_path / "log.csv")
    options = CleaningOptions(drop_duplicates=True, min_user_inter=5, min_item_inter=5)
    manifest = taobao.convert(tmp_path / "log.csv", tmp_path / "out", "shop", options, partitions=partitions)

    expected = source.drop_duplicates()
    expected = _reference_k_core(expected, 5, 5)
    expected = expected.sort_values(["user", "timestamp"], kind="stable")[["user", "item", "timestamp", "behavior"]]
    got = _inter(tmp_path / "out" / "shop")
    assert manifest["rows_dropped"] == {"duplicate": len(source) - len(source.drop_duplicates()),
                                        "k_core": len(source.drop_duplicates()) - len(expected)}
    assert manifest["rows_read"] == len(source) == manifest["rows_kept"] + sum(manifest["rows_dropped"].values())
    assert manifest["options"]["partitions"] == partitions
    # users appear as contiguous blocks, each in time order with ties in source order
    assert got["user"].ne(got["user"].shift()).sum() == got["user"].nunique()
    got_sorted = got.sort_values("user", kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(got_sorted, expected.reset_index(drop=True), check_dtype=False)
    assert (got.groupby("user").size() >= 5).all() and (got.groupby("item").size() >= 5).all()
    items = pd.read_csv(tmp_path / "out" / "shop" / "shop.item", sep="\t")
    assert sorted(items.iloc[:, 0]) == sorted(got["item"].unique())
    assert manifest["items"] == len(items) and manifest["users"] == got["user"].nunique()


def test_time_window_bounds(tmp_path):
    source = _shop_log(tmp_path / "log.csv", rows=2000)
    start, end = 1511539200 + 1000, 1511539200 + 2000
    manifest = taobao.convert(tmp_path / "log.csv", tmp_path, "w", CleaningOptions(start=start, end=end))
    inside = source["timestamp"].between(start, end - 1)
    assert manifest["rows_dropped"] == {"outside_time_window": int((~inside).sum())}
    assert manifest["time_span"]["min"] >= start and manifest["time_span"]["max"] < end


def test_failed_run_keeps_the_previous_dataset(tmp_path):
    _shop_log(tmp_path / "log.csv", rows=500)
    first = taobao.convert(tmp_path / "log.csv", tmp_path / "out", "shop")
    with pytest.raises(DataError, match="already exists"):
        taobao.convert(tmp_path / "log.csv", tmp_path / "out", "shop")
    (tmp_path / "bad.csv").write_text("u,i,c,b,t\n")
    with pytest.raises(DataError):
        taobao.convert(tmp_path / "bad.csv", tmp_path / "out", "shop", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["shop"]  # no temp folders left
    assert json.loads((tmp_path / "out" / "shop" / "manifest.json").read_text()) == first


def test_mapping_from_yaml_or_command_line_gives_the_same_dataset(tmp_path):
    log = tmp_path / "orders.tsv"
    log.write_text("ts_ms\tclient\tproduct\tkind\tcat\n"
                   "1700000000000\tA\tp1\tview\tshoes\n1700000005000\tA\tp2\tbuy\thats\n"
                   "1700000001000\tB\tp1\tview\tshoes\n1700000002000\tA\tp3\tview\tshoes\n")
    (tmp_path / "map.yaml").write_text("user: client\nitem: product\ntimestamp: ts_ms\nbehavior: kind\n"
                                       "category: cat\nsep: \"\\t\"\nbehaviors: {view: pv, buy: buy}\n")
    rc = main(["prepare", "csv", "--input", str(log), "--out", str(tmp_path / "a"), "--name", "o",
               "--mapping", str(tmp_path / "map.yaml")])
    assert rc == 0
    rc = main(["prepare", "csv", "--input", str(log), "--out", str(tmp_path / "b"), "--name", "o", "--sep", "\\t",
               "--user", "client", "--item", "product", "--timestamp", "ts_ms", "--behavior", "kind",
               "--category", "cat", "--behavior-map", "view=pv,buy=buy", "--timestamp-unit", "ms"])
    assert rc == 0
    for name in ("o.inter", "o.item"):
        assert (tmp_path / "a" / "o" / name).read_text() == (tmp_path / "b" / "o" / name).read_text()
    inter = (tmp_path / "a" / "o" / "o.inter").read_text().splitlines()
    assert inter == ["user_id:token\titem_id:token\ttimestamp:float\tbehavior_type:token",
                     "A\tp1\t1700000000\tpv", "A\tp3\t1700000002\tpv", "A\tp2\t1700000005\tbuy",
                     "B\tp1\t1700000001\tpv"]
    manifest = json.loads((tmp_path / "a" / "o" / "manifest.json").read_text())
    assert manifest["options"]["timestamp_unit"] == "ms"  # guessed from the magnitude


def test_mapping_errors_are_clear(tmp_path):
    (tmp_path / "m.yaml").write_text("user: a\nitems: b\n")
    with pytest.raises(DataError, match=r"unknown key\(s\) \['items'\]"):
        generic.load_mapping(tmp_path / "m.yaml")
    with pytest.raises(DataError, match="which column holds item, timestamp"):
        generic.load_mapping(None, {"user": "a"}).columns()
    with pytest.raises(DataError, match="raw=name"):
        generic.parse_behavior_map("view:pv")


def test_byte_order_mark_and_positional_columns(tmp_path):
    log = tmp_path / "bom.csv"
    log.write_bytes(b"\xef\xbb\xbfuser,item,time,cat\nu1,i1,1700000000,c1\nu1,i2,1700000001,c2\n")
    manifest = generic.convert(log, tmp_path, "bom", generic.Mapping(user="user", item="item", timestamp="time",
                                                                     category="cat"), CleaningOptions())
    assert manifest["rows_kept"] == 2 and manifest["sources"][0]["utf8_bom"] is True
    plain = tmp_path / "plain.csv"
    plain.write_bytes(b"u1;i1;c1;1700000000\n")
    manifest = generic.convert(plain, tmp_path, "pos", generic.Mapping(user=0, item=1, category=2, timestamp=3,
                                                                       sep=";", header=False), CleaningOptions())
    assert manifest["rows_kept"] == 1 and manifest["options"]["timestamp_unit"] == "s"


def test_parquet_log_converts_like_the_same_csv(tmp_path):
    frame = pd.DataFrame({
        "client": ["A", "A", "B", "A"], "product": ["p1", "p2", "p1", "p3"],
        "ts": [1700000000, 1700000005, 1700000001, 1700000002], "cat": ["shoes", "hats", "shoes", "shoes"],
    })
    frame.to_parquet(tmp_path / "log.parquet", index=False)
    frame.to_csv(tmp_path / "log.csv", index=False)
    mapping = ["--user", "client", "--item", "product", "--timestamp", "ts", "--category", "cat"]
    for source, out in (("log.parquet", "p"), ("log.csv", "c")):
        rc = main(["prepare", "csv", "--input", str(tmp_path / source), "--out", str(tmp_path / out), "--name", "o",
                   *mapping])
        assert rc == 0
    for name in ("o.inter", "o.item"):
        assert (tmp_path / "p" / "o" / name).read_text() == (tmp_path / "c" / "o" / name).read_text()
    manifest = json.loads((tmp_path / "p" / "o" / "manifest.json").read_text())
    assert manifest["rows_read"] == 4 and manifest["rows_kept"] == 4
