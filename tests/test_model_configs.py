"""Every model YAML under ``recbole_configs/models`` sets only options its model reads.

RecBole ignores a key it does not know, so a misspelt option in a variant file would silently
run the defaults under the variant's name."""
from pathlib import Path

import pytest
import recbole
import yaml

import interest_migration

REPO = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = sorted((REPO / "recbole_configs" / "models").glob("*.yaml"))
RECBOLE_PROPERTIES = Path(recbole.__file__).resolve().parent / "properties"
OUR_PROPERTIES = Path(interest_migration.__file__).resolve().parent / "properties" / "model"
# read by RecBole's Config itself (it checks loss_type against train_neg_sample_args) for any model
CONFIGURATOR_KEYS = {"loss_type"}


def _keys(path: Path) -> set:
    return set(yaml.safe_load(path.read_text()) or {})


# every model reads these: RecBole's overall and dataset properties, read once for all files
GENERAL_KEYS = set().union(
    _keys(RECBOLE_PROPERTIES / "overall.yaml"),
    *(_keys(path) for path in (RECBOLE_PROPERTIES / "dataset").glob("*.yaml")),
    CONFIGURATOR_KEYS,
    {"model_class"},
)


def _known_keys(model: str) -> set:
    own = OUR_PROPERTIES / f"{model}.yaml"
    if not own.is_file():
        own = RECBOLE_PROPERTIES / "model" / f"{model}.yaml"
    assert own.is_file(), f"no default properties for model {model!r}"
    return _keys(own) | GENERAL_KEYS


def test_there_are_model_configs():
    assert len(MODEL_CONFIGS) >= 10


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_model_config_sets_known_options_only(path):
    config = yaml.safe_load(path.read_text())
    assert isinstance(config, dict), f"{path}: expected a mapping of options"
    model = config.get("model_class", path.stem)
    unknown = set(config) - _known_keys(model)
    assert not unknown, f"{path}: options {sorted(unknown)} are not read by {model} (typo?)"
