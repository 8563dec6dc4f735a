"""``manifest.json``: where a dataset came from and what happened to every input row."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from interest_migration.data.cleaning import REASONS, DataError, DropLog

#: bump when a converter's output for the same input changes
CONVERTER_VERSION = "1.0"


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat()


def build_manifest(*, name: str, converter: str, sources: list[dict], log: DropLog, rows_kept: int, stats: dict,
                   options: dict, notes: list[str] | None = None) -> dict:
    """The manifest; raises if the row accounting does not add up (that would be a converter bug)."""
    dropped = dict(sorted(log.dropped.items()))
    if log.rows_read != rows_kept + sum(dropped.values()):
        raise RuntimeError(f"row accounting broken: read {log.rows_read} != kept {rows_kept} + dropped {dropped}")
    return {
        "name": name,
        "converter": converter,
        "converter_version": CONVERTER_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": sources,
        "rows_read": log.rows_read,
        "rows_kept": rows_kept,
        "rows_dropped": dropped,
        "drop_reasons": {r: REASONS[r] for r in dropped},
        "drop_examples": {r: ex for r, ex in log.examples.items() if r in dropped},
        "users": stats["users"],
        "items": stats["items"],
        "categories": stats["categories"],
        "behaviors": stats.get("behaviors"),
        "time_span": {"min": stats["time_min"], "max": stats["time_max"],
                      "min_utc": _iso(stats["time_min"]), "max_utc": _iso(stats["time_max"])},
        "options": options,
        "notes": notes or [],
    }


def write_manifest(folder: Path, manifest: dict) -> Path:
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: no manifest; was the dataset made by 'prepare'?")
    return json.loads(path.read_text(encoding="utf-8"))
