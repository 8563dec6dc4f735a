"""RecBole atomic files: typed headers, tab-separated rows, and a dataset folder that appears whole.

The dataset is written into a temporary folder beside the target and renamed into place at the end,
so a failed or interrupted run leaves no partial dataset (and an existing one is only replaced once
the new one is complete).
"""
from __future__ import annotations

import contextlib
import csv
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import yaml

from interest_migration.data.cleaning import DataError

#: the project's field names (see datasets/README.md)
USER_FIELD, ITEM_FIELD, TIME_FIELD = "user_id", "item_id", "timestamp"
BEHAVIOR_FIELD, CATEGORY_FIELD = "behavior_type", "category_id"


def header(fields: list[tuple[str, str]]) -> str:
    """``[("user_id", "token"), ...]`` -> ``"user_id:token\\titem_id:token...\\n"``."""
    return "\t".join(f"{name}:{kind}" for name, kind in fields) + "\n"


def append_rows(handle, frame: pd.DataFrame) -> None:
    """Append ``frame`` (already in header order) as tab-separated rows without quoting.

    Columns that are all non-negative integers or string categoricals are formatted by a vectorised
    writer (several times faster than ``to_csv``, which dominates large conversions); anything else
    goes through ``to_csv``.
    """
    for start in range(0, len(frame), _SLICE_ROWS):  # slices bound the memory of the byte matrices
        part = frame.iloc[start:start + _SLICE_ROWS]
        columns = [_fixed_width(part[c]) for c in part.columns]
        if any(c is None for c in columns):
            part.to_csv(handle, sep="\t", header=False, index=False, lineterminator="\n", quoting=csv.QUOTE_NONE,
                        escapechar=None)
        else:
            handle.flush()
            handle.buffer.write(_join_rows(columns))


_SLICE_ROWS = 1 << 19


def _fixed_width(column: pd.Series):
    """(bytes matrix n x width, keep mask) of a column's text, or None when it needs ``to_csv``."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes = column.cat.codes.to_numpy()
        if len(column.cat.categories) == 0 or (codes < 0).any():
            return None
        table, lengths = _category_table(column.cat.categories)
        return table[codes], np.arange(table.shape[1]) < lengths[codes][:, None]
    if not pd.api.types.is_integer_dtype(column.dtype):
        return None
    values = column.to_numpy(dtype=np.int64)
    if len(values) == 0 or values.min() < 0:
        return None
    width = len(str(int(values.max())))
    digits = np.empty((len(values), width), dtype=np.uint8)
    rest = values.astype(np.uint32) if width <= 9 or values.max() < 2**32 else values.copy()  # 32-bit: faster
    for j in range(width - 1, -1, -1):
        rest, digit = np.divmod(rest, 10)
        digits[:, j] = digit
    digits += 48  # ord("0")
    n_digits = np.searchsorted(10 ** np.arange(1, width, dtype=np.int64), values, side="right") + 1
    return digits, np.arange(width) >= (width - n_digits)[:, None]


_TABLES: dict = {}


def _category_table(categories: pd.Index):
    """Categories as a padded byte matrix and their lengths; cached per Index object (a vocabulary's
    token Index is reused across slices and partitions)."""
    cached = _TABLES.get(id(categories))
    if cached is not None and cached[0] is categories:
        return cached[1], cached[2]
    names = np.char.encode(categories.astype(str).to_numpy(dtype=str), "utf-8")  # fixed-width bytes
    lengths = np.char.str_len(names)
    width = max(int(names.dtype.itemsize), 1)
    table = np.frombuffer(names.tobytes(), dtype=np.uint8).reshape(len(names), width)
    if len(_TABLES) > 8:
        _TABLES.clear()
    _TABLES[id(categories)] = (categories, table, lengths)
    return table, lengths


def _join_rows(columns) -> bytes:
    """Interleave fixed-width columns with tabs and newlines, then squeeze out the padding."""
    n = len(columns[0][0])
    parts, masks = [], []
    for index, (matrix, keep) in enumerate(columns):
        parts.append(matrix)
        masks.append(keep)
        sep = ord("\n") if index == len(columns) - 1 else ord("\t")
        parts.append(np.full((n, 1), sep, dtype=np.uint8))
        masks.append(np.ones((n, 1), dtype=bool))
    return np.hstack(parts)[np.hstack(masks)].tobytes()


def dataset_path(out_dir: str | os.PathLike, name: str) -> Path:
    if not name or any(c in name for c in "/\\\t\n") or name.startswith("."):
        raise DataError(f"dataset name {name!r}: use letters, digits, '-', '_' (it becomes a folder name)")
    return Path(out_dir) / name


@contextlib.contextmanager
def staged_folder(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it becomes ``target``."""
    if target.exists() and not overwrite:
        raise DataError(f"{target} already exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a dataset folder is an ordinary one
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.rmdir(old)
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recbole_config(name: str, inter_fields: list[str], item_fields: list[str], filters: dict | None = None,
                   comment: str = "", item_features: list[str] | None = None) -> str:
    """The dataset YAML that makes RecBole load exactly the converted fields.

    ``item_features``: item attributes worth reading besides the category; they become
    InterestShiftCNN's ``item_feature_fields`` and SASRecF's ``selected_features``.
    """
    config = {
        "USER_ID_FIELD": USER_FIELD,
        "ITEM_ID_FIELD": ITEM_FIELD,
        "TIME_FIELD": TIME_FIELD,
        "CATEGORY_FIELD": CATEGORY_FIELD,
    }
    if BEHAVIOR_FIELD in inter_fields:
        config["BEHAVIOR_FIELD"] = BEHAVIOR_FIELD
    config["load_col"] = {"inter": list(inter_fields), "item": list(item_fields)}
    config.update(filters or {})
    lines = [f"# RecBole dataset config for datasets/{name} (python -m interest_migration prepare ...).",
             "# Pass --data_path=datasets/ (or set data_path) so RecBole finds the files."]
    lines += [f"# {c}" for c in comment.splitlines() if c]
    text = "\n".join(lines) + "\n" + yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
    if item_features:
        features = {"item_feature_fields": list(item_features), "selected_features": list(item_features)}
        text += ("# Item attributes beyond the top-level category: InterestShiftCNN adds their embeddings to every\n"
                 "# item's vector; SASRecF (RecBole's feature-aware SASRec) adds them to its input.\n"
                 + yaml.safe_dump(features, sort_keys=False, default_flow_style=None))
    return text
