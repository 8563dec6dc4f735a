"""Online serving: histories that follow events, the model's own scores, durability, HTTP hygiene.

One tiny InterestShiftCNN is trained on the planted dataset (users browse three items of a
category, then migrate to the next one) and shared by every test of this module.
"""
from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from synthetic_data import planted_config, write_planted_dataset

from interest_migration.serving.event_log import EventLog, EventLogError
from interest_migration.serving.http import Limits, make_server
from interest_migration.serving.online import OnlineRecommender

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 10  # seconds, every client call
MAX_LEN = 20  # planted_config's MAX_ITEM_LIST_LENGTH
ITEMS_PER_CATEGORY = 8  # write_planted_dataset's default


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A trained model, as a safe checkpoint and loaded, with the planted data it learned from."""
    from interest_migration import checkpoint
    from interest_migration.experiment import run_model

    work = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setattr(sys, "argv", ["pytest"])
        data_root = write_planted_dataset(work / "data")
        config = planted_config(data_root, epochs=20, stopping_step=20, checkpoint_dir=str(work / "saved"))
        record = run_model("InterestShiftCNN", "planted", None, config)
        safe = checkpoint.convert(record.checkpoint, work / "planted.safe.pth", trust_pickle=True)
        loaded = checkpoint.load(safe)
    inter = pd.read_csv(data_root / "planted" / "planted.inter", sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    return SimpleNamespace(work=work, data_root=data_root, safe=safe, loaded=loaded, inter=inter)


def _recommender(served, **kwargs) -> OnlineRecommender:
    loaded = served.loaded
    return OnlineRecommender(loaded.config, loaded.model, loaded.dataset, **kwargs)


def _category(item: str) -> int:
    return (int(item[1:]) - 1) // ITEMS_PER_CATEGORY


# --------------------------------------------------------------------------- library


def _observe_row(rec, user, dataset, row, n):
    """Feed ``user`` the first ``n`` events of a RecBole sequence row, as external tokens."""
    items = dataset.id2token(dataset.iid_field, row["item_id_list"][0, :n].numpy())
    behaviors = dataset.id2token("behavior_type", row["behavior_type_list"][0, :n].numpy())
    for item, behavior, ts in zip(items, behaviors, row["timestamp_list"][0, :n].tolist()):
        rec.observe(user, str(item), str(behavior), ts)


def test_scores_equal_the_model_on_recbole_sequences(served):
    """A user fed a sequence event by event gets what the model computes on RecBole's own input."""
    loaded = served.loaded
    dataset, model = loaded.dataset, loaded.model
    test_batch = next(iter(loaded.test_data))[0]
    inter = dataset.inter_feat
    short = [int(i) for n in (1, 2, 7) for i in torch.nonzero(inter["item_length"] == n, as_tuple=True)[0][:2]]
    rows = [test_batch[i : i + 1] for i in range(6)] + [inter[i : i + 1] for i in short]
    assert {int(r["item_length"]) for r in rows} == {1, 2, 7, MAX_LEN}

    rec = _recommender(served)
    assert rec.traced  # the scores below come from the traced graph
    for index, row in enumerate(rows):
        _observe_row(rec, f"replay-{index}", dataset, row, int(row["item_length"]))
    with torch.no_grad():
        for index, row in enumerate(rows):
            got = rec.recommend(f"replay-{index}", k=10, exclude_seen=False)
            scores = model.full_sort_predict(row)[0]
            scores[0] = -np.inf
            top = scores.topk(10)
            assert got["source"] == "model"
            assert got["history_length"] == int(row["item_length"])
            assert got["items"] == [str(t) for t in dataset.id2token(dataset.iid_field, top.indices.numpy())]
            np.testing.assert_allclose(got["scores"], top.values.numpy(), rtol=1e-5, atol=1e-5)
            migration = model.predict_migration(row)
            assert got["p_shift"] == pytest.approx(float(migration["p_shift"][0]), abs=1e-5)
            expected = dataset.id2token("category_id", migration["top_categories"][0].numpy())
            assert [c["category"] for c in got["next_categories"]] == [str(c) for c in expected]
            np.testing.assert_allclose(
                [c["prob"] for c in got["next_categories"]], migration["top_category_probs"][0].numpy(), atol=1e-5
            )


