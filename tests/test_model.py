"""InterestShiftCNN's contract: shapes, causality, padding, a proper mixture, and that it learns."""
import logging

import pytest
import torch

import interest_migration  # noqa: F401
from interest_migration.model.sequential_recommender import InterestShiftCNN
from synthetic_data import planted_config, write_planted_dataset


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    root = write_planted_dataset(tmp_path_factory.mktemp("model") / "data")
    config = Config(model="InterestShiftCNN", dataset="planted", config_dict=planted_config(root))
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    gated = Config(model="InterestShiftCNN", dataset="planted", config_dict=planted_config(root, migration_gate=True))
    return {"root": root, "config": config, "gated": gated, "dataset": dataset, "train": train, "test": test}


def _model(planted, seed=0, gate=False):
    torch.manual_seed(seed)
    return InterestShiftCNN(planted["gated" if gate else "config"], planted["train"].dataset).eval()


def _batch(planted, n=32):
    return next(iter(planted["train"]))[:n]


def test_shapes(planted):
    model, batch = _model(planted), _batch(planted)
    n_items = planted["dataset"].item_num
    assert model.full_sort_predict(batch).shape == (len(batch), n_items)
    assert model.predict(batch).shape == (len(batch),)
    migration = model.predict_migration(batch)
    assert migration["p_shift"].shape == (len(batch),)
    assert migration["top_categories"].shape == (len(batch), 3)
    assert torch.all((migration["p_shift"] >= 0) & (migration["p_shift"] <= 1))
    assert model.calculate_loss(batch).dim() == 0


def test_uses_every_feature_the_data_has(planted):
    model = _model(planted)
    assert model.use_category and model.use_behavior and model.use_time
    assert model.n_categories == planted["dataset"].num("category_id")


def test_causal_later_positions_do_not_change_the_state(planted):
    model, batch = _model(planted), _batch(planted)
    seq, length = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    behavior, times = batch[model.BEHAVIOR_SEQ], batch[model.TIME_SEQ]
    full = (length >= 6).nonzero().squeeze(1)
    seq, behavior, times = seq[full], behavior[full], times[full]
    cut = torch.full((len(full),), 4)
    state = model(seq, cut, behavior, times)
    changed = seq.clone()
    changed[:, 4:] = torch.randint(1, model.n_items, changed[:, 4:].shape)
    times2 = times.clone()
    times2[:, 4:] += 1e6
    assert torch.allclose(model(changed, cut, behavior, times2), state, atol=1e-6)
    # ... while an earlier position does change it
    changed[:, 2] = (changed[:, 2] % (model.n_items - 1)) + 1
    assert not torch.allclose(model(changed, cut, behavior, times), state, atol=1e-6)


@pytest.mark.parametrize("kernel_size, dilation", [(3, 1), (3, 4), (2, 5), (1, 4)])
def test_causal_block_over_packed_sequences_is_a_left_padded_conv1d_per_sequence(kernel_size, dilation):
    """The block over the real positions of a batch, packed into one run, computes what
    nn.Conv1d computes over each sequence left-padded with zeros: no tap reads the previous
    sequence of the run. Gradients agree too."""
    from torch.nn import functional as F

    from interest_migration.model.sequential_recommender.interestshiftcnn import CausalConvBlock, tap_rows

    torch.manual_seed(0)
    block = CausalConvBlock(8, kernel_size, dilation, dropout_prob=0.0)
    lengths = torch.tensor([11, 1, 6, 9])
    x = torch.randn(len(lengths), 11, 8, requires_grad=True)
    real = torch.arange(11).unsqueeze(0) < lengths.unsqueeze(1)
    packed = real.flatten().nonzero().squeeze(1)
    got = block(x.reshape(-1, 8)[packed], tap_rows(packed % 11, block.shifts))
    left_pad = (kernel_size - 1) * dilation
    reference = []
    for row, n in enumerate(lengths.tolist()):
        seq = x[row, :n]
        y = F.pad(F.gelu(block.norm(seq)).t().unsqueeze(0), (left_pad, 0))
        reference.append(seq + F.conv1d(y, block.conv.weight, block.conv.bias, dilation=dilation)[0].t())
    reference = torch.cat(reference)
    assert got.shape == reference.shape == (int(lengths.sum()), 8)
    assert torch.allclose(got, reference, atol=1e-5)
    grads = torch.autograd.grad(got.square().sum(), (x, block.conv.weight, block.conv.bias))
    expected = torch.autograd.grad(reference.square().sum(), (x, block.conv.weight, block.conv.bias))
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, atol=1e-4)


