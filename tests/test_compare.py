"""The ``compare`` command on a tiny planted dataset: outputs, resuming, a crashing model, masking."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from interest_migration.cli import main
from synthetic_data import TINY_MODEL, planted_config, write_planted_dataset

REPO = Path(__file__).resolve().parents[1]
N_USERS = 60


def _config_dir(root: Path) -> Path:
    cfg = root / "cfg"
    (cfg / "datasets").mkdir(parents=True)
    (cfg / "models").mkdir()
    shutil.copy(REPO / "recbole_configs" / "protocol.yaml", cfg / "protocol.yaml")
    dataset = {
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "CATEGORY_FIELD": "category_id",
        "load_col": {"inter": ["user_id", "item_id", "timestamp", "behavior_type"], "item": ["item_id", "category_id"]},
        "MAX_ITEM_LIST_LENGTH": 20, "train_batch_size": 128, "eval_batch_size": 256, "stopping_step": 1,
    }
    (cfg / "datasets" / "planted.yaml").write_text(yaml.safe_dump(dataset))
    # read after planted.yaml, for the novel protocol only
    (cfg / "datasets" / "planted-novel.yaml").write_text("train_batch_size: 64\n")
    shutil.copy(REPO / "recbole_configs" / "models" / "Pop.yaml", cfg / "models" / "Pop.yaml")
    (cfg / "models" / "InterestShiftCNN.yaml").write_text(yaml.safe_dump({**TINY_MODEL, "learning_rate": 0.005}))
    # A model that crashes when RecBole builds it: the comparison must report it, not die.
    (cfg / "models" / "Broken.yaml").write_text("model_class: InterestShiftCNN\nconv_padding: same\n")
    return cfg


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    write_planted_dataset(root / "datasets", n_users=N_USERS)
    argv = ["compare", "--dataset", "planted", "--models", "Pop", "InterestShiftCNN", "Broken",
            "--config-dir", str(_config_dir(root)), "--data-path", str(root / "datasets"),
            "--out", str(root / "results"), "--max-epochs", "1"]
    rc = main(argv)
    out = root / "results" / "planted" / "main"
    finished = {p.relative_to(out).as_posix(): json.loads(p.read_text())["finished"]
                for p in (out / "runs").glob("*/*-seed*.json") if not p.name.endswith(".spec.json")}
    return {"rc": rc, "out": out, "argv": argv, "finished": finished, "root": root}


def test_writes_every_output(comparison):
    out = comparison["out"]
    assert comparison["rc"] == 0
    for name in ("results.csv", "results.md", "results.json", "metrics.png", "ndcg_vs_train_time.png",
                 "drift_buckets.png"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "results.csv")
    assert sorted(zip(table["protocol"], table["model"])) == sorted(
        (p, m) for p in ("repeats", "novel") for m in ("Pop", "InterestShiftCNN", "Broken"))
    ok = table[table["model"] != "Broken"]
    assert ok["ndcg@10"].between(0, 1).all() and (ok["n_test_users"] == N_USERS).all()
    assert (ok["ndcg@10_ci_low"] <= ok["ndcg@10"]).all() and (ok["ndcg@10"] <= ok["ndcg@10_ci_high"]).all()
    for column in ("seconds_per_epoch", "cpu_seconds_per_epoch", "train_seconds", "test_eval_seconds",
                   "peak_rss_mb", "n_params"):
        assert (ok[column] > 0).all(), column
    info = json.loads((out / "results.json").read_text())
    assert info["protocols"]["novel"]["exclude_seen_items"] is True
    assert info["protocols"]["repeats"]["exclude_seen_items"] is False
    assert set(info["paired_tests"]) == {"repeats", "novel"}
    assert info["paired_tests"]["novel"]["b"] == "Pop" and info["paired_tests"]["novel"]["n_users"] == N_USERS
    assert sum(row["users"] for row in info["buckets"]["novel"]["table"]) == N_USERS
    markdown = (out / "results.md").read_text()
    assert "## Protocol `repeats`" in markdown and "## Protocol `novel`" in markdown


def test_protocol_dataset_yaml_applies_to_its_protocol_only(comparison):
    runs = comparison["out"] / "runs"
    novel = json.loads((runs / "novel" / "Pop-seed2020.spec.json").read_text())["config_files"]
    repeats = json.loads((runs / "repeats" / "Pop-seed2020.spec.json").read_text())["config_files"]
    assert [Path(f).name for f in novel] == ["protocol.yaml", "planted.yaml", "planted-novel.yaml", "Pop.yaml"]
    assert [Path(f).name for f in repeats] == ["protocol.yaml", "planted.yaml", "Pop.yaml"]


def test_crashed_model_is_a_row_that_says_why(comparison):
    table = pd.read_csv(comparison["out"] / "results.csv")
    broken = table[table["model"] == "Broken"]
    assert (broken["runs_ok"] == 0).all()
    assert broken["error"].str.contains("conv_padding").all()


def test_per_user_metrics_average_to_recbole(comparison):
    runs = comparison["out"] / "runs"
    for protocol in ("repeats", "novel"):
        for model in ("Pop", "InterestShiftCNN"):
            result = json.loads((runs / protocol / f"{model}-seed2020.json").read_text())
            users = pd.read_csv(runs / protocol / f"{model}-seed2020.users.csv")
            assert len(users) == N_USERS and users["user_id"].is_unique
            for metric in ("ndcg@10", "recall@10", "mrr@20"):
                assert users[metric].mean() == pytest.approx(result["test"][metric], abs=6e-5)


def test_paired_test_script_repeats_the_comparisons_own_test(comparison):
    """scripts/paired_test.py on the per-user files of two runs gives the test ``compare`` reported."""
    import subprocess
    import sys

    runs = comparison["out"] / "runs" / "novel"
    reported = json.loads((comparison["out"] / "results.json").read_text())["paired_tests"]["novel"]
    assert reported["a"] == "InterestShiftCNN" and reported["b"] == "Pop"
    cmd = [sys.executable, str(REPO / "scripts" / "paired_test.py"),
           "--ours", str(runs / "InterestShiftCNN-seed2020.users.csv"), "--baseline", str(runs / "Pop-seed2020.users.csv")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    row = next(line for line in out.splitlines() if line.startswith("| all given"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert int(cells[1]) == reported["n_users"] == N_USERS
    assert float(cells[2]) == pytest.approx(reported["mean_a"], abs=6e-5)
    assert float(cells[3]) == pytest.approx(reported["mean_b"], abs=6e-5)
    assert float(cells[5]) == pytest.approx(reported["wilcoxon_p"], rel=0.05)

    missing = subprocess.run(cmd[:-1] + [str(runs / "nothing.users.csv")], capture_output=True, text=True)
    assert missing.returncode != 0 and "nothing.users.csv: no such per-user file" in missing.stderr


def test_novel_data_keeps_first_interactions_only(comparison):
    folder = comparison["out"] / "data" / "planted-novel"
    novel = pd.read_csv(folder / "planted-novel.inter", sep="\t")
    raw = pd.read_csv(comparison["root"] / "datasets" / "planted" / "planted.inter", sep="\t")
    pairs = ["user_id:token", "item_id:token"]
    assert not novel.duplicated(pairs).any()
    assert len(novel) == len(raw.drop_duplicates(pairs)) < len(raw)
    first = raw.sort_values("timestamp:float", kind="stable").drop_duplicates(pairs)
    assert set(map(tuple, novel[pairs + ["timestamp:float"]].values)) == set(
        map(tuple, first[pairs + ["timestamp:float"]].values))


def test_second_run_reuses_finished_runs(comparison):
    assert main(comparison["argv"]) == 0
    out = comparison["out"]
    for key, finished in comparison["finished"].items():
        assert json.loads((out / key).read_text())["finished"] == finished, f"{key} was run again"
    assert len(pd.read_csv(out / "results.csv")) == 6


@pytest.fixture
def one_thread():
    """Tiny models on a shared CPU: one thread avoids OpenMP spinning against other processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_exclude_seen_items_masks_every_model_type(tmp_path, one_thread):
    """A repeat target can only be found when seen items are not excluded, for general and sequential models."""
    from interest_migration.experiment import run_model

    root = write_planted_dataset(tmp_path / "data", n_users=N_USERS)
    raw = pd.read_csv(root / "planted" / "planted.inter", sep="\t")
    last = raw.groupby("user_id:token").tail(1).set_index("user_id:token")["item_id:token"]
    history = raw.groupby("user_id:token").apply(lambda g: set(g["item_id:token"].iloc[:-1]))
    repeat_users = {u for u, item in last.items() if item in history[u]}
    assert 0 < len(repeat_users) < N_USERS
    for model, settings in (("Pop", (True,)), ("InterestShiftCNN", (True, False))):
        found = {}
        for exclude in settings:
            config = planted_config(root, epochs=1, exclude_seen_items=exclude, checkpoint_dir=str(tmp_path / "saved"))
            users = pd.DataFrame(run_model(model, "planted", None, config).per_user).set_index("user_id")
            found[exclude] = users.loc[sorted(repeat_users), "recall@10"]
        assert (found[True] == 0).all(), f"{model}: a seen item was ranked"
        if False in found:  # RecBole never masks sequential models: without exclusion repeats are found
            assert found[False].sum() > 0, f"{model}: repeat targets never found without masking"


