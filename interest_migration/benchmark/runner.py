"""One model run of a comparison, in its own process, with a result file that makes it resumable.

Each run is a child ``python -m interest_migration.benchmark.runner SPEC``: a crash, a memory
kill or a time-out ends that run only, and the peak RSS it reports is its own. The child calls
:func:`interest_migration.experiment.run_model` (RecBole's ``run_recbole``, timed) and writes
``<key>.json`` (status, metrics, cost) and ``<key>.users.csv`` (per-user test metrics)
atomically. A run whose JSON has the same fingerprint (model and the version of its code,
data, config files and overrides) is reused instead of run again; a failed one too, unless failures are to be retried,
since the same inputs fail the same way (a changed YAML changes the fingerprint).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from interest_migration.utils.io import atomic_path, atomic_write_text

#: environment variable telling a run which process started it
_PARENT_PID = "INTEREST_MIGRATION_COMPARE_PID"
#: result keys copied from RunRecord.as_dict()
COST_KEYS = ("epochs", "seconds_per_epoch", "cpu_seconds_per_epoch", "train_seconds", "test_eval_seconds",
             "n_params", "peak_rss_mb")


@dataclass
class RunSpec:
    label: str  # the name in the tables: a model YAML's stem (e.g. InterestShiftCNN-nocat)
    model: str  # the RecBole model class name
    protocol: str
    seed: int
    dataset: str  # the RecBole dataset name (e.g. taobao-novel)
    config_files: list
    config_dict: dict = field(default_factory=dict)
    keep_checkpoint: bool = False
    #: CPU threads of the run (torch and BLAS); not in the fingerprint: it changes cost, not results
    threads: int = 1

    @property
    def key(self) -> str:
        return f"{self.protocol}/{self.label}-seed{self.seed}"

    def fingerprint(self) -> str:
        """What decides the result: reruns happen when any of it changes."""
        digest = hashlib.sha256()
        from interest_migration.registry import model_code_version

        payload = {"model": self.model, "code": model_code_version(self.model), "dataset": self.dataset,
                   "config_dict": self.config_dict, "seed": self.seed}
        digest.update(json.dumps(payload, sort_keys=True, default=str).encode())
        return hash_files(self.config_files, digest).hexdigest()[:16]


def hash_files(paths, digest=None):
    """Feed the files' contents to ``digest`` (a new sha256 if none): a result depends on what its
    config files say, not on where they are."""
    digest = hashlib.sha256() if digest is None else digest
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest


def result_paths(runs_dir: Path, spec: RunSpec) -> tuple[Path, Path, Path]:
    base = Path(runs_dir) / spec.key
    return base.with_suffix(".json"), base.with_name(base.name + ".users.csv"), base.with_suffix(".log")


def load_finished(runs_dir: Path, spec: RunSpec, retry_failed: bool = False) -> dict | None:
    """The stored result of ``spec`` if it ran with the same fingerprint, else None."""
    result_file, users_file, _ = result_paths(runs_dir, spec)
    if not result_file.is_file():
        return None
    try:
        result = json.loads(result_file.read_text())
    except json.JSONDecodeError:
        return None
    if result.get("fingerprint") != spec.fingerprint():
        return None
    if result.get("status") == "ok":
        return result if users_file.is_file() else None
    return None if retry_failed else result


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _failure(spec: RunSpec, reason: str, started: float) -> dict:
    return {"status": "failed", "error": reason, **_identity(spec), "wall_seconds": time.time() - started}


def _identity(spec: RunSpec) -> dict:
    return {"label": spec.label, "model": spec.model, "protocol": spec.protocol, "seed": spec.seed,
            "dataset": spec.dataset, "fingerprint": spec.fingerprint()}


def run_spec(spec: RunSpec, runs_dir: Path, work_dir: Path, timeout: float | None = None) -> dict:
    """Run ``spec`` in a child process and return its result (a failed one says why)."""
    result_file, users_file, log_file = result_paths(runs_dir, spec)
    result_file.parent.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_file = result_file.with_suffix(".spec.json")
    atomic_write_text(spec_file, json.dumps({**asdict(spec), "result_file": str(result_file.resolve()),
                                             "users_file": str(users_file.resolve())}, indent=2, default=str))
    started = time.time()
    threads = str(max(int(spec.threads), 1))
    # On a shared CPU, spinning OpenMP threads of several processes slow each other down many times
    # over, so each run gets a fixed, small thread count.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           _PARENT_PID: str(os.getpid())}
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with open(log_file, "w", encoding="utf-8") as log:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "interest_migration.benchmark.runner", str(spec_file.resolve())],
                cwd=work_dir, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, env=env,
            )
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            returncode = None
    result = None
    if result_file.is_file():
        result = json.loads(result_file.read_text())
        if result.get("fingerprint") != spec.fingerprint() or result.get("finished", 0) < started:
            result = None  # a stale file from an earlier run
    if result is None:
        reason = (f"timed out after {timeout:.0f} s" if returncode is None
                  else f"process ended with exit code {returncode} and no result")
        tail = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        result = _failure(spec, reason + (": " + " | ".join(tail) if tail else ""), started)
        atomic_write_text(result_file, json.dumps(result, indent=2))
    return result


def _execute(spec_file: Path) -> int:
    """Child side: train and evaluate one spec, write its result files."""
    payload = json.loads(Path(spec_file).read_text())
    result_file, users_file = Path(payload.pop("result_file")), Path(payload.pop("users_file"))
    spec = RunSpec(**payload)
    started = time.time()
    load_before = _load_average()
    checkpoint_dir = Path.cwd() / "saved" / f"{spec.protocol}-{spec.label}-seed{spec.seed}"
    config = {**spec.config_dict, "seed": spec.seed, "checkpoint_dir": str(checkpoint_dir)}
    try:
        import pandas as pd
        import torch

        from interest_migration.experiment import run_model

        torch.set_num_threads(max(int(spec.threads), 1))

        record = run_model(spec.model, spec.dataset, spec.config_files, config)
        per_user = record.per_user or {}
        with atomic_path(users_file) as tmp:
            pd.DataFrame(per_user).to_csv(tmp, index=False)
        row = record.as_dict()
        result = {
            "status": "ok", **_identity(spec),
            "test": record.test, "best_valid": record.best_valid,
            **{k: row[k] for k in COST_KEYS},
            "epoch_seconds": record.epoch_seconds,
            "n_test_users": len(per_user.get("user_id", [])),
            "wall_seconds": time.time() - started,
            "load_average": [load_before, _load_average()],
            "threads": spec.threads,
        }
    except Exception as err:  # one failing model must not stop the comparison
        traceback.print_exc()
        message = f"{type(err).__name__}: {err}".strip().splitlines()
        result = _failure(spec, " ".join(message)[:500], started)
    finally:
        if not spec.keep_checkpoint:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    result["finished"] = time.time()
    atomic_write_text(result_file, json.dumps(result, indent=2, default=float))
    return 0 if result["status"] == "ok" else 1


def _end_with_parent(parent_pid: int) -> None:
    """Linux: end this run when the comparison that started it ends (Ctrl-C, kill), instead of
    training on unseen as an orphan; elsewhere nothing changes."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent ended before the request took effect
        sys.exit(1)


if __name__ == "__main__":
    _end_with_parent(int(os.environ.get(_PARENT_PID, os.getppid())))
    sys.exit(_execute(Path(sys.argv[1])))
