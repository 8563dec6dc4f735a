"""Taobao UserBehavior (Tianchi 649): ``user_id,item_id,category_id,behavior_type,timestamp``, no header.

The generic delimited converter with a fixed mapping: integer ids (so blocks parse at C speed),
behaviours pv/cart/fav/buy (anything else is dropped as ``unknown_behavior``), unix seconds.
A cut-off last line (as in the shared head of the file) is dropped as ``truncated_last_line``.
"""
from __future__ import annotations

import numpy as np

from interest_migration.data import csv as generic
from interest_migration.data.cleaning import CleaningOptions
from interest_migration.data.fields import BEHAVIORS

COLUMNS = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
MAPPING = dict(user=0, item=1, category=2, behavior=3, timestamp=4, sep=",", header="auto", id_type="int",
               category_type="int", timestamp_unit="s", behaviors={b: b for b in BEHAVIORS})
FAST_DTYPES = {0: np.int64, 1: np.int64, 2: np.int64, 3: "category", 4: np.float64}
#: RecBole load-time filter written into the dataset YAML: leave-one-out needs a few events per user
FILTERS = {"user_inter_num_interval": "[5,inf)"}
#: the official window of the full log (CST), for --start/--end
OFFICIAL_WINDOW = ("2017-11-25T00:00:00+08:00", "2017-12-04T00:00:00+08:00")


def convert(input, out_dir, name: str = "taobao", options: CleaningOptions | None = None, *,
            overwrite: bool = False, progress: bool | None = None, partitions: int | None = None) -> dict:
    """Convert a UserBehavior.csv (or its head) into ``<out_dir>/<name>/``; returns the manifest."""
    mapping = generic.Mapping(**MAPPING)
    return generic.convert(input, out_dir, name, mapping, options or CleaningOptions(), converter="taobao",
                           overwrite=overwrite, progress=progress, partitions=partitions, fast_dtypes=FAST_DTYPES,
                           n_fields=len(COLUMNS), filters=FILTERS,
                           field_names=dict(zip(("user", "item", "category", "behavior", "timestamp"), COLUMNS)),
                           notes=[f"source columns: {', '.join(COLUMNS)}; a first line without digits is a header"])
