"""ema_decay: InterestShiftCNN is evaluated and saved with the running average of its weights, and
trains on from its own."""
import pytest
import torch

import interest_migration  # noqa: F401
from interest_migration.model.sequential_recommender import InterestShiftCNN
from interest_migration.model.weight_average import WeightAverage
from synthetic_data import planted_config, write_planted_dataset

DECAY = 0.9


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    root = write_planted_dataset(tmp_path_factory.mktemp("ema") / "data")
    config = Config(model="InterestShiftCNN", dataset="planted", config_dict=planted_config(root, ema_decay=DECAY))
    train, _, _ = data_preparation(config, create_dataset(config))
    return {"root": root, "config": config, "train": train}


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def _train_steps(model, planted, steps, expected=None):
    """``steps`` Adam steps in training mode; with ``expected``, the running average each step
    should give, computed here by hand from the weights the loss sees."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for batch in list(planted["train"])[:steps]:
        if expected is not None:
            expected.append(_weights(model))
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()


def _by_hand(snapshots):
    average = [w.clone() for w in snapshots[0]]
    for t, snapshot in enumerate(snapshots[1:], start=1):
        decay = min(DECAY, (1 + t) / (10 + t))
        average = [decay * a + (1 - decay) * w for a, w in zip(average, snapshot)]
    return average


def test_average_follows_the_ramped_decay():
    average, snapshots = WeightAverage(DECAY), []
    params = [torch.zeros(3), torch.ones(2, 2)]
    for step in range(30):
        params = [p + step * 0.1 for p in params]
        snapshots.append(params)
        average.update(params)
    for got, want in zip(average.shadow, _by_hand(snapshots)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_decay_outside_the_open_interval_is_a_clear_error(planted, decay):
    from recbole.config import Config

    config = Config(model="InterestShiftCNN", dataset="planted", config_dict=planted_config(planted["root"], ema_decay=decay))
    with pytest.raises(ValueError, match="ema_decay must lie in"):
        InterestShiftCNN(config, planted["train"].dataset)


def test_evaluation_runs_on_the_average_and_training_on_the_own_weights(planted):
    torch.manual_seed(0)
    model = InterestShiftCNN(planted["config"], planted["train"].dataset)
    snapshots = []
    _train_steps(model, planted, 6, expected=snapshots)
    own = _weights(model)
    snapshots.append(own)  # the switch to evaluation counts the last optimiser step

    model.eval()
    for got, want in zip(model.parameters(), _by_hand(snapshots)):
        torch.testing.assert_close(got.detach(), want)
    assert any(not torch.equal(p.detach(), w) for p, w in zip(model.parameters(), own))
    model.eval()  # no second swap while already evaluating
    for got, want in zip(model.parameters(), _by_hand(snapshots)):
        torch.testing.assert_close(got.detach(), want)

    model.train()
    for p, w in zip(model.parameters(), own):
        assert torch.equal(p.detach(), w)


def test_an_untrained_or_freshly_loaded_model_keeps_its_weights(planted):
    torch.manual_seed(0)
    model = InterestShiftCNN(planted["config"], planted["train"].dataset)
    initial = _weights(model)
    model.eval()
    assert all(torch.equal(p.detach(), w) for p, w in zip(model.parameters(), initial))

    _train_steps(model, planted, 3)
    model.eval()  # average swapped in, own weights stashed
    torch.manual_seed(1)
    other = InterestShiftCNN(planted["config"], planted["train"].dataset).state_dict()
    model.load_state_dict(other)
    model.train()  # the stale stash must not come back over the loaded weights
    model.eval()
    for name, value in model.state_dict().items():
        assert torch.equal(value, other[name]), name


def test_run_recbole_saves_the_averaged_model_it_reports(tmp_path):
    """Through RecBole's own run and reload: the checkpoint holds the weights the reported test
    metrics came from."""
    from recbole.quick_start import load_data_and_model, run_recbole
    from recbole.utils import get_trainer

    root = write_planted_dataset(tmp_path / "data")
    result = run_recbole(
        model="InterestShiftCNN", dataset="planted",
        config_dict=planted_config(root, epochs=3, stopping_step=3, train_batch_size=64, ema_decay=DECAY),
    )
    (checkpoint,) = (tmp_path / "saved").glob("InterestShiftCNN-*.pth")
    config, model, _, _, _, test_data = load_data_and_model(str(checkpoint))
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    again = trainer.evaluate(test_data, load_best_model=False)
    assert again["ndcg@10"] == pytest.approx(result["test_result"]["ndcg@10"])
    assert again["ndcg@10"] > 0
