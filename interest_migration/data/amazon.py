"""Amazon 5-core in the S3-Rec format, with timestamps from TiCoSeRec and names from the P5 datamaps.

Sources (see ``../shared/datasets/amazon-5core/SOURCE.md``), for a subset such as ``Beauty``:

- ``s3rec/<S>.txt``: ``user item item ...`` in time order (integer ids from 1);
- ``ticoserec/<S>_time_org_rank.txt``: ``user ts ts ...``, aligned position by position;
- ``s3rec/<S>_item2attributes.json``: item -> attribute ids (brand if frequent, then the category path);
- ``p5-datamaps/<s>_datamaps.json``: original ids (reviewerID, ASIN) and attribute names. Attributes
  with ``attributeid2num >= 5``, in ascending id order, numbered from 1, are S3-Rec's attribute ids.

Output ids are the original ones (reviewerID, ASIN). An item's list is ``[brand,] top, sub, ..., leaf``;
the top-level categories are the attributes found both first and second in some list (a brand is
only ever first, a deeper node never first). The top-level name is ``category_id``; the next node is
``subcategory``, the last ``leaf_category``, and the brand (if frequent) ``brand``.

Timestamps are days, so many events of a user tie. To keep the source's within-user order through
RecBole's sort by time, the i-th event of a user on a given day gets ``day + i`` seconds: strictly
increasing within a user and still inside the same day.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from interest_migration.data.cleaning import CleaningOptions, DataError, DropLog
from interest_migration.data.delimited import check_input, file_sha256
from interest_migration.data.fields import FieldSpec
from interest_migration.data.pipeline import DatasetBuilder

#: the 5-core guarantees this; written into the dataset YAML as a load-time filter
FILTERS = {"user_inter_num_interval": "[5,inf)"}
#: attributes the dataset YAML names as item features: the leaf category (which mostly implies the
#: subcategory) and the brand (on Beauty they lift InterestShiftCNN's NDCG@10 by about 14 %)
ITEM_FEATURES = ["leaf_category", "brand"]
#: attributes seen on fewer items than this were dropped by S3-Rec
MIN_ATTRIBUTE_ITEMS = 5


def source_files(folder, subset: str = "Beauty") -> dict[str, Path]:
    folder = Path(folder)
    return {
        "sequences": folder / "s3rec" / f"{subset}.txt",
        "times": folder / "ticoserec" / f"{subset}_time_org_rank.txt",
        "attributes": folder / "s3rec" / f"{subset}_item2attributes.json",
        "datamaps": folder / "p5-datamaps" / f"{subset.lower()}_datamaps.json",
    }


def _read_sequences(path: Path) -> tuple[list[str], list[list[str]]]:
    users, seqs = [], []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                users.append(None)
                seqs.append([])
                continue
            users.append(parts[0])
            seqs.append(parts[1:])
    return users, seqs


def _load_json(path: Path) -> dict:
    try:
        return json.loads(check_input(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err


def attribute_names(datamaps: dict, path: Path) -> dict[int, str]:
    """S3-Rec attribute id -> name."""
    try:
        counts = datamaps["attributeid2num"]
        names = datamaps["id2attribute"]
    except KeyError as err:
        raise DataError(f"{path}: no key {err} (expected P5 datamaps with attributeid2num and id2attribute)") from err
    kept = sorted(int(k) for k, n in counts.items() if int(n) >= MIN_ATTRIBUTE_ITEMS)
    return {new: html.unescape(names[str(old)]) for new, old in enumerate(kept, 1)}


def item_categories(item2attributes: dict, names: dict[int, str], path: Path) -> pd.DataFrame:
    """Per S3-Rec item id: brand, top-level category, subcategory and leaf category names."""
    unknown = sorted({a for attrs in item2attributes.values() for a in attrs if a not in names})
    if unknown:
        raise DataError(f"{path}: attribute ids {unknown[:5]} have no name in the datamaps "
                        f"(the datamaps do not match this attribute file)")
    first = {attrs[0] for attrs in item2attributes.values() if attrs}
    second = {attrs[1] for attrs in item2attributes.values() if len(attrs) > 1}
    tops = first & second  # lists start with [brand,] top: only top-level nodes are found in both places
    rows = []
    for item, attrs in item2attributes.items():
        if len(attrs) > 1 and attrs[1] in tops:
            brand, path_ = names[attrs[0]], [names[a] for a in attrs[1:]]
        elif attrs and attrs[0] in tops:
            brand, path_ = "", [names[a] for a in attrs]
        else:  # a brand alone, or nothing: no category
            brand, path_ = (names[attrs[0]] if attrs else ""), []
        rows.append((int(item), brand, path_[0] if path_ else "", path_[1] if len(path_) > 1 else "",
                     path_[-1] if path_ else ""))
    return pd.DataFrame(rows, columns=["item", "brand", "category", "subcategory", "leaf_category"])


def convert(input, out_dir, name: str | None = None, options: CleaningOptions | None = None, *, subset: str = "Beauty",
            overwrite: bool = False, files: dict | None = None) -> dict:
    """Convert one Amazon subset found under ``input`` into ``<out_dir>/<name>/``; returns the manifest."""
    options = options or CleaningOptions()
    name = name or f"amazon-{subset.lower()}"
    paths = source_files(input, subset) | {k: Path(v) for k, v in (files or {}).items() if v}
    for path in paths.values():
        check_input(path)
    log = DropLog(strict=options.strict)
    spec = FieldSpec(id_type="token", timestamp_unit="s")

    users, seqs = _read_sequences(paths["sequences"])
    t_users, t_seqs = _read_sequences(paths["times"])
    if len(users) != len(t_users):
        raise DataError(f"{paths['times']}: {len(t_users)} lines, but {paths['sequences']} has {len(users)}; "
                        f"the files must list the same users in the same order")
    datamaps = _load_json(paths["datamaps"])
    id2user, id2item = datamaps.get("id2user"), datamaps.get("id2item")
    if not id2user or not id2item:
        raise DataError(f"{paths['datamaps']}: expected keys id2user and id2item")
    table = item_categories(_load_json(paths["attributes"]), attribute_names(datamaps, paths["datamaps"]),
                            paths["attributes"])

    src = str(paths["sequences"])
    rows = {"user": [], "item": [], "day": [], "line": []}
    notes = []
    for line_no, (user, seq, t_user, times) in enumerate(zip(users, seqs, t_users, t_seqs), 1):
        log.read(len(seq))
        if user != t_user:
            raise DataError(f"{paths['times']}:{line_no}: user {t_user!r}, but {src}:{line_no} has user {user!r}")
        if len(seq) != len(times):
            log.drop("sequence_length_mismatch", len(seq), source=src, lines=[line_no] * len(seq),
                     field=f"{len(seq)} items vs {len(times)} times", values=[user] * len(seq))
            continue
        if user not in id2user:
            log.drop("invalid_user_id", len(seq), source=src, lines=[line_no] * len(seq), field="user",
                     values=[user] * len(seq))
            continue
        rows["user"] += [id2user[user]] * len(seq)
        rows["item"] += seq
        rows["day"] += times
        rows["line"] += [line_no] * len(seq)
    frame = pd.DataFrame(rows)
    keep = np.ones(len(frame), dtype=bool)
    asin = frame["item"].map(id2item)
    bad = asin.isna().to_numpy()
    if bad.any():
        log.drop("invalid_item_id", source=src, lines=frame["line"][bad], field="item", values=frame["item"][bad])
        keep &= ~bad
    day = pd.to_numeric(frame["day"], errors="coerce").to_numpy(dtype=np.float64)
    bad = keep & (~np.isfinite(day) | (day < 0))
    if bad.any():
        log.drop("invalid_timestamp", source=str(paths["times"]), lines=frame["line"][bad], field="timestamp",
                 values=frame["day"][bad])
        keep &= ~bad
    log.check()
    frame = frame.assign(item=asin, day=day)[keep]
    backwards = int((frame.groupby("user", sort=False)["day"].diff() < 0).sum())
    if backwards:
        notes.append(f"{backwards} events have an earlier day than the event before them in the source sequence")
    frame["timestamp"] = frame["day"] + frame.groupby(["user", "day"], sort=False).cumcount()
    notes.append("timestamp = source day + position among the user's events of that day (seconds), "
                 "so the source order survives sorting by time")

    with DatasetBuilder(name, out_dir, spec, options, log, converter="amazon", filters=FILTERS,
                        overwrite=overwrite, item_features=ITEM_FEATURES) as builder:
        builder.notes.extend(notes)
        for role, path in paths.items():
            builder.add_source(path, file_sha256(path), role=role)
        table["asin"] = table["item"].astype(str).map(id2item)
        table = table.dropna(subset=["asin"])
        table = table[table["category"] != ""]  # no category: its events count as item_without_category
        builder.set_item_table(spec.vocabs["item"].encode(table["asin"].to_numpy()), table["category"].to_numpy(),
                               extra={f: ("token", table[f].to_numpy()) for f in ("subcategory", "leaf_category", "brand")})
        canonical = pd.DataFrame({
            "user": spec.vocabs["user"].encode(frame["user"].to_numpy()),
            "item": spec.vocabs["item"].encode(frame["item"].to_numpy()),
            "timestamp": frame["timestamp"].to_numpy(dtype=np.float64),
            "line": frame["line"].to_numpy(dtype=np.int64),
        })
        builder.add(canonical, source=src)
        return builder.finish()
