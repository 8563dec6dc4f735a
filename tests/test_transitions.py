"""transition_window: InterestShiftCNN's first-order transition term, from the training split only,
without each training step's own transition in its loss."""
from collections import Counter

import pytest
import torch

import interest_migration  # noqa: F401
from interest_migration.model.sequential_recommender import InterestShiftCNN
from synthetic_data import planted_config, write_planted_dataset

FLOOR = 0.01  # the model's _TRANSITION_FLOOR


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    root = write_planted_dataset(tmp_path_factory.mktemp("transitions") / "data")
    config = Config(
        model="InterestShiftCNN", dataset="planted", config_dict=planted_config(root, transition_window=2)
    )
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    torch.manual_seed(0)
    model = InterestShiftCNN(config, train.dataset).eval()
    return {"root": root, "config": config, "dataset": dataset, "train": train, "valid": valid, "test": test,
            "model": model}


def _training_pairs(planted, span=1):
    """(earlier, next) item pair counts of the training split's steps, the earlier item any of the
    ``span`` items before the target, and each earlier item's total."""
    feat = planted["train"].dataset.inter_feat
    pairs, degree = Counter(), Counter()
    for seq, length, target in zip(feat["item_id_list"], feat["item_length"], feat["item_id"]):
        for back in range(1, span + 1):
            if int(length) - back < 0:
                continue
            previous = int(seq[int(length) - back])
            if previous and previous != int(target):
                pairs[previous, int(target)] += 1
                degree[previous] += 1
    return pairs, degree


def _span_model(planted, span):
    from recbole.config import Config

    config = Config(model="InterestShiftCNN", dataset="planted",
                    config_dict=planted_config(planted["root"], transition_window=2, transition_span=span))
    return InterestShiftCNN(config, planted["train"].dataset)


def _table(model):
    table = Counter()
    for item in range(model.n_items):
        for nxt, count in zip(model.transition_next[item].tolist(), model.transition_counts[item].tolist()):
            if count:
                table[item, nxt] = int(count)
    return table


def test_table_counts_the_training_transitions_and_nothing_else(planted):
    model = planted["model"]
    pairs, degree = _training_pairs(planted)
    assert _table(model) == pairs  # the planted data have fewer next items per item than the table keeps
    assert model.transition_degree.tolist() == [degree[i] for i in range(model.n_items)]

    # the validation and test steps are not in it: their last transitions are not all training ones
    for loader in (planted["valid"], planted["test"]):
        interaction = next(iter(loader))[0]
        last = interaction["item_id_list"].gather(1, (interaction["item_length"] - 1).unsqueeze(1)).squeeze(1)
        unseen = [(int(a), int(b)) for a, b in zip(last, interaction["item_id"]) if (int(a), int(b)) not in pairs]
        assert unseen, "every evaluation transition also occurs in training: the check would be vacuous"


def test_scores_add_the_weight_times_the_log_transition_probability(planted):
    model = planted["model"]
    pairs, degree = _training_pairs(planted)
    interaction = next(iter(planted["test"]))[0][:16]
    item_seq, item_seq_len = interaction["item_id_list"], interaction["item_length"]
    state = torch.randn(item_seq.size(0), model.embedding_size)
    weight = model.transition_head(state)
    got = model._transition_scores(state, item_seq, item_seq_len, torch.zeros(item_seq.size(0), model.n_items))
    want = torch.zeros_like(got)
    for b in range(item_seq.size(0)):
        for back in range(2):
            position = int(item_seq_len[b]) - 1 - back
            if position < 0:
                continue
            j = int(item_seq[b, position])
            for i in range(model.n_items):
                if pairs[j, i]:
                    want[b, i] += weight[b, back] * torch.log1p(torch.tensor(pairs[j, i] / degree[j] / FLOOR))
    torch.testing.assert_close(got, want)


def test_a_training_step_does_not_see_its_own_transition(planted):
    """In training each step's transition (last item -> target) is one fewer in the counts, and
    its last item's transitions one fewer in all: what the step would see were it unseen."""
    pairs, degree = _training_pairs(planted)
    interaction = next(iter(planted["train"]))
    item_seq, item_seq_len, target = interaction["item_id_list"], interaction["item_length"], interaction["item_id"]
    last = item_seq.gather(1, (item_seq_len - 1).unsqueeze(1)).squeeze(1)
    # only the last item counts here, and its next items weigh 1
    model = InterestShiftCNN(planted["config"], planted["train"].dataset)
    with torch.no_grad():
        model.transition_head.weight.zero_()
        model.transition_head.bias.copy_(torch.tensor([1.0, 0.0]))
    state = torch.zeros(item_seq.size(0), model.embedding_size)
    zeros = torch.zeros(item_seq.size(0), model.n_items)
    seen = model._transition_scores(state, item_seq, item_seq_len, zeros)
    left_out = model._transition_scores(state, item_seq, item_seq_len, zeros, target=target)
    checked = 0
    for b, (j, t) in enumerate(zip(last.tolist(), target.tolist())):
        if j == t or degree[j] < 2:
            continue
        for i in range(1, model.n_items):
            count = pairs[j, i] - (i == t)
            want = torch.log1p(torch.tensor(count / (degree[j] - 1) / FLOOR)) if count else torch.tensor(0.0)
            torch.testing.assert_close(left_out[b, i], want)
        assert left_out[b, t] < seen[b, t]
        checked += 1
    assert checked > 10