def test_summary_of_runs_that_all_succeeded():
    from interest_migration.benchmark.report import summarise

    run = {"protocol": "repeats", "label": "Pop", "status": "ok", "test": {"ndcg@10": 0.25}, "best_valid": {},
           "epochs": 1, "seconds_per_epoch": 0.1, "train_seconds": 0.1, "test_eval_seconds": 0.1,
           "peak_rss_mb": 10.0, "n_params": 1, "n_test_users": 4}
    summary = summarise([run, {**run, "seed": 1, "test": {"ndcg@10": 0.35}}], {})
    assert summary.loc[0, "ndcg@10"] == pytest.approx(0.30)
    assert summary.loc[0, "error"] == ""


def test_epoch_caps_per_protocol():
    from interest_migration.compare import epoch_caps

    assert epoch_caps(["60"]) == {"repeats": 60, "novel": 60}
    assert epoch_caps(["repeats=60", "novel=200"]) == {"repeats": 60, "novel": 200}
    assert epoch_caps(None) == {}
    with pytest.raises(ValueError, match="PROTOCOL=N"):
        epoch_caps(["sometimes=3"])


def test_a_run_ends_when_the_comparison_that_started_it_is_killed(tmp_path):
    """Killing ``compare`` (kill -9, Ctrl-C) must not leave its training run going as an orphan."""
    import os
    import signal
    import subprocess
    import sys
    import time

    child = (
        "import os, sys, time\n"
        "from interest_migration.benchmark.runner import _end_with_parent\n"
        "_end_with_parent(int(sys.argv[1]))\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = (
        "import os, subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {child!r}, str(os.getpid())])\n"
        "time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, env=env)
    child_pid = int(proc.stdout.readline())  # the run is up, and has asked to end with its parent
    proc.kill()
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child_pid, signal.SIGKILL)
        pytest.fail("the run outlived the comparison that started it")


