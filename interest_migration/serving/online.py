"""Recommendations that react to the last click, from a trained model and no retraining.

:class:`OnlineRecommender` keeps each user's recent history in memory (bounded to the model's
``MAX_ITEM_LIST_LENGTH``, seeded from the dataset the model was trained on), appends every
observed event to it, and scores the current history with the model's own
``full_sort_predict``. Any RecBole sequential model works (SASRec, GRU4Rec, ...);
InterestShiftCNN also reports its predicted migration (``p_shift`` and the next categories).

Concurrent :meth:`~OnlineRecommender.recommend` calls are micro-batched: the caller that finds
the model idle scores every request waiting at that moment, so under load one forward pass
serves many callers, and at low load nothing waits for a batch to fill or for another thread.
"""
from __future__ import annotations

import collections
import copy
import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: how the response says where its items came from
SOURCE_MODEL = "model"
SOURCE_POPULARITY = "popularity"
#: longest user or item id an event may carry
MAX_TOKEN_LENGTH = 256
#: causal (InterestShiftCNN, GRU4Rec) or padding-masked (SASRec) at the last real position
_PADDING_INSENSITIVE = frozenset({"InterestShiftCNN", "GRU4Rec", "SASRec"})


@dataclass(frozen=True)
class Event:
    """One validated event, in both the caller's tokens and the model's internal ids."""

    user: str
    item: str
    behavior: str | None
    ts: float
    item_id: int
    behavior_id: int
    model_ts: float

    def as_record(self) -> dict:
        return {"user": self.user, "item": self.item, "behavior": self.behavior, "ts": self.ts}