def test_span_counts_every_item_within_it_as_a_transition(planted):
    model = _span_model(planted, span=2)
    pairs, degree = _training_pairs(planted, span=2)
    assert _table(model) == pairs
    assert pairs != _training_pairs(planted)[0]  # the span adds pairs: the check is not the span-1 one
    assert model.transition_degree.tolist() == [degree[i] for i in range(model.n_items)]
    # the item graph stays the graph of consecutive items
    torch.testing.assert_close(model.item_graph_weights, planted["model"].item_graph_weights)


def test_a_training_step_with_a_span_does_not_see_any_of_its_own_transitions(planted):
    """With span 2 a step's target is in the counts of both of its last two items (once per time
    each occurs among them); in training all of those are taken out, for both steps back."""
    model = _span_model(planted, span=2)
    pairs, degree = _training_pairs(planted, span=2)
    with torch.no_grad():
        model.transition_head.weight.zero_()
        model.transition_head.bias.copy_(torch.tensor([1.0, 0.5]))
    checked = 0
    for interaction in planted["train"]:
        item_seq, item_seq_len, target = interaction["item_id_list"], interaction["item_length"], interaction["item_id"]
        state = torch.zeros(item_seq.size(0), model.embedding_size)
        got = model._transition_scores(state, item_seq, item_seq_len, torch.zeros(item_seq.size(0), model.n_items),
                                       target=target)
        for b in range(item_seq.size(0)):
            length, t = int(item_seq_len[b]), int(target[b])
            recent = [int(item_seq[b, length - k]) for k in (1, 2) if length - k >= 0]
            want = torch.zeros(model.n_items)
            for back, weight in ((0, 1.0), (1, 0.5)):
                if length - 1 - back < 0:
                    continue
                j = int(item_seq[b, length - 1 - back])
                own = recent.count(j) if j != t else 0
                for i in range(1, model.n_items):
                    count = pairs[j, i] - own * (i == t)
                    if count:
                        want[i] += weight * torch.log1p(torch.tensor(count / (degree[j] - own) / FLOOR))
            torch.testing.assert_close(got[b], want)
            checked += 1
        if checked >= 200:
            break
    assert checked >= 200


def test_transition_term_learns_and_runs_through_run_recbole(tmp_path):
    from recbole.quick_start import run_recbole

    root = write_planted_dataset(tmp_path / "data")
    result = run_recbole(
        model="InterestShiftCNN", dataset="planted",
        config_dict=planted_config(root, epochs=2, stopping_step=2, train_batch_size=64, transition_window=2),
    )
    assert result["test_result"]["ndcg@10"] > 0


@pytest.mark.parametrize(
    "override, message",
    [({"transition_window": -1}, "transition_window must be"), ({"transition_neighbours": 0}, "transition_neighbours"),
     ({"transition_span": 0}, "transition_span must be")],
)
def test_bad_transition_settings_are_clear_errors(planted, override, message):
    from recbole.config import Config

    overrides = {"transition_window": 2, **override}
    config = Config(model="InterestShiftCNN", dataset="planted", config_dict=planted_config(planted["root"], **overrides))
    with pytest.raises(ValueError, match=message):
        InterestShiftCNN(config, planted["train"].dataset)


@pytest.mark.parametrize(
    "previous, following, neighbours, counts, degree",
    [
        # item 1 went to 2 twice, to 3 and 4 once: two kept, the most frequent first; its degree counts all four
        ([1, 1, 1, 2, 1], [2, 3, 2, 3, 4], [[0, 0], [2, 3], [3, 0], [0, 0], [0, 0]],
         [[0, 0], [2, 1], [1, 0], [0, 0], [0, 0]], [0, 4, 1, 0, 0]),
        ([], [], [[0, 0]] * 5, [[0, 0]] * 5, [0] * 5),  # no transitions at all
    ],
)
def test_table_keeps_the_most_frequent_next_items_and_counts_all(previous, following, neighbours, counts, degree):
    from types import SimpleNamespace

    model = SimpleNamespace(n_items=5, transition_neighbours=2, transition_span=1)
    model._training_transitions = lambda dataset, span: (torch.tensor(previous, dtype=torch.long),
                                                   torch.tensor(following, dtype=torch.long))
    model._count_pairs = lambda src, dst: InterestShiftCNN._count_pairs(model, src, dst)
    got_neighbours, got_counts, got_degree = InterestShiftCNN._transition_table(model, None)
    assert got_neighbours.tolist() == neighbours
    assert got_counts.tolist() == counts
    assert got_degree.tolist() == degree