def test_traced_and_eager_scoring_agree(served):
    traced, eager = _recommender(served), _recommender(served, trace=False)
    assert traced.traced and not eager.traced
    users = sorted(set(served.inter["user_id"].astype(str)))[:12]
    for user in users:
        a, b = traced.recommend(user, k=15), eager.recommend(user, k=15)
        assert a["items"] == b["items"]
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-5)
        assert a["p_shift"] == pytest.approx(b["p_shift"], abs=1e-6)
        assert [c["category"] for c in a["next_categories"]] == [c["category"] for c in b["next_categories"]]
        np.testing.assert_allclose([c["prob"] for c in a["next_categories"]],
                                   [c["prob"] for c in b["next_categories"]], atol=1e-6)


class _LengthDependent(torch.nn.Module):
    """Scores that depend on a Python int taken from the input: a trace freezes it."""

    ITEM_SEQ, ITEM_SEQ_LEN = "item_id_list", "item_length"

    def full_sort_predict(self, interaction):
        width = int(interaction[self.ITEM_SEQ_LEN].max())
        return interaction[self.ITEM_SEQ][:, :width].float().sum(dim=1, keepdim=True).expand(-1, 5)


def test_a_trace_that_disagrees_with_the_model_is_not_used():
    from recbole.data.interaction import Interaction

    from interest_migration.serving.traced import TracedScorer

    def batch(*lengths):
        items = torch.arange(1, 1 + 4 * len(lengths)).reshape(len(lengths), 4)
        return Interaction({"item_id_list": items, "item_length": torch.tensor(lengths)})

    model = _LengthDependent()
    assert TracedScorer.build(model, batch(2, 2), [batch(2, 2)]) is not None  # same shape: agrees
    assert TracedScorer.build(model, batch(2, 2), [batch(2, 2), batch(1, 4)]) is None


