"""The converted dataset a benchmark script runs on: given, or converted from ../shared now."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def prepared_dataset(data_path, workdir: Path, dataset: str, prepare_args: list[str]) -> Path:
    """``data_path`` if it holds ``dataset``; else convert with ``prepare <prepare_args>`` into ``workdir``."""
    if data_path is not None:
        root = Path(data_path).resolve()
        if not (root / dataset / f"{dataset}.inter").is_file():
            sys.exit(f"error: {root / dataset / (dataset + '.inter')} not found")
        return root
    root = Path(workdir) / "datasets"
    subprocess.run(
        [sys.executable, "-m", "interest_migration", "prepare", *prepare_args, "--out", str(root),
         "--name", dataset, "--no-progress"],
        check=True,
        cwd=REPO,
    )
    return root
