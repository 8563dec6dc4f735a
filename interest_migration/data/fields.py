"""Turn raw columns into checked canonical fields: user, item, timestamp, behaviour, category.

Ids become integer codes (a :class:`TokenVocab` keeps the original strings; :class:`IntIds` keeps
integer ids as they are, which is what makes the Taobao path fast). A row whose value is missing or
invalid is dropped with a reason naming the field; timestamps end up as unix seconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from interest_migration.data.cleaning import DataError, DropLog

#: canonical behaviour names of the project, in code order
BEHAVIORS = ("pv", "cart", "fav", "buy")
UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
#: seconds after this (year 5138) are not a plausible event time
MAX_SECONDS = 1e11
#: tokens holding these cannot be stored in a RecBole atomic file
_BAD_TOKEN = r'[\t\r\n"]'
UNKNOWN_CATEGORY = "unknown"


class TokenVocab:
    """Dense integer codes for string tokens, in first-seen order (memory grows with distinct tokens)."""

    def __init__(self):
        self._codes: dict = {}

    def __len__(self):
        return len(self._codes)

    def encode(self, values) -> np.ndarray:
        local, uniques = pd.factorize(np.asarray(values, dtype=object))
        codes = self._codes
        mapped = np.fromiter((codes.setdefault(u, len(codes)) for u in uniques), dtype=np.int64, count=len(uniques))
        return mapped[local]

    def tokens(self) -> pd.Index:
        """All tokens in code order (cached until the vocabulary grows)."""
        if getattr(self, "_tokens", None) is None or len(self._tokens) != len(self._codes):
            self._tokens = pd.Index(list(self._codes), dtype=object)  # dicts keep insertion (= code) order
        return self._tokens

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.tokens().to_numpy()[codes]

    def column(self, codes: np.ndarray) -> pd.Categorical:
        """Values for writing: a categorical over the vocabulary (formatted without a per-row string)."""
        return pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(self.tokens()))


class IntIds:
    """Integer ids kept as they are: the code is the id."""

    def encode(self, values) -> np.ndarray:
        return np.asarray(values, dtype=np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.asarray(codes, dtype=np.int64)

    column = decode


@dataclass
class FieldSpec:
    """How a source's values are read.

    ``id_type``: ``"token"`` (any string, the default) or ``"int"`` (non-negative integers, faster).
    ``timestamp_unit``: ``s``, ``ms``, ``us``, ``ns``, ``datetime`` or ``auto`` (decided on the first
    block: dates, or the numeric unit implied by the magnitude). ``behaviors``: raw value -> name;
    when given, other values are dropped as ``unknown_behavior``; when None, values pass through.
    """

    id_type: str = "token"
    category_type: str = "token"
    timestamp_unit: str = "s"
    timestamp_format: str | None = None
    behaviors: dict | None = None
    missing_category: str = "drop"
    vocabs: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        for name, value in (("id_type", self.id_type), ("category_type", self.category_type)):
            if value not in ("token", "int"):
                raise DataError(f"{name} must be 'token' or 'int', got {value!r}")
        if self.timestamp_unit not in (*UNIT_SECONDS, "datetime", "auto"):
            raise DataError(f"timestamp unit must be one of s, ms, us, ns, datetime, auto; got {self.timestamp_unit!r}")
        ids = IntIds if self.id_type == "int" else TokenVocab
        cats = IntIds if self.category_type == "int" else TokenVocab
        self.vocabs = {"user": ids(), "item": ids(), "category": cats(), "behavior": TokenVocab()}
        if self.behaviors is not None:
            # canonical order first, so codes are stable across runs
            names = sorted(set(self.behaviors.values()), key=lambda b: (BEHAVIORS.index(b) if b in BEHAVIORS else 99, b))
            self.vocabs["behavior"].encode(names)


class Canonicalizer:
    """Checks one raw chunk's values and returns the canonical frame; bad rows go to the log."""

    def __init__(self, spec: FieldSpec, log: DropLog, source: str, names: dict | None = None):
        self.spec = spec
        self.log = log
        self.source = source
        self.names = names or {}  # our field -> source column name, for messages

    def __call__(self, frame: pd.DataFrame, lines: np.ndarray, typed: bool = False) -> pd.DataFrame:
        n = len(frame)
        keep = np.ones(n, dtype=bool)
        out = {}
        for name in ("user", "item"):
            if name in frame:
                out[name] = self._ids(frame[name], name, f"{name}_id", self.spec.id_type, keep, lines, typed)
        if "category" in frame:
            out["category"] = self._category(frame["category"], keep, lines, typed)
        if "behavior" in frame:
            out["behavior"] = self._behavior(frame["behavior"], keep, lines)
        if "timestamp" in frame:
            out["timestamp"] = self._timestamp(frame["timestamp"], keep, lines)
        result = pd.DataFrame({k: v[keep] for k, v in out.items()})
        for name in ("user", "item", "category"):
            if name in result:
                result[name] = self.spec.vocabs[name].encode(result[name].to_numpy())
        if "behavior" in result and result["behavior"].dtype == object:  # the typed path gives codes already
            result["behavior"] = self.spec.vocabs["behavior"].encode(result["behavior"].to_numpy()).astype(np.int8)
        result["line"] = lines[keep]
        return result

    # -- helpers ---------------------------------------------------------------------------------
    def _drop(self, reason, mask, keep, lines, field, values):
        mask = mask & keep
        if mask.any():
            values = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
            self.log.drop(reason, source=self.source, lines=lines[mask], field=self.names.get(field, field),
                          values=values[mask])
            keep &= ~mask

    def _ids(self, column: pd.Series, field, label, id_type, keep, lines, typed) -> np.ndarray:
        if typed and id_type == "int":
            values = column.to_numpy()
            self._drop(f"invalid_{label}", values < 0, keep, lines, field, values)
            return values
        raw = column
        text = column.astype(str).str.strip()
        self._drop(f"missing_{label}", (text == "").to_numpy(), keep, lines, field, raw)
        if id_type == "int":
            valid = text.str.fullmatch(r"\d{1,18}").to_numpy(dtype=bool)
            self._drop(f"invalid_{label}", ~valid, keep, lines, field, raw)
            values = np.zeros(len(text), dtype=np.int64)
            values[keep] = text[keep].astype(np.int64).to_numpy()
            return values
        bad = text.str.contains(_BAD_TOKEN, regex=True).to_numpy(dtype=bool)
        self._drop(f"invalid_{label}", bad, keep, lines, field, raw)
        return text.to_numpy(dtype=object)

    def _category(self, column, keep, lines, typed) -> np.ndarray:
        spec = self.spec
        if typed and spec.category_type == "int":
            values = column.to_numpy()
            self._drop("invalid_category", values < 0, keep, lines, "category", values)
            return values
        raw = column
        text = column.astype(str).str.strip()
        empty = (text == "").to_numpy()
        if spec.missing_category == "drop":
            self._drop("missing_category", empty, keep, lines, "category", raw)
        if spec.category_type == "int":
            valid = text.str.fullmatch(r"\d{1,18}").to_numpy(dtype=bool) | empty
            self._drop("invalid_category", ~valid, keep, lines, "category", raw)
            values = np.full(len(text), -1, dtype=np.int64)
            ok = keep & ~empty
            values[ok] = text[ok].astype(np.int64).to_numpy()
            return values
        self._drop("invalid_category", text.str.contains(_BAD_TOKEN, regex=True).to_numpy(dtype=bool), keep, lines,
                   "category", raw)
        return np.where(empty, UNKNOWN_CATEGORY, text.to_numpy(dtype=object))

    def _behavior(self, column, keep, lines) -> np.ndarray:
        raw = column
        if isinstance(column.dtype, pd.CategoricalDtype) and self.spec.behaviors is not None:
            # typed fast path: map the few categories to behaviour codes, not every row
            names = pd.Series(column.cat.categories.astype(str).str.strip()).map(self.spec.behaviors)
            known = names.notna().to_numpy()
            table = np.full(len(names) + 1, -1, dtype=np.int8)  # last slot: code -1, a missing value
            table[:-1][known] = self.spec.vocabs["behavior"].encode(np.asarray(names[known], dtype=object))
            codes = table[column.cat.codes.to_numpy()]
            self._drop("unknown_behavior", codes < 0, keep, lines, "behavior", raw)
            return codes
        text = column.astype(str).str.strip()
        self._drop("missing_behavior", (text == "").to_numpy(), keep, lines, "behavior", raw)
        if self.spec.behaviors is None:
            self._drop("unknown_behavior", text.str.contains(_BAD_TOKEN, regex=True).to_numpy(dtype=bool), keep,
                       lines, "behavior", raw)
            return text.to_numpy(dtype=object)
        mapped = text.map(self.spec.behaviors)
        self._drop("unknown_behavior", mapped.isna().to_numpy(), keep, lines, "behavior", raw)
        return mapped.to_numpy(dtype=object)

    def _timestamp(self, column: pd.Series, keep, lines) -> np.ndarray:
        spec = self.spec
        raw = column
        if column.dtype == object:
            text = column.astype(str).str.strip()
            self._drop("missing_timestamp", (text == "").to_numpy(), keep, lines, "timestamp", raw)
        else:
            text = column
        if spec.timestamp_unit == "auto":
            spec.timestamp_unit = guess_unit(text[keep])
        if spec.timestamp_unit == "datetime":
            stamps = pd.to_datetime(text, errors="coerce", utc=True, format=spec.timestamp_format)
            bad = stamps.isna().to_numpy()
            self._drop("invalid_timestamp", bad, keep, lines, "timestamp", raw)
            seconds = np.zeros(len(text))
            ok = ~bad
            seconds[ok] = stamps[ok].astype("int64").to_numpy() / 1e9
            return seconds
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        self._drop("invalid_timestamp", ~np.isfinite(values), keep, lines, "timestamp", raw)
        with np.errstate(invalid="ignore"):
            self._drop("negative_timestamp", values < 0, keep, lines, "timestamp", raw)
            seconds = values * UNIT_SECONDS[spec.timestamp_unit]
            too_big = seconds >= MAX_SECONDS
            if spec.timestamp_unit == "s":
                self._drop("timestamp_looks_like_milliseconds", too_big & (values < MAX_SECONDS * 1e3), keep, lines,
                           "timestamp", raw)
            self._drop("timestamp_out_of_range", too_big, keep, lines, "timestamp", raw)
        return seconds


def guess_unit(values: pd.Series) -> str:
    """The unit most values fit: dates if mostly non-numeric, else by the median magnitude."""
    numbers = pd.to_numeric(values, errors="coerce")
    if len(values) == 0 or numbers.notna().mean() < 0.5:
        return "datetime"
    median = float(np.nanmedian(np.abs(numbers.to_numpy(dtype=np.float64))))
    for unit, factor in UNIT_SECONDS.items():
        if median * factor < MAX_SECONDS:
            return unit
    return "ns"
