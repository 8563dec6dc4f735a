"""Loading per-user category timelines from atomic files and from a RecBole Dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from interest_migration.analysis.timelines import from_recbole, load_atomic


def _write(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def shop(tmp_path) -> Path:
    folder = tmp_path / "datasets" / "shop"
    _write(folder / "shop.inter", "user_id:token\titem_id:token\ttimestamp:float\tbehavior_type:token", [
        "u2\ti1\t5\tpv", "u1\ti2\t9\tpv", "u1\ti1\t3\tbuy", "u1\ti3\t9\tpv", "u1\ti9\t4\tpv", "u3\ti9\t1\tpv",
    ])
    _write(folder / "shop.item", "item_id:token\tcategory_id:token\tcategory_name:token", [
        "i1\t10\tSkin Care", "i2\t20\tMakeup", "i3\t10\tSkin Care",
    ])
    return folder


def test_load_atomic_joins_categories_sorts_and_reports_drops(shop, caplog):
    tl = load_atomic(shop)
    # i9 has no category: u1's event at t=4 and u3's only event are dropped, but u3 is still listed.
    assert list(tl.user_tokens) == ["u1", "u2", "u3"]
    assert list(tl.lengths) == [3, 1, 0]
    # u1 sorted by time; the two events at t=9 keep file order (i2 then i3).
    assert list(tl.category_tokens[tl.category]) == ["10", "20", "10", "10"]
    assert list(tl.timestamp) == [3.0, 9.0, 9.0, 5.0]
    assert list(tl.labels()) == ["Skin Care", "Makeup"]
    assert any("dropped 2 of 6 events" in note for note in tl.notes)
    assert "dropped 2 of 6" in caplog.text


def test_load_atomic_behaviour_filter_and_token_seq(tmp_path):
    folder = tmp_path / "seq"
    _write(folder / "seq.inter", "user_id:token\titem_id:token\ttimestamp:float\tbehavior_type:token", [
        "u\ta\t1\tpv", "u\tb\t2\tbuy", "u\tc\t3\tbuy",
    ])
    _write(folder / "seq.item", "item_id:token\tcategory_id:token_seq", ["a\tx y", "b\ty", "c\tz x"])
    tl = load_atomic(folder, behaviors=["buy"])
    assert list(tl.category_tokens[tl.category]) == ["y", "z"]
    assert tl.category_names is None


def test_load_atomic_category_in_inter_file(tmp_path):
    folder = tmp_path / "flat"
    _write(folder / "flat.inter", "user_id:token\titem_id:token\tcategory_id:token\ttimestamp:float", [
        "u\ta\tc1\t2", "u\tb\tc2\t1",
    ])
    tl = load_atomic(folder)
    assert list(tl.category_tokens[tl.category]) == ["c2", "c1"]


def test_bad_files_name_file_line_and_field(tmp_path):
    folder = tmp_path / "bad"
    _write(folder / "bad.inter", "user_id:token\titem_id:token\ttimestamp:float", ["u\ta\t1", "u\tb\tsoon"])
    _write(folder / "bad.item", "item_id:token\tcategory_id:token", ["a\tx", "b\ty"])
    with pytest.raises(ValueError, match=r"bad\.inter, line 3: field 'timestamp' must be a number, got 'soon'"):
        load_atomic(folder)
    _write(folder / "bad.inter", "user_id:token\titem_id:token\tts:float", ["u\ta\t1"])
    with pytest.raises(ValueError, match=r"bad\.inter, line 1: expected a field 'timestamp'"):
        load_atomic(folder)
    _write(folder / "bad.inter", "user_id:token\titem_id:token\ttimestamp:float", ["u\ta\t1"])
    _write(folder / "bad.item", "item_id:token\tgenre:token", ["a\tx"])
    with pytest.raises(ValueError, match=r"bad\.item, line 1: expected a field 'category_id'"):
        load_atomic(folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_atomic(tmp_path / "missing")


def test_from_recbole_dataset_matches_atomic_loader(shop):
    from recbole.config import Config
    from recbole.data import create_dataset

    config = Config(model="Pop", dataset="shop", config_dict={
        "data_path": str(shop.parent), "load_col": {"inter": ["user_id", "item_id", "timestamp"],
                                                    "item": ["item_id", "category_id"]},
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "show_progress": False, "checkpoint_dir": "saved",
    })
    dataset = create_dataset(config)
    tl = from_recbole(dataset)
    atomic = load_atomic(shop)
    kept = atomic.lengths > 0
    assert list(tl.user_tokens) == list(atomic.user_tokens[kept])
    np.testing.assert_array_equal(tl.category_tokens[tl.category], atomic.category_tokens[atomic.category])
    np.testing.assert_array_equal(tl.timestamp, atomic.timestamp)
    dataset.build()  # converts the features to Interaction tensors and sorts them (ties in any order)
    built = from_recbole(dataset)

    def events(t):
        return sorted(zip(t.user_tokens[t.user], t.timestamp, t.category_tokens[t.category]))

    assert events(built) == events(atomic)
