"""Export of top-N recommendations: equal to RecBole's full_sort_topk, every format, side file."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from export_models import SHORT_USERS, trained

from interest_migration import checkpoint
from interest_migration.cli import main as cli_main
from interest_migration.export import export, iter_recommendations, read_user_ids

MODELS = ("InterestShiftCNN", "SASRec", "Pop")


@pytest.fixture(scope="session")
def export_base(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "export-models"


@pytest.fixture(scope="module")
def safe_checkpoints(export_base, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("safe-export")
    return {
        m: checkpoint.convert(trained(export_base, m), folder / f"{m}.safe.pth", trust_pickle=True) for m in MODELS
    }


@pytest.fixture(scope="module")
def loaded(safe_checkpoints) -> dict:
    return {m: checkpoint.load(path) for m, path in safe_checkpoints.items()}


def _inter_file(export_base) -> Path:
    return export_base / "data" / "planted" / "planted.inter"


def _histories(export_base) -> dict:
    frame = pd.read_csv(_inter_file(export_base), sep="\t", dtype=str)
    return frame.groupby("user_id:token")["item_id:token"].apply(set).to_dict()


def _topk_table(dataset, uids, scores, items) -> pd.DataFrame:
    uid_tokens, iid_tokens = dataset.field2id_token[dataset.uid_field], dataset.field2id_token[dataset.iid_field]
    k = items.shape[1]
    return pd.DataFrame(
        {
            "user_id": np.repeat(uid_tokens[uids], k),
            "rank": np.tile(np.arange(1, k + 1), len(uids)),
            "item_id": iid_tokens[items.numpy()].reshape(-1),
            "score": scores.double().numpy().reshape(-1),
        }
    )


@pytest.mark.parametrize("model", MODELS)
def test_export_equals_full_sort_topk(model, loaded, tmp_path):
    from recbole.utils.case_study import full_sort_topk

    from interest_migration.export import _is_sequential

    run = loaded[model]
    sequential = _is_sequential(run)
    users = ["u40", "u3", "u77", "u12", "u4", "u1", "u2", "u59", "u8"]
    out = tmp_path / "recs.csv"
    # full_sort_topk masks a general model's history and nothing for a sequential one
    summary = export(run, out, users=users, k=10, exclude_history=not sequential, batch_size=4, context="test")
    exported = pd.read_csv(out, dtype={"user_id": str, "item_id": str})
    skipped = pd.read_csv(summary["skipped_out"], dtype={"user_id": str})
    # leave-one-out gives u1 (1 interaction) no test row; u2 (2) has one sequence, kept for training
    no_test_row = {"u1", "u2"} if sequential else {"u1"}
    assert set(skipped.user_id) == no_test_row and summary["skipped"] == len(no_test_row)
    kept = [u for u in users if u not in no_test_row]
    assert list(dict.fromkeys(exported.user_id)) == kept  # the requested order
    uids = np.array([run.dataset.field2token_id["user_id"][u] for u in kept])
    scores, items = full_sort_topk(uids, run.model, run.test_data, 10)
    expected = _topk_table(run.dataset, uids, scores, items)
    pd.testing.assert_frame_equal(exported[["user_id", "rank", "item_id"]], expected[["user_id", "rank", "item_id"]])
    np.testing.assert_allclose(exported.score.to_numpy(), expected.score.to_numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ("InterestShiftCNN", "SASRec"))
def test_latest_context_reads_the_whole_history(model, loaded, export_base, tmp_path):
    """``latest`` = what full_sort_topk scores once one more interaction follows every user's last one."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils.case_study import full_sort_topk

    run = loaded[model]
    extended = tmp_path / "data"
    shutil.copytree(export_base / "data", extended)
    inter = extended / "planted" / "planted.inter"
    users = pd.read_csv(inter, sep="\t", dtype=str)["user_id:token"].unique()
    with inter.open("a") as handle:
        handle.writelines(f"{u}\ti1\t2000000000\tpv\n" for u in users)
    config = checkpoint.rebuild_config(model, torch.load(run.path, weights_only=True)["config"], extended)
    config["device"] = torch.device("cpu")
    dataset = create_dataset(config)
    train, _, test = data_preparation(config, dataset)
    for field in ("user_id", "item_id", "category_id", "behavior_type"):  # the same internal ids
        assert list(dataset.field2id_token[field]) == list(run.dataset.field2id_token[field])
    model_on_extended = type(run.model)(config, train._dataset)
    model_on_extended.load_state_dict(run.model.state_dict())
    for name, buffer in run.model.named_buffers():  # and what it rebuilt from its training data
        if name.startswith("item_graph"):
            setattr(model_on_extended, name, buffer)
    model_on_extended.eval()

    uids = np.unique(test.dataset.inter_feat["user_id"].numpy())
    assert "u2" in dataset.field2id_token["user_id"][uids]  # 2 interactions: a sequence of 2
    scores, items = full_sort_topk(uids, model_on_extended, test, 10)
    expected = _topk_table(dataset, uids, scores, items)
    skipped = []
    exported = pd.concat(
        iter_recommendations(run, None, k=10, exclude_history=False, batch_size=16, skipped=skipped)
    ).reset_index(drop=True)
    assert [(s.user_id, s.reason.split(":")[0]) for s in skipped] == [("u1", "fewer than 2 interactions")]
    pd.testing.assert_frame_equal(exported[["user_id", "rank", "item_id"]], expected[["user_id", "rank", "item_id"]])
    np.testing.assert_allclose(exported.score.to_numpy(), expected.score.to_numpy(), rtol=1e-5, atol=1e-6)