def test_an_empty_sequence_reads_no_other_sequence(planted):
    """Packed sequences sit side by side: a row of length 0 must not take its neighbour's state."""
    model, batch = _model(planted), _batch(planted, n=2)
    seq, behavior, times = batch[model.ITEM_SEQ], batch[model.BEHAVIOR_SEQ], batch[model.TIME_SEQ]
    length = torch.tensor([int(batch[model.ITEM_SEQ_LEN][0]), 0])
    state = model(seq, length, behavior, times)
    changed = seq.clone()
    changed[0] = torch.randint(1, model.n_items, changed[0].shape)
    assert torch.allclose(model(changed, length, behavior, times)[1], state[1], atol=1e-6)
    assert not torch.allclose(model(changed, length, behavior, times)[0], state[0], atol=1e-6)


def test_padding_invariance(planted):
    model, batch = _model(planted), _batch(planted)
    seq, length = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    behavior, times = batch[model.BEHAVIOR_SEQ], batch[model.TIME_SEQ]
    pad = lambda t: torch.cat([t, torch.zeros(t.size(0), 7, dtype=t.dtype)], dim=1)  # noqa: E731
    assert torch.allclose(model(pad(seq), length, pad(behavior), pad(times)), model(seq, length, behavior, times), atol=1e-6)


@pytest.mark.parametrize("gate", [False, True])
def test_full_sort_predict_equals_predict_on_every_item(planted, gate):
    model, batch = _model(planted, gate=gate), _batch(planted, n=4)
    full = model.full_sort_predict(batch)
    n_items = full.size(1)
    repeated = batch.repeat_interleave(n_items)
    repeated.update(type(batch)({model.ITEM_ID: torch.arange(n_items).repeat(len(batch))}))
    assert torch.allclose(model.predict(repeated).view(len(batch), n_items), full, atol=1e-5)


@pytest.mark.parametrize("gate", [False, True])
def test_mixture_item_probabilities_sum_to_one(planted, gate):
    model, batch = _model(planted, gate=gate), _batch(planted)
    probs = model.full_sort_predict(batch).exp()
    assert torch.allclose(probs[:, 1:].sum(1), torch.ones(len(batch)), atol=1e-4)
    assert torch.all(probs[:, 0] < 1e-12)  # the padding item gets no mass
    migration = model.predict_migration(batch, k=model.n_categories - 1)
    assert torch.allclose(migration["top_category_probs"].sum(1), torch.ones(len(batch)), atol=1e-4)


