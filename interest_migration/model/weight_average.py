"""An exponential moving average of a model's parameters, evaluated in place of the raw weights.

Why: with Adam at a fixed learning rate the weights at any one step carry that step's noise, and
RecBole picks the best epoch from them. The average over the last few thousand steps is the same
model with the noise smoothed out (Polyak averaging; the EMA of Tarvainen and Valpola, 2017), at
the cost of one in-place lerp per step. The model swaps the average in when it is put in
evaluation mode and its own weights back when training resumes, so RecBole's validation, early
stopping and best-model checkpoint all see the averaged weights without any change to its trainer.
"""

import torch


class WeightAverage:
    """Shadow copies of a list of parameters, updated as ``shadow += (1 - decay) * (param - shadow)``.

    The decay ramps up as ``min(decay, (1 + t) / (10 + t))`` over the first updates, so that the
    average is not dominated by the random initialisation.
    """

    def __init__(self, decay):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"weight average: decay must lie in (0, 1), got {decay!r}")
        self.decay = decay
        self.reset()

    def reset(self):
        """Forget the average and any stashed weights (after weights are loaded from elsewhere)."""
        self.shadow = None
        self.stash = None
        self.updates = 0

    @torch.no_grad()
    def update(self, params):
        params = [p.detach() for p in params]
        if self.shadow is None:
            self.shadow = [p.clone() for p in params]
            return
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, params, 1.0 - decay)

    @torch.no_grad()
    def swap_in(self, params):
        """Put the average into ``params``, keeping their own values to ``restore`` later. Does
        nothing before the first update: an untrained or freshly loaded model keeps its weights."""
        if self.shadow is None or self.stash is not None:
            return
        params = list(params)
        self.update(params)  # the last optimiser step counts too
        self.stash = [p.detach().clone() for p in params]
        for p, s in zip(params, self.shadow):
            p.copy_(s)

    @torch.no_grad()
    def restore(self, params):
        """Put back the weights that ``swap_in`` replaced, so training goes on from them."""
        if self.stash is None:
            return
        for p, s in zip(params, self.stash):
            p.copy_(s)
        self.stash = None
