"""Write top-N recommendations from a checkpoint: ``python -m interest_migration export``, as a script.

    python scripts/export_recommendations.py --checkpoint saved/model.safe.pth --k 20 --out recs.csv
"""
from __future__ import annotations

import sys

from interest_migration.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
