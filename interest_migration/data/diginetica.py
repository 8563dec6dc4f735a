"""DIGINETICA (CIKM Cup 2016): item views and purchases, joined to ``product-categories.csv``.

Files are ``;``-separated with a header (column names differ in case and underscores between the
full release and the SR-GNN sample; both are accepted). Views become ``pv``, purchases ``buy``.

Time: ``eventdate`` is a date and ``timeframe`` the milliseconds since the session started, so the
timestamp is ``date (UTC midnight) + timeframe / 1000``: exact order within a session, but two
sessions of one user on the same day may interleave.

Anonymous sessions (``userId`` is ``NA``): with ``anonymous="session"`` (default) each becomes its
own user ``s<sessionId>``; logged-in users are ``u<userId>`` across all their sessions. With
``anonymous="drop"`` their events are dropped and counted as ``anonymous_session``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from interest_migration.data.cleaning import CleaningOptions, DataError, DropLog
from interest_migration.data.csv import read_item_table
from interest_migration.data.delimited import DelimitedFile, read_header
from interest_migration.data.fields import Canonicalizer, FieldSpec
from interest_migration.data.pipeline import DatasetBuilder

SEP = ";"
FILES = {"views": ("train-item-views.csv", "sample_train-item-views.csv"), "purchases": ("train-purchases.csv",),
         "categories": ("product-categories.csv",)}
#: sessions are short; leave-one-out needs at least three events per user
FILTERS = {"user_inter_num_interval": "[3,inf)"}
ANONYMOUS = ("session", "drop")


def find_files(folder) -> dict[str, Path | None]:
    """The first existing file of each kind in ``folder`` (views may be the full file or the sample)."""
    folder = Path(folder)
    found = {}
    for kind, names in FILES.items():
        found[kind] = next((folder / n for n in names if (folder / n).is_file()), None)
    if found["categories"] is None:
        raise DataError(f"{folder}: no product-categories.csv (the item -> category table)")
    if found["views"] is None and found["purchases"] is None:
        raise DataError(f"{folder}: neither item views ({' or '.join(FILES['views'])}) nor train-purchases.csv")
    return found


def _columns(path: Path, wanted: dict[str, str]) -> dict[str, str]:
    """Our names -> the file's own header names, matched ignoring case and underscores."""
    header = read_header(path, SEP)
    plain = {h.replace("_", "").lower(): h for h in header}
    out = {}
    for ours, theirs in wanted.items():
        if theirs not in plain:
            raise DataError(f"{path}: no column like {theirs!r} in the header {header}")
        out[ours] = plain[theirs]
    return out


def convert(input, out_dir, name: str = "diginetica", options: CleaningOptions | None = None, *,
            anonymous: str = "session", overwrite: bool = False, progress: bool | None = None,
            files: dict | None = None) -> dict:
    """Convert the Diginetica files in folder ``input``; returns the manifest."""
    if anonymous not in ANONYMOUS:
        raise DataError(f"anonymous must be one of {ANONYMOUS}, got {anonymous!r}")
    options = options or CleaningOptions()
    paths = find_files(input) | {k: Path(v) for k, v in (files or {}).items() if v}
    spec = FieldSpec(id_type="token", timestamp_unit="s", behaviors={"pv": "pv", "buy": "buy"},
                     missing_category=options.missing_category)
    log = DropLog(strict=options.strict)
    with DatasetBuilder(name, out_dir, spec, options, log, converter="diginetica", filters=FILTERS,
                        overwrite=overwrite) as builder:
        builder.notes.append("timestamp = eventdate (UTC midnight) + timeframe/1000; anonymous sessions: "
                             + ("each one a user 's<sessionId>'" if anonymous == "session" else "dropped"))
        items, cats, entry = read_item_table(spec, paths["categories"], "itemId", "categoryId", sep=SEP)
        builder.set_item_table(items, cats)
        for kind, behavior in (("views", "pv"), ("purchases", "buy")):
            path = paths.get(kind)
            if path is None:
                continue
            source = DelimitedFile(path, sep=SEP, header=True, progress=progress)
            cols = _columns(path, {"session": "sessionid", "user": "userid", "item": "itemid",
                                   "timeframe": "timeframe", "date": "eventdate"})
            canon = Canonicalizer(spec, log, str(path), names={"user": f"{cols['user']}/{cols['session']}",
                                                               "item": cols["item"]})
            for chunk in source.chunks(cols, log):
                frame = _events(chunk.frame, chunk.lines, behavior, anonymous, log, str(path))
                if len(frame):
                    builder.add(canon(frame, frame.pop("line").to_numpy()), source=str(path))
                log.check()
            log.check()
            if source.sha256 is None:
                raise DataError(f"{path}: no data rows after the header")
            builder.add_source(path, source.sha256, role=kind, behavior=behavior, header=source.has_header)
        builder.sources.append(entry)
        builder.options.extra["anonymous"] = anonymous
        return builder.finish()


def _events(raw: pd.DataFrame, lines: np.ndarray, behavior: str, anonymous: str, log: DropLog, source: str):
    """Raw columns -> user, item, timestamp (seconds), behavior, line; bad dates/timeframes dropped."""
    user = raw["user"].str.strip()
    session = raw["session"].str.strip()
    anon = user.isin(["NA", ""]).to_numpy()
    keep = np.ones(len(raw), dtype=bool)
    if anonymous == "drop" and anon.any():
        log.drop("anonymous_session", source=source, lines=lines[anon], field="userId", values=session[anon])
        keep &= ~anon
    users = np.where(anon, "s" + session, "u" + user)
    users[anon & (session == "").to_numpy()] = ""  # no session either: reported as a missing user id
    day = pd.to_datetime(raw["date"].str.strip(), format="%Y-%m-%d", errors="coerce", utc=True)
    bad = keep & day.isna().to_numpy()
    if bad.any():
        log.drop("invalid_timestamp", source=source, lines=lines[bad], field="eventdate", values=raw["date"][bad])
        keep &= ~bad
    offset = pd.to_numeric(raw["timeframe"].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = keep & ~(np.isfinite(offset) & (offset >= 0))
    if bad.any():
        log.drop("invalid_timestamp", source=source, lines=lines[bad], field="timeframe", values=raw["timeframe"][bad])
        keep &= ~bad
    seconds = np.zeros(len(raw))
    seconds[keep] = day[keep].astype("int64").to_numpy() / 1e9 + offset[keep] / 1000.0
    return pd.DataFrame({"user": users[keep], "item": raw["item"].to_numpy(dtype=object)[keep],
                         "timestamp": seconds[keep], "behavior": behavior, "line": lines[keep]})