def test_spare_rows_of_training_batches_change_nothing(planted):
    """Training pads the packed positions with spare rows (so that batches come in a few sizes);
    with dropout off, train mode gives the loss and gradients of eval mode, which adds none."""
    from interest_migration.model.sequential_recommender.interestshiftcnn import _spare_rows

    model, batch = _model(planted), _batch(planted)
    n = int(batch[model.ITEM_SEQ_LEN].sum())
    assert 0 < _spare_rows(n) <= max(n // 4, 64)  # this batch gets spare rows: the test exercises them
    assert all(0 <= _spare_rows(m) <= max(m // 4, 64) for m in range(1, 5000))
    assert model.dropout_prob == 0.0
    results = []
    for training in (False, True):
        model.train(training)
        loss = model.calculate_loss(batch)
        results.append((loss.detach(), torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)))
    (eval_loss, eval_grads), (train_loss, train_grads) = results
    assert torch.allclose(train_loss, eval_loss, atol=1e-6)
    for a, b in zip(train_grads, eval_grads):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("repeat_bias, temperature", [(-2.0, None), (2.0, None), (2.0, 0.1)])
def test_training_loss_is_the_full_mixture_likelihood_of_the_target(planted, repeat_bias, temperature, gate):
    """calculate_loss takes a shortcut (the target only); it must equal the NLL of full_sort_predict."""
    model, batch = _model(planted, gate=gate), _batch(planted)
    model.score_temperature = temperature
    torch.nn.init.constant_(model.p_repeat_head.bias, repeat_bias)
    model.lambda_cat = model.lambda_shift = 0.0
    full = model.full_sort_predict(batch)
    expected = torch.nn.functional.nll_loss(full, batch[model.POS_ITEM_ID])
    assert torch.allclose(model.calculate_loss(batch), expected, atol=1e-5)


@pytest.mark.parametrize("gate", [False, True])
def test_reported_migration_is_the_item_distribution_summed_by_category(planted, gate):
    """p_shift and the next categories are what the item probabilities imply, both modes included."""
    model, batch = _model(planted, gate=gate), _batch(planted)
    torch.nn.init.constant_(model.p_repeat_head.bias, 1.0)  # both modes carry weight
    probs = model.full_sort_predict(batch).exp()
    by_category = torch.zeros(len(batch), model.n_categories).scatter_add(
        1, model.item2cat.unsqueeze(0).expand_as(probs), probs
    )
    migration = model.predict_migration(batch, k=model.n_categories - 1)
    stay = by_category.gather(1, migration["current_category"].unsqueeze(1)).squeeze(1)
    assert torch.allclose(migration["p_shift"], 1 - stay, atol=1e-5)
    expected = by_category.gather(1, migration["top_categories"])
    assert torch.allclose(migration["top_category_probs"], expected, atol=1e-5)


def _explore_only(model, gate_bias):
    """The migration mode alone (no repeat mass), the gate pinned near alpha = sigmoid(gate_bias)."""
    torch.nn.init.constant_(model.p_repeat_head.bias, -30.0)
    torch.nn.init.zeros_(model.gate_head.weight)
    torch.nn.init.constant_(model.gate_head.bias, gate_bias)
    return model


def test_gate_at_one_is_the_strict_category_factorisation(planted):
    """alpha -> 1: the gated model scores items as the ungated one with the same weights."""
    gated, strict, batch = _model(planted, gate=True), _model(planted), _batch(planted)
    strict.load_state_dict({k: v for k, v in gated.state_dict().items() if not k.startswith("gate_head")})
    _explore_only(gated, 30.0)
    torch.nn.init.constant_(strict.p_repeat_head.bias, -30.0)
    assert torch.allclose(gated.full_sort_predict(batch), strict.full_sort_predict(batch), atol=1e-4)


def test_gate_at_zero_reweights_one_item_softmax_by_the_migration(planted):
    """alpha -> 0: log P(i) = log_softmax(s(i) + log P_mig(c_i)) over all items."""
    model, batch = _explore_only(_model(planted, gate=True), -30.0), _batch(planted)
    item_table = model._item_representations()
    item_seq, item_seq_len, state = model._encode(batch, item_table)
    scores = model._item_scores(state, item_table)
    model.migration_gate = False  # the migration head's own P(c), computed by the ungated code
    log_p_mig = model._migration(state, item_seq, item_seq_len, scores).log_p_cat
    model.migration_gate = True
    expected = torch.log_softmax(scores + log_p_mig.gather(1, model.item2cat.expand_as(scores)), dim=1)
    got = model.full_sort_predict(batch)
    assert torch.allclose(got[:, 1:], expected[:, 1:], atol=1e-4)
    # and the migration head still moves the scores: a different P_mig gives different ranks
    assert not torch.allclose(got, torch.log_softmax(scores, dim=1), atol=1e-2)


def test_gate_is_learned(planted):
    model, batch = _model(planted, gate=True).train(), _batch(planted)
    model.calculate_loss(batch).backward()
    assert model.gate_head.weight.grad.abs().sum() > 0


def _seen(model, batch, n_items):
    seen = torch.zeros(len(batch), n_items, dtype=torch.bool).scatter(1, batch[model.ITEM_SEQ], True)
    seen[:, 0] = False
    return seen


@pytest.mark.parametrize("repeat_bias, mass_on_seen", [(20.0, 1.0), (-20.0, None)])
def test_repeat_mode_puts_its_mass_on_the_sequence_items(planted, repeat_bias, mass_on_seen):
    model, batch = _model(planted), _batch(planted, n=8)
    torch.nn.init.zeros_(model.p_repeat_head.weight)
    torch.nn.init.constant_(model.p_repeat_head.bias, repeat_bias)
    probs = model.full_sort_predict(batch).exp()
    seen_mass = (probs * _seen(model, batch, probs.size(1))).sum(1)
    if mass_on_seen is not None:  # p_repeat ~ 1: every item outside the sequence gets ~0
        assert torch.allclose(seen_mass, torch.full_like(seen_mass, mass_on_seen), atol=1e-5)
    else:  # p_repeat ~ 0: the migration mode alone, which also spreads mass over unseen items
        assert torch.all(seen_mass < 0.9)
    assert torch.allclose(probs[:, 1:].sum(1), torch.ones(len(batch)), atol=1e-4)


def test_repeat_mode_ranks_recent_and_carted_occurrences_first(planted):
    """With the recency head set to favour the last event, R(i) peaks on the last item; a large
    behaviour weight on one behaviour type moves the mass to the items seen with it."""
    model, batch = _model(planted), _batch(planted, n=8)
    torch.nn.init.constant_(model.p_repeat_head.bias, 20.0)
    torch.nn.init.zeros_(model.p_repeat_head.weight)
    torch.nn.init.zeros_(model.item_embedding.weight)  # no state match: recency and behaviour only
    torch.nn.init.zeros_(model.repeat_position_head.weight)
    bias = torch.zeros(model.repeat_buckets)
    bias[0] = 30.0
    model.repeat_position_head.bias.data.copy_(bias)
    seq, length = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    last = seq.gather(1, (length - 1).unsqueeze(1)).squeeze(1)
    assert torch.equal(model.full_sort_predict(batch).argmax(1), last)

    behavior = batch[model.BEHAVIOR_SEQ]
    rare = int(behavior[behavior > 0].min())
    model.repeat_position_head.bias.data.zero_()
    model.repeat_behavior.weight.data.zero_()
    model.repeat_behavior.weight.data[rare] = 30.0
    probs = model.full_sort_predict(batch).exp()
    has_rare = (behavior == rare).any(1)
    marked = torch.zeros_like(probs, dtype=torch.bool).scatter(1, seq.masked_fill(behavior != rare, 0), True)
    marked[:, 0] = False
    assert has_rare.any()
    assert torch.all((probs * marked).sum(1)[has_rare] > 0.999)


def test_loss_decreases_and_beats_pop(tmp_path):
    from recbole.quick_start import load_data_and_model, run_recbole

    root = write_planted_dataset(tmp_path / "data")
    ours = run_recbole(
        model="InterestShiftCNN", dataset="planted",
        config_dict=planted_config(root, epochs=8, stopping_step=8, train_batch_size=64),
    )
    pop = run_recbole(model="Pop", dataset="planted", config_dict=planted_config(root))
    assert ours["test_result"]["ndcg@10"] > 1.5 * pop["test_result"]["ndcg@10"]

    (checkpoint,) = (tmp_path / "saved").glob("InterestShiftCNN-*.pth")
    config, trained, _, train_data, _, _ = load_data_and_model(str(checkpoint))
    torch.manual_seed(0)
    untrained = InterestShiftCNN(config, train_data.dataset)
    with torch.no_grad():
        batches = list(train_data)
        mean_loss = lambda m: sum(float(m.eval().calculate_loss(b)) for b in batches) / len(batches)  # noqa: E731
        assert mean_loss(trained) < 0.8 * mean_loss(untrained)


def test_without_categories_it_is_a_plain_next_item_cnn(planted, caplog):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    config = Config(
        model="InterestShiftCNN", dataset="planted", config_dict=planted_config(planted["root"], CATEGORY_FIELD=None)
    )
    train, _, _ = data_preparation(config, create_dataset(config))
    with caplog.at_level(logging.WARNING):
        model = InterestShiftCNN(config, train.dataset)
    assert not model.use_category
    assert "falling back to a plain next-item CNN" in caplog.text
    batch = next(iter(train))[:8]
    assert torch.allclose(model.full_sort_predict(batch).exp()[:, 1:].sum(1), torch.ones(8), atol=1e-4)
    model.eval()
    expected = torch.nn.functional.nll_loss(model.full_sort_predict(batch), batch[model.POS_ITEM_ID])
    assert torch.allclose(model.calculate_loss(batch), expected, atol=1e-5)
    with pytest.raises(ValueError, match="without CATEGORY_FIELD"):
        model.predict_migration(batch)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"CATEGORY_FIELD": "genre"}, "CATEGORY_FIELD names 'genre', which is not a token or token_seq field"),
        ({"item_feature_fields": ["brand"]}, "item_feature_fields names 'brand', which is not a token"),  # not loaded
        ({"conv_padding": "same"}, "conv_padding='same' is not supported"),
        ({"kernel_size": 0}, "kernel_size must be an integer >= 1"),
        ({"dilations": [1, 0]}, "dilations must be a list of integers >= 1"),
        ({"score_temperature": 0}, "score_temperature must be a number > 0"),
    ],
)
def test_bad_configs_are_clear_errors(planted, override, message):
    from recbole.config import Config

    config = Config(model="InterestShiftCNN", dataset="planted", config_dict=planted_config(planted["root"], **override))
    with pytest.raises(ValueError, match=message):
        InterestShiftCNN(config, planted["train"].dataset)


