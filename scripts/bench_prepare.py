"""Throughput and peak memory of ``prepare taobao`` on Taobao-shaped files of growing size.

Generates UserBehavior-like files (grouped by user, ~100 events per user, pv/cart/fav/buy in the
real proportions, 9 days of unix seconds), converts each in a fresh process, and reports rows/s and
the process's peak RSS. Peak RSS should stay flat as the input grows (streaming + partitioned sort).
CPU seconds are reported next to wall seconds because a shared machine's wall time says little;
the load average at the end of each run is in the last column.

    python scripts/bench_prepare.py                      # 1M and 10M rows
    python scripts/bench_prepare.py --rows 1e6 1e7 1e8   # also the full-size 100M (about 3.5 GB)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

BEHAVIORS = np.array(["pv", "cart", "fav", "buy"])
BEHAVIOR_P = np.array([75_872, 4_497, 2_356, 1_750]) / 84_475
START, DAYS = 1511539200, 9

CHILD = """
import json, resource, sys, time
from interest_migration.data import taobao
t, cpu = time.perf_counter(), time.process_time()
m = taobao.convert(sys.argv[1], sys.argv[2], "bench", progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu,
                  "rows": m["rows_kept"], "read": m["rows_read"],
                  "partitions": m["options"]["partitions"],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def generate(path: Path, rows: int, seed: int = 0, chunk: int = 2_000_000) -> None:
    """A Taobao-shaped CSV (no header) grouped by user, written chunk by chunk."""
    rng = np.random.default_rng(seed)
    user = 1
    with open(path, "w") as handle:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            lengths = rng.integers(4, 200, size=n // 50 + 2)
            users = np.repeat(np.arange(user, user + len(lengths)), lengths)[:n]
            user = int(users[-1]) + 1
            items = rng.integers(1, 5_000_000, size=n)
            frame = pd.DataFrame({"u": users, "i": items, "c": items % 9_439 + 1,
                                  "b": BEHAVIORS[rng.choice(4, size=n, p=BEHAVIOR_P)],
                                  "t": START + rng.integers(0, DAYS * 86_400, size=n)})
            frame.to_csv(handle, header=False, index=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", type=float, default=[1e6, 1e7])
    parser.add_argument("--workdir", help="where the generated files go (default: a temp folder, removed after)")
    parser.add_argument("--out", default="results/bench_prepare.md", help="markdown table written here")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_prepare_"))
    work.mkdir(parents=True, exist_ok=True)
    table = ["| rows | file MiB | partitions | wall s | rows/s (wall) | CPU s | rows/s (CPU) | peak RSS MiB | load avg |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    try:
        for rows in map(int, args.rows):
            source = work / f"taobao_{rows}.csv"
            t = time.perf_counter()
            generate(source, rows)
            print(f"generated {rows:,} rows in {time.perf_counter() - t:.1f}s", flush=True)
            out = work / f"out_{rows}"
            child = subprocess.run([sys.executable, "-c", CHILD, str(source), str(out)], capture_output=True,
                                   text=True, check=True)
            res = json.loads(child.stdout.strip().splitlines()[-1])
            assert res["rows"] == res["read"] == rows, res
            line = (f"| {rows:,} | {source.stat().st_size / 2**20:,.0f} | {res['partitions']} | {res['seconds']:.1f} "
                    f"| {rows / res['seconds']:,.0f} | {res['cpu_seconds']:.1f} | {rows / res['cpu_seconds']:,.0f} "
                    f"| {res['peak_rss_mib']:,.0f} | {os.getloadavg()[0]:.1f} |")
            table.append(line)
            print(line, flush=True)
            source.unlink()
            shutil.rmtree(out)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(table) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
