"""Each compat fix, checked against the real torch and RecBole."""
import io
import pickle

import pytest
import torch

import interest_migration
from interest_migration import compat


class _Payload:
    """Any non-tensor object: the weights-only loader must refuse to rebuild it."""


def test_anomaly_detection_off_after_recbole_sequential_import():
    import recbole.model.sequential_recommender.sine  # noqa: F401  (the module that turns it on)

    assert not torch.is_anomaly_enabled()


def test_user_torch_load_keeps_safe_default():
    buffer = io.BytesIO()
    torch.save({"obj": _Payload()}, buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(buffer)


def test_tensors_still_load_in_user_code():
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(3)}, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer)["w"], torch.arange(3))


def test_trusted_block_allows_pickles_and_ends():
    buffer = io.BytesIO()
    torch.save({"obj": _Payload()}, buffer)
    with compat.trusted_torch_load():
        buffer.seek(0)
        assert isinstance(torch.load(buffer)["obj"], _Payload)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(buffer)


def test_recbole_modules_are_trusted_callers():
    import sys

    class Frame:
        f_globals = {"__name__": "recbole.trainer.trainer"}

    class UserFrame:
        f_globals = {"__name__": "__main__"}

    assert compat._caller_is_trusted(Frame())
    assert not compat._caller_is_trusted(UserFrame())
    assert not compat._caller_is_trusted(sys._getframe())


def test_apply_is_idempotent():
    load = torch.load
    compat.apply()
    interest_migration.registry.register_models()
    assert torch.load is load
    assert torch.load.__wrapped__ is not None
    assert not hasattr(torch.load.__wrapped__, "__interest_migration_shim__")


def test_unknown_model_is_a_clear_error():
    with pytest.raises(compat.UnknownModelError, match="'NoSuchModel'.*neither a RecBole") as info:
        compat.get_model_class("NoSuchModel")
    assert "InterestShiftCNN" in str(info.value)


def test_numpy_aliases_recbole_needs_without_a_config():
    import numpy as np

    assert np.float is np.float_ and np.int is np.int_


def test_bert4rec_batch_without_masked_items_gives_zero_loss_not_nan(tmp_path):
    """RecBole's BERT4Rec divides by the number of masked positions: 0/0 on a batch with none."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender.bert4rec import BERT4Rec
    from recbole.utils import init_seed

    from synthetic_data import planted_config, write_planted_dataset

    overrides = {"n_layers": 1, "n_heads": 1, "hidden_size": 16, "inner_size": 32, "train_neg_sample_args": None}
    config = Config(model="BERT4Rec", dataset="planted",
                    config_dict=planted_config(write_planted_dataset(tmp_path / "data"), **overrides))
    init_seed(config["seed"], config["reproducibility"])
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = BERT4Rec(config, train_data._dataset).eval()  # no dropout: two calls give the same loss
    batch = next(iter(train_data))
    assert bool((batch[model.MASK_INDEX] > 0).any())
    loss = model.calculate_loss(batch)
    assert torch.isfinite(loss) and loss > 0
    assert torch.equal(loss, BERT4Rec.calculate_loss.__wrapped__(model, batch))  # untouched otherwise

    batch.update(type(batch)({model.MASK_INDEX: torch.zeros_like(batch[model.MASK_INDEX])}))
    assert torch.isnan(BERT4Rec.calculate_loss.__wrapped__(model, batch))  # RecBole's own: 0/0
    loss = model.calculate_loss(batch)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
