"""Make the plugin's models visible to RecBole by name.

RecBole 1.2.1 has no plugin registry: ``recbole.utils.get_model(name)`` looks for the module
``recbole.model.<kind>.<name.lower()>`` with ``importlib.util.find_spec``, which consults
``sys.modules`` first. Placing each plugin model module there makes ``get_model``,
``run_recbole``, ``load_data_and_model``, ``full_sort_topk`` and ``HyperTuning`` find it.

RecBole reads a model's default hyper-parameters only from its own ``properties/model``
folder; :func:`_load_plugin_model_defaults` adds ours at exactly the same priority (right
after ``overall.yaml``), so dataset presets, user YAML, ``config_dict`` and the command line
all override them as they would a built-in model's.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

#: model name -> (RecBole model package, plugin module). Every plugin model is listed here.
PLUGIN_MODELS = {
    "InterestShiftCNN": (
        "sequential_recommender",
        "interest_migration.model.sequential_recommender.interestshiftcnn",
    ),
}

PROPERTIES_DIR = Path(__file__).resolve().parent / "properties" / "model"


def default_config_file(model: str) -> Path | None:
    """The plugin's YAML of defaults for ``model``, or None for RecBole's own models."""
    path = PROPERTIES_DIR / f"{model}.yaml"
    return path if model in PLUGIN_MODELS and path.is_file() else None


def model_code_version(model: str) -> str:
    """Which code a run of ``model`` trains: for a plugin model a digest of its module and default
    YAML (so a stored result is not reused after either changes), for any other the RecBole version."""
    if model not in PLUGIN_MODELS:
        from recbole import __version__

        return f"recbole {__version__}"
    digest = hashlib.sha256(Path(importlib.util.find_spec(PLUGIN_MODELS[model][1]).origin).read_bytes())
    defaults = default_config_file(model)
    if defaults is not None:
        digest.update(defaults.read_bytes())
    return f"interest_migration {digest.hexdigest()[:16]}"


def _load_plugin_model_defaults() -> None:
    from recbole.config import Config

    original = Config._update_internal_config_dict
    if getattr(original, "__interest_migration_hook__", False):
        return

    def _update_internal_config_dict(self, file):
        result = original(self, file)
        # overall.yaml is always read first; a built-in model's YAML comes right after it.
        if os.path.basename(file) == "overall.yaml":
            plugin_file = default_config_file(getattr(self, "model", ""))
            if plugin_file is not None:
                original(self, str(plugin_file))
        return result

    _update_internal_config_dict.__interest_migration_hook__ = True
    Config._update_internal_config_dict = _update_internal_config_dict


def register_models() -> None:
    """Expose every plugin model to RecBole's name lookup; idempotent."""
    for name, (kind, module_name) in PLUGIN_MODELS.items():
        module = importlib.import_module(module_name)
        sys.modules[f"recbole.model.{kind}.{name.lower()}"] = module
    _load_plugin_model_defaults()
