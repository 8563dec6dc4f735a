"""Per-user category timelines: the one input every migration measure reads.

A :class:`Timelines` holds every event as integer codes in flat numpy arrays, sorted by user and
then time (stable, so ties keep file order). Flat arrays let the measures run as vectorised
group operations instead of Python loops over users or events.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

DEFAULT_CATEGORY_FIELD = "category_id"
#: Optional display-name field in the ``.item`` file (Amazon Beauty has one).
CATEGORY_NAME_FIELD = "category_name"


@dataclass(frozen=True)
class Timelines:
    """Events of all users, sorted by (user, time).

    ``user`` and ``category`` are codes into ``user_tokens`` / ``category_tokens``; a user listed in
    ``user_tokens`` may have no events at all. ``category_names`` (aligned with
    ``category_tokens``) holds display names when the data has them. ``notes`` records what was
    dropped while loading and why.
    """

    user: np.ndarray
    category: np.ndarray
    timestamp: np.ndarray
    user_tokens: np.ndarray
    category_tokens: np.ndarray
    category_names: np.ndarray | None = None
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self):
        n = len(self.user)
        if len(self.category) != n or len(self.timestamp) != n:
            raise ValueError("user, category and timestamp must have the same length")
        if n and np.any(np.diff(self.user) < 0):
            raise ValueError("events must be sorted by user; build Timelines with from_frame()")

    @property
    def n_events(self) -> int:
        return len(self.user)

    @property
    def n_users(self) -> int:
        return len(self.user_tokens)

    @property
    def n_categories(self) -> int:
        return len(self.category_tokens)

    @cached_property
    def lengths(self) -> np.ndarray:
        """Events per user, aligned with ``user_tokens`` (zero for users without events)."""
        return np.bincount(self.user, minlength=self.n_users)

    @cached_property
    def offsets(self) -> np.ndarray:
        """``offsets[u]:offsets[u + 1]`` is user ``u``'s slice of the event arrays."""
        return np.concatenate([[0], np.cumsum(self.lengths)])

    @cached_property
    def position(self) -> np.ndarray:
        """0-based index of each event within its user's timeline."""
        return np.arange(self.n_events) - self.offsets[self.user]

    @cached_property
    def same_user_as_previous(self) -> np.ndarray:
        """Boolean per event: the previous event belongs to the same user (false for each first event)."""
        out = np.zeros(self.n_events, dtype=bool)
        out[1:] = self.user[1:] == self.user[:-1]
        return out

    def labels(self, codes: Iterable[int] | None = None) -> np.ndarray:
        """Display label of category codes: the name where known, else the token."""
        labels = self.category_tokens.astype(object)
        if self.category_names is not None:
            names = self.category_names.astype(object)
            known = pd.notna(names) & (names != "")
            labels = np.where(known, names, labels)
        return labels if codes is None else labels[np.asarray(list(codes), dtype=np.int64)]

    def users_slice(self, codes: Sequence[int]) -> "Timelines":
        """Timelines of the given users only (category coding kept, user coding renumbered)."""
        codes = np.asarray(codes, dtype=np.int64)
        keep = np.isin(self.user, codes)
        remap = np.full(self.n_users, -1, dtype=np.int64)
        remap[codes] = np.arange(len(codes))
        new_user = remap[self.user[keep]]
        order = np.argsort(new_user, kind="stable")
        return Timelines(
            new_user[order], self.category[keep][order], self.timestamp[keep][order],
            self.user_tokens[codes], self.category_tokens, self.category_names, self.notes,
        )

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({
            "user_id": self.user_tokens[self.user],
            "category": self.category_tokens[self.category],
            "timestamp": self.timestamp,
            "position": self.position,
        })


