"""Any CSV/TSV or Parquet shop log, through a column mapping given on the command line or in YAML.

The mapping names the source columns for user, item, timestamp and, optionally, category and
behaviour; categories may also come from a separate item file. Example YAML::

    user: customer_id
    item: sku
    timestamp: event_time        # unix s/ms/us/ns or dates; unit guessed unless timestamp_unit is set
    behavior: event              # optional
    behaviors: {view: pv, add_to_cart: cart, purchase: buy}   # optional; other values are dropped
    category: category_code      # or an item file:
    item_file: {path: items.csv, item: sku, category: category_code}
    sep: ","
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from interest_migration.data.cleaning import CleaningOptions, DataError, DropLog
from interest_migration.data.delimited import DelimitedFile, check_input, file_sha256
from interest_migration.data.fields import Canonicalizer, FieldSpec
from interest_migration.data.pipeline import DatasetBuilder, partitions_for

#: rough bytes per line of a shop log, only used to pick the number of partitions
BYTES_PER_ROW = 40


@dataclass
class Mapping:
    """Where each canonical field lives in the source, and how to read it."""

    user: str | int | None = None
    item: str | int | None = None
    timestamp: str | int | None = None
    category: str | int | None = None
    behavior: str | int | None = None
    sep: str = ","
    header: bool | str = True
    encoding: str = "utf-8"
    id_type: str = "token"
    category_type: str = "token"
    timestamp_unit: str = "auto"
    timestamp_format: str | None = None
    behaviors: dict | None = None
    item_file: dict | None = None

    def __post_init__(self):
        self.sep = separator(self.sep)

    def columns(self) -> dict:
        missing = [k for k in ("user", "item", "timestamp") if getattr(self, k) in (None, "")]
        if missing:
            raise DataError(f"column mapping: say which column holds {', '.join(missing)} (e.g. --{missing[0]} NAME)")
        if self.category is None and not self.item_file:
            raise DataError("column mapping: give a category column (--category) or an item file (--item-file)")
        cols = {k: _column(getattr(self, k)) for k in ("user", "item", "category", "behavior", "timestamp")
                if getattr(self, k) not in (None, "")}
        return cols

    def spec(self, missing_category: str = "drop") -> FieldSpec:
        return FieldSpec(id_type=self.id_type, category_type=self.category_type, timestamp_unit=self.timestamp_unit,
                         timestamp_format=self.timestamp_format, behaviors=self.behaviors,
                         missing_category=missing_category)


def separator(value) -> str:
    """One character; ``\\t`` or ``tab`` as typed on a command line mean a tab."""
    if value in ("\\t", "tab", "TAB"):
        return "\t"
    if not isinstance(value, str) or len(value) != 1:
        raise DataError(f"separator must be one character (or \\t), got {value!r}")
    return value


def _column(value):
    return int(value) if isinstance(value, str) and value.isdigit() else value


def load_mapping(path: str | Path | None, overrides: dict | None = None) -> Mapping:
    """A :class:`Mapping` from a YAML file, then non-empty ``overrides`` (command-line values) on top."""
    data = {}
    if path:
        path = check_input(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise DataError(f"{path}: not valid YAML ({err})") from err
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a mapping of keys like 'user: column', got {type(data).__name__}")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in fields(Mapping)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DataError(f"column mapping{f' {path}' if path else ''}: unknown key(s) {unknown}; known: {sorted(known)}")
    return Mapping(**data)


def parse_behavior_map(text: str | None) -> dict | None:
    """``"view=pv,purchase=buy"`` -> dict."""
    if not text:
        return None
    pairs = {}
    for part in text.split(","):
        raw, sep, name = part.partition("=")
        if not sep or not raw.strip() or not name.strip():
            raise DataError(f"--behavior-map: expected raw=name pairs separated by commas, got {part!r}")
        pairs[raw.strip()] = name.strip()
    return pairs


def read_item_table(spec: FieldSpec, path, item, category, sep=",", header=True, encoding="utf-8"):
    """(item codes, category tokens, source entry) from a separate item -> category file."""
    log = DropLog(strict=False)
    source = DelimitedFile(path, sep=sep, header=header, encoding=encoding)
    check = FieldSpec(id_type=spec.id_type, category_type="token", timestamp_unit="s")
    check.vocabs["item"] = spec.vocabs["item"]
    canon = Canonicalizer(check, log, str(source.path))
    items, cats = [], []
    for chunk in source.chunks({"item": _column(item), "category": _column(category)}, log):
        result = canon(chunk.frame, chunk.lines)
        items.append(result["item"].to_numpy())
        cats.append(check.vocabs["category"].decode(result["category"].to_numpy()))
    items = np.concatenate(items) if items else np.array([], dtype=np.int64)
    cats = np.concatenate(cats) if cats else np.array([], dtype=object)
    first = ~pd.Series(items).duplicated().to_numpy()
    entry = {"role": "item categories", "path": str(source.path), "sha256": source.sha256,
             "rows_read": log.rows_read, "rows_kept": int(first.sum()),
             "rows_dropped": dict(log.dropped) | ({"repeated_item": int((~first).sum())} if (~first).any() else {}),
             "drop_examples": log.examples}
    if log.rows_read != entry["rows_kept"] + sum(entry["rows_dropped"].values()):
        raise RuntimeError(f"item table accounting broken for {path}")
    return items[first], cats[first], entry


def convert(input, out_dir, name: str, mapping: Mapping, options: CleaningOptions, *, converter: str = "csv",
            overwrite: bool = False, progress: bool | None = None, partitions: int | None = None,
            fast_dtypes: dict | None = None, n_fields: int | None = None, filters: dict | None = None,
            notes: list[str] | None = None, field_names: dict | None = None) -> dict:
    """Convert one delimited or Parquet file; returns the manifest."""
    path = check_input(input)
    columns = mapping.columns()
    spec = mapping.spec(options.missing_category)
    log = DropLog(strict=options.strict)
    parquet = path.suffix.lower() in (".parquet", ".pq")
    if partitions is None:
        partitions = partitions_for(path.stat().st_size * (4 if path.suffix in (".gz", ".parquet", ".pq") else 1),
                                    BYTES_PER_ROW)
    with DatasetBuilder(name, out_dir, spec, options, log, converter=converter, partitions=partitions,
                        overwrite=overwrite, filters=filters, progress=progress) as builder:
        builder.notes.extend(notes or [])
        if mapping.item_file:
            item_file = {"sep": mapping.sep, **mapping.item_file}
            item_file["sep"] = separator(item_file["sep"])
            try:
                table = read_item_table(spec, item_file.pop("path"), item_file.pop("item"), item_file.pop("category"),
                                        **item_file)
            except (KeyError, TypeError) as err:
                raise DataError(f"item_file: expected {{path, item, category[, sep, header, encoding]}}, "
                                f"got {mapping.item_file} ({err})") from err
            items, cats, entry = table
            builder.set_item_table(items, cats)
            columns.pop("category", None)
        names = {k: v if isinstance(v, str) else f"{k} (column {v})" for k, v in columns.items()}
        canon = Canonicalizer(spec, log, str(path), names=names | (field_names or {}))
        if parquet:
            chunks = _parquet_chunks(path, columns, log, spec)
        else:
            reader = DelimitedFile(path, sep=mapping.sep, header=mapping.header, encoding=mapping.encoding,
                                   n_fields=n_fields, fast_dtypes=fast_dtypes, progress=progress)
            chunks = reader.chunks(columns, log)
        for chunk in chunks:
            builder.add(canon(chunk.frame, chunk.lines, chunk.typed), source=str(path))
            log.check()
        log.check()
        if log.rows_read == 0:
            raise DataError(f"{path}: no data rows" + (" after the header" if not parquet and reader.has_header else ""))
        extra = {"rows_read": log.rows_read, "format": "parquet" if parquet else "delimited"}
        if not parquet:
            extra.update(header=reader.has_header, crlf_lines=reader.crlf_lines, utf8_bom=reader.bom)
        builder.add_source(path, reader.sha256 if not parquet else file_sha256(path), **extra)
        if mapping.item_file:
            builder.sources.append(entry)
        builder.options.extra["mapping"] = {k: v for k, v in vars(mapping).items() if v is not None}
        return builder.finish()


def _parquet_chunks(path: Path, columns: dict, log: DropLog, spec: FieldSpec, batch_rows: int = 1 << 20):
    try:
        import pyarrow.parquet as pq
    except ImportError as err:  # also raised when pyarrow and numpy versions do not match
        raise DataError(f"{path}: reading Parquet needs a working pyarrow ({err})") from err
    from interest_migration.data.delimited import RawChunk

    try:
        handle = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: not a readable Parquet file ({err})") from err
    names = handle.schema_arrow.names
    for key, col in columns.items():
        if (col if isinstance(col, str) else None) not in names:
            raise DataError(f"{path}: no column {col!r} for {key}; columns are {names}")
    row = 1
    for batch in handle.iter_batches(batch_size=batch_rows, columns=list(dict.fromkeys(columns.values()))):
        frame = batch.to_pandas()
        out = pd.DataFrame({key: _as_tokens(frame[col]) if key != "timestamp" else _as_time(frame[col], spec)
                            for key, col in columns.items()})
        log.read(len(out))
        yield RawChunk(out, np.arange(row, row + len(out), dtype=np.int64), False)
        row += len(out)


def _as_tokens(column: pd.Series) -> pd.Series:
    """Parquet ids as strings; integral floats lose their '.0' (ids read back from pandas often are floats)."""
    if pd.api.types.is_float_dtype(column):
        values = column.to_numpy()
        if np.all(np.isnan(values) | (np.floor(values) == values)):
            column = column.astype("Int64")
    return column.astype("string").fillna("").astype(object)


def _as_time(column: pd.Series, spec: FieldSpec) -> pd.Series:
    """Datetime columns become unix seconds (and the unit 's'); numbers and strings pass on."""
    if pd.api.types.is_datetime64_any_dtype(column):
        spec.timestamp_unit = "s"
        if getattr(column.dt, "tz", None) is not None:
            column = column.dt.tz_convert("UTC").dt.tz_localize(None)
        seconds = column.astype("int64").astype(np.float64) / 1e9
        return seconds.where(column.notna(), np.nan)
    return column
