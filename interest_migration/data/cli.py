"""``python -m interest_migration prepare <source> --input ... --out datasets/``.

Sources: ``taobao``, ``amazon``, ``diginetica`` and ``csv`` (any CSV/TSV/Parquet through a column
mapping). Each writes ``<out>/<name>/`` with ``<name>.inter``, ``<name>.item``, ``<name>.yaml`` and
``manifest.json``, and prints the row accounting. Bad input ends with a one-line error naming the file
(and line and field where known) and exit status 2.
"""
from __future__ import annotations

import argparse
import sys

from interest_migration.data.cleaning import CleaningOptions, DataError, parse_time_bound


def _common(parser: argparse.ArgumentParser, default_name: str | None, name_required: bool = False) -> None:
    parser.add_argument("--input", required=True, help="source file or folder")
    parser.add_argument("--out", default="datasets", help="folder that receives <name>/ (default: datasets)")
    parser.add_argument("--name", default=default_name, required=name_required,
                        help=f"dataset name (default: {default_name or 'from the source'})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    clean = parser.add_argument_group("cleaning (each optional; all recorded in manifest.json)")
    clean.add_argument("--dedup", action="store_true", help="drop exact duplicate rows")
    clean.add_argument("--start", help="keep events at or after this time (unix seconds or ISO date)")
    clean.add_argument("--end", help="keep events before this time (unix seconds or ISO date)")
    clean.add_argument("--min-user-inter", type=int, default=0, help="k-core: users need at least this many rows")
    clean.add_argument("--min-item-inter", type=int, default=0, help="k-core: items need at least this many rows")
    clean.add_argument("--no-sort", action="store_true", help="keep source order instead of sorting by user, time")
    clean.add_argument("--missing-category", choices=("drop", "keep"), default="drop",
                       help="rows whose item has no category: drop (counted) or keep with category 'unknown'")
    clean.add_argument("--strict", action="store_true",
                       help="stop at the first bad row with an error instead of dropping and counting it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", required=True, metavar="source")
    p = sub.add_parser("taobao", help="Taobao UserBehavior.csv (user,item,category,behaviour,timestamp)")
    _common(p, "taobao")
    p.add_argument("--partitions", type=int, help="sort partitions (default: from the file size)")
    p = sub.add_parser("amazon", help="Amazon 5-core in S3-Rec format + TiCoSeRec times + P5 datamaps")
    _common(p, None)
    p.add_argument("--subset", default="Beauty", help="subset name as in the file names (default: Beauty)")
    for kind in ("sequences", "times", "attributes", "datamaps"):
        p.add_argument(f"--{kind}", help=f"path of the {kind} file (default: found under --input)")
    p = sub.add_parser("diginetica", help="DIGINETICA views + purchases + product-categories.csv")
    _common(p, "diginetica")
    p.add_argument("--anonymous", choices=("session", "drop"), default="session",
                   help="anonymous sessions: one user per session (default) or drop them (counted)")
    p = sub.add_parser("csv", help="any CSV/TSV/Parquet log through a column mapping")
    _common(p, None, name_required=True)
    p.add_argument("--mapping", help="YAML file with the column mapping (command-line options override it)")
    for key in ("user", "item", "timestamp", "category", "behavior"):
        p.add_argument(f"--{key}", help=f"source column (name, or position without header) of the {key}")
    p.add_argument("--sep", help="field separator (default ','; '\\t' or tab for TSV)")
    p.add_argument("--no-header", dest="header", action="store_const", const=False, help="the file has no header")
    p.add_argument("--encoding", help="text encoding (default utf-8)")
    p.add_argument("--id-type", choices=("token", "int"), help="ids are any strings (token) or integers (int)")
    p.add_argument("--timestamp-unit", choices=("s", "ms", "us", "ns", "datetime", "auto"),
                   help="unit of the timestamp column (default auto)")
    p.add_argument("--timestamp-format", help="strftime format for date strings, e.g. %%Y-%%m-%%d %%H:%%M:%%S")
    p.add_argument("--behavior-map", help="raw=name pairs, e.g. view=pv,cart=cart,purchase=buy; others dropped")
    p.add_argument("--item-file", help="separate item -> category file (CSV with header)")
    p.add_argument("--item-file-item", default="item_id", help="item column of --item-file (default item_id)")
    p.add_argument("--item-file-category", default="category_id",
                   help="category column of --item-file (default category_id)")
    p.add_argument("--item-file-sep", help="field separator of --item-file (default: --sep)")
    p.add_argument("--partitions", type=int, help="sort partitions (default: from the file size)")


def _options(args) -> CleaningOptions:
    return CleaningOptions(drop_duplicates=args.dedup, start=parse_time_bound(args.start),
                           end=parse_time_bound(args.end), min_user_inter=args.min_user_inter,
                           min_item_inter=args.min_item_inter, sort=not args.no_sort,
                           missing_category=args.missing_category, strict=args.strict)


def convert(args) -> dict:
    options = _options(args)
    progress = False if args.no_progress else None
    if args.source == "taobao":
        from interest_migration.data import taobao
        return taobao.convert(args.input, args.out, args.name, options, overwrite=args.overwrite, progress=progress,
                              partitions=args.partitions)
    if args.source == "amazon":
        from interest_migration.data import amazon
        files = {k: getattr(args, k) for k in ("sequences", "times", "attributes", "datamaps")}
        return amazon.convert(args.input, args.out, args.name, options, subset=args.subset, overwrite=args.overwrite,
                              files=files)
    if args.source == "diginetica":
        from interest_migration.data import diginetica
        return diginetica.convert(args.input, args.out, args.name, options, anonymous=args.anonymous,
                                  overwrite=args.overwrite, progress=progress)
    from interest_migration.data import csv as generic
    overrides = {k: getattr(args, k) for k in ("user", "item", "timestamp", "category", "behavior", "sep", "header",
                                                "encoding", "id_type", "timestamp_unit", "timestamp_format")}
    overrides["behaviors"] = generic.parse_behavior_map(args.behavior_map)
    if args.item_file:
        overrides["item_file"] = {"path": args.item_file, "item": args.item_file_item,
                                  "category": args.item_file_category}
        if args.item_file_sep:
            overrides["item_file"]["sep"] = args.item_file_sep
    mapping = generic.load_mapping(args.mapping, overrides)
    return generic.convert(args.input, args.out, args.name, mapping, options, overwrite=args.overwrite,
                           progress=progress, partitions=args.partitions)


def summary(manifest: dict) -> str:
    dropped = ", ".join(f"{r}={n}" for r, n in manifest["rows_dropped"].items()) or "none"
    span = manifest["time_span"]
    return (f"{manifest['name']}: read {manifest['rows_read']:,} rows, kept {manifest['rows_kept']:,}, "
            f"dropped {dropped}\n"
            f"  {manifest['users']:,} users, {manifest['items']:,} items, {manifest['categories']:,} categories, "
            f"{span['min_utc']} .. {span['max_utc']}")


def run(args) -> int:
    try:
        manifest = convert(args)
    except (DataError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary(manifest))
    for note in manifest["notes"]:
        print(f"  note: {note}")
    print(f"  written: {args.out}/{manifest['name']}/ (manifest.json has the details)")
    return 0