def test_scores_and_migration_from_one_pass_match_the_public_methods(planted):
    model, batch = _model(planted), _batch(planted)
    scores, migration = model.full_sort_predict_with_migration(batch, k=2)
    assert torch.allclose(scores, model.full_sort_predict(batch))
    expected = model.predict_migration(batch, k=2)
    assert set(migration) == set(expected)
    for key in expected:
        assert torch.allclose(migration[key].float(), expected[key].float())


def test_a_one_column_sequence_scores(planted):
    model, batch = _model(planted), _batch(planted, n=4)
    for field in (model.ITEM_SEQ, model.BEHAVIOR_SEQ, model.TIME_SEQ):
        batch.interaction[field] = batch[field][:, :1]
    batch.interaction[model.ITEM_SEQ_LEN] = torch.ones(4, dtype=torch.long)
    assert model.full_sort_predict(batch).shape == (4, model.n_items)


def _with_brand(planted, seed=0):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    config = Config(
        model="InterestShiftCNN",
        dataset="planted",
        config_dict=planted_config(
            planted["root"],
            item_feature_fields=["brand"],
            load_col={
                "inter": ["user_id", "item_id", "timestamp", "behavior_type"],
                "item": ["item_id", "category_id", "brand"],
            },
        ),
    )
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    torch.manual_seed(seed)
    return InterestShiftCNN(config, train.dataset).eval(), dataset, next(iter(train))[:16]


