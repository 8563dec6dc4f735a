"""interest_migration: a RecBole plugin that models how shoppers' interests migrate.

Importing the package has one documented side effect: it applies the RecBole 1.2.1
compatibility fixes (:mod:`interest_migration.compat`) and registers the plugin's models with
RecBole (:mod:`interest_migration.registry`), so RecBole's own entry points accept
``model="InterestShiftCNN"``.
"""
from interest_migration import compat, registry

__version__ = "0.1.0"

compat.apply()
registry.register_models()

__all__ = ["__version__", "compat", "registry"]
