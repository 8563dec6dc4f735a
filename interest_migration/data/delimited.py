"""Stream a delimited text file in blocks of whole lines, with exact line numbers and a byte hash.

Each block is first parsed by pandas' C engine (fast); a block that does not parse cleanly, or whose
line and field counts do not add up, is parsed again line by line so that every broken line is
dropped with its line number and reason (:mod:`.cleaning`) instead of stopping the run or vanishing.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from tqdm import tqdm

from interest_migration.data.cleaning import DataError, DropLog

BLOCK_BYTES = 16 << 20
#: show a progress bar (on a terminal) for inputs bigger than this
PROGRESS_BYTES = 64 << 20


@dataclass
class RawChunk:
    """Rows of one block: the wanted columns (strings, or typed when ``typed``) and their line numbers."""

    frame: pd.DataFrame
    lines: np.ndarray
    typed: bool


class _HashingReader(io.RawIOBase):
    """A read-only file wrapper that hashes and counts the bytes as they pass."""

    def __init__(self, handle):
        self.handle = handle
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        n = self.handle.readinto(buffer)
        if n:
            self.sha256.update(memoryview(buffer)[:n])
            self.bytes_read += n
        return n


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_input(path: str | os.PathLike) -> Path:
    """The path, or a clear error when it is missing, a folder or empty."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    return path


def read_header(path, sep: str = ",", encoding: str = "utf-8") -> list[str]:
    """The first line's field names (for sources whose column names vary between files)."""
    path = check_input(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        first = handle.readline()
    return _split_header(first[3:] if first.startswith(b"\xef\xbb\xbf") else first, path, sep, encoding)


def _split_header(first: bytes, path, sep: str, encoding: str) -> list[str]:
    try:
        text = first.rstrip(b"\r\n").decode(encoding)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}:1: the header is not valid {encoding} text ({err.reason})") from err
    return [name.strip() for name in next(csv.reader([text], delimiter=sep))]


