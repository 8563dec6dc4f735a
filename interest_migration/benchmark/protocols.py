"""The two evaluation protocols of the comparison, and the atomic files each one reads.

Shoppers return to items: on the Taobao head two thirds of the test targets are already in the
user's history. RecBole's full ranking masks a *general* model's history except the target
(``history = used - positive``), which hands it the answer on such data, while sequential
models get no mask at all. Both protocols below give every model the same candidate set:

``repeats``
    The raw sequence, re-visits kept. No model gets seen items masked
    (``exclude_seen_items: False``): a repeat target must be ranked among everything.
``novel``
    Each user's *first* interaction with each item only (later re-visits are dropped from the
    atomic file before RecBole reads it), and every item the user interacted with before the
    target is excluded from the ranking for every model (``exclude_seen_items: True``): the
    recommendation of new items, where interest migration matters most.

The handling of ``exclude_seen_items`` lives in :mod:`interest_migration.experiment`.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from interest_migration.utils.io import atomic_path, atomic_write_text


@dataclass(frozen=True)
class Protocol:
    name: str
    #: what is done to the atomic ``.inter`` file before RecBole reads it
    data_filter: str
    #: what full ranking may return
    candidates: str
    exclude_seen_items: bool

    def config(self) -> dict:
        return {"exclude_seen_items": self.exclude_seen_items}


PROTOCOLS = {
    "repeats": Protocol(
        "repeats",
        data_filter="none: the raw sequence, re-visits kept",
        candidates="all items; nothing masked for any model",
        exclude_seen_items=False,
    ),
    "novel": Protocol(
        "novel",
        data_filter="first interaction of each (user, item) pair only",
        candidates="all items except those the user interacted with before the target, for every model",
        exclude_seen_items=True,
    ),
}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)}") from None


def atomic_folder(dataset: str, data_path: str | Path) -> Path:
    """The folder RecBole reads ``dataset`` from: ``<data_path>/<dataset>/``, or RecBole's bundled ml-100k."""
    folder = Path(data_path) / dataset
    if (folder / f"{dataset}.inter").is_file():
        return folder
    if dataset == "ml-100k":
        import recbole

        bundled = Path(recbole.__file__).resolve().parent / "dataset_example" / "ml-100k"
        if (bundled / "ml-100k.inter").is_file():
            return bundled
    raise FileNotFoundError(
        f"{folder / (dataset + '.inter')} not found: convert the data first, e.g. "
        f"python -m interest_migration prepare {dataset} --input <raw file> --out {data_path}"
    )


def _read_inter(path: Path) -> tuple[pd.DataFrame, list[str]]:
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
    names = [spec.split(":", 1)[0] for spec in header]
    frame = pd.read_csv(path, sep="\t", header=0, names=names, dtype=str, keep_default_na=False,
                        quoting=3, na_filter=False)
    return frame, header


def first_interactions(frame: pd.DataFrame, user: str, item: str, time: str) -> pd.DataFrame:
    """Each (user, item) pair's earliest row; ties in time keep file order."""
    for column in (user, item, time):
        if column not in frame.columns:
            raise ValueError(f"interaction table has no field {column!r}; fields are {list(frame.columns)}")
    seconds = pd.to_numeric(frame[time], errors="coerce")
    if seconds.isna().any():
        bad = int(seconds.isna().to_numpy().argmax())
        raise ValueError(f"row {bad + 2}: field {time!r} must be a number, got {frame[time].iloc[bad]!r}")
    order = frame.assign(_t=seconds.to_numpy()).sort_values([user, "_t"], kind="stable").index
    return frame.loc[order].drop_duplicates([user, item], keep="first")


def _fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def prepare_dataset(dataset: str, protocol: Protocol, data_path: str | Path, cache_dir: str | Path,
                    fields: tuple[str, str, str] = ("user_id", "item_id", "timestamp")) -> dict:
    """The RecBole ``dataset`` name and ``data_path`` a protocol runs on, writing derived files if needed.

    ``repeats`` reads the dataset as it is. ``novel`` writes ``<cache_dir>/<dataset>-novel/``
    with the filtered ``.inter`` and copies of the other atomic files; it is rebuilt only when
    the source file changed.
    """
    source = atomic_folder(dataset, data_path)
    if protocol.name == "repeats":
        return {"dataset": dataset, "data_path": str(source.parent.resolve()), "folder": str(source),
                "rows_in": None, "rows_kept": None}
    name = f"{dataset}-{protocol.name}"
    target = Path(cache_dir) / name
    inter = source / f"{dataset}.inter"
    manifest_path = target / "source.json"
    manifest = {"source": _fingerprint(inter), "filter": protocol.data_filter}
    if manifest_path.is_file():
        cached = json.loads(manifest_path.read_text())
        if cached.get("source") == manifest["source"] and cached.get("filter") == manifest["filter"]:
            return {"dataset": name, "data_path": str(target.parent.resolve()), "folder": str(target),
                    "rows_in": cached["rows_in"], "rows_kept": cached["rows_kept"]}
    frame, header = _read_inter(inter)
    kept = first_interactions(frame, *fields)
    target.mkdir(parents=True, exist_ok=True)
    with atomic_path(target / f"{name}.inter") as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write("\t".join(header) + "\n")
            kept.to_csv(handle, sep="\t", header=False, index=False, quoting=3, lineterminator="\n")
    for other in sorted(source.glob(f"{dataset}.*")):
        if other.suffix in (".item", ".user"):
            with atomic_path(target / f"{name}{other.suffix}") as tmp:
                shutil.copyfile(other, tmp)
    manifest.update(rows_in=len(frame), rows_kept=len(kept))
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    return {"dataset": name, "data_path": str(target.parent.resolve()), "folder": str(target),
            "rows_in": len(frame), "rows_kept": len(kept)}