def from_frame(
    frame: pd.DataFrame,
    user: str = "user_id",
    category: str = DEFAULT_CATEGORY_FIELD,
    timestamp: str = "timestamp",
    users: Sequence | None = None,
    category_names: dict | pd.Series | None = None,
    notes: Sequence[str] = (),
) -> Timelines:
    """Build :class:`Timelines` from one row per event.

    ``users`` lists every user to report, including ones without events; by default the users seen
    in ``frame``. ``category_names`` maps category token to display name.
    """
    for column in (user, category, timestamp):
        if column not in frame.columns:
            raise KeyError(f"event table has no column {column!r}; columns are {list(frame.columns)}")
    time = pd.to_numeric(frame[timestamp], errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(time).any():
        bad = int(np.flatnonzero(np.isnan(time))[0])
        raise ValueError(f"row {bad}: {timestamp!r} must be a number, got {frame[timestamp].iloc[bad]!r}")
    user_values = frame[user].to_numpy()
    if users is None:
        user_codes, user_tokens = pd.factorize(user_values, sort=True)
        user_tokens = np.asarray(user_tokens)
    else:
        user_tokens = np.asarray(pd.Index(users).unique())
        user_codes = pd.Index(user_tokens).get_indexer(user_values)
        if (user_codes < 0).any():
            missing = user_values[user_codes < 0][0]
            raise ValueError(f"event user {missing!r} is not in the given user list")
    cat_codes, cat_tokens = pd.factorize(frame[category].to_numpy(), sort=True)
    if (cat_codes < 0).any():
        bad = int(np.flatnonzero(cat_codes < 0)[0])
        raise ValueError(f"row {bad}: {category!r} is missing")
    cat_tokens = np.asarray(cat_tokens)
    # lexsort sorts by the last key first; it is stable, so equal (user, time) keep input order.
    order = np.lexsort((time, user_codes))
    names = None
    if category_names is not None:
        names = pd.Series(category_names).reindex(cat_tokens).to_numpy(dtype=object)
    return Timelines(
        user_codes[order].astype(np.int64), cat_codes[order].astype(np.int64), time[order],
        user_tokens, cat_tokens, names, tuple(notes),
    )


# --------------------------------------------------------------------------- atomic files

def _read_atomic(path: Path) -> pd.DataFrame:
    """Read a RecBole atomic file (tab-separated, ``name:type`` header) with string values."""
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
    names = []
    for column, spec in enumerate(header, start=1):
        if ":" not in spec:
            raise ValueError(f"{path}, line 1, column {column}: expected 'name:type' header, got {spec!r}")
        names.append(spec.split(":", 1)[0])
    frame = pd.read_csv(
        path, sep="\t", header=0, names=names, dtype=str, keep_default_na=False,
        quoting=3, engine="c", na_filter=False,
    )
    frame.attrs["types"] = dict(zip(names, (s.split(":", 1)[1] for s in header)))
    return frame


def _first_token(values: pd.Series) -> pd.Series:
    """First value of a ``token_seq`` cell: the category used for migration."""
    return values.str.split(" ", n=1).str[0]


def _find_file(folder: Path, suffix: str, required: bool) -> Path | None:
    own = folder / f"{folder.name}{suffix}"
    if own.is_file():
        return own
    found = sorted(folder.glob(f"*{suffix}"))
    if len(found) == 1:
        return found[0]
    if required:
        raise FileNotFoundError(
            f"{folder}: expected one {folder.name}{suffix} (RecBole atomic file), found "
            f"{[p.name for p in found] or 'none'}"
        )
    return None


def load_atomic(
    folder: str | Path,
    category_field: str = DEFAULT_CATEGORY_FIELD,
    user_field: str = "user_id",
    item_field: str = "item_id",
    time_field: str = "timestamp",
    behavior_field: str = "behavior_type",
    behaviors: Sequence[str] | None = None,
) -> Timelines:
    """Load timelines from a converted dataset folder ``datasets/<name>/``.

    The category comes from the ``.inter`` file when it has ``category_field``, otherwise from the
    ``.item`` file joined on ``item_field``. A ``token_seq`` category uses its first value. Events
    whose item has no category are dropped and the count is logged and kept in ``notes``.
    ``behaviors`` keeps only those behaviour types (e.g. ``["buy"]``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    inter_path = _find_file(folder, ".inter", required=True)
    inter = _read_atomic(inter_path)
    inter_types = inter.attrs["types"]
    for column in (user_field, item_field, time_field):
        if column not in inter.columns:
            raise ValueError(
                f"{inter_path}, line 1: expected a field {column!r} in the header, got {list(inter.columns)}"
            )
    time = pd.to_numeric(inter[time_field], errors="coerce")
    if time.isna().any():
        bad = int(np.flatnonzero(time.isna().to_numpy())[0])
        raise ValueError(
            f"{inter_path}, line {bad + 2}: field {time_field!r} must be a number, got {inter[time_field].iloc[bad]!r}"
        )
    inter[time_field] = time.to_numpy(dtype=np.float64)
    notes = []
    if behaviors is not None:
        if behavior_field not in inter.columns:
            raise ValueError(f"{inter_path}, line 1: no field {behavior_field!r} to filter behaviours on")
        keep = inter[behavior_field].isin(list(behaviors))
        notes.append(f"kept {int(keep.sum())} of {len(inter)} events with behaviour in {sorted(behaviors)}")
        inter = inter[keep]

    names = None
    item_path = _find_file(folder, ".item", required=False)
    if category_field in inter.columns:
        category = inter[category_field]
        if inter_types.get(category_field) == "token_seq":
            category = _first_token(category)
        if item_path is not None:
            names = _category_names(_read_atomic(item_path), category_field)
    else:
        if item_path is None:
            raise FileNotFoundError(
                f"{inter_path} has no field {category_field!r} and {folder} has no .item file to join it from"
            )
        items = _read_atomic(item_path)
        for column in (item_field, category_field):
            if column not in items.columns:
                raise ValueError(
                    f"{item_path}, line 1: expected a field {column!r} in the header, got {list(items.columns)}"
                )
        item_category = items[category_field]
        if items.attrs["types"].get(category_field) == "token_seq":
            item_category = _first_token(item_category)
        duplicated = items[item_field].duplicated()
        if duplicated.any():
            bad = int(np.flatnonzero(duplicated.to_numpy())[0])
            raise ValueError(f"{item_path}, line {bad + 2}: item {items[item_field].iloc[bad]!r} listed twice")
        lookup = pd.Series(item_category.to_numpy(), index=items[item_field].to_numpy())
        category = pd.Series(lookup.reindex(inter[item_field].to_numpy()).to_numpy(), index=inter.index)
        names = _category_names(items.assign(**{category_field: item_category}), category_field)
    category = category.where(category != "")
    missing = category.isna()
    if missing.any():
        message = (f"dropped {int(missing.sum())} of {len(inter)} events of {inter_path.name} "
                   f"whose item has no {category_field!r}")
        logger.warning(message)
        notes.append(message)
    events = pd.DataFrame({
        "user_id": inter[user_field].to_numpy(), "category": category.to_numpy(), "timestamp": inter[time_field].to_numpy(),
    })
    all_users = np.sort(inter[user_field].unique())
    events = events[~missing.to_numpy()]
    return from_frame(events, category="category", users=all_users, category_names=names, notes=notes)


def _category_names(items: pd.DataFrame, category_field: str) -> pd.Series | None:
    if CATEGORY_NAME_FIELD not in items.columns:
        return None
    pairs = items[[category_field, CATEGORY_NAME_FIELD]]
    pairs = pairs[(pairs[category_field] != "") & (pairs[CATEGORY_NAME_FIELD] != "")]
    return pairs.drop_duplicates(category_field).set_index(category_field)[CATEGORY_NAME_FIELD]


# --------------------------------------------------------------------------- RecBole datasets

def from_recbole(dataset, category_field: str | None = None) -> Timelines:
    """Timelines of a RecBole ``Dataset`` (all its interactions, before any split).

    ``category_field`` defaults to the config key ``CATEGORY_FIELD``, then ``category_id``.
    A ``token_seq`` category uses its first value.
    """
    if category_field is None:
        try:
            category_field = dataset.config["CATEGORY_FIELD"] or DEFAULT_CATEGORY_FIELD
        except (KeyError, TypeError):
            category_field = DEFAULT_CATEGORY_FIELD
    if dataset.item_feat is None or category_field not in dataset.item_feat.columns:
        raise ValueError(
            f"dataset {dataset.dataset_name!r} has no item field {category_field!r}; "
            f"load it with load_col: {{item: [item_id, {category_field}]}}"
        )
    if dataset.time_field is None:
        raise ValueError(f"dataset {dataset.dataset_name!r} has no TIME_FIELD; timelines need timestamps")
    inter = dataset.inter_feat
    user = _column(inter, dataset.uid_field).astype(np.int64)
    item = _column(inter, dataset.iid_field).astype(np.int64)
    time = _column(inter, dataset.time_field).astype(np.float64)
    item_category = _column(dataset.item_feat, category_field)
    if item_category.dtype == object:  # token_seq before build(): one array per row
        item_category = np.array([row[0] if len(row) else 0 for row in item_category], dtype=np.int64)
    elif item_category.ndim == 2:  # token_seq after build(): padded with 0
        item_category = item_category[:, 0]
    lookup = np.zeros(dataset.item_num, dtype=np.int64)  # 0 is RecBole's padding id: no category
    lookup[_column(dataset.item_feat, dataset.iid_field).astype(np.int64)] = item_category.astype(np.int64)
    category = lookup[item]
    known = category > 0
    notes = []
    if not known.all():
        message = f"dropped {int((~known).sum())} of {len(known)} events whose item has no {category_field!r}"
        logger.warning(message)
        notes.append(message)
    cat_tokens = np.asarray(dataset.field2id_token[category_field])
    user_tokens = np.asarray(dataset.field2id_token[dataset.uid_field])
    events = pd.DataFrame({
        "user_id": user_tokens[user[known]], "category": cat_tokens[category[known]], "timestamp": time[known],
    })
    present = np.unique(user)
    return from_frame(events, category="category", users=np.sort(user_tokens[present]), notes=notes)


def _column(feat, name: str) -> np.ndarray:
    """A field as numpy, from an ``Interaction`` (after ``build()``) or a DataFrame (before)."""
    values = feat[name]
    return values.numpy() if hasattr(values, "numpy") else values.to_numpy()