class DelimitedFile:
    """One delimited text file (plain or ``.gz``) read in blocks of complete lines.

    ``header``: True, False, or ``"auto"`` (the first line is a header when it holds no digit).
    ``n_fields``: fields per line; by default the header's or the first line's count.
    ``fast_dtypes``: column -> dtype for the typed fast path (columns parsed as numbers at C speed);
    blocks that do not fit it fall back to strings and are checked value by value later.
    """

    def __init__(self, path, sep: str = ",", header=False, encoding: str = "utf-8", n_fields: int | None = None,
                 fast_dtypes: dict | None = None, block_bytes: int = BLOCK_BYTES, progress: bool | None = None):
        self.path = check_input(path)
        self.sep = sep
        self.header_mode = header
        self.encoding = encoding
        self.n_fields = n_fields
        self.fast_dtypes = fast_dtypes or {}
        self.block_bytes = block_bytes
        self.size = self.path.stat().st_size
        self.progress = self.size > PROGRESS_BYTES if progress is None else progress
        self.columns: list | None = None  # header names, or field positions without header
        self.has_header = False
        self.sha256: str | None = None
        self.crlf_lines = 0
        self.bom = False

    # -- the raw byte stream ---------------------------------------------------------------------
    def _open(self):
        raw = open(self.path, "rb")
        hashing = _HashingReader(raw)
        stream = io.BufferedReader(hashing, buffer_size=1 << 20)
        if self.path.suffix == ".gz":
            stream = gzip.GzipFile(fileobj=stream)
        return raw, hashing, stream

    def _blocks(self, stream, hashing, bar) -> Iterator[tuple[bytes, bool]]:
        """(block of whole lines, is_unterminated_tail)."""
        rest = b""
        seen = 0
        while True:
            data = stream.read(self.block_bytes)
            bar.update(hashing.bytes_read - seen)
            seen = hashing.bytes_read
            if not data:
                break
            if rest:
                data = rest + data
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            rest = data[cut + 1:]
            yield data[:cut + 1], False
        if rest:
            yield rest, True

    # -- public ----------------------------------------------------------------------------------
    def resolve(self, column) -> int:
        """Field position of a column given by header name or by position."""
        if isinstance(column, int) or (isinstance(column, str) and column.isdigit() and not self.has_header):
            index = int(column)
            if not 0 <= index < len(self.columns):
                raise DataError(f"{self.path}: column {index} does not exist (lines have {len(self.columns)} fields)")
            return index
        if not self.has_header:
            raise DataError(f"{self.path}: has no header, so columns must be given by position, not {column!r}")
        if column not in self.columns:
            raise DataError(f"{self.path}: no column {column!r} in the header; columns are {self.columns}")
        return self.columns.index(column)

    def chunks(self, columns: dict, log: DropLog) -> Iterator[RawChunk]:
        """Yield ``columns`` (our name -> source name or position) block by block.

        Broken lines are dropped into ``log``; the frames' columns carry our names.
        """
        wanted = list(columns)
        raw, hashing, stream = self._open()
        bar = tqdm(total=self.size, unit="B", unit_scale=True, desc=self.path.name, disable=not self.progress)
        try:
            blocks = self._blocks(stream, hashing, bar)
            first_line_no = 1
            positions = None
            for block, tail in blocks:
                if positions is None:
                    if block.startswith(b"\xef\xbb\xbf"):
                        block, self.bom = block[3:], True
                    end = block.find(b"\n")
                    first = block if end < 0 else block[:end + 1]
                    has_header = self.header_mode is True or (
                        self.header_mode == "auto" and not any(c in b"0123456789" for c in first))
                    if has_header:
                        self.has_header = True
                        self.columns = _split_header(first, self.path, self.sep, self.encoding)
                        self.n_fields = self.n_fields or len(self.columns)
                        block = block[len(first):]
                        first_line_no = 2
                    else:
                        if self.n_fields is None:
                            self.n_fields = len(next(csv.reader(
                                [first.rstrip(b"\r\n").decode(self.encoding, errors="replace")], delimiter=self.sep)))
                        self.columns = list(range(self.n_fields))
                    positions = [self.resolve(c) for c in columns.values()]
                    if not block:
                        continue
                chunk = self._parse(block, tail, first_line_no, positions, wanted, log)
                first_line_no += block.count(b"\n") + (1 if tail else 0)
                if chunk is not None and len(chunk.frame):
                    yield chunk
            if positions is None:
                raise DataError(f"{self.path}: the file is empty")
            self.sha256 = hashing.sha256.hexdigest() if self.path.suffix != ".gz" else file_sha256(self.path)
        finally:
            bar.close()
            raw.close()

    # -- parsing one block -----------------------------------------------------------------------
    def _parse(self, block: bytes, tail: bool, first_line: int, positions, wanted, log: DropLog) -> RawChunk | None:
        n_lines = block.count(b"\n") + (1 if tail else 0)
        log.read(n_lines)
        if b"\r" in block:
            self.crlf_lines += block.count(b"\r\n")
        sep = self.sep.encode()
        quoted = b'"' in block
        counts_ok = quoted or block.count(sep) == n_lines * (self.n_fields - 1)
        if counts_ok:
            typed = bool(self.fast_dtypes) and all(p in self.fast_dtypes for p in positions)
            frame = self._parse_c(block, positions, typed)
            if frame is not None and len(frame) == n_lines:
                frame.columns = wanted
                return RawChunk(frame, first_line + np.arange(n_lines, dtype=np.int64), typed)
        return self._parse_lines(block, tail, first_line, positions, wanted, log)

    def _parse_c(self, block: bytes, positions, typed: bool) -> pd.DataFrame | None:
        kwargs = dict(sep=self.sep, header=None, names=list(range(self.n_fields)), usecols=positions,
                      index_col=False, skip_blank_lines=False, engine="c", encoding=self.encoding)
        if typed:
            kwargs["dtype"] = {p: self.fast_dtypes[p] for p in positions}
        else:
            kwargs.update(dtype=str, na_filter=False, keep_default_na=False)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                frame = pd.read_csv(io.BytesIO(block), **kwargs)
        except (ValueError, UnicodeDecodeError, OverflowError, pd.errors.ParserError, pd.errors.ParserWarning,
                pd.errors.DtypeWarning):
            return None
        frame = frame[positions]
        for column in frame.columns:  # short lines, or empty/NaN numbers: let the exact path name them
            if not pd.api.types.is_integer_dtype(frame[column].dtype) and frame[column].isna().any():
                return None
        return frame

    def _parse_lines(self, block: bytes, tail: bool, first_line: int, positions, wanted, log) -> RawChunk | None:
        """The slow, exact path: one line at a time, every broken line dropped with its number."""
        pieces = block.split(b"\n")
        if not tail:
            pieces.pop()  # after the final newline
        rows, lines = [], []
        blank, enc, count = [], [], []
        enc_values, count_values = [], []
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            line = first_line + i
            if piece.endswith(b"\r"):
                piece = piece[:-1]
            if not piece.strip():
                blank.append(line)
                continue
            try:
                text = piece.decode(self.encoding)
            except UnicodeDecodeError:
                enc.append(line)
                enc_values.append(piece)
                continue
            fields = next(csv.reader([text], delimiter=self.sep)) if '"' in text else text.split(self.sep)
            if len(fields) != self.n_fields:
                if tail and i == last and len(fields) < self.n_fields:
                    log.drop("truncated_last_line", source=str(self.path), lines=[line],
                             field=f"{len(fields)} of {self.n_fields} fields", values=[text])
                else:
                    count.append(line)
                    count_values.append(text)
                continue
            rows.append([fields[p] for p in positions])
            lines.append(line)
        src = str(self.path)
        log.drop("blank_line", source=src, lines=blank)
        log.drop("invalid_encoding", source=src, lines=enc, field=f"not {self.encoding}", values=enc_values)
        log.drop("wrong_field_count", source=src, lines=count, field=f"expected {self.n_fields} fields",
                 values=count_values)
        if not rows:
            return None
        frame = pd.DataFrame(rows, columns=wanted, dtype=object)
        return RawChunk(frame, np.asarray(lines, dtype=np.int64), False)
