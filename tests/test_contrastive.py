"""contrastive_weight: an InfoNCE loss between two dropout views of each user state, in training only."""
import math

import pytest
import torch

import interest_migration  # noqa: F401
from interest_migration.model.sequential_recommender import InterestShiftCNN
from synthetic_data import planted_config, write_planted_dataset


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    root = write_planted_dataset(tmp_path_factory.mktemp("contrastive") / "data")
    config = Config(model="InterestShiftCNN", dataset="planted", config_dict=planted_config(root))
    train, _, _ = data_preparation(config, create_dataset(config))
    return {"root": root, "train": train}


def _model(planted, **overrides):
    from recbole.config import Config

    config = Config(model="InterestShiftCNN", dataset="planted", config_dict=planted_config(planted["root"], **overrides))
    torch.manual_seed(0)
    return InterestShiftCNN(config, planted["train"].dataset)


def test_loss_is_info_nce_over_the_batch_with_shared_targets_left_out(planted):
    model = _model(planted, contrastive_weight=1.0, contrastive_temperature=0.5)
    state = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    view = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    target = torch.tensor([5, 6, 5])  # users 0 and 2 share a target: not each other's negatives
    unit = torch.nn.functional.normalize
    sim = (unit(state, dim=-1) @ unit(view, dim=-1).t() / 0.5).tolist()

    def nce(rows):  # rows[i][j]: similarity of anchor i to candidate j
        loss = 0.0
        for i in range(3):
            candidates = [j for j in range(3) if j == i or target[j] != target[i]]
            loss -= rows[i][i] - math.log(sum(math.exp(rows[i][j]) for j in candidates))
        return loss / 3

    want = (nce(sim) + nce([list(col) for col in zip(*sim)])) / 2
    assert model._contrastive_loss(state, view, target).item() == pytest.approx(want, rel=1e-5)


def test_training_loss_adds_the_weighted_term_and_evaluation_ignores_it(planted):
    """Without dropout both views are the user state itself, so the added loss is known exactly."""
    batch = next(iter(planted["train"]))
    plain = _model(planted, dropout_prob=0.0).train()
    weighted = _model(planted, dropout_prob=0.0, contrastive_weight=0.5).train()
    weighted.load_state_dict(plain.state_dict())
    state = plain._encode(batch, plain._item_representations())[2]
    extra = 0.5 * plain._contrastive_loss(state, state, batch["item_id"])
    assert extra.item() > 0
    torch.testing.assert_close(weighted.calculate_loss(batch), plain.calculate_loss(batch) + extra)
    with torch.no_grad():  # ranking is the model's, untouched by the extra view
        torch.testing.assert_close(weighted.eval().full_sort_predict(batch), plain.eval().full_sort_predict(batch))


def test_views_differ_under_dropout(planted):
    model = _model(planted, contrastive_weight=0.1, dropout_prob=0.2).train()
    batch = next(iter(planted["train"]))
    *_, views = model._outputs(batch, target=batch["item_id"])
    state, view = views
    assert state.shape == view.shape == (len(batch), model.embedding_size)
    assert not torch.allclose(state, view)
    *_, none = model._outputs(batch)
    assert none is None  # evaluation encodes once


def test_it_trains_through_run_recbole(planted):
    from recbole.quick_start import run_recbole

    result = run_recbole(
        model="InterestShiftCNN", dataset="planted",
        config_dict=planted_config(planted["root"], epochs=2, train_batch_size=64, contrastive_weight=0.1),
    )
    assert result["test_result"]["ndcg@10"] > 0


@pytest.mark.parametrize(
    "override, message",
    [({"contrastive_weight": -0.1}, "contrastive_weight must be"),
     ({"contrastive_weight": 0.1, "contrastive_temperature": 0}, "contrastive_temperature must be")],
)
def test_bad_contrastive_settings_are_clear_errors(planted, override, message):
    with pytest.raises(ValueError, match=message):
        _model(planted, **override)
