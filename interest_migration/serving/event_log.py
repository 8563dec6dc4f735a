"""Append-only JSON-lines log of accepted events: what makes an acknowledgement durable.

Every event the online recommender accepts is written here *before* it is acknowledged, and the
log is replayed on start-up, so killing the process (``kill -9``) loses no acknowledged event.

Format: one JSON object per line. The first line is a header naming the dataset and catalogue
the events belong to (a log written for another checkpoint is refused, not silently misread);
every other line is one event ``{"seq", "user", "item", "behavior", "ts"}`` with external
tokens, so the log stays readable and replays without the original request.

fsync policy (``fsync=True``, the default): **group commit**. A writer appends its lines and
flushes them to the operating system under a lock, then waits until an ``fsync`` covering its
last line has completed; whichever waiting writer gets the sync lock first fsyncs everything
written so far, so concurrent writers share one ``fsync``. An acknowledged event therefore
survives a process kill *and* an operating-system crash or power cut. ``fsync=False`` still
flushes every line to the operating system before acknowledging (survives a process kill, not
a power cut) and is much faster on slow disks.

A crash in the middle of a write can leave a final line without its newline. That line was
never acknowledged; replay drops it with a warning and truncates the file to the last complete
line. Any other unreadable line is an error naming the file and line: nothing is skipped
silently.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Iterator

FORMAT = "interest_migration.events/1"

logger = logging.getLogger(__name__)


class EventLogError(ValueError):
    """The log cannot be replayed: wrong header, corrupt line, or written for another model."""


class EventLog:
    """An append-only, replayable JSON-lines event log with group-commit fsync.

    Args:
        path: the log file; created (with its folder) if missing.
        header: what the events belong to, e.g. ``{"dataset": ..., "n_items": ...}``. An
            existing log must carry the same values.
        fsync: fsync before acknowledging (group commit); see the module docstring.
    """

    def __init__(self, path: str | os.PathLike, header: dict, *, fsync: bool = True):
        self.path = Path(path)
        self.header = {"format": FORMAT, **header}
        self.fsync = bool(fsync)
        self._write_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._file = None
        self._written = 0  # lines appended by this process
        self._synced = 0
        self.n_events = 0  # events in the log, replayed ones included

    # ---------------------------------------------------------------- replay
    def replay(self) -> Iterator[tuple[int, dict]]:
        """Yield ``(line_number, event)`` for every event already in the log, in order.

        Checks the header, drops (and truncates away) a torn final line and, once iterated to
        the end, leaves the log open for :meth:`append`. A new log gets its header written here.
        """
        if self._file is not None:
            raise RuntimeError(f"{self.path}: replay() must run once, before the first append()")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._open()
            self._write_lines([json.dumps(self.header, sort_keys=True)])
            self._sync_now()
            return
        self._check_tail()
        with open(self.path, "rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                record = self._parse(raw, line_no)
                if line_no == 1:
                    self._check_header(record)
                    continue
                self._check_event(record, line_no)
                self.n_events += 1
                yield line_no, record
        self._open()

    def _check_tail(self) -> None:
        """Truncate a torn final line away."""
        size = self.path.stat().st_size
        with open(self.path, "rb+") as handle:
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            good_end, start = 0, size
            while start > 0:  # walk back to the last newline
                start = max(0, start - 65536)
                handle.seek(start)
                cut = handle.read(size - start).rfind(b"\n")
                if cut >= 0:
                    good_end = start + cut + 1
                    break
            logger.warning(
                "%s: dropping an incomplete last line (%d bytes): it was being written when the "
                "process stopped and was never acknowledged",
                self.path,
                size - good_end,
            )
            if good_end == 0:
                raise EventLogError(f"{self.path}: the header line is incomplete; this is not an event log")
            handle.truncate(good_end)
            handle.flush()
            os.fsync(handle.fileno())

    def _parse(self, raw: bytes, line_no: int) -> dict:
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EventLogError(f"{self.path}, line {line_no}: not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise EventLogError(f"{self.path}, line {line_no}: expected a JSON object, got {type(record).__name__}")
        return record

    def _check_header(self, record: dict) -> None:
        if record.get("format") != FORMAT:
            raise EventLogError(
                f"{self.path}, line 1: expected a header with format {FORMAT!r}, got {record!r}; "
                "is this an event log of this service?"
            )
        mismatched = {k: (record.get(k), v) for k, v in self.header.items() if record.get(k) != v}
        if mismatched:
            detail = ", ".join(f"{k}: log has {a!r}, model has {b!r}" for k, (a, b) in mismatched.items())
            raise EventLogError(
                f"{self.path}: this event log was written for another model or dataset ({detail}); "
                "point --event-log at a new file or at the log of this checkpoint"
            )

    def _check_event(self, record: dict, line_no: int) -> None:
        missing = [k for k in ("seq", "user", "item", "ts") if k not in record]
        if missing:
            raise EventLogError(f"{self.path}, line {line_no}: event lacks {', '.join(missing)}: {record!r}")
        if record["seq"] != self.n_events + 1:
            raise EventLogError(
                f"{self.path}, line {line_no}: expected event seq {self.n_events + 1}, found {record['seq']!r}: "
                "lines are missing or out of order"
            )

    # ---------------------------------------------------------------- append
    def _open(self) -> None:
        self._file = open(self.path, "ab", buffering=0)

    def _write_lines(self, lines: list[str]) -> None:
        self._file.write("".join(line + "\n" for line in lines).encode("utf-8"))

    def append(self, events: list[dict]) -> int:
        """Write ``events`` (seq numbers assigned here, in order); return a ticket for :meth:`sync`.

        The lines reach the operating system before this returns. The caller serialises
        appends with its own state updates if it needs the log order to match them.
        """
        if self._file is None:
            raise RuntimeError(f"{self.path}: call replay() before append()")
        with self._write_lock:
            lines = []
            for event in events:
                self.n_events += 1
                event["seq"] = self.n_events
                lines.append(json.dumps(event, ensure_ascii=False, separators=(",", ":")))
            self._write_lines(lines)
            self._written += 1
            return self._written

    def sync(self, ticket: int) -> None:
        """Return once the append that returned ``ticket`` is on disk (group commit)."""
        if not self.fsync or self._synced >= ticket:
            return
        with self._sync_lock:
            if self._synced >= ticket:  # another writer's fsync covered us while we waited
                return
            self._sync_now()

    def _sync_now(self) -> None:
        target = self._written  # every append up to here has already been written
        os.fsync(self._file.fileno())
        self._synced = max(self._synced, target)

    def close(self) -> None:
        with self._write_lock:
            if self._file is not None:
                self._file.close()
                self._file = None