def test_history_is_excluded_unless_kept(loaded, export_base):
    run = loaded["InterestShiftCNN"]
    histories = _histories(export_base)
    exported = pd.concat(iter_recommendations(run, None, k=10, skipped=[]))
    assert exported.groupby("user_id").size().eq(10).all()
    for user, items in exported.groupby("user_id")["item_id"]:
        assert not set(items) & histories[user], user
    kept = pd.concat(iter_recommendations(run, None, k=10, exclude_history=False, skipped=[]))
    repeats = sum(bool(set(items) & histories[user]) for user, items in kept.groupby("user_id")["item_id"])
    assert repeats > 0  # the model's repeat mode puts seen items up when allowed
    # excluding history removes items without reordering the others
    for user in ("u5", "u60"):
        full = kept[kept.user_id == user]
        unseen = full[~full.item_id.isin(histories[user])]
        mine = exported[exported.user_id == user].head(len(unseen))
        assert list(mine.item_id) == list(unseen.item_id)


def test_every_format_reads_back_with_pandas(loaded, tmp_path):
    run = loaded["InterestShiftCNN"]
    users = ["u10", "u3", "u20"]
    frames = {}
    for fmt, suffix in (("csv", "csv"), ("jsonl", "jsonl"), ("parquet", "parquet")):
        out = tmp_path / f"recs.{suffix}"
        export(run, out, users=users, k=5)
        reader = {"csv": pd.read_csv, "jsonl": lambda p: pd.read_json(p, lines=True), "parquet": pd.read_parquet}[fmt]
        frames[fmt] = reader(out).astype({"user_id": str, "item_id": str})
    pd.testing.assert_frame_equal(frames["csv"], frames["parquet"], check_dtype=False)
    pd.testing.assert_frame_equal(frames["csv"], frames["jsonl"], check_dtype=False)
    frame = frames["parquet"]
    assert list(frame.columns[:5]) == ["user_id", "rank", "item_id", "score", "p_shift"]
    assert frame.groupby("user_id").size().to_dict() == {u: 5 for u in users}
    assert frame.p_shift.between(0, 1).all()
    categories = {f"c{c}" for c in range(6)}
    for j in (1, 2, 3):
        assert set(frame[f"next_category_{j}"]) <= categories
    assert (frame.next_category_1_prob >= frame.next_category_2_prob).all()
    assert (frame.next_category_2_prob >= frame.next_category_3_prob).all()
    # one user's migration columns are the same on each of their rows
    assert frame.groupby("user_id")[["p_shift", "next_category_1"]].nunique().eq(1).all().all()

    pop = tmp_path / "pop.parquet"
    export(loaded["Pop"], pop, users=users, k=5)
    assert list(pd.read_parquet(pop).columns) == ["user_id", "rank", "item_id", "score"]


