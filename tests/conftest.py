"""Shared fixtures.

RecBole reads ``--key=value`` from ``sys.argv`` and writes ``./log`` and ``./saved`` into the
working directory, so every test runs in its own temp dir with a clean argv.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread: stable timings on 2 cores, no oversubscription next to subprocess tests."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    yield


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The read-only real datasets beside the repo. Missing means a broken CI set-up: fail, never skip."""
    if not SHARED_DATASETS.is_dir():
        pytest.fail(f"real datasets not found at {SHARED_DATASETS}: ../shared must sit beside the repo")
    return SHARED_DATASETS