class _History:
    """One user's bounded recent events, and the items they touched online (for ``exclude_seen``).

    ``uid`` is the user's internal id in the dataset (0 for a user the data never saw); the
    items they touched there are a row of the dataset's interaction matrix.
    """

    __slots__ = ("items", "behaviors", "times", "seen", "uid")

    def __init__(self, max_len: int, uid: int = 0):
        self.items = collections.deque(maxlen=max_len)
        self.behaviors = collections.deque(maxlen=max_len)
        self.times = collections.deque(maxlen=max_len)
        self.seen: set[int] = set()
        self.uid = uid

    def append(self, item_id: int, behavior_id: int, model_ts: float) -> None:
        self.items.append(item_id)
        self.behaviors.append(behavior_id)
        self.times.append(model_ts)
        self.seen.add(item_id)


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass
class _Request:
    user: str
    k: int
    exclude_seen: bool
    items: list
    behaviors: list
    times: list
    seen: list
    result: dict | None = None
    error: BaseException | None = None
    finished: bool = False
    # released once: when the request is finished, or when its caller is handed the lead of the
    # next batch. A lock created held is CPython's cheapest hand-off between threads (threading.Event's
    # set and wait each go through a Condition, in Python, under the contended GIL).
    wake: threading.Lock = field(default_factory=_held_lock)

    def finish(self, result: dict | None = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.finished = result, error, True
        self.wake.release()


class OnlineRecommender:
    """A trained sequential model serving users whose histories grow with every event.

    Args:
        config, model, dataset: RecBole's ``Config``, the trained model and the dataset it was
            trained on (the full dataset, as ``load_data_and_model`` returns it).
        batching: micro-batch concurrent :meth:`recommend` calls (see :meth:`_batched`).
        max_batch: the largest micro-batch.
        trace: score with the model traced into one graph (see :mod:`.traced`), after checking
            that it agrees with the model; False, or a failed check, scores eagerly.
    """

    def __init__(self, config, model, dataset, *, batching: bool = True, max_batch: int = 64, trace: bool = True):
        from recbole.data.interaction import Interaction

        if not hasattr(model, "ITEM_SEQ"):
            raise ValueError(
                f"{type(model).__name__} is not a sequential model: it has no history to update online "
                "(serve a RecBole sequential model, e.g. InterestShiftCNN, SASRec or GRU4Rec)"
            )
        if not isinstance(dataset.inter_feat, Interaction):
            raise ValueError(
                "OnlineRecommender needs the dataset after data_preparation (as run_recbole, "
                "load_data_and_model and interest_migration.checkpoint.load return it), not create_dataset's"
            )
        self.config = config
        self.model = model.eval()
        self.dataset = dataset
        self.max_len = int(model.max_seq_length)
        self.n_items = int(dataset.item_num)
        self.uid_field = dataset.uid_field
        self.iid_field = dataset.iid_field
        self.time_field = dataset.time_field
        self.item_tokens = dataset.field2id_token[self.iid_field]
        self._item_ids = dataset.field2token_id[self.iid_field]
        self._init_behavior(config, dataset)
        self._init_migration(model, dataset)
        self._ts_offset, self._ts_scale = _time_transform(config, model, dataset)
        self.batching = batching
        self.max_batch = int(max_batch)

        self._lock = threading.Lock()
        self._histories: dict[str, _History] = {}
        self._popular_ids, self._popular_scores = self._seed_from_dataset()
        self._queue: collections.deque[_Request] = collections.deque()
        self._queue_lock = threading.Lock()
        self._scoring = False  # a caller leads: it scores batches until its own result is in
        self.batch_sizes: collections.Counter[int] = collections.Counter()  # micro-batch size -> count

        self._scorer = self._traced_scorer() if trace else None

        self.event_log = None
        self.n_replayed = 0

    def attach_log(self, event_log) -> None:
        """Replay ``event_log`` (an :class:`~interest_migration.serving.event_log.EventLog`) into
        the histories; from then on every observed event is written to it before being acknowledged.
        """
        if self.event_log is not None:
            raise RuntimeError(f"an event log is already attached: {self.event_log.path}")
        for line_no, record in event_log.replay():
            try:
                event = self.validate_event(record)
            except ValueError as exc:
                raise ValueError(f"{event_log.path}, line {line_no}: {exc}") from None
            with self._lock:
                self._apply(event)
            self.n_replayed += 1
        if self.n_replayed:
            logger.info("replayed %d events from %s", self.n_replayed, event_log.path)
        self.event_log = event_log

    @classmethod
    def load(cls, checkpoint, *, trust_pickle: bool = False, data_path=None, **kwargs) -> "OnlineRecommender":
        """Build from a checkpoint: a safe one (see :mod:`interest_migration.checkpoint`), or a
        RecBole pickle one with ``trust_pickle=True``; ``kwargs`` go to the constructor."""
        from interest_migration import checkpoint as checkpoint_format

        loaded = checkpoint_format.load(checkpoint, trust_pickle=trust_pickle, data_path=data_path)
        return cls(loaded.config, loaded.model, loaded.dataset, **kwargs)

    @property
    def traced(self) -> bool:
        """Whether recommendations are scored by the traced graph (else by the eager model)."""
        return self._scorer is not None

    def log_header(self) -> dict:
        """What an event log must match to be replayed into this recommender."""
        return {"dataset": str(self.config["dataset"]), "item_field": self.iid_field, "n_items": self.n_items}

    # ----------------------------------------------------------------- set-up
    def _init_behavior(self, config, dataset) -> None:
        field = _config_get(config, "BEHAVIOR_FIELD")
        has_field = field is not None and field in dataset.inter_feat
        self.behavior_field = field if has_field else None
        self._behavior_ids = dataset.field2token_id[field] if has_field else {}
        self.default_behavior = None
        if has_field:  # an event without a behaviour is taken as the commonest one (a page view)
            counts = torch.bincount(dataset.inter_feat[field].flatten(), minlength=len(self._behavior_ids))
            counts[0] = -1
            self.default_behavior = str(dataset.field2id_token[field][int(counts.argmax())])

    def _init_migration(self, model, dataset) -> None:
        from interest_migration.export import has_migration

        self._n_next = None

        self.migrates = has_migration(model)
        self.category_tokens = dataset.field2id_token[model.CATEGORY_FIELD] if self.migrates else None
        if self.migrates:
            self._n_next = min(int(model.migration_top_k), int(model.category_has_items.sum()))
        # models whose output at the last real position ignores right padding (causal or masked):
        # their batches are padded to the longest history, not to MAX_ITEM_LIST_LENGTH
        self._trim_padding = type(model).__name__ in _PADDING_INSENSITIVE

    def _traced_scorer(self):
        from interest_migration.serving.traced import TracedScorer

        histories = [h for h in itertools.islice(self._histories.values(), 32) if h.items]
        if not histories:
            return None

        def batch(selected):
            return self.interaction([(list(h.items), list(h.behaviors), list(h.times)) for h in selected])

        probes = [batch(histories[:1]), batch(histories[1:4] or histories), batch(histories)]
        return TracedScorer.build(self.model, batch(histories[:8]), probes, n_next=self._n_next)

    def _seed_from_dataset(self):
        """Each known user's last ``max_len`` events, what they have seen, and item popularity.

        The sequences are the ones :mod:`interest_migration.export` scores in its ``latest``
        context: each user's last row of RecBole's augmented data with its target appended.
        """
        from interest_migration.export import _append_targets, _last_row_per_user

        dataset, suffix = self.dataset, self.config["LIST_SUFFIX"]
        self._seen_matrix = dataset.inter_matrix(form="csr")  # user x item, every interaction
        counts = np.asarray(self._seen_matrix.sum(axis=0)).ravel()
        counts[0] = 0
        popular = np.argsort(-counts, kind="stable")
        popular = popular[counts[popular] > 0]
        popular_scores = counts[popular] / max(float(counts.sum()), 1.0)

        users, rows = _last_row_per_user(dataset.inter_feat, self.uid_field)
        rows = _append_targets(dataset.inter_feat[torch.from_numpy(rows)], dataset)
        lengths = rows[dataset.item_list_length_field].numpy()
        items = rows[self.iid_field + suffix].numpy()
        times = rows[self.time_field + suffix].numpy().astype(np.float64)
        if self.behavior_field is not None:
            behaviors = rows[self.behavior_field + suffix].numpy()
        else:
            behaviors = np.zeros_like(items)
        user_tokens = dataset.field2id_token[self.uid_field]
        for uid, n, item_row, behavior_row, time_row in zip(users, lengths, items, behaviors, times):
            history = _History(self.max_len, int(uid))
            history.items.extend(item_row[:n].tolist())
            history.behaviors.extend(behavior_row[:n].tolist())
            history.times.extend(time_row[:n].tolist())
            self._histories[str(user_tokens[uid])] = history
        logger.info("seeded %d user histories from dataset %s", len(self._histories), self.config["dataset"])
        return popular, popular_scores

    # ----------------------------------------------------------------- events
    def validate_event(self, event: dict) -> Event:
        """Check one event dict (``user``, ``item``, optional ``behavior`` and ``ts``).

        Raises ValueError naming the field and what was expected; the item and behaviour must be
        ones the model knows. Integer user and item ids are taken as their decimal tokens.
        """
        user = _token(event.get("user"), "user")
        item = _token(event.get("item"), "item")
        behavior, ts = event.get("behavior"), event.get("ts")
        item_id = self._item_ids.get(item, 0)
        if item_id == 0:
            raise ValueError(f"unknown item {_short(item)}: the model's catalogue ({self.n_items - 1} items) lacks it")
        if behavior is not None and not isinstance(behavior, str):
            raise ValueError(f"'behavior' must be a string or null, got {_short(behavior)}")
        behavior_id = 0
        if self.behavior_field is not None:
            behavior = self.default_behavior if behavior is None else behavior
            behavior_id = self._behavior_ids.get(behavior, 0)
            if behavior_id == 0:
                known = sorted(b for b in self._behavior_ids if b != "[PAD]")
                raise ValueError(f"unknown behavior {_short(behavior)}: expected one of {known}")
        if ts is None:
            ts = time.time()
        try:
            if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
                raise ValueError
            ts = float(ts)
        except (ValueError, OverflowError):
            raise ValueError(
                f"'ts' must be a finite number (the dataset's time unit) or null, got {_short(ts)}"
            ) from None
        return Event(user, item, behavior, ts, item_id, behavior_id, (ts - self._ts_offset) / self._ts_scale)

    def observe(self, user: str, item: str, behavior: str | None = None, ts: float | None = None) -> int:
        """Append one event to ``user``'s history; return its sequence number in the event log."""
        return self.observe_many([{"user": user, "item": item, "behavior": behavior, "ts": ts}])

    def observe_many(self, events: list) -> int:
        """Append events in order, all or none: one invalid event rejects the whole batch.

        With an event log, the events are written to it (and fsynced, per its policy) before
        this returns. Returns the sequence number of the last event (0 without a log).
        """
        validated = []
        for index, event in enumerate(events):
            try:
                validated.append(self.validate_event(event))
            except ValueError as exc:
                raise ValueError(f"event {index}: {exc}" if len(events) > 1 else str(exc)) from None
        with self._lock:
            ticket = self.event_log.append([e.as_record() for e in validated]) if self.event_log else 0
            seq = self.event_log.n_events if self.event_log else 0
            for event in validated:
                self._apply(event)
        if self.event_log is not None:
            self.event_log.sync(ticket)
        return seq

    def _apply(self, event: Event) -> None:
        history = self._histories.get(event.user)
        if history is None:
            history = self._histories[event.user] = _History(self.max_len)
        history.append(event.item_id, event.behavior_id, event.model_ts)

    def history(self, user: str) -> list[dict]:
        """The user's kept history, oldest first, in external tokens (for inspection and tests)."""
        with self._lock:
            history = self._histories.get(user)
            rows = list(zip(history.items, history.behaviors, history.times)) if history else []
        behavior_tokens = self.dataset.field2id_token[self.behavior_field] if self.behavior_field else None
        return [
            {
                "item": str(self.item_tokens[item]),
                "behavior": str(behavior_tokens[behavior]) if behavior_tokens is not None else None,
                "ts": ts * self._ts_scale + self._ts_offset,
            }
            for item, behavior, ts in rows
        ]

    @property
    def n_users(self) -> int:
        return len(self._histories)

    # ----------------------------------------------------------------- recommending
    def recommend(self, user: str, k: int = 10, exclude_seen: bool = True) -> dict:
        """Top-``k`` items for ``user`` given every event observed so far.

        Returns a dict: ``user``, ``source`` (``"model"``, or ``"popularity"`` for a user with no
        history yet), ``items`` (tokens), ``scores`` (the model's ``full_sort_predict`` values:
        log-probabilities for InterestShiftCNN; interaction shares for popularity),
        ``history_length``, and for InterestShiftCNN ``p_shift``, ``current_category`` and
        ``next_categories`` (``[{"category", "prob"}]``); those are null otherwise.
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        with self._lock:
            history = self._histories.get(user)
            if history is None or not history.items:
                return self._popular(user, k)
            request = _Request(
                user,
                k,
                exclude_seen,
                list(history.items),
                list(history.behaviors),
                list(history.times),
                self._seen_items(history) if exclude_seen else [],
            )
        if self.batching:
            self._batched(request)
        else:
            self._run_batch([request])
        if request.error is not None:
            raise request.error
        return request.result

    def _seen_items(self, history: _History) -> list[int]:
        seen = list(history.seen)
        if history.uid:
            matrix = self._seen_matrix
            seen.extend(matrix.indices[matrix.indptr[history.uid] : matrix.indptr[history.uid + 1]].tolist())
        return seen

    def _popular(self, user: str, k: int) -> dict:
        return {
            "user": user,
            "source": SOURCE_POPULARITY,
            "items": [str(t) for t in self.item_tokens[self._popular_ids[:k]]],
            "scores": [float(s) for s in self._popular_scores[:k]],
            "history_length": 0,
            "p_shift": None,
            "current_category": None,
            "next_categories": None,
        }

    def _batched(self, request: _Request) -> None:
        """Leader/follower micro-batching: no worker thread, no waiting for a batch to fill.

        A caller that finds nobody scoring leads: it runs the model on every request queued so
        far (its own included) until its own result is in, then hands the lead to the oldest
        request still queued by waking that caller alone (waking every waiter would cost a GIL
        round-trip per waiting thread per batch). Alone, a caller scores its own request at
        once; under load one forward pass serves many callers.
        """
        with self._queue_lock:
            self._queue.append(request)
            leading = not self._scoring
            self._scoring = True
        if not leading:
            request.wake.acquire()
            if request.finished:
                return
        while not request.finished:
            with self._queue_lock:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
                self.batch_sizes[len(batch)] += 1
            self._run_batch(batch)
        with self._queue_lock:
            if self._queue:
                self._queue[0].wake.release()
            else:
                self._scoring = False

    def _run_batch(self, batch: list[_Request]) -> None:
        try:
            results = self._score(batch)
        except BaseException as exc:  # every caller in the batch hears about it, not only the leader
            for request in batch:
                request.finish(error=exc)
            return
        for request, result in zip(batch, results):
            request.finish(result)

    def interaction(self, histories: list[tuple[list, list, list]]):
        """The model's input for a batch of ``(item_ids, behavior_ids, model_times)`` histories."""
        from recbole.data.interaction import Interaction

        model, batch = self.model, len(histories)
        lengths = torch.tensor([len(h[0]) for h in histories], dtype=torch.long)
        # at least 2 columns: InterestShiftCNN's time-gap buckets come out empty for a 1-column input
        width = min(max(int(lengths.max()), 2), self.max_len) if self._trim_padding else self.max_len

        def padded(column: int, dtype: torch.dtype) -> torch.Tensor:
            tensor = torch.zeros(batch, width, dtype=dtype)
            rows = tensor.numpy()  # shares memory; numpy fills a row from a list without per-row tensors
            for row, history in enumerate(histories):
                rows[row, : len(history[column])] = history[column]
            return tensor

        fields = {model.ITEM_SEQ: padded(0, torch.long), model.ITEM_SEQ_LEN: lengths}
        if getattr(model, "use_behavior", False):
            fields[model.BEHAVIOR_SEQ] = padded(1, torch.long)
        if getattr(model, "use_time", False):
            fields[model.TIME_SEQ] = padded(2, self.dataset.inter_feat[self.time_field].dtype)
        return Interaction(fields)

    def _predict(self, interaction):
        """``full_sort_predict`` scores, and for InterestShiftCNN the predicted migration too,
        from one encoder pass (``full_sort_predict_with_migration``)."""
        if self._scorer is not None:
            return self._scorer(interaction)
        if not self.migrates:
            return self.model.full_sort_predict(interaction), None
        return self.model.full_sort_predict_with_migration(interaction, self._n_next)

    @torch.inference_mode()
    def _score(self, batch: list[_Request]) -> list[dict]:
        interaction = self.interaction([(r.items, r.behaviors, r.times) for r in batch])
        scores, migration = self._predict(interaction)
        scores = scores.reshape(len(batch), -1).float()
        scores[:, 0] = -math.inf  # padding item
        seen_rows = [row for row, request in enumerate(batch) for _ in request.seen]
        if seen_rows:
            seen_items = [item for request in batch for item in request.seen]
            scores[torch.tensor(seen_rows), torch.tensor(seen_items)] = -math.inf
        k = min(max(r.k for r in batch), self.n_items - 1)
        top_scores, top_ids = (t.numpy() for t in scores.topk(k, dim=1))
        if migration is not None:  # one conversion per batch, not one per user and value
            p_shift = migration["p_shift"].tolist()
            current = self.category_tokens[migration["current_category"].numpy()]
            next_tokens = self.category_tokens[migration["top_categories"].numpy()]
            next_probs = migration["top_category_probs"].tolist()

        results = []
        for row, request in enumerate(batch):
            row_scores, row_ids = top_scores[row, : request.k], top_ids[row, : request.k]
            keep = np.isfinite(row_scores)
            result = {
                "user": request.user,
                "source": SOURCE_MODEL,
                "items": [str(t) for t in self.item_tokens[row_ids[keep]]],
                "scores": row_scores[keep].tolist(),
                "history_length": len(request.items),
                "p_shift": None,
                "current_category": None,
                "next_categories": None,
            }
            if migration is not None:
                result["p_shift"] = p_shift[row]
                result["current_category"] = str(current[row])
                result["next_categories"] = [
                    {"category": str(c), "prob": p} for c, p in zip(next_tokens[row], next_probs[row])
                ]
            results.append(result)
        return results

    def close(self) -> None:
        """Close the event log, if any; recommendations from memory keep working."""
        if self.event_log is not None:
            self.event_log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _token(value, name: str) -> str:
    """A user or item id as the string token RecBole keys it by."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > MAX_TOKEN_LENGTH:
        raise ValueError(
            f"'{name}' must be a non-empty string (or integer) of at most {MAX_TOKEN_LENGTH} characters, "
            f"got {_short(value)}"
        )
    return value


def _config_get(config, key):
    """``config[key]``, or None when absent (RecBole's Config returns None; a plain dict raises)."""
    try:
        return config[key]
    except KeyError:
        return None


def _time_transform(config, model, dataset) -> tuple[float, float]:
    """``(offset, scale)`` mapping an event's raw timestamp to the value the model was trained on.

    Identity unless the dataset config min-max normalises the time field (RecBole's ml-100k
    preset sets ``normalize_all: True``); then the raw minimum and maximum are recovered by
    rebuilding the dataset once without normalisation: the values RecBole used, after filtering.
    """
    field = dataset.time_field
    normalized = bool(_config_get(config, "normalize_all")) or field in (_config_get(config, "normalize_field") or [])
    if not normalized or not getattr(model, "use_time", False):
        return 0.0, 1.0
    discretized = _config_get(config, "discretization") or {}
    if field in discretized:
        raise ValueError(
            f"the model reads the time field {field!r}, which the dataset config discretises "
            "(discretization); online events cannot be mapped to its buckets: retrain without it"
        )
    from recbole.data.dataset import Dataset

    raw_config = copy.deepcopy(config)
    raw_config["normalize_all"] = None
    raw_config["normalize_field"] = None
    raw = np.asarray(Dataset(raw_config).inter_feat[field], dtype=np.float64)  # filtered, not augmented
    low, high = float(raw.min()), float(raw.max())
    logger.info("time field %r is min-max normalised: mapping event timestamps with [%s, %s]", field, low, high)
    return low, (high - low) or 1.0