def test_cli_side_file_capped_k_and_determinism(safe_checkpoints, export_base, tmp_path, caplog):
    users = tmp_path / "users.txt"
    users.write_text("user_id\nu5\nnobody\n\nu5\nu1\nu30\n")
    assert read_user_ids(users) == [(2, "u5"), (3, "nobody"), (5, "u5"), (6, "u1"), (7, "u30")]
    out = tmp_path / "recs.jsonl"
    args = ["export", "--checkpoint", str(safe_checkpoints["InterestShiftCNN"]), "--users", str(users),
            "--k", "1000", "--out", str(out), "--quiet"]
    with caplog.at_level(logging.WARNING, logger="interest_migration.export"):
        assert cli_main(args) == 0
    assert "capped at 48" in caplog.text
    first = out.read_bytes()
    exported = pd.read_json(out, lines=True, dtype={"user_id": str, "item_id": str})
    histories = _histories(export_base)
    assert exported.groupby("user_id").size().to_dict() == {u: 48 - len(histories[u]) for u in ("u5", "u30")}
    side = pd.read_csv(tmp_path / "recs.skipped.csv", dtype={"user_id": str})
    assert side[["user_id", "line"]].values.tolist() == [["nobody", 3], ["u5", 5], ["u1", 6]]
    assert side.reason.str.split(":").str[0].tolist() == ["unknown user id", "duplicate", "fewer than 2 interactions"]
    assert SHORT_USERS["u1"] == 1
    assert cli_main(args) == 0
    assert out.read_bytes() == first
    assert not first.endswith(b"\n\n")
    assert cli_main(args + ["--batch-size", "1"]) == 0  # batching changes scores by float rounding only
    one_by_one = pd.read_json(out, lines=True, dtype={"user_id": str, "item_id": str})
    pd.testing.assert_frame_equal(one_by_one.drop(columns="score"), exported.drop(columns="score"), rtol=1e-4)
    np.testing.assert_allclose(one_by_one.score, exported.score, rtol=1e-5, atol=1e-6)


def test_cli_refuses_pickle_checkpoint_without_trust(export_base, tmp_path, capsys):
    pickled = trained(export_base, "Pop")
    out = tmp_path / "recs.csv"
    assert cli_main(["export", "--checkpoint", str(pickled), "--out", str(out), "--quiet"]) == 2
    assert "--trust-checkpoint" in capsys.readouterr().err and not out.exists()
    assert cli_main(["export", "--checkpoint", str(pickled), "--out", str(out), "--trust-checkpoint", "--quiet"]) == 0
    assert pd.read_csv(out).groupby("user_id").size().max() == 20
    assert cli_main(["export", "--checkpoint", str(pickled), "--out", str(tmp_path / "recs.txt")]) == 2
    assert "cannot tell the format" in capsys.readouterr().err


def test_bad_requests_raise_clear_errors(loaded, tmp_path):
    from interest_migration.export import ExportError, UnknownUsersError

    run = loaded["Pop"]
    with pytest.raises(UnknownUsersError, match="'nobody': unknown user id"):
        list(iter_recommendations(run, ["u5", "nobody"], k=5))  # no skipped list: never silent
    with pytest.raises(ExportError, match="k must be a positive integer"):
        list(iter_recommendations(run, None, k=0))
    with pytest.raises(ExportError, match="context must be one of"):
        list(iter_recommendations(run, None, context="tomorrow"))
    with pytest.raises(ExportError, match="user list not found"):
        read_user_ids(tmp_path / "missing.txt")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("u5\nJos\xe9\n".encode("latin-1"))
    with pytest.raises(ExportError, match="not UTF-8"):
        read_user_ids(latin1)
