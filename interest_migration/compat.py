"""Work-arounds that make RecBole 1.2.1 usable on today's stack.

Each function fixes one problem, names the versions involved and is safe to call twice.
:func:`apply` runs them all; ``import interest_migration`` calls it once. Version pins that
need no code (numpy<2, pandas<3, scipy<1.13, setuptools<82) live in ``pyproject.toml``.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import sys

import torch

_TRUSTED_PREFIXES = ("recbole.",)
_trusted_load = contextvars.ContextVar("interest_migration_trusted_load", default=False)


@contextlib.contextmanager
def trusted_torch_load():
    """Let ``torch.load`` unpickle inside this block: for checkpoints the user said to trust."""
    token = _trusted_load.set(True)
    try:
        yield
    finally:
        _trusted_load.reset(token)


def _caller_is_trusted(frame) -> bool:
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    return _trusted_load.get() or module.startswith(_TRUSTED_PREFIXES)


def patch_torch_load() -> None:
    """torch >= 2.6 loads with ``weights_only=True``; RecBole 1.2.1 checkpoints pickle its Config.

    The weights-only unpickler cannot read them at all, so every best-model reload,
    ``resume_checkpoint`` and ``load_data_and_model`` fails. Only calls made from RecBole's own
    modules (or inside :func:`trusted_torch_load`) get the old ``weights_only=False`` default;
    a ``torch.load`` in user code keeps torch's safe default.
    """
    if getattr(torch.load, "__interest_migration_shim__", False):
        return
    original = torch.load

    @functools.wraps(original)
    def load(*args, **kwargs):
        if "weights_only" not in kwargs and _caller_is_trusted(sys._getframe(1)):
            kwargs["weights_only"] = False
        return original(*args, **kwargs)

    load.__interest_migration_shim__ = True
    load.__wrapped__ = original
    torch.load = load


def disable_anomaly_detection() -> None:
    """RecBole 1.2.1's ``sine.py`` turns on autograd anomaly detection when imported.

    Importing any sequential model imports that package, which makes all training about 2x
    slower for no benefit. Import it once here, then switch detection back off.
    """
    import recbole.model.sequential_recommender  # noqa: F401  (runs sine.py)

    torch.autograd.set_detect_anomaly(False)


def restore_numpy_aliases() -> None:
    """RecBole 1.2.1 code uses ``np.float`` & co., removed in numpy 1.24.

    RecBole re-creates the aliases only inside ``Config.__init__``; a process that unpickles a
    checkpoint's Config (``load_data_and_model`` in a fresh interpreter) never runs it, and its
    evaluation then fails with ``module 'numpy' has no attribute 'float'``. Run RecBole's own
    alias list (it does not use ``self``) once at import.
    """
    from recbole.config import Config

    Config.compatibility_settings(None)


def fix_bert4rec_empty_mask() -> None:
    """RecBole 1.2.1's BERT4Rec divides its loss by the number of masked positions in the batch.

    A batch in which the random masking hid no item (short sequences, a small last batch) gives
    0/0 = NaN and RecBole stops training with "Training loss is nan" (RecBole issue #882). Such a
    batch has nothing to learn from: return a zero loss still attached to the graph instead.
    """
    from recbole.model.sequential_recommender.bert4rec import BERT4Rec

    original = BERT4Rec.calculate_loss
    if getattr(original, "_interest_migration_fix", False):
        return

    @functools.wraps(original)
    def calculate_loss(self, interaction):
        if not bool((interaction[self.MASK_INDEX] > 0).any()):
            return self.output_bias.sum() * 0.0
        return original(self, interaction)

    calculate_loss._interest_migration_fix = True
    BERT4Rec.calculate_loss = calculate_loss


class UnknownModelError(ValueError):
    """A model name that neither RecBole nor this plugin knows."""


def get_model_class(name: str):
    """RecBole's ``get_model``, with a clear error for unknown names.

    RecBole 1.2.1 falls through to ``exlib_recommender`` for unknown names, whose import
    needs lightgbm, so a typo surfaces as ``No module named 'lightgbm'``.
    """
    from recbole.utils import get_model

    from interest_migration.registry import PLUGIN_MODELS

    try:
        return get_model(name)
    except (ValueError, ImportError, AttributeError) as exc:
        raise UnknownModelError(
            f"unknown model {name!r}: it is neither a RecBole 1.2.1 model nor one of this plugin's "
            f"({', '.join(sorted(PLUGIN_MODELS))}); model names are case-sensitive "
            f"(RecBole said: {exc})"
        ) from None


def apply() -> None:
    """Apply every fix; idempotent."""
    patch_torch_load()
    disable_anomaly_detection()
    restore_numpy_aliases()
    fix_bert4rec_empty_mask()
    from interest_migration import distributed  # multi-process training (recbole.quick_start.run(nproc=N))
    distributed.apply()