def test_item_attributes_are_shared_by_the_items_that_have_them(planted):
    """With item_feature_fields, items of one brand share that brand's vector, on the input and
    the scoring side, and the mixture stays a proper distribution."""
    model, dataset, batch = _with_brand(planted)
    model.item_graph_weight = 0.0  # neighbours in the transition graph would move too
    brand_of = dataset.get_item_feature()["brand"]  # by internal item id
    assert torch.equal(model.item2feature_0[dataset.get_item_feature()[dataset.iid_field]], brand_of)
    assert model.feature_embeddings[0].num_embeddings == dataset.num("brand")
    # moving one brand's vector moves exactly the representations of that brand's items
    before = model._item_representations().detach().clone()
    brand = int(brand_of[1])
    with torch.no_grad():
        model.feature_embeddings[0].weight[brand] += 1.0
    moved = (model._item_representations() - before).abs().sum(1) > 0
    assert torch.equal(moved, brand_of == brand)
    seq = batch[model.ITEM_SEQ]
    assert torch.allclose(model._embed_items(seq), model._item_representations()[seq], atol=1e-6)
    probs = model.full_sort_predict(batch).exp()
    assert torch.allclose(probs[:, 1:].sum(1), torch.ones(len(batch)), atol=1e-4)


def test_item_attributes_are_learned(planted):
    model, _, batch = _with_brand(planted)
    model.train()
    model.calculate_loss(batch).backward()
    assert model.feature_embeddings[0].weight.grad.abs().sum() > 0


