"""The ``analyze`` command end to end: the shared Taobao head, and p_shift calibration of a real checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from interest_migration.cli import main

REPORT_FILES = ["report.md", "transition_heatmap.png", "drift_histogram.png", "user_timelines.png",
                "daily_flows.png", "users.csv", "users.parquet"]


def test_analyze_taobao_head_writes_every_file(shared_datasets, tmp_path):
    from interest_migration.data import taobao

    source = shared_datasets / "taobao-userbehavior-head" / "UserBehavior.csv"
    taobao.convert(source, tmp_path / "datasets", "taobao", progress=False)
    assert main(["analyze", "--dataset", "taobao", "--out", "reports/taobao/", "--utc-offset", "8"]) == 0
    out = tmp_path / "reports" / "taobao"
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    assert not (out / "p_shift_calibration.png").exists()  # no checkpoint given
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries
    users = pd.read_csv(out / "users.csv", dtype={"user_id": str, "shift_positions": str}, keep_default_na=False,
                        na_values={c: [""] for c in ("switch_rate", "entropy_bits", "mean_window_jsd", "max_window_jsd")})
    assert len(users) == 815 and users["n_events"].sum() == 84475
    pd.testing.assert_frame_equal(pd.read_parquet(out / "users.parquet"), users, check_dtype=False)
    text = (out / "report.md").read_text()
    for section in ("## Drift per user", "## Population migration", "## Migration per day", "## Shift points"):
        assert section in text
    assert "2017-11-25" in text and "| 2017-12-03 |" in text  # calendar days in UTC+8
    assert users["n_shifts"].sum() > 0


def _write_shop(folder: Path, n_users: int = 90, length: int = 14, seed: int = 0) -> None:
    """Users wander between 5 named categories (4 items each) with runs, so shifts and stays both occur."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(n_users):
        category = int(rng.integers(5))
        for step in range(length):
            if rng.random() < 0.4:
                category = int(rng.integers(5))
            rows.append(f"u{user}\ti{category * 4 + int(rng.integers(4))}\t{1_600_000_000 + 3600 * step + user}")
    (folder / "shop.inter").write_text("\n".join(rows) + "\n")
    items = ["item_id:token\tcategory_id:token\tcategory_name:token"]
    items += [f"i{c * 4 + k}\tc{c}\tAisle {'ABCDE'[c]}" for c in range(5) for k in range(4)]
    (folder / "shop.item").write_text("\n".join(items) + "\n")


def _expected_shift_labels(folder: Path, max_len: int) -> pd.DataFrame:
    """Shift and naive rate of each user's last event, computed from the raw files."""
    inter = pd.read_csv(folder / "shop.inter", sep="\t")
    items = pd.read_csv(folder / "shop.item", sep="\t")
    events = inter.merge(items, left_on="item_id:token", right_on="item_id:token")
    events = events.sort_values(["user_id:token", "timestamp:float"], kind="stable")
    rows = []
    for _, group in events.groupby("user_id:token"):
        cats = group["category_id:token"].to_numpy()
        history = cats[:-1][-max_len:]
        rows.append((cats[-1] != history[-1], np.mean(history[1:] != history[:-1])))
    return pd.DataFrame(rows, columns=["shifted", "naive"])


def test_p_shift_calibration_from_a_trained_checkpoint(tmp_path):
    import interest_migration  # noqa: F401
    from recbole.quick_start import run_recbole

    from interest_migration.analysis.calibration import load_checkpoint_predictions
    from interest_migration.checkpoint import UntrustedCheckpointError, convert

    _write_shop(tmp_path / "data" / "shop")
    config = {
        "data_path": str(tmp_path / "data"), "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp", "CATEGORY_FIELD": "category_id",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "category_id"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "MAX_ITEM_LIST_LENGTH": 8, "epochs": 1, "train_batch_size": 256, "eval_batch_size": 64,
        "embedding_size": 8, "dilations": [1], "n_layers": 1, "dropout_prob": 0.0,
        "show_progress": False, "seed": 3, "reproducibility": True, "checkpoint_dir": str(tmp_path / "saved"),
        "metrics": ["Recall"], "topk": [5], "valid_metric": "Recall@5",
    }
    run_recbole(model="InterestShiftCNN", dataset="shop", config_dict=config, saved=True)
    checkpoint = next((tmp_path / "saved").glob("*.pth"))

    with pytest.raises(UntrustedCheckpointError):  # RecBole's pickle format runs code: refused by default
        load_checkpoint_predictions(checkpoint)
    safe = convert(checkpoint, tmp_path / "shop.safe.pth", trust_pickle=True)
    predictions, info = load_checkpoint_predictions(safe)
    assert info["model"] == "InterestShiftCNN" and info["split"] == "test"
    expected = _expected_shift_labels(tmp_path / "data" / "shop", max_len=8)
    assert len(predictions) == len(expected) == 90
    assert 0 < predictions["shifted"].mean() < 1
    # Rows come in RecBole's user order: compare the multisets of (label, naive rate).
    got = sorted(zip(predictions["shifted"].astype(bool), predictions["naive"].round(9)))
    want = sorted(zip(expected["shifted"].astype(bool), expected["naive"].round(9)))
    assert got == want
    assert predictions["p_shift"].between(0, 1).all()

    out = tmp_path / "report"
    assert main(["analyze", "--data-path", str(tmp_path / "data" / "shop"), "--out", str(out),
                 "--checkpoint", str(safe)]) == 0
    assert (out / "p_shift_calibration.png").stat().st_size > 0
    summary = pd.read_csv(out / "p_shift_calibration.csv")
    assert summary["predictor"].tolist() == ["InterestShiftCNN p_shift", "historical switch rate"]
    assert summary["n"].tolist() == [90, 90] and summary["auc"].notna().all()
    text = (out / "report.md").read_text()
    assert "## Model: calibration of p_shift" in text and "Aisle " in text  # category names shown


def test_analyze_refuses_a_missing_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        main(["analyze", "--dataset", "nowhere"])
