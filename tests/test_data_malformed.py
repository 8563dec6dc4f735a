"""The malformed-input corpus in tests/data/malformed: each file gives a clear error or a counted drop."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from interest_migration.cli import main
from interest_migration.data import csv as generic
from interest_migration.data import taobao
from interest_migration.data.cleaning import CleaningOptions, DataError

CORPUS = Path(__file__).parent / "data" / "malformed"

# file -> (reason, line numbers of the dropped rows); every file has 4 good rows
DROPS = {
    "truncated_last_line.csv": ("truncated_last_line", [5]),
    "wrong_field_count.csv": ("wrong_field_count", [3, 6]),
    "non_numeric_user_id.csv": ("invalid_user_id", [5]),
    "negative_item_id.csv": ("invalid_item_id", [5]),
    "empty_item_id.csv": ("missing_item_id", [5]),
    "empty_category.csv": ("missing_category", [5]),
    "nan_timestamp.csv": ("invalid_timestamp", [5]),
    "empty_timestamp.csv": ("missing_timestamp", [5]),
    "negative_timestamp.csv": ("negative_timestamp", [5]),
    "millisecond_timestamp.csv": ("timestamp_looks_like_milliseconds", [5]),
    "unknown_behavior.csv": ("unknown_behavior", [5]),
    "non_utf8.csv": ("invalid_encoding", [5]),
    "blank_line.csv": ("blank_line", [3]),
}
ERRORS = {
    "empty.csv": ["empty.csv", "empty"],
    "header_only.csv": ["header_only.csv", "no data rows"],
    "does_not_exist.csv": ["does_not_exist.csv", "no such file"],
    "all_rows_bad.csv": ["all_rows_bad.csv:1:", "field 'user_id'", "no rows kept"],
}
GOOD = [("1", "100", 1511544070, "pv"), ("1", "101", 1511544080, "cart"), ("2", "100", 1511544090, "buy"),
        ("2", "102", 1511544100, "fav")]


def _rows(folder: Path, name: str) -> list[tuple]:
    frame = pd.read_csv(folder / f"{name}.inter", sep="\t", dtype=str)
    return [(u, i, int(t), b) for u, i, t, b in frame.itertuples(index=False)]


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.mark.parametrize("filename", sorted(DROPS))
def test_bad_row_is_dropped_and_counted(filename, tmp_path):
    reason, lines = DROPS[filename]
    manifest = taobao.convert(CORPUS / filename, tmp_path, "t")
    assert manifest["rows_dropped"] == {reason: len(lines)}
    assert manifest["rows_read"] == manifest["rows_kept"] + len(lines)
    assert [ex["line"] for ex in manifest["drop_examples"][reason]] == lines
    assert all(ex["source"].endswith(filename) for ex in manifest["drop_examples"][reason])
    assert _rows(tmp_path / "t", "t") == GOOD
    assert _manifest(tmp_path / "t") == manifest


@pytest.mark.parametrize("filename", sorted(DROPS))
def test_strict_mode_names_file_line_and_field(filename, tmp_path):
    reason, lines = DROPS[filename]
    with pytest.raises(DataError) as err:
        taobao.convert(CORPUS / filename, tmp_path, "t", CleaningOptions(strict=True))
    assert f"{filename}:{lines[0]}:" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize("filename", sorted(ERRORS))
def test_unusable_file_gives_clear_error_and_no_dataset(filename, tmp_path):
    with pytest.raises(DataError) as err:
        taobao.convert(CORPUS / filename, tmp_path / "out", "t")
    for part in ERRORS[filename]:
        assert part in str(err.value)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_cli_reports_error_without_traceback(tmp_path, capsys):
    rc = main(["prepare", "taobao", "--input", str(CORPUS / "all_rows_bad.csv"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and "Traceback" not in err and "all_rows_bad.csv:1:" in err


def test_header_line_is_recognised(tmp_path):
    manifest = taobao.convert(CORPUS / "header_and_rows.csv", tmp_path, "t")
    assert manifest["rows_read"] == 4 and manifest["rows_dropped"] == {}
    assert manifest["sources"][0]["header"] is True
    assert _rows(tmp_path / "t", "t") == GOOD


def test_windows_line_endings_are_read_cleanly(tmp_path):
    manifest = taobao.convert(CORPUS / "windows_line_endings.csv", tmp_path, "t")
    assert manifest["rows_dropped"] == {} and manifest["sources"][0]["crlf_lines"] == 4
    assert _rows(tmp_path / "t", "t") == GOOD
    assert b"\r" not in (tmp_path / "t" / "t.inter").read_bytes()


def test_duplicates_are_kept_unless_asked(tmp_path):
    kept = taobao.convert(CORPUS / "duplicate_rows.csv", tmp_path, "keep")
    assert kept["rows_kept"] == 6 and kept["rows_dropped"] == {}
    deduped = taobao.convert(CORPUS / "duplicate_rows.csv", tmp_path, "dedup", CleaningOptions(drop_duplicates=True))
    assert deduped["rows_dropped"] == {"duplicate": 2}
    assert [ex["line"] for ex in deduped["drop_examples"]["duplicate"]] == [5, 6]
    assert _rows(tmp_path / "dedup", "dedup") == GOOD


def test_missing_category_can_be_kept_as_unknown(tmp_path):
    manifest = taobao.convert(CORPUS / "empty_category.csv", tmp_path, "t", CleaningOptions(missing_category="keep"))
    assert manifest["rows_kept"] == 5 and manifest["rows_dropped"] == {}
    items = pd.read_csv(tmp_path / "t" / "t.item", sep="\t", dtype=str)
    assert items.set_index("item_id:token").loc["106", "category_id:token"] == "unknown"


def test_generic_csv_item_without_category_and_dates(tmp_path):
    mapping = generic.Mapping(user="customer", item="sku", timestamp="when", behavior="event",
                              behaviors={"view": "pv", "purchase": "buy"},
                              item_file={"path": str(CORPUS / "shop_items.csv"), "item": "sku", "category": "cat"})
    manifest = generic.convert(CORPUS / "shop_log.csv", tmp_path, "shop", mapping, CleaningOptions())
    assert manifest["rows_dropped"] == {"item_without_category": 1}
    assert manifest["drop_examples"]["item_without_category"][0]["line"] == 5
    assert manifest["drop_examples"]["item_without_category"][0]["value"] == "s9"
    assert manifest["options"]["timestamp_unit"] == "datetime"
    assert _rows(tmp_path / "shop", "shop") == [("c1", "s1", 1704189600, "pv"), ("c1", "s2", 1704189900, "buy"),
                                                ("c2", "s1", 1704272400, "pv")]


def test_generic_csv_rejects_token_that_atomic_files_cannot_hold(tmp_path):
    mapping = generic.Mapping(user="customer", item="sku", timestamp="when", category="cat")
    manifest = generic.convert(CORPUS / "tab_in_quoted_id.csv", tmp_path, "tab", mapping, CleaningOptions())
    assert manifest["rows_dropped"] == {"invalid_user_id": 1}
    assert manifest["drop_examples"]["invalid_user_id"][0]["line"] == 3


def test_generic_csv_unknown_column_is_named(tmp_path):
    mapping = generic.Mapping(user="client", item="sku", timestamp="when", category="cat")
    with pytest.raises(DataError, match="no column 'client'"):
        generic.convert(CORPUS / "tab_in_quoted_id.csv", tmp_path, "x", mapping, CleaningOptions())
    assert list(tmp_path.iterdir()) == []


def test_strict_mode_reports_the_earliest_bad_line(tmp_path):
    source = tmp_path / "mixed.csv"
    source.write_bytes(b"1,100,10,pv,1511544070\n1,101,10,pv,oops\n1,102,10,pv,1511544090\nbob,103,10,pv,1511544100\n")
    with pytest.raises(DataError, match=r"mixed\.csv:2: field 'timestamp'"):
        taobao.convert(source, tmp_path, "t", CleaningOptions(strict=True))
    mapping = generic.Mapping(user="customer", item="sku", timestamp="when", behavior="event",
                              item_file={"path": str(CORPUS / "shop_items.csv"), "item": "sku", "category": "cat"})
    with pytest.raises(DataError, match=r"shop_log\.csv:5: field 'item'.*got 's9'"):
        generic.convert(CORPUS / "shop_log.csv", tmp_path, "shop", mapping, CleaningOptions(strict=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.csv"]