def test_item_table_is_reused_without_gradients_and_rebuilt_when_weights_change(planted):
    model, _, batch = _with_brand(planted)
    with torch.no_grad():
        first = model._item_representations()
        assert model._item_representations() is first  # reused
        before = model.full_sort_predict(batch)
        model.feature_embeddings[0].weight.add_(torch.randn_like(model.feature_embeddings[0].weight))  # as an optimiser step
        assert model._item_representations() is not first
        assert not torch.allclose(model.full_sort_predict(batch), before)
        expected = model.item_embedding.weight + model.feature_embeddings[0].weight[model.item2feature_0]
        expected = expected + model.item_graph_weight * torch.sparse.mm(model.item_graph, expected)
        assert torch.allclose(model._item_representations(), expected, atol=1e-6)
    assert model._item_representations().requires_grad  # training builds it afresh, with gradients


def test_cosine_scores_divide_by_the_temperature(planted):
    """score_temperature: item scores are cos(user state, item vector) / temperature + item bias."""
    model, batch = _model(planted), _batch(planted, n=8)
    torch.nn.init.normal_(model.item_bias)
    state = torch.randn(8, model.embedding_size)
    table = model._item_representations()
    dot = model._item_scores(state, table)
    model.score_temperature = 0.25
    cosine = torch.nn.functional.cosine_similarity(state.unsqueeze(1), table.unsqueeze(0), dim=-1)
    scores = model._item_scores(state, table)
    assert torch.allclose(scores[:, 1:], cosine[:, 1:] / 0.25 + model.item_bias[1:], atol=1e-5)
    assert not torch.allclose(scores[:, 1:], dot[:, 1:])
    assert (scores[:, 0] < -1e8).all()  # the padding item stays masked
    probs = model.full_sort_predict(batch).exp()
    assert torch.allclose(probs[:, 1:].sum(1), torch.ones(8), atol=1e-4)