def _untrained(model_name, data_root, **overrides):
    """config, model, dataset of an untrained RecBole model on the planted data (scores need no training)."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from interest_migration.compat import get_model_class

    model_class = get_model_class(model_name)
    config = Config(model=model_class, dataset="planted", config_dict=planted_config(data_root, **overrides))
    config["model"] = model_name
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, _, test_data = data_preparation(config, dataset)
    return config, model_class(config, train_data._dataset).eval(), dataset, test_data


GENERIC = {
    "SASRec": {"n_layers": 1, "n_heads": 1, "hidden_size": 16, "inner_size": 32, "loss_type": "CE",
               "train_neg_sample_args": None},
    "GRU4Rec": {"hidden_size": 16, "loss_type": "CE", "train_neg_sample_args": None},
}


@pytest.mark.parametrize("model_name", sorted(GENERIC))
def test_any_recbole_sequential_model_serves(served, model_name):
    config, model, dataset, test_data = _untrained(model_name, served.data_root, **GENERIC[model_name])
    rec = OnlineRecommender(config, model, dataset)
    assert rec.traced  # RecBole's own models trace and pass the check too
    test_batch = next(iter(test_data))[0]
    short = int(torch.nonzero(dataset.inter_feat["item_length"] == 3, as_tuple=True)[0][0])
    rows = [test_batch[0:1], dataset.inter_feat[short : short + 1]]
    with torch.no_grad():
        for index, row in enumerate(rows):
            _observe_row(rec, f"g{index}", dataset, row, int(row["item_length"]))
            got = rec.recommend(f"g{index}", k=5, exclude_seen=False)
            scores = model.full_sort_predict(row)[0]
            scores[0] = -np.inf
            top = scores.topk(5)
            assert got["items"] == [str(t) for t in dataset.id2token(dataset.iid_field, top.indices.numpy())]
            np.testing.assert_allclose(got["scores"], top.values.numpy(), rtol=1e-5, atol=1e-5)
            assert got["p_shift"] is None and got["next_categories"] is None


def test_a_model_with_item_attributes_traces_its_item_table_as_a_constant(served):
    """With item_feature_fields the traced graph reads the item table built once, instead of
    rebuilding it from the attribute embeddings and the item graph, and normalising it, on every
    call; and scores as the model does."""
    config, model, dataset, _ = _untrained(
        "InterestShiftCNN",
        served.data_root,
        item_feature_fields=["brand"],
        load_col={"inter": ["user_id", "item_id", "timestamp", "behavior_type"],
                  "item": ["item_id", "category_id", "brand"]},
    )
    traced = OnlineRecommender(config, model, dataset)
    eager = OnlineRecommender(config, model, dataset, trace=False)
    assert traced.traced
    code = traced._scorer.graph.code
    assert "feature_embeddings" not in code and "item_graph" not in code
    assert code.count("linalg_vector_norm") == 1  # the user state's: the unit item vectors are a constant too
    for user in sorted(set(served.inter["user_id"].astype(str)))[:8]:
        a, b = traced.recommend(user, k=10), eager.recommend(user, k=10)
        assert a["items"] == b["items"]
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-5)


def test_a_model_with_the_transition_term_traces_it_and_follows_the_latest_event(served):
    """transition_window reads the user's last items: the traced graph scores as the model does, and
    an observed event moves the transition bonus to the new last item's next items."""
    config, model, dataset, _ = _untrained("InterestShiftCNN", served.data_root, transition_window=2)
    traced = OnlineRecommender(config, model, dataset)
    eager = OnlineRecommender(config, model, dataset, trace=False)
    assert traced.traced
    for user in sorted(set(served.inter["user_id"].astype(str)))[:8]:
        a, b = traced.recommend(user, k=10), eager.recommend(user, k=10)
        assert a["items"] == b["items"]
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-5)
    # after an item with several training successors, each outranks the rest of its category
    # (across categories the predicted migration decides)
    item = int(model.transition_degree.argmax())
    with torch.no_grad():
        model.transition_head.weight.zero_()
        model.transition_head.bias.copy_(torch.tensor([50.0, 0.0]))
    rec = OnlineRecommender(config, model, dataset)
    user = "a-new-shopper"
    rec.observe(user, str(dataset.id2token(dataset.iid_field, item)), behavior="pv")
    ranked = rec.recommend(user, k=model.n_items - 2, exclude_seen=True)
    score = dict(zip(ranked["items"], ranked["scores"]))
    successors = model.transition_next[item][model.transition_counts[item] > 0].tolist()
    assert len(successors) >= 2
    token = lambda i: str(dataset.id2token(dataset.iid_field, i))  # noqa: E731
    for successor in successors:
        others = (model.item2cat == model.item2cat[successor]).nonzero().flatten().tolist()
        others = [o for o in others if o not in successors and o not in (0, item)]
        assert others and all(score[token(successor)] > score[token(o)] for o in others)


def test_a_model_without_sequences_is_refused(served):
    config, model, dataset, _ = _untrained("Pop", served.data_root)
    with pytest.raises(ValueError, match="Pop is not a sequential model"):
        OnlineRecommender(config, model, dataset)


def test_known_users_start_from_their_latest_events(served):
    rec = _recommender(served)
    inter = served.inter.sort_values(["user_id", "timestamp"], kind="stable")
    for user, events in list(inter.groupby("user_id"))[:30]:
        latest = events.tail(MAX_LEN)
        history = rec.history(user)
        assert [h["item"] for h in history] == latest["item_id"].tolist()
        assert [h["behavior"] for h in history] == latest["behavior_type"].tolist()
        np.testing.assert_allclose([h["ts"] for h in history], latest["timestamp"].astype(np.float32), rtol=0)
    assert rec.n_users == inter["user_id"].nunique()


