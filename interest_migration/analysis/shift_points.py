"""Where does each user's interest shift? Bayesian segmentation of the category sequence.

Model (a product-partition model, the one Bayesian online change-point detection filters):

- A user's timeline is cut into segments; each event starts a new segment with probability
  ``hazard`` (a geometric prior on segment length with mean ``1 / hazard``).
- Within a segment, event ``t`` repeats the previous event's category with probability
  ``stickiness`` (shoppers browse a category in runs); otherwise it explores a category drawn from
  the population's popularity ``pi`` with probability ``exploration``; otherwise its category
  comes from the segment's own distribution ``theta ~ Dirichlet(concentration * pi)``. ``theta``
  is integrated out, so for a segment that starts at ``s``::

      P(x_t | x_s..x_{t-1}) = stickiness * [x_t == x_{t-1}]
          + (1 - stickiness) * (exploration * pi(x_t)
                                + (1 - exploration) * (n_{s..t-1}(x_t) + concentration * pi(x_t)) / (t - s + concentration))

  and the first event of a segment has probability ``pi(x_s)``.
- Segments shorter than ``min_segment`` events are not allowed (except a whole timeline that
  short), so a burst of a few exploratory clicks is not a shift.

Inference is exact: a forward-backward pass over segment starts gives, for every event, the
posterior probability that a new segment starts there (:meth:`ShiftPointDetector.shift_probability`).
Shift points are then decoded for the ``±tolerance`` loss they are judged by: repeatedly take the
event whose ``±tolerance`` window holds the most posterior mass, while that mass is at least
``threshold``. Cost is quadratic in each user's timeline length (time and memory); users are
processed in batches of similar length with numpy arrays over (users × candidate starts), so the
only Python loops are over event positions within a batch.

Parameters (defaults fitted to the shared Taobao head, see docs/analysis.md):

- ``hazard`` (1/40): prior rate of shifts per event. Lower finds fewer, surer shifts.
- ``concentration`` (4): pseudo-events of population popularity a segment starts with. Small
  values commit to a segment's own categories after a few events (more, earlier detections);
  large values need more evidence (fewer false alarms, later or missed shifts).
- ``stickiness`` (0.25): chance of repeating the previous category; explains runs of one category.
- ``exploration`` (0.3): chance of a one-off category from the population; explains the many
  categories a shopper visits once (half of a Taobao user's categories) without a shift.
- ``min_segment`` (5): shortest segment, in events.
- ``tolerance`` (2) and ``threshold`` (0.5): each reported shift has at least a 50% posterior
  chance of lying within 2 events of a true one.
- ``popularity``: the base distribution ``pi``; by default the data's own category frequencies.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from interest_migration.analysis.timelines import Timelines


@dataclass(frozen=True)
class ShiftPointDetector:
    """Bayesian segmentation of category sequences; see the module docstring for the model."""

    hazard: float = 1.0 / 40.0
    concentration: float = 4.0
    stickiness: float = 0.25
    exploration: float = 0.3
    min_segment: int = 5
    tolerance: int = 2
    threshold: float = 0.5
    #: Upper bound on users × events² held in one batch (8 bytes each).
    batch_cells: int = 8_000_000

    def __post_init__(self):
        for name in ("hazard", "threshold"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        for name in ("stickiness", "exploration"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.concentration > 0.0:
            raise ValueError(f"concentration must be > 0, got {self.concentration}")
        if self.min_segment < 1 or self.tolerance < 0:
            raise ValueError(f"min_segment must be >= 1 and tolerance >= 0, got {self.min_segment}, {self.tolerance}")

    def shift_probability(self, timelines: Timelines, popularity: np.ndarray | None = None) -> np.ndarray:
        """Posterior probability, per event, that a new segment starts at that event (0 for each
        user's first event).

        ``popularity`` is the base distribution ``pi`` over category codes; by default the
        timelines' own category frequencies (add-one smoothed).
        """
        if popularity is None:
            popularity = np.bincount(timelines.category, minlength=timelines.n_categories) + 1.0
            popularity = popularity / popularity.sum()
        log_pi = np.log(np.asarray(popularity, dtype=np.float64))
        out = np.zeros(timelines.n_events)
        lengths = timelines.lengths
        order = np.argsort(-lengths, kind="stable")
        order = order[lengths[order] > 1]  # users with 0 or 1 event cannot shift
        start = 0
        while start < len(order):
            longest = int(lengths[order[start]])
            size = max(1, self.batch_cells // (longest * longest))
            batch = order[start:start + size]
            start += size
            posterior = self._posterior_batch(timelines, batch, log_pi)
            inside = np.arange(longest)[None, :] < lengths[batch][:, None]
            index = timelines.offsets[batch][:, None] + np.arange(longest)[None, :]
            out[index[inside]] = posterior[inside]
        return out

    def detect(self, timelines: Timelines, popularity: np.ndarray | None = None) -> pd.DataFrame:
        """Shift points of every user: one row per shift with ``user`` (code), ``position`` (index in
        the user's timeline of the first event after the shift) and ``confidence`` (posterior
        probability that a shift lies within ``±tolerance`` events of it).
        """
        return self.decode(timelines, self.shift_probability(timelines, popularity))

    def decode(self, timelines: Timelines, probability: np.ndarray) -> pd.DataFrame:
        """Pick shift points from per-event probabilities: repeatedly take the event whose
        ``±tolerance`` window holds the most posterior mass, while that mass is at least
        ``threshold``, and remove the mass it explains. Each pick is then a hit within the
        tolerance with posterior probability at least ``threshold``.
        """
        tol = self.tolerance
        mass = np.asarray(probability, dtype=np.float64).copy()
        index = np.arange(timelines.n_events)
        user_start = timelines.offsets[timelines.user]
        lo = np.maximum(index - tol, user_start)  # windows never cross users
        hi = np.minimum(index + tol + 1, timelines.offsets[timelines.user + 1])
        users, positions, confidence = [], [], []
        active = np.flatnonzero(timelines.lengths > 1)
        while len(active):
            # Events of the users still searched, as one flat index with a segment per user.
            lengths = timelines.lengths[active]
            first = np.repeat(timelines.offsets[active], lengths)
            events = first + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
            cum = np.concatenate([[0.0], np.cumsum(mass)])
            window = cum[hi[events]] - cum[lo[events]]
            starts = np.cumsum(lengths) - lengths
            best = np.maximum.reduceat(window, starts)
            is_best = window >= np.repeat(best, lengths)
            segment = np.repeat(np.arange(len(active)), lengths)
            _, first_best = np.unique(segment[is_best], return_index=True)  # first argmax per user
            peak = events[np.flatnonzero(is_best)[first_best]]
            keep = best >= self.threshold
            peak, active = peak[keep], active[keep]
            if not len(peak):
                break
            users.append(timelines.user[peak])
            positions.append(timelines.position[peak])
            confidence.append(np.minimum(best[keep], 1.0))
            for shift in range(-tol, tol + 1):
                cleared = peak + shift
                inside = (cleared >= lo[peak]) & (cleared < hi[peak])
                mass[cleared[inside]] = 0.0
        if not users:
            return pd.DataFrame({"user": np.zeros(0, np.int64), "position": np.zeros(0, np.int64),
                                 "confidence": np.zeros(0)})
        frame = pd.DataFrame({"user": np.concatenate(users), "position": np.concatenate(positions),
                              "confidence": np.concatenate(confidence)})
        return frame.sort_values(["user", "position"], kind="stable").reset_index(drop=True)

    def _posterior_batch(self, timelines: Timelines, batch: np.ndarray, log_pi: np.ndarray) -> np.ndarray:
        """Forward-backward over one batch of users sorted by decreasing length (so the users still
        active at a position form a prefix of the batch)."""
        lengths = timelines.lengths[batch]
        n_rows, width = len(batch), int(lengths[0])
        columns = np.arange(width)
        inside = columns[None, :] < lengths[:, None]
        index = timelines.offsets[batch][:, None] + columns[None, :]
        x = np.where(inside, timelines.category[np.minimum(index, timelines.n_events - 1)], -1)
        pi_x = np.exp(log_pi[np.maximum(x, 0)])
        a0, rho, eps, m = self.concentration, self.stickiness, self.exploration, self.min_segment
        log_change = np.log(self.hazard) - np.log1p(-self.hazard)
        n_active = np.searchsorted(-lengths, -columns, side="left")  # rows with length > t
        # seg_ll[t, r, s]: log-likelihood of events s..t of row r as one segment (s <= t).
        seg_ll = np.full((width, n_rows, width), -np.inf)
        running = np.zeros((n_rows, width))
        forward = np.full((n_rows, width + 1), -np.inf)  # forward[:, s]: log p(events 0..s-1, a segment ends at s-1)
        forward[:, 0] = 0.0
        start_penalty = np.full(width, log_change)
        start_penalty[0] = 0.0
        for t in range(width):
            a = n_active[t]
            xt = x[:a, t]
            if t:
                same = x[:a, :t] == xt[:, None]
                counts = np.cumsum(same[:, ::-1], axis=1)[:, ::-1]  # occurrences of x_t in s..t-1
                pi_t = pi_x[:a, t][:, None]
                pred = (1.0 - rho) * (eps * pi_t + (1.0 - eps) * (counts + a0 * pi_t) / ((t - columns[:t]) + a0))
                if rho:
                    pred += rho * (x[:a, t - 1] == xt)[:, None]
                running[:a, :t] += np.log(pred)
            running[:a, t] = log_pi[xt]
            seg_ll[t, :a, :t + 1] = running[:a, :t + 1]
            # Segment s..t is allowed when it and the segment before it are at least m long:
            # s = 0 (a short first segment is only used when it is the whole timeline) or m <= s <= t + 1 - m.
            score = forward[:a, :t + 1] + running[:a, :t + 1] + start_penalty[:t + 1]
            score[:, 1:min(m, t + 1)] = -np.inf
            score[:, max(t + 2 - m, 1):] = -np.inf
            forward[:a, t + 1] = _logsumexp(score)
        # backward[:, s]: log p(events s..end | a segment starts at s).
        backward = np.full((n_rows, width + 1), -np.inf)
        backward[np.arange(n_rows), lengths] = 0.0
        end_penalty = np.where(columns[None, :] + 1 < lengths[:, None], log_change, 0.0)
        for s in range(width - 1, -1, -1):
            a = n_active[s]
            terms = seg_ll[s:, :a, s].T + backward[:a, s + 1:] + end_penalty[:a, s:]
            terms[:, :m - 1] = -np.inf  # segment s..t shorter than m
            if s == 0 and m > 1:  # ... unless it is the whole (short) timeline
                short = lengths[:a] < m
                terms[short, lengths[:a][short] - 1] = (seg_ll[lengths[:a][short] - 1, np.flatnonzero(short), 0])
            terms[~inside[:a, s:]] = -np.inf
            backward[:a, s] = _logsumexp(terms)
        total = forward[np.arange(n_rows), lengths]
        posterior = np.exp(forward[:, :width] + log_change + backward[:, :width] - total[:, None])
        posterior[:, 0] = 0.0
        posterior[~inside] = 0.0
        return np.minimum(posterior, 1.0)


def _logsumexp(values: np.ndarray) -> np.ndarray:
    """Row-wise log(sum(exp)) that returns -inf for rows of -inf."""
    peak = values.max(axis=1)
    safe = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(values - safe[:, None]).sum(axis=1)) + safe


def match_shift_points(true: pd.DataFrame, found: pd.DataFrame, tolerance: int = 2) -> dict:
    """Precision and recall of ``found`` against ``true`` shift points within ``±tolerance`` events.

    Both frames have ``user`` and ``position``. Matching is one-to-one and greedy by distance, so
    two detections near one true shift count one hit and one false alarm.
    """
    pairs = true.reset_index(drop=True).rename_axis("true_id").reset_index().merge(
        found.reset_index(drop=True).rename_axis("found_id").reset_index(), on="user", suffixes=("_true", "_found")
    )
    pairs["distance"] = (pairs["position_true"] - pairs["position_found"]).abs()
    pairs = pairs[pairs["distance"] <= tolerance].sort_values(["distance", "true_id", "found_id"], kind="stable")
    used_true, used_found, hits = set(), set(), 0
    for true_id, found_id in zip(pairs["true_id"].to_numpy(), pairs["found_id"].to_numpy()):
        if true_id in used_true or found_id in used_found:
            continue
        used_true.add(true_id)
        used_found.add(found_id)
        hits += 1
    precision = hits / len(found) if len(found) else float("nan")
    recall = hits / len(true) if len(true) else float("nan")
    return {"hits": hits, "true": len(true), "found": len(found), "precision": precision, "recall": recall}
