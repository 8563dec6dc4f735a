"""A model's batch scoring traced with ``torch.jit`` into one graph, for serving.

Why: in eager mode each of the few dozen tensor operations of a forward pass releases Python's
GIL and takes it back. In a server, the HTTP threads hold the GIL in between, so the thread that
scores waits for it after every operation: next to one busy Python thread, an 8-user
InterestShiftCNN batch took 740 ms eagerly and 24 ms traced (1.4 ms and 1.1 ms alone). A traced
graph runs as one call.

Tracing records the operations run on example inputs, so :meth:`TracedScorer.build` checks the
graph against the eager model on batches of other sizes and widths and returns None (the caller
keeps scoring eagerly) when they differ or tracing fails.
"""
from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: keys of InterestShiftCNN's migration summary, in the order the graph returns them
MIGRATION_KEYS = ("p_shift", "current_category", "top_categories", "top_category_probs")


class _Scoring(nn.Module):
    """Positional tensors in, plain tensors out: the shape ``torch.jit.trace`` can record."""

    def __init__(self, model, fields: list[str], n_next: int | None):
        super().__init__()
        self.model, self.fields, self.n_next = model, list(fields), n_next

    def forward(self, *tensors):
        from recbole.data.interaction import Interaction

        interaction = Interaction(dict(zip(self.fields, tensors)))
        if self.n_next is None:
            return (self.model.full_sort_predict(interaction),)
        scores, migration = self.model.full_sort_predict_with_migration(interaction, self.n_next)
        return (scores, *(migration[key] for key in MIGRATION_KEYS))


class TracedScorer:
    """``scorer(interaction) -> (scores, migration or None)``, as the eager model would give."""

    def __init__(self, graph, fields: list[str], migrates: bool):
        self.graph, self.fields, self.migrates = graph, list(fields), migrates

    def __call__(self, interaction):
        outputs = self.graph(*(interaction[field] for field in self.fields))
        if not self.migrates:
            return outputs[0], None
        return outputs[0], dict(zip(MIGRATION_KEYS, outputs[1:]))

    @classmethod
    def build(cls, model, example, probes, n_next: int | None = None) -> "TracedScorer | None":
        """Trace ``model`` on the ``example`` interaction; None unless every probe agrees.

        ``n_next``: how many next categories to return, for a model with a migration
        (InterestShiftCNN's ``full_sort_predict_with_migration``); None for any other model.
        """
        fields = list(example.interaction)
        eager = _Scoring(model, fields, n_next).eval()
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings about Python values taken as constants
                # one eager call first: what the model caches on its first call without gradients
                # (InterestShiftCNN's item table) is then a constant of the graph, not rebuilt per call
                eager(*(example[f] for f in fields))
                graph = torch.jit.trace(eager, tuple(example[f] for f in fields), check_trace=False)
                for probe in probes:
                    inputs = tuple(probe[f] for f in fields)
                    if not _same(eager(*inputs), graph(*inputs)):
                        logger.warning("traced scoring differs from the model on a %s batch: scoring eagerly",
                                       tuple(inputs[0].shape))
                        return None
        except Exception as exc:  # noqa: BLE001  (any failure leaves the eager model in charge)
            logger.warning("could not trace the model's scoring (%s: %s): scoring eagerly", type(exc).__name__, exc)
            return None
        return cls(graph, fields, n_next is not None)


def _same(expected, got) -> bool:
    if len(expected) != len(got):
        return False
    for a, b in zip(expected, got):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point():
            finite = torch.isfinite(a)
            if not torch.equal(finite, torch.isfinite(b)) or not torch.allclose(a[finite], b[finite], rtol=1e-4, atol=1e-4):
                return False
        elif not torch.equal(a, b):
            return False
    return True
