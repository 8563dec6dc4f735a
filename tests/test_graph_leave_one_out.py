"""item_graph_leave_one_out: in training, a step's last item and its target are built from the item
graph without that step's own transition, exactly as if the graph had been counted without it."""
import copy
from collections import Counter

import pytest
import torch

import interest_migration  # noqa: F401
from interest_migration.model.sequential_recommender import InterestShiftCNN
from synthetic_data import planted_config, write_planted_dataset


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    root = write_planted_dataset(tmp_path_factory.mktemp("graph_loo") / "data")
    config = Config(
        model="InterestShiftCNN", dataset="planted",
        config_dict=planted_config(root, item_graph_weight=0.5, item_graph_leave_one_out=True),
    )
    dataset = create_dataset(config)
    train, _, test = data_preparation(config, dataset)
    torch.manual_seed(0)
    model = InterestShiftCNN(config, train.dataset).eval()
    return {"root": root, "train": train, "test": test, "model": model}


def _graph_counts(planted):
    """Training transitions counted by hand, both directions: {(a, b): count}."""
    feat = planted["train"].dataset.inter_feat
    counts = Counter()
    for seq, length, target in zip(feat["item_id_list"], feat["item_length"], feat["item_id"]):
        previous, target = int(seq[int(length) - 1]), int(target)
        if previous and previous != target:
            counts[previous, target] += 1
            counts[target, previous] += 1
    return counts


def _with_graph(model, counts):
    """A copy of ``model`` whose item graph is the row-normalised ``counts``."""
    dense = torch.zeros(model.n_items, model.n_items)
    for (a, b), count in counts.items():
        dense[a, b] = count
    degree = dense.sum(1)
    sparse = (dense / degree.clamp(min=1).unsqueeze(1)).to_sparse().coalesce()
    other = copy.deepcopy(model)
    other.item_graph_indices, other.item_graph_weights, other.item_graph_degree = (
        sparse.indices(), sparse.values(), degree
    )
    return other


def test_a_training_step_sees_the_graph_without_its_own_transition(planted):
    model = planted["model"]
    counts = _graph_counts(planted)
    batch = next(iter(planted["train"]))
    item_seq, item_seq_len, target = batch["item_id_list"], batch["item_length"], batch["item_id"]
    last = item_seq.gather(1, (item_seq_len - 1).unsqueeze(1)).squeeze(1)
    checked = 0
    with torch.no_grad():
        _, left_out, _, _ = model._outputs(batch, target=target)
        _, kept, _, _ = model._outputs(batch)
        for b in range(0, item_seq.size(0), 7):
            j, t = int(last[b]), int(target[b])
            seq = item_seq[b, : int(item_seq_len[b])].tolist()
            if j == t or seq.count(j) > 1 or t in seq:  # elsewhere in the input they keep the full graph
                continue
            without = counts.copy()
            without[j, t] -= 1
            without[t, j] -= 1
            other = _with_graph(model, +without)  # rows j and t change, no other
            _, want, _, _ = other._outputs(batch[b : b + 1])
            # the user state (through the last item) and the target's score are those of the smaller
            # graph, and so are all other items' scores but the last item's, which keeps the full graph
            columns = torch.ones(model.n_items, dtype=torch.bool)
            columns[j] = False
            torch.testing.assert_close(left_out[b, columns], want[0, columns], rtol=1e-4, atol=1e-4)
            assert not torch.isclose(left_out[b, t], kept[b, t])
            checked += 1
    assert checked >= 10


def test_an_item_left_with_no_other_transition_gets_no_neighbour_mean(planted):
    model = planted["model"]
    own, neighbours = model._item_parts()
    # a made-up step between two items of graph degree one, as if this was their only link
    items = torch.tensor([1, 2])
    saved = model.item_graph_degree.clone()
    try:
        model.item_graph_degree[items] = 1.0
        last, target = model._without_own_transition(own, neighbours, items[:1], items[1:])
    finally:
        model.item_graph_degree.copy_(saved)
    torch.testing.assert_close(last, own[1:2])
    torch.testing.assert_close(target, own[2:3])


def test_ranking_does_not_change(planted):
    """Only training sees the smaller graphs: evaluation scores are those of the full graph."""
    model = planted["model"]
    batch = next(iter(planted["test"]))[0]
    plain = copy.deepcopy(model)
    plain.item_graph_leave_one_out = False
    with torch.no_grad():
        torch.testing.assert_close(model.full_sort_predict(batch), plain.full_sort_predict(batch))


def test_it_trains_through_run_recbole(planted):
    from recbole.quick_start import run_recbole

    result = run_recbole(
        model="InterestShiftCNN", dataset="planted",
        config_dict=planted_config(planted["root"], epochs=2, train_batch_size=64, item_graph_leave_one_out=True),
    )
    assert result["test_result"]["ndcg@10"] > 0