def test_events_move_the_next_recommendation_the_way_interest_migrates(served):
    """Three items of one category (the planted stay), then the model expects the next category."""
    rec = _recommender(served)
    before = rec.recommend("shopper", k=5)
    assert before["source"] == "popularity" and before["p_shift"] is None

    ts = 1_600_000_000
    for step, behavior in enumerate(["pv", "pv", "buy"]):  # category 2: items i17..i24
        ts += 600
        rec.observe("shopper", f"i{2 * ITEMS_PER_CATEGORY + 1 + step}", behavior, ts)
    staying_done = rec.recommend("shopper", k=5)
    assert staying_done["source"] == "model" and staying_done["history_length"] == 3
    assert staying_done["current_category"] == "c2"
    assert staying_done["p_shift"] > 0.5
    assert staying_done["next_categories"][0]["category"] == "c3"
    assert _category(staying_done["items"][0]) == 3

    rec.observe("shopper", f"i{3 * ITEMS_PER_CATEGORY + 1}", "pv", ts + 600)  # the migration happened
    moved = rec.recommend("shopper", k=5)
    assert moved["current_category"] == "c3"
    assert moved["p_shift"] < 0.5
    assert _category(moved["items"][0]) == 3
    assert moved["items"] != staying_done["items"]


def test_cold_users_get_popularity_and_seen_items_are_excluded(served):
    rec = _recommender(served)
    counts = served.inter["item_id"].value_counts()
    cold = rec.recommend("never-seen", k=5)
    assert cold["source"] == "popularity" and cold["history_length"] == 0
    assert [counts[i] for i in cold["items"]] == sorted(counts.to_numpy(), reverse=True)[:5]

    user = "u7"
    everything = set(served.inter.loc[served.inter["user_id"] == user, "item_id"])
    rec.observe(user, "i48", "pv", 1_600_000_000)
    everything.add("i48")
    k = 48 - len(everything)  # every item the user has not touched
    excluded = rec.recommend(user, k=48)
    assert len(excluded["items"]) == k and not set(excluded["items"]) & everything
    assert set(rec.recommend(user, k=48, exclude_seen=False)["items"]) & everything


def test_bad_events_are_refused_and_a_batch_is_all_or_nothing(served, tmp_path):
    rec = _recommender(served)
    rec.attach_log(EventLog(tmp_path / "events.jsonl", rec.log_header()))
    bad = [
        ({"user": "a", "item": "nope"}, "unknown item"),
        ({"user": "a", "item": "i1", "behavior": "click"}, "unknown behavior"),
        ({"user": None, "item": "i1"}, "'user'"),
        ({"user": "a", "item": 3.5}, "'item'"),
        ({"user": "a", "item": "i1", "ts": "yesterday"}, "'ts'"),
        ({"user": "a", "item": "i1", "ts": float("nan")}, "'ts'"),
        ({"user": "a", "item": "i1", "ts": 10**400}, "'ts'"),
        ({"user": "a" * 300, "item": "i1"}, "at most 256"),
    ]
    for event, message in bad:
        with pytest.raises(ValueError, match=message):
            rec.observe_many([event])
    with pytest.raises(ValueError, match="event 1: unknown item"):
        rec.observe_many([{"user": "a", "item": "i1"}, {"user": "a", "item": "i999"}])
    with pytest.raises(ValueError, match="unknown item '5'"):  # integer ids are their decimal tokens
        rec.observe("a", 5)
    assert rec.history("a") == [] and rec.event_log.n_events == 0
    assert rec.observe(17, "i5") == 1 and [h["item"] for h in rec.history("17")] == ["i5"]
    rec.close()


