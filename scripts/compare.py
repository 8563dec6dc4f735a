"""Benchmark script: ``python scripts/compare.py --dataset taobao --models all``.

The same as ``python -m interest_migration compare``; see that command's ``--help``.
"""
import sys

from interest_migration.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
