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