def test_event_log_replays_and_drops_only_a_torn_last_line(served, tmp_path):
    path = tmp_path / "events.jsonl"
    first = _recommender(served)
    first.attach_log(EventLog(path, first.log_header(), fsync=False))
    for step in range(30):
        first.observe(f"r{step % 3}", f"i{step + 1}", "pv", 1_600_000_000 + step)
    expected = {u: first.history(u) for u in ("r0", "r1", "r2", "u5")}
    first.close()

    with open(path, "ab") as handle:  # a write cut short by a crash
        handle.write(b'{"user":"r0","item":"i4')
    second = _recommender(served)
    second.attach_log(EventLog(path, second.log_header()))
    assert second.n_replayed == 30
    assert {u: second.history(u) for u in expected} == expected
    assert second.observe("r0", "i9") == 31  # appends after the truncated tail
    second.close()
    assert [json.loads(line)["seq"] for line in path.read_text().splitlines()[1:]] == list(range(1, 32))

    lines = path.read_text().splitlines()
    lines[5] = lines[5][:-3]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EventLogError, match="line 6: not valid JSON"):
        _recommender(served).attach_log(EventLog(path, second.log_header()))
    with pytest.raises(EventLogError, match="another model or dataset"):
        _recommender(served).attach_log(EventLog(path, {**second.log_header(), "n_items": 7}))


