"""Export speed and memory: top-20 for every Amazon Beauty user, InterestShiftCNN and SASRec.

Each model is trained with RecBole's ``run_recbole`` for ``--epochs`` (default 1: export speed
does not depend on how well the model is trained), its RecBole checkpoint is converted to a safe
one, then a fresh process per model loads it and exports top-k for all users to a file. That
process reports load seconds, export seconds, users/s, its RSS after loading and its peak RSS.
Beauty is converted from ``../shared/datasets/amazon-5core`` unless ``--data-path`` holds it.

    python scripts/bench_export.py --out bench_export.md
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_data import prepared_dataset  # scripts/bench_data.py

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "datasets" / "amazon-5core"
DATASET = "amazon-beauty"


def _rss_mb() -> tuple[float, float]:
    """(current, peak since the last reset) resident set size of this process in MiB (Linux)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def _reset_peak_rss() -> None:
    """Start a new peak-RSS window: Linux resets VmHWM when 5 is written to clear_refs."""
    Path("/proc/self/clear_refs").write_text("5")


def measure(args) -> dict:
    """Worker: load one safe checkpoint and export every user; runs in its own process."""
    import torch

    from interest_migration.checkpoint import load
    from interest_migration.export import export

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    loaded = load(args.measure, data_path=args.data_path)
    load_seconds = time.perf_counter() - start
    rss_loaded, peak_load = _rss_mb()
    _reset_peak_rss()
    start = time.perf_counter()
    summary = export(loaded, args.export_out, k=args.k, batch_size=args.batch_size, show_progress=False)
    export_seconds = time.perf_counter() - start
    _, peak_export = _rss_mb()
    users = summary["rows"] // args.k  # every Beauty user has >= 5 interactions: k rows each
    return {
        "model": loaded.config["model"],
        "users": users,
        "items": loaded.dataset.item_num - 1,
        "rows": summary["rows"],
        "skipped": summary["skipped"],
        "load_s": load_seconds,
        "export_s": export_seconds,
        "users_per_s": users / export_seconds,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_load_mb": peak_load,
        "peak_rss_export_mb": peak_export,
        "file_mb": Path(args.export_out).stat().st_size / 2**20,
    }


def prepare_data(data_path, workdir: Path) -> Path:
    return prepared_dataset(data_path, workdir, DATASET, ["amazon", "--input", str(SOURCE)])


def train_and_convert(model: str, data_root: Path, workdir: Path, epochs: int) -> tuple[Path, float]:
    from interest_migration.checkpoint import convert
    from interest_migration.configs import config_files_for
    from interest_migration.experiment import run_model

    start = time.perf_counter()
    record = run_model(
        model,
        DATASET,
        config_files_for(model, DATASET, REPO / "recbole_configs"),
        {"data_path": str(data_root), "epochs": epochs, "checkpoint_dir": str(workdir / "saved"),
         "show_progress": False},
    )
    train_seconds = time.perf_counter() - start
    return convert(record.checkpoint, workdir / f"{model}.safe.pth", trust_pickle=True), train_seconds


def format_table(rows, args) -> str:
    trained = (f"Models trained for {args.epochs} epoch(s) only: export cost does not depend on the weights."
               if not args.checkpoints else "")
    lines = [
        f"Top-{args.k} for every user of Amazon Beauty 5-core, `--batch-size {args.batch_size}`, "
        f"{args.threads} torch thread(s), CSV output, each model in a fresh process "
        f"({platform.machine()}, Python {platform.python_version()}). {trained}".rstrip(),
        "",
        "| model | users | items | load s | export s | users/s | RSS after load MiB | peak RSS load MiB "
        "| peak RSS export MiB | file MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['users']:,} | {r['items']:,} | {r['load_s']:.1f} | {r['export_s']:.1f} "
            f"| {r['users_per_s']:,.0f} | {r['rss_after_load_mb']:,.0f} | {r['peak_rss_load_mb']:,.0f} "
            f"| {r['peak_rss_export_mb']:,.0f} | {r['file_mb']:.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-path", default=None, help=f"folder holding {DATASET}/ (default: convert to a temp folder)")
    parser.add_argument("--models", nargs="+", default=["InterestShiftCNN", "SASRec"])
    parser.add_argument("--epochs", type=int, default=1, help="training epochs before the export")
    parser.add_argument("-k", "--k", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no oversubscription on a shared machine)")
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    parser.add_argument("--checkpoints", nargs="+", default=None, help="safe checkpoints to measure (no training)")
    parser.add_argument("--keep", default=None, help="copy the safe checkpoints it trains into this folder")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # worker mode: a safe checkpoint
    parser.add_argument("--export-out", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from the command line
    if args.measure:
        print(json.dumps(measure(args)))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        workdir = Path(tmp)
        data_root = prepare_data(args.data_path, workdir)
        if args.checkpoints:
            safes = [Path(c).resolve() for c in args.checkpoints]
        else:
            safes = []
            for model in args.models:
                safe, seconds = train_and_convert(model, data_root, workdir, args.epochs)
                print(f"{model}: trained {args.epochs} epoch(s) in {seconds:.0f} s, safe checkpoint {safe}", flush=True)
                if args.keep:
                    Path(args.keep).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(safe, Path(args.keep) / safe.name)
                safes.append(safe)
        for safe in safes:
            worker = subprocess.run(
                [sys.executable, __file__, "--measure", str(safe), "--export-out", str(workdir / f"{safe.stem}.csv"),
                 "--data-path", str(data_root), "--k", str(args.k), "--batch-size", str(args.batch_size),
                 "--threads", str(args.threads)],
                check=True,
                capture_output=True,
                text=True,
                cwd=workdir,
            )
            row = json.loads(worker.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    table = format_table(rows, args)
    print("\n" + table)
    if args.out:
        from interest_migration.utils.io import atomic_write_text

        atomic_write_text(args.out, table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
