"""Paired test between runs that ``compare`` made in different run folders.

``compare`` tests its own model against the best baseline of the same run folder. Runs made with
different settings (another epoch cap, a later variant) live in folders of their own; this script
reads their per-user files (``results/<dataset>/<run>/runs/<protocol>/<label>-seed<N>.users.csv``),
averages each side over the files given (one per seed), and runs the same Wilcoxon and paired t
tests on the users both sides evaluated. With as many files on each side, each pair (in the
order given, e.g. seed by seed) is tested too.

    python scripts/paired_test.py \\
        --ours results/amazon-beauty/a/runs/novel/InterestShiftCNN-seed2020.users.csv \\
        --baseline results/amazon-beauty/b/runs/novel/SASRec-seed2020.users.csv
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench_report import emit  # scripts/bench_report.py

from interest_migration.benchmark.per_user import paired_test, read_users, seed_average


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ours", nargs="+", required=True, type=Path, help="per-user files of our model, one per seed")
    parser.add_argument("--baseline", nargs="+", required=True, type=Path, help="per-user files of the baseline")
    parser.add_argument("--metric", default="ndcg@10")
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    return parser.parse_args()


def _read(paths, metric):
    frames = []
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"paired_test: {path}: no such per-user file (compare writes <label>-seed<N>.users.csv)")
        frame = read_users(path)
        if metric not in frame:
            raise SystemExit(f"paired_test: {path}: no column {metric!r} (columns: {', '.join(frame.columns)})")
        frames.append(frame)
    return frames


def main():
    args = parse_args()
    ours, baseline = _read(args.ours, args.metric), _read(args.baseline, args.metric)
    rows = [("all given, seed-averaged", seed_average(ours), seed_average(baseline))]
    if len(ours) == len(baseline) > 1:
        rows += [(f"{a.name} vs {b.name}", x, y) for a, b, x, y in zip(args.ours, args.baseline, ours, baseline)]
    lines = [f"| pair | users | ours {args.metric} | baseline {args.metric} | relative | Wilcoxon p | paired t p |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, x, y in rows:
        test = paired_test(x[args.metric], y[args.metric])
        lines.append(f"| {name} | {test['n_users']} | {test['mean_a']:.4f} | {test['mean_b']:.4f} | "
                     f"{test['relative_gain']:+.1%} | {test['wilcoxon_p']:.2g} | {test['ttest_p']:.2g} |")
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
