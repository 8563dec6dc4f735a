"""Safe checkpoints: round trip, refusal of pickles, clear errors, no code run on load."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from export_models import trained, write_export_dataset

from interest_migration import checkpoint
from interest_migration.cli import main as cli_main


@pytest.fixture(scope="session")
def export_base(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "export-models"


@pytest.fixture(scope="module")
def pickled(export_base) -> Path:
    return trained(export_base, "InterestShiftCNN")


@pytest.fixture(scope="module")
def safe(pickled, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("safe") / "model.safe.pth"
    assert cli_main(["convert-checkpoint", "--checkpoint", str(pickled), "--out", str(out), "--trust-checkpoint"]) == 0
    return out


def test_safe_checkpoint_holds_only_plain_data_and_round_trips(pickled, safe):
    payload = torch.load(safe, weights_only=True)  # raises if anything but tensors and plain data
    assert payload["format"] == checkpoint.SAFE_FORMAT and payload["model"] == "InterestShiftCNN"
    tokens = payload["dataset"]["field2id_token"]
    assert set(tokens) == {"user_id", "item_id", "category_id", "behavior_type"}
    assert tokens["category_id"][0] == "[PAD]" and set(tokens["category_id"][1:]) == {f"c{c}" for c in range(6)}
    original = checkpoint.load(pickled, trust_pickle=True)
    loaded = checkpoint.load(safe)
    assert loaded.format == "safe" and original.format == "pickle"
    assert not loaded.model.training and next(loaded.model.parameters()).device.type == "cpu"
    for key, value in original.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key
    # the rebuilt config equals the trained one, derived values included
    assert original.config.final_config_dict == loaded.config.final_config_dict
    assert loaded.fingerprint == original.fingerprint == payload["dataset"]["fingerprint"]
    assert list(loaded.dataset.field2id_token["item_id"]) == tokens["item_id"]
    assert len(loaded.test_data.dataset) == len(original.test_data.dataset)


def test_rebuilding_ignores_command_line_overrides(safe, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog", "--embedding_size=8", "--seed=1"])
    loaded = checkpoint.load(safe)
    assert loaded.config["embedding_size"] == 16 and loaded.config["seed"] == 2020


def test_pickle_checkpoint_is_refused_without_trust(pickled, tmp_path):
    with pytest.raises(checkpoint.UntrustedCheckpointError, match="--trust-checkpoint") as info:
        checkpoint.load(pickled)
    assert str(pickled) in str(info.value)
    out = tmp_path / "x.safe.pth"
    assert cli_main(["convert-checkpoint", "--checkpoint", str(pickled), "--out", str(out)]) == 2
    assert not out.exists()


class _Payload:
    """Unpickling this runs code: it would create the file named ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_safe_loader_never_runs_code_from_the_file(safe, tmp_path):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.pth"
    torch.save({"format": checkpoint.SAFE_FORMAT, "model": "InterestShiftCNN", "x": _Payload(marker)}, hostile)
    with pytest.raises(checkpoint.UntrustedCheckpointError):
        checkpoint.load(hostile)
    assert not marker.exists()
    # RecBole evals the strings of a config_dict: a stored config value must stay a string
    payload = torch.load(safe, weights_only=True)
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    payload["config"]["note"] = code
    tampered = tmp_path / "tampered.pth"
    torch.save(payload, tampered)
    loaded = checkpoint.load(tampered)
    assert not marker.exists()
    assert loaded.config["note"] == code


def test_missing_truncated_and_foreign_files_get_clear_errors(safe, tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "nope.pth")
    truncated = tmp_path / "truncated.pth"
    data = safe.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupt") as info:
        checkpoint.load(truncated)
    assert str(truncated) in str(info.value)
    weights = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2)}, weights)
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint of this plugin"):
        checkpoint.load(weights)
    future = tmp_path / "future.pth"
    torch.save({"format": "interest_migration.safe/99"}, future)
    with pytest.raises(checkpoint.CheckpointError, match="unsupported checkpoint format"):
        checkpoint.load(future)


def test_checkpoint_of_a_different_dataset_is_refused(safe, tmp_path):
    other = write_export_dataset(tmp_path / "other")
    inter = other / "planted" / "planted.inter"
    lines = inter.read_text().splitlines()
    inter.write_text("\n".join(lines[:-1]) + "\n")  # one interaction fewer
    with pytest.raises(checkpoint.DatasetMismatchError, match="different dataset"):
        checkpoint.load(safe, data_path=other)
    with pytest.raises(checkpoint.CheckpointError, match="is not at"):
        checkpoint.load(safe, data_path=tmp_path / "missing")


def test_general_model_with_other_parameters_round_trips(export_base, tmp_path):
    pickled = trained(export_base, "Pop")
    out = checkpoint.convert(pickled, tmp_path / "pop.safe.pth", trust_pickle=True)
    original = checkpoint.load(pickled, trust_pickle=True)
    loaded = checkpoint.load(out)
    assert torch.equal(loaded.model.item_cnt, original.model.item_cnt)
    assert torch.equal(loaded.model.max_cnt, original.model.max_cnt)
    moved = tmp_path / "moved"
    shutil.copytree(export_base / "data", moved)
    assert checkpoint.load(out, data_path=moved).fingerprint == loaded.fingerprint