def _run_tuning(tmp_path: Path, space: str, model: str = "InterestShiftCNN", extra: tuple = ()):
    """scripts/tune.py in a fresh process (as a user runs it) over one InterestShiftCNN search space,
    two trials of one epoch of ``model``; returns the finished process and the report path."""
    import os
    import subprocess
    import sys

    if not (tmp_path / "datasets").exists():
        write_planted_dataset(tmp_path / "datasets", n_users=N_USERS)
        (_config_dir(tmp_path) / "hyper").mkdir()
    (tmp_path / "cfg" / "hyper" / "InterestShiftCNN.hyper").write_text(space)
    cmd = [sys.executable, str(REPO / "scripts" / "tune.py"), "--dataset", "planted", "--protocol", "novel",
           "--models", model, "--max-evals", "2", "--max-epochs", "1", "--config-dir",
           str(tmp_path / "cfg"), "--data-path", str(tmp_path / "datasets"), "--out", str(tmp_path / "results"),
           *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, tmp_path / "results" / "planted" / "tuning" / f"novel-{model}.json"


def test_tuning_script_runs_recbole_hypertuning_with_a_fixed_budget(tmp_path):
    """Every trial is kept, the best is the one with the best validation score, and a second run
    resumes without training."""
    proc, report_path = _run_tuning(tmp_path, "learning_rate choice [0.001,0.005]\n")
    assert "reusing the finished trial" not in proc.stdout
    assert "epoch 0 training" in proc.stdout + proc.stderr
    report = json.loads(report_path.read_text())
    assert report["max_evals"] == 2 and len(report["trials"]) == 2
    # the trials read the YAML files compare reads under this protocol
    assert [Path(f).name for f in report["config_files"]] == [
        "protocol.yaml", "planted.yaml", "planted-novel.yaml", "InterestShiftCNN.yaml"]
    assert {t["params"]["learning_rate"] for t in report["trials"]} <= {0.001, 0.005}
    assert report["best"] == max(report["trials"], key=lambda t: t["best_valid"]["ndcg@10"])
    assert all("ndcg@10" in t["test"] for t in report["trials"])

    # run again: the seeded search draws the same points and reads their trials back, training none
    again, _ = _run_tuning(tmp_path, "learning_rate choice [0.001,0.005]\n")
    assert again.stdout.count("reusing the finished trial") == 2
    assert "epoch 0 training" not in again.stdout + again.stderr
    assert json.loads(report_path.read_text())["trials"] == report["trials"]

    # a changed config file makes a different search: nothing is read back
    model_yaml = tmp_path / "cfg" / "models" / "InterestShiftCNN.yaml"
    model_yaml.write_text(model_yaml.read_text().replace("dropout_prob: 0.0", "dropout_prob: 0.1"))
    changed, _ = _run_tuning(tmp_path, "learning_rate choice [0.001,0.005]\n")
    assert "holds a different search" in changed.stdout
    assert "reusing the finished trial" not in changed.stdout


def test_tuning_with_jobs_trains_the_drawn_points_at_once_and_finds_what_one_job_finds(tmp_path):
    """``--jobs 2`` trains the search's two points in two processes before the search runs; the
    search then reads both back, and the report is the one a single job writes."""
    space = "learning_rate choice [0.001,0.003,0.005,0.01]\n"  # the seeded search draws 0.001, then 0.005
    _, serial_path = _run_tuning(tmp_path / "serial", space)
    proc, parallel_path = _run_tuning(tmp_path / "parallel", space, extra=("--jobs", "2"))
    assert "training 2 distinct points, 2 at a time" in proc.stdout
    assert proc.stdout.count("reusing the finished trial") == 2
    serial, parallel = (json.loads(p.read_text()) for p in (serial_path, parallel_path))
    fields = ("params", "best_valid", "test", "epochs")
    assert [{k: t[k] for k in fields} for t in parallel["trials"]] == [{k: t[k] for k in fields} for t in serial["trials"]]
    assert [t["params"]["learning_rate"] for t in serial["trials"]] == [0.001, 0.005]
    assert parallel["best"]["params"] == serial["best"]["params"]
    # RecBole names a checkpoint after the second its training started: trials started together
    # must not share a folder, or one is tested on the other's model; the folders are removed
    saved = re.findall(r"Saving current: (\S+)", proc.stdout + proc.stderr)
    folders = {Path(path).parent for path in saved}
    assert len(folders) == 2 and all(folder.parent.name == "saved" for folder in folders)
    assert not any(folder.exists() for folder in folders)


def test_tuning_does_not_retrain_a_point_the_search_draws_again(tmp_path):
    """A one-point space with a budget of two: the second draw repeats the first trial's result."""
    proc, report_path = _run_tuning(tmp_path, "learning_rate choice [0.005]\n")
    assert (proc.stdout + proc.stderr).count("epoch 0 training") == 1
    assert "2 trials, 1 distinct points" in proc.stdout
    trials = json.loads(report_path.read_text())["trials"]
    assert [t.get("repeat", False) for t in trials] == [False, True]
    assert trials[1]["best_valid"] == trials[0]["best_valid"] and trials[1]["test"] == trials[0]["test"]


def test_a_model_variant_is_tuned_around_its_own_yaml_in_its_model_class_space(tmp_path):
    """A compare variant (``model_class:`` in its YAML) is tuned as that class, with the variant's
    settings and the class's search space, and reported under its own label."""
    write_planted_dataset(tmp_path / "datasets", n_users=N_USERS)
    cfg = _config_dir(tmp_path)
    (cfg / "hyper").mkdir()
    (cfg / "models" / "InterestShiftCNN-wide.yaml").write_text(
        yaml.safe_dump({"model_class": "InterestShiftCNN", **TINY_MODEL, "embedding_size": 24}))
    proc, report_path = _run_tuning(tmp_path, "learning_rate choice [0.001,0.005]\n", "InterestShiftCNN-wide")
    report = json.loads(report_path.read_text())
    assert report["model"] == "InterestShiftCNN-wide" and report["model_class"] == "InterestShiftCNN"
    assert report["space"] == "learning_rate choice [0.001,0.005]\n"
    assert Path(report["config_files"][-1]).name == "InterestShiftCNN-wide.yaml"
    assert len(report["trials"]) == 2
    # the trials built the variant's model: RecBole logs the model, its item embedding included
    assert "(item_embedding): Embedding(49, 24, padding_idx=0)" in proc.stdout + proc.stderr


def test_a_stored_run_is_not_reused_after_its_model_code_changes(tmp_path, monkeypatch):
    """The resume fingerprint covers a plugin model's module and default YAML, and RecBole's
    version for a built-in: a release that changes the model reruns it instead of reusing it."""
    from interest_migration import registry
    from interest_migration.benchmark.runner import RunSpec

    (tmp_path / "toy_plugin_model.py").write_text("WIDTH = 1\n")
    (tmp_path / "props").mkdir()
    (tmp_path / "props" / "Toy.yaml").write_text("width: 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.PLUGIN_MODELS, "Toy", ("sequential_recommender", "toy_plugin_model"))
    monkeypatch.setattr(registry, "PROPERTIES_DIR", tmp_path / "props")
    config = tmp_path / "Toy.yaml"
    config.write_text("learning_rate: 0.001\n")

    def fingerprint(model="Toy"):
        return RunSpec(label=model, model=model, protocol="novel", seed=1, dataset="d",
                       config_files=[str(config)]).fingerprint()

    first = fingerprint()
    assert fingerprint() == first
    (tmp_path / "toy_plugin_model.py").write_text("WIDTH = 2\n")
    second = fingerprint()
    assert second != first
    (tmp_path / "props" / "Toy.yaml").write_text("width: 2\n")
    assert fingerprint() not in (first, second)

    import recbole

    sasrec = fingerprint("SASRec")
    monkeypatch.setattr(recbole, "__version__", "0.0.0")
    assert fingerprint("SASRec") != sasrec