def test_item_graph_holds_the_training_transitions_only(planted):
    """item_graph_weight: each item's neighbours are the items next to it in a training sequence
    (counted, both directions, rows summing to one); validation and test targets add no edge."""
    import numpy as np
    import pandas as pd
    from recbole.config import Config

    config = Config(
        model="InterestShiftCNN", dataset="planted", config_dict=planted_config(planted["root"], item_graph_weight=0.5)
    )
    model = InterestShiftCNN(config, planted["train"].dataset).eval()
    dataset = planted["dataset"]
    inter = pd.read_csv(planted["root"] / "planted" / "planted.inter", sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    inter = inter.sort_values(["user_id", "timestamp"], kind="stable")
    train = inter[inter.groupby("user_id").cumcount(ascending=False) >= 2]  # leave the last two out
    same_user = train["user_id"].values[1:] == train["user_id"].values[:-1]
    ids = dataset.token2id(dataset.iid_field, train["item_id"].values)
    src, dst = ids[:-1][same_user], ids[1:][same_user]
    keep = src != dst
    counts = np.zeros((model.n_items, model.n_items))
    np.add.at(counts, (src[keep], dst[keep]), 1.0)
    counts = counts + counts.T
    rows = counts.sum(1, keepdims=True)
    expected = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    assert np.allclose(model.item_graph.to_dense().numpy(), expected, atol=1e-6)
    table = model.item_embedding.weight + 0.5 * torch.as_tensor(expected, dtype=torch.float32) @ model.item_embedding.weight
    assert torch.allclose(model._item_representations(), table, atol=1e-5)
    assert not any(key.startswith("item_graph") for key in model.state_dict())  # rebuilt from the data


def test_unit_item_vectors_are_reused_without_gradients_and_renewed_when_weights_change(planted):
    model, batch = _model(planted), _batch(planted, n=8)
    with torch.no_grad():
        table = model._item_representations()
        first = model._normalised(table)
        assert model._normalised(model._item_representations()) is first  # reused
        assert torch.allclose(first, torch.nn.functional.normalize(table, dim=-1))
        before = model.full_sort_predict(batch)
        model.item_embedding.weight.add_(torch.randn_like(model.item_embedding.weight))  # as an optimiser step
        renewed = model._normalised(model._item_representations())
        assert renewed is not first
        assert torch.allclose(renewed, torch.nn.functional.normalize(model._item_representations(), dim=-1))
        assert not torch.allclose(model.full_sort_predict(batch), before)


def _masked_model(planted, **overrides):
    from recbole.config import Config

    config = Config(model="InterestShiftCNN", dataset="planted", config_dict=planted_config(planted["root"], **overrides))
    torch.manual_seed(0)
    return InterestShiftCNN(config, planted["train"].dataset).eval()


def test_history_masking_follows_exclude_seen_items_unless_set(planted):
    assert not _model(planted).mask_history  # the planted config does not exclude seen items
    assert _masked_model(planted, exclude_seen_items=True).mask_history
    assert not _masked_model(planted, exclude_seen_items=True, mask_history_items=False).mask_history
    assert _masked_model(planted, mask_history_items=True).mask_history


def test_history_is_masked_where_no_training_target_repeats_an_input_item(planted, tmp_path):
    """Without re-visits in training (the planted log with each user's first interaction with
    each item only) the item softmax leaves the history out although ranking does not."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    from interest_migration.benchmark.protocols import get_protocol, prepare_dataset

    model = _model(planted)
    feat = planted["train"].dataset.inter_feat
    assert (feat[model.ITEM_SEQ] == feat[model.ITEM_ID].unsqueeze(1)).any()  # the planted log repeats
    assert not model.mask_history
    novel = prepare_dataset("planted", get_protocol("novel"), planted["root"], tmp_path)
    config_dict = {**planted_config(novel["data_path"], name=novel["dataset"]), "exclude_seen_items": False}
    config = Config(model="InterestShiftCNN", dataset=novel["dataset"], config_dict=config_dict)
    train, _, _ = data_preparation(config, create_dataset(config))
    feat = train.dataset.inter_feat
    assert not (feat[model.ITEM_SEQ] == feat[model.ITEM_ID].unsqueeze(1)).any()
    assert InterestShiftCNN(config, train.dataset).mask_history
    config_dict["mask_history_items"] = False
    config = Config(model="InterestShiftCNN", dataset=novel["dataset"], config_dict=config_dict)
    assert not InterestShiftCNN(config, train.dataset).mask_history


def test_masked_history_gets_no_migration_mass_and_the_rest_sums_to_one(planted):
    model, batch = _masked_model(planted, mask_history_items=True), _batch(planted)
    torch.nn.init.constant_(model.p_repeat_head.bias, -40.0)  # the migration mode alone
    probs = model.full_sort_predict(batch).exp()
    seen = torch.zeros_like(probs, dtype=torch.bool).scatter(1, batch[model.ITEM_SEQ], True)
    seen[:, 0] = False
    assert seen.any(1).all()
    assert torch.all(probs[seen] < 1e-12)
    assert torch.allclose(probs[:, 1:].sum(1), torch.ones(len(batch)), atol=1e-4)
    unmasked = _model(planted).full_sort_predict(batch).exp()
    assert not torch.allclose(unmasked[seen], probs[seen])  # without the mask the history has mass


def test_a_category_whose_items_are_all_masked_gets_no_mass(planted):
    """When the history holds every item of the current category, staying has no candidate left:
    its share must go to the other categories, not back to the masked items."""
    model, batch = _masked_model(planted, mask_history_items=True), _batch(planted, n=64)
    torch.nn.init.constant_(model.p_repeat_head.bias, -40.0)  # the migration mode alone
    item_seq, seq_len = batch[model.ITEM_SEQ].clone(), batch[model.ITEM_SEQ_LEN]
    rows = torch.nonzero(seq_len >= 8).squeeze(1)
    assert len(rows) > 8
    for row in rows.tolist():  # the last eight events: all eight items of the last item's category
        category = model.item2cat[item_seq[row, seq_len[row] - 1]]
        members = torch.nonzero(model.item2cat == category).squeeze(1)
        assert len(members) == 8
        item_seq[row, seq_len[row] - 8 : seq_len[row]] = members[torch.randperm(8)]
    batch = batch[rows]
    batch.update(type(batch)({model.ITEM_SEQ: item_seq[rows]}))
    probs = model.full_sort_predict(batch).exp()
    seen = torch.zeros_like(probs, dtype=torch.bool).scatter(1, batch[model.ITEM_SEQ], True)
    seen[:, 0] = False
    assert torch.all(probs[seen] < 1e-12)
    assert torch.allclose(probs[:, 1:].sum(1), torch.ones(len(batch)), atol=1e-4)
    assert torch.all(model.predict_migration(batch)["p_shift"] > 1 - 1e-6)  # nothing left to stay with
    batch.update(type(batch)({model.POS_ITEM_ID: probs.argmax(1)}))  # targets outside the history
    model.lambda_cat = model.lambda_shift = 0.0
    expected = torch.nn.functional.nll_loss(model.full_sort_predict(batch), batch[model.POS_ITEM_ID])
    assert torch.allclose(model.calculate_loss(batch), expected, atol=1e-5)  # training normalises alike


def test_masked_training_loss_is_the_likelihood_of_the_target_even_when_seen(planted):
    """The loss spares the target, so a re-visited target keeps a finite likelihood; on other
    targets it is the negative log-likelihood of what full_sort_predict ranks."""
    model = _masked_model(planted, mask_history_items=True, repeat_mixture=False)  # no repeat mode to lean on
    batch = _batch(planted, n=128)
    model.lambda_cat = model.lambda_shift = 0.0
    target, item_seq = batch[model.POS_ITEM_ID], batch[model.ITEM_SEQ]
    revisit = (item_seq == target.unsqueeze(1)).any(1)
    assert revisit.any() and (~revisit).any()  # the planted data has both kinds of target
    assert model.calculate_loss(batch[revisit]) < 50  # a masked target would cost about 1e9
    fresh = batch[~revisit]
    expected = torch.nn.functional.nll_loss(model.full_sort_predict(fresh), fresh[model.POS_ITEM_ID])
    assert torch.allclose(model.calculate_loss(fresh), expected, atol=1e-5)
