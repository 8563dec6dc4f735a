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
    """Append ``frame`` (already in header order) as tab-separated rows without quoting."""
    frame.to_csv(handle, sep="\t", header=False, index=False, lineterminator="\n", quoting=csv.QUOTE_NONE,
                 escapechar=None)


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
                   comment: str = "") -> str:
    """The dataset YAML that makes RecBole load exactly the converted fields."""
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
    return "\n".join(lines) + "\n" + yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
