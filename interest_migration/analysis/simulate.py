"""Synthetic shoppers whose interests shift at known events: ground truth for the shift-point detector.

Each user's timeline is cut into segments; each segment has its own small set of favourite
categories. An event repeats the previous event's category (stickiness), or explores a category
drawn from the population's popularity, or picks one of the segment's favourites. The defaults
reproduce the shared Taobao head (815 users): median 78 events per user, a category switch on
about 59% of consecutive events, about 24% of events in a category new to the user, and about
half of a user's categories visited once. docs/analysis.md gives the fit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from interest_migration.analysis.timelines import Timelines, from_frame

_DAY = 86400.0
#: 2017-11-25 00:00 UTC+8, the start of the Taobao UserBehavior window.
_START = 1511539200.0


@dataclass(frozen=True)
class MigrationSimulator:
    """Parameters of the synthetic population (defaults: Taobao-like, see module docstring).

    - ``n_users``; events per user are log-normal with median ``median_events`` and log-sd
      ``events_sigma``, clipped to ``[min_events, max_events]``.
    - ``n_categories`` with Zipf popularity of exponent ``zipf_exponent``.
    - Segment lengths are ``min_segment`` plus a geometric number of events with mean
      ``mean_segment - min_segment``; a trailing piece shorter than ``min_segment`` joins the
      segment before it, so every segment (and so every shift) lasts at least ``min_segment``
      events.
    - Each segment favours ``interests`` categories drawn by popularity, none of them a favourite
      of the previous segment, with Dirichlet(``interest_concentration``) weights.
    - An event repeats the previous category with probability ``stickiness`` (never on a segment's
      first event), else explores a popularity-drawn category with probability ``exploration``,
      else draws from the segment's favourites.
    - Timestamps: uniform over ``days`` days from 2017-11-25, sorted per user.
    """

    n_users: int = 800
    median_events: float = 78.0
    events_sigma: float = 0.8
    min_events: int = 4
    max_events: int = 2000
    n_categories: int = 3000
    zipf_exponent: float = 1.0
    mean_segment: float = 25.0
    min_segment: int = 10
    interests: int = 3
    interest_concentration: float = 1.0
    stickiness: float = 0.25
    exploration: float = 0.3
    days: float = 9.0
    seed: int = 0

    def popularity(self) -> np.ndarray:
        weights = 1.0 / np.arange(1, self.n_categories + 1) ** self.zipf_exponent
        return weights / weights.sum()

    def run(self) -> "SimulatedMigration":
        rng = np.random.default_rng(self.seed)
        pop = self.popularity()
        cum_pop = np.cumsum(pop)
        lengths = np.exp(np.log(self.median_events) + self.events_sigma * rng.standard_normal(self.n_users))
        lengths = np.clip(np.round(lengths), self.min_events, self.max_events).astype(np.int64)

        # Segments: draw generous geometric lengths, cut at each user's end, merge a short tail.
        max_segments = int(np.ceil(lengths.max() / max(self.min_segment, 1))) + 1
        extra_mean = max(self.mean_segment - self.min_segment, 1e-9)
        seg_len = self.min_segment + rng.geometric(1.0 / (1.0 + extra_mean), (self.n_users, max_segments)) - 1
        starts = np.concatenate([np.zeros((self.n_users, 1), np.int64), np.cumsum(seg_len, axis=1)[:, :-1]], axis=1)
        valid = starts < lengths[:, None]
        tail = lengths[:, None] - starts
        valid &= (tail >= self.min_segment) | (starts == 0)
        n_segments = valid.sum(axis=1)

        # Favourite categories per segment: Gumbel top-k by popularity, avoiding the previous set.
        k = self.interests
        favourites = np.zeros((self.n_users, max_segments, k), dtype=np.int64)
        log_pop = np.log(pop)
        for j in range(int(n_segments.max())):
            rows = np.flatnonzero(n_segments > j)
            keys = log_pop[None, :] + rng.gumbel(size=(len(rows), self.n_categories))
            if j:
                np.put_along_axis(keys, favourites[rows, j - 1], -np.inf, axis=1)
            favourites[rows, j] = np.argpartition(-keys, k, axis=1)[:, :k]
        weights = rng.dirichlet(np.full(k, self.interest_concentration), size=(self.n_users, max_segments))
        cum_weights = np.cumsum(weights, axis=2)[:, :, :-1]

        # Events: locate each event's segment by a search over the flattened segment starts.
        n_events = int(lengths.sum())
        first_event = np.cumsum(lengths) - lengths
        user = np.repeat(np.arange(self.n_users), lengths)
        position = np.arange(n_events) - first_event[user]
        seg_user, seg_index = np.nonzero(valid)
        seg_first = first_event[seg_user] + starts[seg_user, seg_index]
        seg = np.searchsorted(seg_first, np.arange(n_events), side="right") - 1
        segment = seg_index[seg]
        seg_start = starts[user, segment]
        slot = (rng.random(n_events)[:, None] > cum_weights[user, segment]).sum(axis=1)
        fresh = favourites[user, segment, slot]
        explore = rng.random(n_events) < self.exploration
        fresh[explore] = np.minimum(np.searchsorted(cum_pop, rng.random(int(explore.sum()))), self.n_categories - 1)
        repeat = (rng.random(n_events) < self.stickiness) & (position > seg_start)
        source = np.where(repeat, 0, np.arange(n_events))
        source = np.maximum.accumulate(source)  # a repeat copies the latest non-repeat event
        category = fresh[source]

        raw_time = _START + rng.random(n_events) * self.days * _DAY
        time = raw_time[np.lexsort((raw_time, user))]  # sorted within each user; users stay in order
        frame = pd.DataFrame({"user_id": user, "category_id": category, "timestamp": time})
        timelines = from_frame(frame, users=np.arange(self.n_users))
        is_shift = (position == seg_start) & (position > 0)
        shifts = pd.DataFrame({"user": user[is_shift], "position": position[is_shift]})
        return SimulatedMigration(timelines, shifts.reset_index(drop=True), self)


@dataclass(frozen=True)
class SimulatedMigration:
    """A simulated population and its true shift points (``user`` code, ``position`` of the first
    event of each new segment)."""

    timelines: Timelines
    shift_points: pd.DataFrame
    settings: MigrationSimulator


def simulate_migration(**settings) -> SimulatedMigration:
    """Shorthand for ``MigrationSimulator(**settings).run()``."""
    return MigrationSimulator(**settings).run()
