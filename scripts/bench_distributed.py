"""1 vs 2 processes on CPU (gloo): seconds per epoch and test metrics, InterestShiftCNN and SASRec.

    python scripts/bench_distributed.py [--epochs 2] [--layouts 1x2 1x1 2x1] [--out bench_distributed.md]

Converts the Taobao UserBehavior head (``../shared/datasets/taobao-userbehavior-head``, users with
at least 5 events, items with at least ``--min-item-inter``) to a temporary folder unless
``--data-path`` holds ``taobao/``, then trains each model with ``python -m interest_migration run``
(RecBole's own ``run``) with ``--nproc 1`` and with ``--nproc 2``, each in a fresh
process and working folder, under the shared protocol (``recbole_configs/``) with the same
``train_batch_size`` (2 processes: half a batch each, gradients averaged). Seconds per training
epoch and per validation are RecBole's own figures from the rank-0 log. Default layouts
(processes x torch threads): 1 x cores (torch's default), 1 x 1, 2 x cores/2 (what
``dist_backend: gloo`` gives each process).
"""
from __future__ import annotations

import argparse
import ast
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_data import prepared_dataset  # scripts/bench_data.py

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "datasets" / "taobao-userbehavior-head" / "UserBehavior.csv"
DATASET = "taobao"
METRICS = ("recall@10", "ndcg@10", "mrr@10", "recall@20", "ndcg@20")

_TRAIN = re.compile(r"epoch (\d+) training \[time: ([\d.]+)s")
_VALID = re.compile(r"epoch (\d+) evaluating \[time: ([\d.]+)s")
_TEST = re.compile(r"test result: OrderedDict\((\[.*\])\)")


def prepare_data(data_path, workdir: Path, min_item_inter: int) -> Path:
    return prepared_dataset(
        data_path, workdir, DATASET,
        ["taobao", "--input", str(SOURCE), "--min-user-inter", "5", "--min-item-inter", str(min_item_inter)],
    )


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _default_layouts() -> list[tuple[int, int]]:
    cores = _cores()
    return [(1, cores), (1, 1), (2, max(1, cores // 2))]


def _layout(text: str) -> tuple[int, int]:
    """``2x1`` -> (2, 1). Two processes always get cores // 2 threads each (the gloo set-up)."""
    try:
        nproc, threads = (int(part) for part in text.lower().split("x"))
    except ValueError:
        sys.exit(f"error: --layouts: expected PROCESSESxTHREADS such as 2x1, got {text!r}")
    if nproc < 1 or threads < 1 or (nproc > 1 and threads != max(1, _cores() // nproc)):
        sys.exit(f"error: --layouts {text!r}: {nproc} process(es) on {_cores()} cores use "
                 f"{max(1, _cores() // nproc)} thread(s) each")
    return nproc, threads


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def parse_log(log_dir: Path) -> dict:
    """Epoch and validation seconds and the test metrics from the rank-0 RecBole log."""
    logs = [p.read_text() for p in log_dir.rglob("*.log")]
    text = next((t for t in logs if _TEST.search(t)), None)
    if text is None:
        raise RuntimeError(f"no RecBole log with a test result under {log_dir}")
    return {
        "epoch_s": [float(s) for _, s in _TRAIN.findall(text)],
        "valid_s": [float(s) for _, s in _VALID.findall(text)],
        "test": dict(ast.literal_eval(_TEST.search(text).group(1))),
    }


def run_one(model: str, nproc: int, threads: int, data_root: Path, workdir: Path, epochs: int) -> dict:
    from interest_migration.configs import config_files_for

    folder = workdir / f"{model}-{nproc}x{threads}"
    folder.mkdir()
    command = [
        sys.executable, "-m", "interest_migration", "run", "--model", model, "--dataset", DATASET,
        "--config_files", " ".join(config_files_for(model, DATASET, REPO / "recbole_configs")),
        "--nproc", str(nproc), "--ip", "127.0.0.1", "--port", _free_port(),
        f"--data_path={data_root}", f"--epochs={epochs}", f"--stopping_step={epochs}",
        f"--checkpoint_dir={folder / 'saved'}", "--dist_backend=gloo",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if nproc == 1:  # 2 processes set their own threads (cores // nproc)
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"error: {model} with {nproc} process(es) failed:\n{done.stderr[-4000:]}")
    row = parse_log(folder / "log")
    row.update(model=model, nproc=nproc, threads=threads, wall_s=wall)
    return row


def format_table(rows, args, data_root: Path) -> str:
    import json

    manifest = data_root / DATASET / "manifest.json"
    shape = ""
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        shape = f"{info['rows_kept']:,} events, {info['users']:,} users, {info['items']:,} items; "
    cores = _cores()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"Taobao UserBehavior head ({shape}users >= 5 events, items >= {args.min_item_inter}), "
        f"leave-one-out, full ranking, {args.epochs} epochs, gloo on loopback, {cores} cores "
        f"({platform.machine()}, Python {platform.python_version()}), load average {load:.1f} at the end.",
        "",
        "| model | processes × threads | s / epoch | s / validation | wall s | " + " | ".join(METRICS) + " |",
        "|---|---|---:|---:|---:|" + "---:|" * len(METRICS),
    ]
    for r in rows:
        epoch = sum(r["epoch_s"]) / len(r["epoch_s"])
        valid = sum(r["valid_s"]) / len(r["valid_s"]) if r["valid_s"] else float("nan")
        metrics = " | ".join(f"{r['test'].get(m, float('nan')):.4f}" for m in METRICS)
        lines.append(f"| {r['model']} | {r['nproc']} × {r['threads']} | {epoch:.2f} | {valid:.2f} | {r['wall_s']:.1f} | {metrics} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-path", default=None, help=f"folder holding {DATASET}/ (default: convert to a temp folder)")
    parser.add_argument("--min-item-inter", type=int, default=5, help="item k-core of the conversion")
    parser.add_argument("--models", nargs="+", default=["InterestShiftCNN", "SASRec"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--layouts", nargs="+", default=None, metavar="PxT",
                        help="processes x threads, e.g. 1x2 2x1 (default: 1 x cores, 1 x 1, 2 x cores/2)")
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    args = parser.parse_args(argv)

    layouts = [_layout(text) for text in args.layouts] if args.layouts else _default_layouts()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data_root = prepare_data(args.data_path, workdir, args.min_item_inter)
        rows = [run_one(model, nproc, threads, data_root, workdir, args.epochs)
                for model in args.models for nproc, threads in layouts]
        table = format_table(rows, args, data_root)
    print(table)
    if args.out:
        from interest_migration.utils.io import atomic_write_text

        atomic_write_text(args.out, table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