def test_concurrent_observe_and_recommend_keep_histories_consistent(served, tmp_path):
    path = tmp_path / "events.jsonl"
    rec = _recommender(served, max_batch=8)
    rec.attach_log(EventLog(path, rec.log_header()))
    errors, writers, readers, per_writer = [], 4, 4, 60
    stop = threading.Event()

    def write(index):
        rng = random.Random(index)
        try:
            for step in range(per_writer):
                events = [
                    {"user": f"w{index}", "item": f"i{rng.randint(1, 48)}", "ts": 1_600_000_000 + step},
                    {"user": "shared", "item": f"i{rng.randint(1, 48)}", "ts": 1_600_000_000 + step},
                ]
                rec.observe_many(events)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    def read(index):
        rng = random.Random(100 + index)
        try:
            while not stop.is_set():
                user = rng.choice(["shared", "w0", "w1", "u3", "new"])
                result = rec.recommend(user, k=5)
                assert result["history_length"] <= MAX_LEN and len(result["items"]) <= 5
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    threads += [threading.Thread(target=read, args=(i,)) for i in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads[:writers]:
        thread.join(timeout=60)
    stop.set()
    for thread in threads[writers:]:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    rec.close()

    logged = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    assert [e["seq"] for e in logged] == list(range(1, writers * per_writer * 2 + 1))
    for user in ["shared"] + [f"w{i}" for i in range(writers)]:
        in_log = [e["item"] for e in logged if e["user"] == user]
        assert [h["item"] for h in rec.history(user)] == in_log[-MAX_LEN:]
    for index in range(writers):  # each writer's own events kept their order
        rng, mine = random.Random(index), []
        for _ in range(per_writer):
            mine.append(f"i{rng.randint(1, 48)}")
            rng.randint(1, 48)  # the shared user's item
        assert [e["item"] for e in logged if e["user"] == f"w{index}"] == mine


def test_concurrent_recommend_calls_share_one_forward_pass(served):
    """While one caller runs the model, the callers that arrive queue up and go in one batch."""
    rec = _recommender(served)
    score, entered = rec._score, threading.Event()

    def slow_first(batch):
        if not entered.is_set():
            entered.set()
            time.sleep(0.5)
        return score(batch)

    rec._score = slow_first
    results = {}

    def ask(user):
        results[user] = rec.recommend(user, k=3)

    first = threading.Thread(target=ask, args=("u1",))
    first.start()
    assert entered.wait(TIMEOUT)
    others = [threading.Thread(target=ask, args=(f"u{i}",)) for i in range(2, 7)]
    for thread in others:
        thread.start()
    for thread in [first] + others:
        thread.join(TIMEOUT)
    assert rec.batch_sizes == {1: 1, 5: 1}
    alone = _recommender(served, batching=False)
    for user, result in results.items():  # the same answers as one at a time, up to float rounding
        expected = alone.recommend(user, k=3)
        assert result["items"] == expected["items"]
        np.testing.assert_allclose(result["scores"], expected["scores"], rtol=1e-5)
        assert result["p_shift"] == pytest.approx(expected["p_shift"], abs=1e-6)


def test_normalised_timestamps_map_to_the_model_scale(tmp_path, monkeypatch):
    """RecBole's ml-100k preset min-max normalises time; online events carry raw timestamps."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    from interest_migration.compat import get_model_class

    data_root = write_planted_dataset(tmp_path / "data", n_users=20)
    model_class = get_model_class("InterestShiftCNN")
    config = Config(model=model_class, dataset="planted", config_dict=planted_config(data_root, normalize_all=True))
    config["model"] = "InterestShiftCNN"
    dataset = create_dataset(config)
    data_preparation(config, dataset)
    assert float(dataset.inter_feat["timestamp"].max()) <= 1.0  # normalised indeed
    model = model_class(config, dataset)
    rec = OnlineRecommender(config, model, dataset)
    raw = pd.read_csv(data_root / "planted" / "planted.inter", sep="\t")
    raw.columns = [c.split(":")[0] for c in raw.columns]
    latest = raw[raw["user_id"] == "u3"].sort_values("timestamp").tail(2)
    for item, ts in zip(latest["item_id"], latest["timestamp"]):
        rec.observe("twin", item, "pv", float(ts))
    internal = [t for t in rec._histories["twin"].times]
    seeded = list(rec._histories["u3"].times)[-2:]
    np.testing.assert_allclose(internal, seeded, atol=1e-6)


# --------------------------------------------------------------------------- HTTP


@pytest.fixture()
def server(served, tmp_path):
    rec = _recommender(served)
    rec.attach_log(EventLog(tmp_path / "events.jsonl", rec.log_header()))
    httpd = make_server(rec, "127.0.0.1", 0, Limits(max_body_bytes=64 * 1024, max_events=50, idle_timeout_s=5))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield SimpleNamespace(rec=rec, port=httpd.server_address[1], metrics=httpd.RequestHandlerClass.metrics)
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=TIMEOUT)
    rec.close()


def _call(conn, method, path, body=None, headers=None):
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    return response.status, json.loads(data) if data else None


def test_http_events_change_the_next_recommendation(served, server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    assert _call(conn, "GET", "/healthz")[0] == 200
    status, cold = _call(conn, "GET", "/recommendations/web%20shopper?k=5")
    assert status == 200 and cold["source"] == "popularity" and cold["user"] == "web shopper"

    events = [
        {"user": "web shopper", "item": "i17", "behavior": "pv", "ts": 1_600_000_000},
        {"user": "web shopper", "item": "i18", "behavior": "pv", "ts": 1_600_000_600},
        {"user": "web shopper", "item": "i19", "behavior": "buy", "ts": 1_600_001_200},
    ]
    assert _call(conn, "POST", "/events", {"events": events}) == (200, {"accepted": 3, "seq": 3})
    status, warm = _call(conn, "GET", "/recommendations/web%20shopper?k=5")
    twin = _recommender(served)
    twin.observe_many(events)
    assert status == 200 and warm == twin.recommend("web shopper", k=5)
    assert warm["next_categories"][0]["category"] == "c3"

    status, single = _call(conn, "POST", "/events", {"user": "web shopper", "item": "i25", "ts": 1_600_001_800})
    assert (status, single["seq"]) == (200, 4)
    status, moved = _call(conn, "GET", "/recommendations/web%20shopper?k=5&exclude_seen=false")
    assert status == 200 and moved["current_category"] == "c3" and moved["items"] != warm["items"]

    status, metrics = _call(conn, "GET", "/metrics")
    routes = metrics["routes"]
    assert routes["POST /events"]["by_status"] == {"200": 2}
    assert routes["GET /recommendations"]["count"] == 3
    assert routes["GET /recommendations"]["latency_ms"]["p99"] >= routes["GET /recommendations"]["latency_ms"]["p50"]
    assert metrics["recommend_micro_batches"]["batches"] == 2  # the cold request needs no model
    conn.close()


def _malformed_requests(rng: random.Random):
    """(kind, raw request bytes or (method, path, body, headers)) pairs, every one a client mistake."""
    junk_json = [b"{", b"}", b"[1,", b'{"user":}', b"\xff\xfe", b"nul", b"{'user': 'a'}", b'"\\ud800"', b"",
                 b"[" * 5000 + b"]" * 5000, b"1" * 5000]
    wrong_shapes = [1, "x", None, True, [1, 2], {"events": "x"}, {"events": []}, {"events": [1]},
                    {"events": [{"user": "a", "item": "i1"}], "more": 1}, [],
                    {"user": "a", "item": "i1", "extra": 1}, {"user": "a"}, {"item": "i1"},
                    {"user": "a", "item": "zzz"}, {"user": ["a"], "item": "i1"}, {"user": "a", "item": {"i": 1}},
                    {"user": "a", "item": "i1", "ts": "now"}, {"user": "a", "item": "i1", "ts": True},
                    {"user": "a", "item": "i1", "behavior": 3}, {"user": "a", "item": "i1", "behavior": "click"},
                    {"user": "", "item": "i1"}, {"user": "a" * 1000, "item": "i1"},
                    [{"user": "a", "item": "i1"}, {"user": "a", "item": "nope"}]]
    bad_gets = ["/recommendations/a?k=0", "/recommendations/a?k=-3", "/recommendations/a?k=abc",
                "/recommendations/a?k=100000", "/recommendations/a?k=1&k=2", "/recommendations/a?kk=1",
                "/recommendations/a?exclude_seen=maybe", "/recommendations/", "/recommendations/%ff%fe",
                "/recommendations/a/b", "/nowhere", "/events", "/"]
    for _ in range(1100):
        kind = rng.randrange(9)
        if kind == 0:
            yield "junk json", ("POST", "/events", rng.choice(junk_json), {})
        elif kind in (1, 2):
            yield "wrong shape", ("POST", "/events", json.dumps(rng.choice(wrong_shapes)), {})
        elif kind == 3:
            yield "bad get", ("GET", rng.choice(bad_gets), None, {})
        elif kind == 4:
            many = [{"user": "a", "item": "i1"}] * 51
            yield "too many", ("POST", "/events", json.dumps(many), {})
        elif kind == 5:
            yield "method", (rng.choice(["PUT", "DELETE", "PATCH"]), "/events", None, {})
        elif kind == 6:
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            yield "fuzzed bytes", ("POST", "/events", junk, {})
        elif kind == 7:
            yield "raw", rng.choice([
                b"GARBAGE\r\n\r\n",
                b"GET /healthz HTTP/one\r\n\r\n",
                b"POST\r\n\r\n",
                b"GET http://[oops/recommendations/a HTTP/1.1\r\n\r\n",
                b"POST /events HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
                b"POST /events HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                b"POST /events HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n{",
                b"POST /events HTTP/1.1\r\n\r\n",
                b"POST /events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                b"POST /events HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"user\"",
                b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\n" + b"X-Many: headers\r\n" * 101 + b"\r\n",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
            ])
        else:
            yield "big body", ("POST", "/events", b"[" + b" " * (64 * 1024 + 10) + b"]", {})


def _raw_status(port: int, payload: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # a truncated body ends here
        head = b""
        while chunk := sock.recv(4096):  # the server closes after an error reply
            head += chunk
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    assert match, f"no HTTP status line for {payload[:60]!r}: {head!r}"
    return int(match.group(1))


def test_http_fuzz_of_malformed_requests_leaves_the_server_healthy(server):
    rng = random.Random(2024)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    statuses, n = {}, 0
    for kind, request in _malformed_requests(rng):
        if isinstance(request, bytes):
            status = _raw_status(server.port, request)
        else:
            method, path, body, headers = request
            try:
                status, payload = _call(conn, method, path, body, headers)
            except (ConnectionError, http.client.HTTPException):
                conn.close()  # the server closed after a reply it could not follow with keep-alive
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
                status, payload = _call(conn, method, path, body, headers)
            assert payload["error"], (kind, request)
            if status in (405, 411, 413) or kind == "big body":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        assert 400 <= status < 500, (kind, request if isinstance(request, bytes) else request[:3], status)
        statuses[status] = statuses.get(status, 0) + 1
        n += 1
    assert n >= 1000
    assert {400, 404, 405, 413, 422} <= set(statuses)

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    assert _call(conn, "GET", "/healthz")[0] == 200
    assert _call(conn, "POST", "/events", {"user": "after", "item": "i2"}) == (200, {"accepted": 1, "seq": 1})
    status, result = _call(conn, "GET", "/recommendations/after?k=3")
    assert status == 200 and result["source"] == "model" and len(result["items"]) == 3
    assert server.rec.event_log.n_events == 1  # nothing malformed reached the log
    snapshot = server.metrics.snapshot()["routes"]
    assert not any(s.startswith("5") for route in snapshot.values() for s in route["by_status"])
    conn.close()


# --------------------------------------------------------------------------- a real process


def _start(served, log: Path, work: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "interest_migration", "serve", "--checkpoint", str(served.safe), "--port", "0",
         "--event-log", str(log)],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.time() + 60
    line = ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("serving ") or not line:
            break
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not match:
        proc.kill()
        pytest.fail(f"server did not start: {line!r}, exit code {proc.poll()}")
    return proc, int(match.group(1))


def test_kill_9_loses_no_acknowledged_event(served, tmp_path):
    log = tmp_path / "events.jsonl"
    proc, port = _start(served, log, tmp_path)
    acked, errors, lock = [], [], threading.Lock()
    stop = threading.Event()

    def post(index):
        rng = random.Random(index)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        step = 0
        while not stop.is_set():
            step += 1
            batch = [
                {"user": f"k{index}", "item": f"i{rng.randint(1, 48)}", "ts": 1_600_000_000 + step * 10 + j}
                for j in range(rng.randint(1, 4))
            ]
            try:
                status, reply = _call(conn, "POST", "/events", {"events": batch})
            except (OSError, http.client.HTTPException):
                return  # killed: this batch was never acknowledged
            if status != 200:
                errors.append((status, reply))
                return
            with lock:
                acked.extend(batch)

    clients = [threading.Thread(target=post, args=(i,)) for i in range(4)]
    for thread in clients:
        thread.start()
    deadline = time.time() + 20
    while len(acked) < 150 and time.time() < deadline and not errors:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: requests are in flight
    proc.wait(timeout=TIMEOUT)
    stop.set()
    for thread in clients:
        thread.join(timeout=TIMEOUT)
    assert not errors and len(acked) >= 150

    logged = [json.loads(line) for line in log.read_text().splitlines()[1:]]
    keys = {(e["user"], e["item"], e["ts"]) for e in logged}
    assert all((e["user"], e["item"], e["ts"]) in keys for e in acked)

    proc, port = _start(served, log, tmp_path)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        status, health = _call(conn, "GET", "/healthz")
        assert status == 200 and health["events_logged"] == len(logged) >= len(acked)
        replica = _recommender(served)
        shutil.copy(log, tmp_path / "replica.jsonl")
        replica.attach_log(EventLog(tmp_path / "replica.jsonl", replica.log_header(), fsync=False))
        for user in ("k0", "k1", "k2", "k3"):
            status, result = _call(conn, "GET", f"/recommendations/{user}?k=5")
            assert status == 200 and result == replica.recommend(user, k=5)
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)


def test_serve_refuses_a_missing_checkpoint_with_a_clear_error(tmp_path, capsys):
    from interest_migration.cli import main

    assert main(["serve", "--checkpoint", str(tmp_path / "missing.pth"), "--port", "0"]) == 2
    assert "missing.pth: checkpoint file not found" in capsys.readouterr().err
