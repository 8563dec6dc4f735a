"""Drop accounting and the optional cleaning steps shared by every converter.

Every input row is either kept or dropped for a named reason, so a manifest can always show
``rows_read == rows_kept + sum(rows_dropped.values())``. Row problems (a bad id, a broken line) are
dropped and counted by default, or, with ``strict=True``, end the run with a :class:`DataError`
naming file, line and field (raised by :meth:`DropLog.check` after each block); the cleaning steps
(duplicates, time window, k-core) are choices, never errors.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

#: reason -> what was expected, used in manifests and error messages
REASONS = {
    "blank_line": "an empty line",
    "wrong_field_count": "a line with the wrong number of fields",
    "truncated_last_line": "a last line without newline and with too few fields (file cut off)",
    "invalid_encoding": "bytes that are not valid text in the file's encoding",
    "missing_user_id": "an empty user id",
    "invalid_user_id": "a user id that is not a valid id",
    "missing_item_id": "an empty item id",
    "invalid_item_id": "an item id that is not a valid id",
    "missing_category": "an empty category",
    "invalid_category": "a category that is not a valid id",
    "missing_behavior": "an empty behaviour type",
    "unknown_behavior": "a behaviour type outside the allowed set",
    "missing_timestamp": "an empty timestamp",
    "invalid_timestamp": "a timestamp that is not a number or date (or is NaN/inf)",
    "negative_timestamp": "a negative timestamp",
    "timestamp_looks_like_milliseconds": "a timestamp too large for the declared unit (milliseconds given as seconds?)",
    "timestamp_out_of_range": "a timestamp outside the plausible range for its unit",
    "item_without_category": "an item that has no category in the item table",
    "sequence_length_mismatch": "a user whose item and time sequences differ in length",
    "anonymous_session": "an event of an anonymous session (dropped by choice)",
    "duplicate": "an exact duplicate of an earlier row (dropped by choice)",
    "outside_time_window": "a timestamp outside the chosen time window (dropped by choice)",
    "k_core": "a row of a user or item below the chosen k-core threshold (dropped by choice)",
}
#: reasons that follow from an option the user chose: never an error, even in strict mode
CHOSEN = frozenset({"anonymous_session", "duplicate", "outside_time_window", "k_core"})


class DataError(ValueError):
    """Input that cannot be converted; the message names the file and, where known, line and field."""


class DropLog:
    """Counts rows read and rows dropped by reason, with the first few examples of each reason."""

    def __init__(self, strict: bool = False, max_examples: int = 5):
        self.strict = strict
        self.max_examples = max_examples
        self.rows_read = 0
        self.dropped: Counter = Counter()
        self.examples: dict[str, list[dict]] = {}
        self._first: tuple | None = None  # (line, message) of the earliest problem in strict mode

    def check(self) -> None:
        """In strict mode, raise the earliest problem recorded so far."""
        if self._first is not None:
            raise DataError(self._first[1])

    def read(self, n: int) -> None:
        self.rows_read += int(n)

    def drop(self, reason: str, count: int | None = None, *, source: str = "", lines=None, field: str = "",
             values=None) -> None:
        """Record ``count`` dropped rows (default ``len(lines)``); ``lines``/``values`` feed examples."""
        if reason not in REASONS:
            raise KeyError(f"unknown drop reason {reason!r}")
        n = len(lines) if count is None else int(count)
        if n == 0:
            return
        if self.strict and reason not in CHOSEN:
            # remember the earliest problem; check() raises it once the block is done, so the error
            # names the first bad line whatever order the fields were checked in
            at = 0 if lines is None else int(np.argmin(np.asarray(lines)))
            line = None if lines is None else int(np.asarray(lines)[at])
            if self._first is None or (line is not None and (self._first[0] is None or line < self._first[0])):
                value = None if values is None else _show(np.asarray(values, dtype=object)[at])
                self._first = (line, describe(source, line, field, reason, value))
            return
        self.dropped[reason] += n
        kept = self.examples.setdefault(reason, [])
        room = self.max_examples - len(kept)
        if room > 0 and lines is not None:
            lines = np.asarray(lines)[:room]
            vals = [None] * len(lines) if values is None else list(np.asarray(values, dtype=object)[:room])
            for line, value in zip(lines, vals):
                kept.append({"source": source, "line": int(line), "field": field, "value": _show(value)})

    @property
    def total_dropped(self) -> int:
        return int(sum(self.dropped.values()))

    def summary(self, limit: int = 3) -> str:
        """One line: the biggest drop reasons and the first example, for error messages."""
        parts = [f"{r}={n}" for r, n in self.dropped.most_common(limit)]
        first = next((ex[0] for ex in self.examples.values() if ex), None)
        text = ", ".join(parts) or "nothing dropped"
        if first:
            reason = next(r for r, ex in self.examples.items() if ex and ex[0] is first)
            text += "; first problem: " + describe(first["source"], first["line"], first["field"], reason, first["value"])
        return text


def describe(source: str, line: int | None, field: str, reason: str, value=None) -> str:
    where = f"{source}:{line}" if line is not None else source
    what = f" field '{field}':" if field else ""
    got = f" (got {value!r})" if value is not None else ""
    return f"{where}:{what} {REASONS[reason]}{got}"


def _show(value, limit: int = 80):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="backslashreplace")
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class CleaningOptions:
    """The optional steps; each one taken is recorded in the manifest."""

    drop_duplicates: bool = False
    start: float | None = None  # inclusive, unix seconds
    end: float | None = None  # exclusive, unix seconds
    min_user_inter: int = 0
    min_item_inter: int = 0
    sort: bool = True
    missing_category: str = "drop"  # or "keep" (the item gets category "unknown")
    strict: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.missing_category not in ("drop", "keep"):
            raise DataError(f"missing_category must be 'drop' or 'keep', got {self.missing_category!r}")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise DataError(f"empty time window: start {self.start} is not before end {self.end}")

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("extra")
        out.update(self.extra)
        return out


def parse_time_bound(text: str | float | None) -> float | None:
    """A window bound: unix seconds, or an ISO date/time (UTC unless it carries an offset)."""
    if text is None or text == "":
        return None
    try:
        return float(text)
    except (TypeError, ValueError):
        pass
    try:
        stamp = pd.Timestamp(text)
    except (TypeError, ValueError) as err:
        raise DataError(f"time bound {text!r}: expected unix seconds or an ISO date like 2017-11-25T00:00+08:00") from err
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return stamp.timestamp()


def outside_window(ts: np.ndarray, options: CleaningOptions) -> np.ndarray:
    """Boolean mask of timestamps outside ``[start, end)``."""
    out = np.zeros(len(ts), dtype=bool)
    if options.start is not None:
        out |= ts < options.start
    if options.end is not None:
        out |= ts >= options.end
    return out


def below_threshold(counts: pd.Series, k: int) -> pd.Index:
    """Keys whose count is under ``k`` (a k-core step)."""
    return counts.index[counts.to_numpy() < k] if k > 1 else counts.index[:0]
