"""Time the migration analysis on about 1M simulated events.

    python scripts/bench_analysis.py [--events 1000000] [--with-report] [--out reports/bench_analysis.md]

Simulates a Taobao-like population (interest_migration.analysis.simulate defaults, more users),
writes it as RecBole atomic files, then times loading them and each stage of ``analyze``: drift measures, transitions and daily flows, the shift-point
detector (forward-backward over every user, then decoding) and the per-user table. With
``--with-report`` it also times writing the report (figures, CSV, Parquet). It prints a markdown
table and writes it to ``--out``; it also checks the detector against the simulator's truth.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _write_atomic(timelines, folder: Path, rng) -> None:
    """Write the simulated events as a converted dataset: 10 items per category, not timed."""
    import pandas as pd

    folder.mkdir(parents=True)
    item = timelines.category * 10 + rng.integers(0, 10, timelines.n_events)
    pd.DataFrame({"user_id:token": timelines.user_tokens[timelines.user], "item_id:token": item,
                  "timestamp:float": timelines.timestamp}).to_csv(folder / "sim.inter", sep="\t", index=False)
    items = np.arange(timelines.n_categories * 10)
    pd.DataFrame({"item_id:token": items, "category_id:token": timelines.category_tokens[items // 10]}).to_csv(
        folder / "sim.item", sep="\t", index=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="approximate number of events")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-report", action="store_true", help="also time writing report.md and the figures")
    parser.add_argument("--out", default="reports/bench_analysis.md", help="where to write the table")
    args = parser.parse_args()

    from interest_migration.analysis.report import analyze, write_report
    from interest_migration.analysis.shift_points import match_shift_points
    from interest_migration.analysis.simulate import MigrationSimulator
    from interest_migration.analysis.timelines import load_atomic
    from interest_migration.utils.io import atomic_write_text

    defaults = MigrationSimulator()
    mean_events = np.exp(np.log(defaults.median_events) + defaults.events_sigma ** 2 / 2)
    start = time.perf_counter()
    sim = MigrationSimulator(n_users=int(round(args.events / mean_events)), seed=args.seed).run()
    simulate_s = time.perf_counter() - start
    tl = sim.timelines

    with tempfile.TemporaryDirectory() as folder:
        _write_atomic(tl, Path(folder) / "sim", np.random.default_rng(args.seed))
        start = time.perf_counter()
        loaded = load_atomic(Path(folder) / "sim")
        load_s = time.perf_counter() - start
    assert loaded.n_events == tl.n_events
    start = time.perf_counter()
    analysis = analyze(loaded)
    analyze_s = time.perf_counter() - start
    rows = [("load .inter + .item (join, sort)", load_s)]
    rows += [(stage, seconds) for stage, seconds in analysis.seconds.items()]
    rows.append(("**total (load + analysis)**", load_s + analyze_s))
    if args.with_report:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            write_report(analysis, folder, "bench")
            rows.append(("report files (figures, CSV, Parquet)", time.perf_counter() - start))
    # load_atomic codes users in sorted token order; the simulator's users are 0..n-1 as integers.
    truth = sim.shift_points.assign(user=loaded.user_tokens.astype(np.int64).argsort()[sim.shift_points["user"]])
    score = match_shift_points(truth, analysis.shifts, tolerance=2)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"{tl.n_events:,} events, {tl.n_users:,} users, {tl.n_categories:,} categories, "
        f"longest timeline {int(tl.lengths.max()):,} events (simulated in {simulate_s:.1f} s, not counted).",
        f"Python {platform.python_version()}, numpy {np.__version__}, {cores} cores available, {platform.machine()}.",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {stage} | {seconds:.2f} |" for stage, seconds in rows],
        "",
        f"Detector on this population: precision {score['precision']:.3f}, recall {score['recall']:.3f} "
        f"within ±2 events ({score['true']:,} true shifts, {score['found']:,} found).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(Path(args.out), f"# Migration analysis benchmark\n\nCommand: `{' '.join(sys.argv)}`\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
