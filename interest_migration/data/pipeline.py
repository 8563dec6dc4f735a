"""Stream canonical rows into a dataset folder with bounded memory.

Rows arrive in chunks (:meth:`DatasetBuilder.add`) and are spilled to ``partitions`` binary files in
the staging folder, split by user. At :meth:`DatasetBuilder.finish` each partition is loaded on its
own, de-duplicated and stably sorted by (user, time) (ties keep the source order), so memory depends
on the partition size, not the input size. A k-core needs global item counts: it re-reads the partitions until no
user or item falls below the threshold, keeping only per-user/per-item counts in memory.
With more than one partition, users are grouped and time-ordered, but partition after partition.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from pandas._libs.hashtable import Int64HashTable  # a persistent hash set (pandas' own, used by pd.unique)
from tqdm import tqdm

from interest_migration.data import atomic
from interest_migration.data.cleaning import CleaningOptions, DataError, DropLog, below_threshold, outside_window
from interest_migration.data.fields import UNKNOWN_CATEGORY, FieldSpec, TokenVocab
from interest_migration.data.manifest import build_manifest, write_manifest

#: one spilled row; rows stay in source order within a partition, which is what breaks time ties
RECORD = np.dtype([("user", "<i8"), ("item", "<i8"), ("ts", "<f8"), ("line", "<i8"), ("cat", "<i8"), ("beh", "i1")])
#: rows per partition the sorter aims for (41 bytes each in memory, a few copies while sorting)
PARTITION_ROWS = 1_000_000


def partitions_for(n_bytes: int, bytes_per_row: float) -> int:
    """How many partitions keep each one near :data:`PARTITION_ROWS` rows."""
    return max(1, math.ceil(n_bytes / bytes_per_row / PARTITION_ROWS))


class DatasetBuilder:
    """Collects canonical chunks and writes ``<out>/<name>/`` with .inter, .item, .yaml and manifest."""

    def __init__(self, name: str, out_dir, spec: FieldSpec, options: CleaningOptions, log: DropLog, *,
                 converter: str, partitions: int = 1, overwrite: bool = False, filters: dict | None = None,
                 progress: bool | None = None, item_features: list[str] | None = None):
        self.name = name
        self.target = atomic.dataset_path(out_dir, name)
        self.spec, self.options, self.log = spec, options, log
        self.converter = converter
        self.n_parts = max(1, int(partitions))
        self.overwrite = overwrite
        self.filters = filters or {}
        self.item_features = list(item_features or [])  # written into the dataset YAML
        self.progress = progress
        self.sources: list[dict] = []
        self.notes: list[str] = []
        self._has = {"behavior": False, "category": False}
        self._integral_ts = True
        self._pairs: list[pd.DataFrame] = []
        self._pair_rows = self._merged_rows = 0
        self._pair_set = Int64HashTable()
        self._item_table: pd.DataFrame | None = None  # item code -> category code (+ extra string columns)
        self._item_extra: list[tuple[str, str]] = []
        self._finished = False

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self):
        self._stage_cm = atomic.staged_folder(self.target, self.overwrite)
        self.folder = self._stage_cm.__enter__()
        self._spill_dir = self.folder / ".spill"
        self._spill_dir.mkdir()
        self._files = [open(self._spill_path(p), "wb") for p in range(self.n_parts)] if self.n_parts > 1 else []
        self._memory: list[np.ndarray] = []
        return self

    def __exit__(self, exc_type, exc, tb):
        for handle in getattr(self, "_files", []):
            handle.close()
        if exc_type is None:
            if not self._finished:
                err = RuntimeError("DatasetBuilder left without finish(): nothing written")
                self._stage_cm.__exit__(RuntimeError, err, None)
                raise err
            return self._stage_cm.__exit__(None, None, None)
        return self._stage_cm.__exit__(exc_type, exc, tb)

    def _progress(self, desc: str):
        """Partitions, with a progress bar when there are several and progress is on."""
        show = self.n_parts > 1 if self.progress is None else self.progress and self.n_parts > 1
        return tqdm(range(self.n_parts), desc=desc, unit="part", disable=not show)

    def _spill_path(self, p: int) -> Path:
        return self._spill_dir / f"part-{p:04d}.bin"

    # -- input -----------------------------------------------------------------------------------
    def add_source(self, path, sha256: str, role: str = "interactions", **extra) -> None:
        self.sources.append({"role": role, "path": str(path), "sha256": sha256, **extra})

    def set_item_table(self, items: np.ndarray, categories,
                       extra: dict[str, tuple[str, np.ndarray]] | None = None) -> None:
        """Item features known up front (item codes, category tokens, optional extra fields).

        ``extra``: field name -> (RecBole type, values). Interactions whose item is not in the table
        are dropped as ``item_without_category`` (or kept with category "unknown").
        """
        if not isinstance(self.spec.vocabs["category"], TokenVocab):
            self.spec.vocabs["category"] = TokenVocab()  # categories given as names
        codes = self.spec.vocabs["category"].encode(np.asarray(categories, dtype=object))
        table = pd.DataFrame({"item": np.asarray(items, dtype=np.int64), "cat": codes})
        for field, (kind, values) in (extra or {}).items():
            table[field] = np.asarray(values, dtype=object)
            self._item_extra.append((field, kind))
        self._item_table = table.drop_duplicates("item").set_index("item")
        self._has["category"] = True

    def add(self, frame: pd.DataFrame, source: str = "") -> None:
        """Append canonical rows (user, item, timestamp, line, optional behavior/category codes)."""
        if not len(frame):
            return
        ts = frame["timestamp"].to_numpy(dtype=np.float64)
        lines = frame["line"].to_numpy()
        keep = np.ones(len(frame), dtype=bool)
        out = outside_window(ts, self.options)
        if out.any():
            self.log.drop("outside_time_window", source=source, lines=lines[out], field="timestamp", values=ts[out])
            keep &= ~out
        items = frame["item"].to_numpy()
        if self._item_table is not None:
            known = np.isin(items, self._item_table.index.to_numpy())
            if self.options.missing_category == "drop":
                miss = keep & ~known
                if miss.any():
                    self.log.drop("item_without_category", source=source, lines=lines[miss], field="item",
                                  values=self.spec.vocabs["item"].decode(items[miss]))
                    keep &= ~miss
        n = int(keep.sum())
        if n == 0:
            return
        rec = np.empty(n, dtype=RECORD)
        rec["user"] = frame["user"].to_numpy()[keep]
        rec["item"] = items[keep]
        rec["ts"] = ts[keep]
        rec["line"] = lines[keep]
        self._integral_ts = self._integral_ts and bool(np.all(np.floor(rec["ts"]) == rec["ts"]))
        if "behavior" in frame:
            self._has["behavior"] = True
            rec["beh"] = frame["behavior"].to_numpy()[keep]
        else:
            rec["beh"] = -1
        if "category" in frame:
            self._has["category"] = True
            rec["cat"] = frame["category"].to_numpy()[keep]
            self._collect_pairs(rec["item"], rec["cat"])
        else:
            rec["cat"] = -1
        if self.n_parts == 1:  # small input: stays in memory, no spill file
            self._memory.append(rec)
            return
        part = rec["user"] % self.n_parts
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self.n_parts + 1))
        rec = rec[order]
        for p in range(self.n_parts):
            if bounds[p + 1] > bounds[p]:
                rec[bounds[p]:bounds[p + 1]].tofile(self._files[p])

    def _collect_pairs(self, items: np.ndarray, cats: np.ndarray) -> None:
        """Remember distinct (item, category) pairs in first-seen order (memory grows with items only).

        Pairs that fit one int64 key go through one persistent hash set that returns only pairs not
        seen before; others fall back to per-chunk frames merged from time to time.
        """
        if items.min() >= 0 and items.max() < 2**31 and cats.min() >= -1 and cats.max() < 2**32 - 1:
            self._pairs.append(self._pair_set.unique((items << 32) | (cats + 1)))  # category -1 -> 0
            return
        self._pairs.append(pd.DataFrame({"item": items, "cat": cats}).drop_duplicates())
        self._pair_rows += len(self._pairs[-1])
        if self._pair_rows > 2 * self._merged_rows + PARTITION_ROWS // 2:  # amortised merging
            self._pairs = [self._merged_pairs()]
            self._merged_rows = self._pair_rows = len(self._pairs[0])

    def _merged_pairs(self) -> pd.DataFrame:
        frames = [p if isinstance(p, pd.DataFrame) else
                  pd.DataFrame({"item": p >> 32, "cat": (p & 0xFFFFFFFF) - 1}) for p in self._pairs]
        if not frames:
            return pd.DataFrame({"item": np.array([], np.int64), "cat": np.array([], np.int64)})
        merged = pd.concat(frames, ignore_index=True)
        return merged if all(isinstance(p, np.ndarray) for p in self._pairs) else merged.drop_duplicates()

    # -- output ----------------------------------------------------------------------------------
    def _load(self, p: int) -> np.ndarray:
        if self.n_parts == 1:
            rec = np.concatenate(self._memory) if self._memory else np.empty(0, dtype=RECORD)
            self._memory = []
            return rec
        return np.fromfile(self._spill_path(p), dtype=RECORD)

    def _prepare_partition(self, p: int) -> np.ndarray:
        """Load, de-duplicate and sort one partition; written back so later passes read it ready."""
        rec = self._load(p)
        if self.options.drop_duplicates and len(rec):
            frame = pd.DataFrame({k: rec[k] for k in ("user", "item", "ts", "beh", "cat")})
            dup = frame.duplicated().to_numpy()
            if dup.any():
                self.log.drop("duplicate", lines=rec["line"][dup], field="whole row",
                              values=rec["item"][dup])
                rec = rec[~dup]
        if self.options.sort and len(rec):
            rec = rec[self._time_order(rec)]
        return rec

    def _time_order(self, rec: np.ndarray) -> np.ndarray:
        """Stable order by (user, time): rows are in source order, so ties keep it."""
        user, ts = rec["user"], rec["ts"]
        if self._integral_ts and user.min() >= 0 and user.max() < 2**31 and ts.min() >= 0 and ts.max() < 2**32:
            return np.argsort((user << 32) | ts.astype(np.int64), kind="stable")  # one int key: much faster
        return np.lexsort((ts, user))

    def _k_core(self, parts: list) -> tuple[pd.Index, pd.Index]:
        """Users and items to remove so every kept user/item has enough rows (iterated to a fixed point)."""
        ku, ki = self.options.min_user_inter, self.options.min_item_inter
        bad_users, bad_items = pd.Index([], dtype=np.int64), pd.Index([], dtype=np.int64)
        if ku <= 1 and ki <= 1:
            return bad_users, bad_items
        while True:
            item_counts, changed = [], False
            for p in range(self.n_parts):
                rec = parts[p] if parts[p] is not None else np.fromfile(self._spill_path(p), dtype=RECORD)
                mask = ~np.isin(rec["item"], bad_items.to_numpy()) & ~np.isin(rec["user"], bad_users.to_numpy())
                users = pd.Series(rec["user"][mask]).value_counts()
                drop_u = below_threshold(users, ku)
                if len(drop_u):
                    bad_users, changed = bad_users.append(drop_u), True
                    mask &= ~np.isin(rec["user"], drop_u.to_numpy())
                item_counts.append(pd.Series(rec["item"][mask]).value_counts())
            counts = pd.concat(item_counts).groupby(level=0).sum() if item_counts else pd.Series(dtype=np.int64)
            drop_i = below_threshold(counts, ki)
            if len(drop_i):
                bad_items, changed = bad_items.append(drop_i), True
            if not changed:
                return bad_users, bad_items

    def finish(self) -> dict:
        """Write the dataset into the staging folder and return the manifest (the swap happens on exit)."""
        for handle in self._files:
            handle.close()
        spec, log = self.spec, self.log
        log.check()
        # pass 1: de-duplicate and sort each partition (kept in memory when there is only one)
        parts = []
        for p in self._progress("sorting partitions"):
            rec = self._prepare_partition(p)
            if self.n_parts == 1:
                parts.append(rec)
            else:
                rec.tofile(self._spill_path(p))
                parts.append(None)
        bad_users, bad_items = self._k_core(parts)

        inter_fields = [(atomic.USER_FIELD, "token"), (atomic.ITEM_FIELD, "token"), (atomic.TIME_FIELD, "float")]
        if self._has["behavior"]:
            inter_fields.append((atomic.BEHAVIOR_FIELD, "token"))
        inter_path = self.folder / f"{self.name}.inter"
        users = kept = 0
        beh_counts = np.zeros(len(spec.vocabs["behavior"]) or 1, dtype=np.int64)
        # per-row categories and no k-core: every item collected was kept, no need to list them again
        item_seen = [] if self._item_table is not None or len(bad_users) or len(bad_items) else None
        t_min, t_max = math.inf, -math.inf
        with open(inter_path, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(atomic.header(inter_fields))
            for p in self._progress(f"writing {self.name}.inter"):
                rec = parts[p] if parts[p] is not None else np.fromfile(self._spill_path(p), dtype=RECORD)
                parts[p] = None
                if len(bad_users) or len(bad_items):
                    cut = np.isin(rec["user"], bad_users.to_numpy()) | np.isin(rec["item"], bad_items.to_numpy())
                    if cut.any():
                        log.drop("k_core", lines=rec["line"][cut], field="user/item", values=rec["item"][cut])
                        rec = rec[~cut]
                if not len(rec):
                    continue
                kept += len(rec)
                users += len(pd.unique(rec["user"]))
                if item_seen is not None:
                    item_seen.append(pd.unique(rec["item"]))
                t_min, t_max = min(t_min, float(rec["ts"].min())), max(t_max, float(rec["ts"].max()))
                columns = {
                    "u": spec.vocabs["user"].column(rec["user"]),
                    "i": spec.vocabs["item"].column(rec["item"]),
                    "t": rec["ts"].astype(np.int64) if self._integral_ts else rec["ts"],
                }
                if self._has["behavior"]:
                    beh = rec["beh"].astype(np.int64)
                    beh_counts += np.bincount(beh, minlength=len(beh_counts))[:len(beh_counts)]
                    columns["b"] = pd.Categorical.from_codes(beh, categories=spec.vocabs["behavior"].decode(
                        np.arange(len(spec.vocabs["behavior"]))))
                atomic.append_rows(handle, pd.DataFrame(columns))
        for p in range(self.n_parts):
            self._spill_path(p).unlink(missing_ok=True)
        self._spill_dir.rmdir()
        if kept == 0:
            raise DataError(f"{self.name}: no rows kept out of {log.rows_read} read ({log.summary()})")
        if not self._has["category"]:
            raise DataError(f"{self.name}: no category information; the project needs a category per item")
        item_table = self._final_item_table()

        if item_seen is not None:
            item_table = item_table.reindex(np.sort(pd.unique(np.concatenate(item_seen))))
        categories = self._write_items(item_table)
        behaviors = None
        if self._has["behavior"]:
            names = spec.vocabs["behavior"].decode(np.arange(len(spec.vocabs["behavior"])))
            behaviors = {str(n): int(c) for n, c in zip(names, beh_counts) if c}
        stats = {"users": users, "items": len(item_table), "categories": categories, "behaviors": behaviors,
                 "time_min": t_min, "time_max": t_max}
        item_fields = [atomic.ITEM_FIELD, atomic.CATEGORY_FIELD] + [f for f, _ in self._item_extra]
        config = atomic.recbole_config(self.name, [f for f, _ in inter_fields], item_fields, self.filters,
                                       item_features=self.item_features)
        (self.folder / f"{self.name}.yaml").write_text(config, encoding="utf-8")
        options = {**self.options.as_dict(), "timestamp_unit": spec.timestamp_unit, "partitions": self.n_parts}
        manifest = build_manifest(name=self.name, converter=self.converter, sources=self.sources, log=log,
                                  rows_kept=kept, stats=stats, options=options, notes=self.notes)
        write_manifest(self.folder, manifest)
        self._finished = True
        return manifest

    def _final_item_table(self) -> pd.DataFrame:
        """item code -> 'cat' (category code, -1 when unknown) and extra fields."""
        if self._item_table is not None:
            return self._item_table
        pairs = self._merged_pairs()
        self._pairs = []
        repeated = pairs["item"].duplicated().to_numpy()  # pairs are distinct: a repeated item has 2+ categories
        if repeated.any():
            n_conflict = int(pairs.loc[repeated, "item"].nunique())
            self.notes.append(f"{n_conflict} item(s) appear with more than one category; each keeps the first one seen")
        first = pairs[~repeated]
        return pd.DataFrame({"cat": first["cat"].to_numpy()}, index=pd.Index(first["item"].to_numpy(), name="item"))

    def _write_items(self, table: pd.DataFrame) -> int:
        """Write the .item file for the kept items; returns the number of categories."""
        codes = table["cat"].fillna(-1).to_numpy(dtype=np.int64)
        vocab = self.spec.vocabs["category"]
        if (codes < 0).any():  # kept with missing category: spelled "unknown"
            cats = np.empty(len(codes), dtype=object)
            cats[codes >= 0] = vocab.decode(codes[codes >= 0])
            cats[codes < 0] = UNKNOWN_CATEGORY
            category = pd.Categorical(cats.astype(str))
        else:
            category = vocab.column(codes)
        fields = [(atomic.ITEM_FIELD, "token"), (atomic.CATEGORY_FIELD, "token")] + self._item_extra
        frame = pd.DataFrame({"i": self.spec.vocabs["item"].column(table.index.to_numpy()), "c": category})
        for field, _ in self._item_extra:
            frame[field] = table[field].astype(object).where(table[field].notna(), "").to_numpy()
        with open(self.folder / f"{self.name}.item", "w", encoding="utf-8", newline="\n") as handle:
            handle.write(atomic.header(fields))
            atomic.append_rows(handle, frame)
        return len(pd.unique(codes))
