"""One instrumented ``run_recbole``: the metrics RecBole returns plus what it costs.

RecBole's ``run_recbole`` returns only metrics. To report cost next to them without copying
RecBole's pipeline, the trainer it builds is swapped, for the duration of one call, for a
subclass that times each training epoch and each evaluation and counts the parameters.

The same subclass keeps the per-user metrics of the last evaluation (the test set) and, when
the config key ``exclude_seen_items`` is set, decides which items full ranking may return:

* ``exclude_seen_items: True``: every item the user interacted with before the target (the
  training part, plus the validation part at test time) is excluded, for general *and*
  sequential models alike (RecBole masks only for general models);
* ``exclude_seen_items: False``: nothing is excluded, for any model (RecBole would otherwise
  mask a general model's history, which on repeat-heavy data leaves it the answer);
* unset: RecBole's own behaviour.
"""
from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class RunRecord:
    model: str
    dataset: str
    best_valid: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    epoch_seconds: list = field(default_factory=list)
    #: CPU seconds of this process per training epoch: on a shared machine wall time measures the
    #: other jobs as much as the model, CPU time much less so
    epoch_cpu_seconds: list = field(default_factory=list)
    eval_seconds: list = field(default_factory=list)
    n_params: int = 0
    checkpoint: str | None = None
    peak_rss_mb: float = 0.0
    #: per-user metrics of the test evaluation: {"user_id": [tokens], "ndcg@10": [...], ...}
    per_user: dict | None = field(default=None, repr=False)

    @property
    def epochs(self) -> int:
        return len(self.epoch_seconds)

    @property
    def seconds_per_epoch(self) -> float:
        return sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else 0.0

    @property
    def cpu_seconds_per_epoch(self) -> float:
        cpu = self.epoch_cpu_seconds
        return sum(cpu) / len(cpu) if cpu else 0.0

    @property
    def train_seconds(self) -> float:
        return sum(self.epoch_seconds)

    @property
    def test_eval_seconds(self) -> float:
        """The last evaluation run_recbole makes is the test one."""
        return self.eval_seconds[-1] if self.eval_seconds else 0.0

    def as_dict(self) -> dict:
        row = asdict(self)
        row.update(
            epochs=self.epochs,
            seconds_per_epoch=self.seconds_per_epoch,
            cpu_seconds_per_epoch=self.cpu_seconds_per_epoch,
            train_seconds=self.train_seconds,
            test_eval_seconds=self.test_eval_seconds,
        )
        return row


def _peak_rss_mb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def user_item_matrix(dataset):
    """Which items each user has in ``dataset`` (a split), as a boolean CSR [user_num, item_num].

    A sequential dataset's rows are (history, target) pairs, so its item lists are read too: a
    user's first item is never a target.
    """
    import scipy.sparse as sp

    inter = dataset.inter_feat
    users = [inter[dataset.uid_field].numpy()]
    items = [inter[dataset.iid_field].numpy()]
    list_field = dataset.iid_field + dataset.config["LIST_SUFFIX"]
    if list_field in inter.interaction:
        lists = inter[list_field].numpy()
        real = lists > 0
        users.append(np.broadcast_to(users[0][:, None], lists.shape)[real])
        items.append(lists[real])
    users, items = np.concatenate(users), np.concatenate(items)
    matrix = sp.csr_matrix(
        (np.ones(len(users), dtype=bool), (users, items)), shape=(dataset.user_num, dataset.item_num)
    )
    matrix.sum_duplicates()
    return matrix


def per_user_metrics(config, struct) -> dict:
    """Each top-k metric of ``config["metrics"]`` per evaluated row, with RecBole's own metric code."""
    import inspect

    from recbole.evaluator.base_metric import TopkMetric
    from recbole.evaluator.register import metrics_dict

    out = {}
    for name in config["metrics"]:
        metric = metrics_dict[name.lower()](config)
        if not isinstance(metric, TopkMetric):
            continue
        pos_index, pos_len = metric.used_info(struct)
        wants_len = len(inspect.signature(metric.metric_info).parameters) > 1  # Hit, MRR, Precision: no pos_len
        values = metric.metric_info(pos_index, pos_len) if wants_len else metric.metric_info(pos_index)
        for k in config["topk"]:
            out[f"{name.lower()}@{k}"] = values[:, k - 1].astype(float)
    return out


def _timed_trainer(trainer_cls, record: RunRecord):
    class TimedTrainer(trainer_cls):
        def __init__(self, config, model):
            super().__init__(config, model)
            record.n_params = sum(p.numel() for p in model.parameters())
            record.checkpoint = getattr(self, "saved_model_file", None)
            self._seen_items = None
            self._eval_users = []
            self._last_struct = None
            collect = self.eval_collector.get_data_struct

            def keep_struct():
                self._last_struct = collect()
                return self._last_struct

            self.eval_collector.get_data_struct = keep_struct

        def _full_sort_batch_eval(self, batched_data):
            interaction, history_index, positive_u, positive_i = batched_data
            users = interaction[self.config["USER_ID_FIELD"]]
            exclude = self.config["exclude_seen_items"]
            if exclude is not None:
                history_index = self._seen_index(users) if exclude else None
            self._eval_users.append(users.cpu().numpy())
            return super()._full_sort_batch_eval((interaction, history_index, positive_u, positive_i))

        def _seen_index(self, users):
            if self._seen_items is None:
                raise RuntimeError(
                    "exclude_seen_items is set but the evaluation data carries no seen-item matrix; "
                    "run the model through interest_migration.experiment.run_model"
                )
            import torch

            rows = self._seen_items[users.cpu().numpy()].tocoo()
            return torch.from_numpy(rows.row.astype(np.int64)), torch.from_numpy(rows.col.astype(np.int64))

        def _train_epoch(self, *args, **kwargs):
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                return super()._train_epoch(*args, **kwargs)
            finally:
                record.epoch_seconds.append(time.perf_counter() - start)
                record.epoch_cpu_seconds.append(time.process_time() - cpu_start)

        def evaluate(self, eval_data, *args, **kwargs):
            self._seen_items = getattr(eval_data, "seen_items", None)
            self._eval_users = []
            start = time.perf_counter()
            try:
                result = super().evaluate(eval_data, *args, **kwargs)
            finally:
                record.eval_seconds.append(time.perf_counter() - start)
            if self._last_struct is not None and self._eval_users:
                ids = np.concatenate(self._eval_users)
                tokens = eval_data._dataset.field2id_token[self.config["USER_ID_FIELD"]][ids]
                metrics = per_user_metrics(self.config, self._last_struct)
                record.per_user = {"user_id": [str(t) for t in tokens], **{k: v.tolist() for k, v in metrics.items()}}
            return result

    TimedTrainer.__name__ = TimedTrainer.__qualname__ = trainer_cls.__name__
    return TimedTrainer


def _prepare_with_seen_items(original):
    """``data_preparation`` that gives the valid and test loaders the items seen before their targets."""

    def data_preparation(config, dataset):
        train_data, valid_data, test_data = original(config, dataset)
        if config["exclude_seen_items"]:
            seen = user_item_matrix(train_data._dataset)
            valid_data.seen_items = seen
            test_data.seen_items = seen + user_item_matrix(valid_data._dataset)
        return train_data, valid_data, test_data

    return data_preparation


@contextlib.contextmanager
def _instrumented_trainers(record: RunRecord):
    from recbole.quick_start import quick_start

    original = quick_start.get_trainer
    original_preparation = quick_start.data_preparation
    quick_start.get_trainer = lambda model_type, model_name: _timed_trainer(original(model_type, model_name), record)
    quick_start.data_preparation = _prepare_with_seen_items(original_preparation)
    try:
        yield
    finally:
        quick_start.get_trainer = original
        quick_start.data_preparation = original_preparation


def run_model(model: str, dataset: str, config_file_list=None, config_dict=None, saved: bool = True) -> RunRecord:
    """Train and evaluate ``model`` through RecBole's own ``run_recbole``, recording the cost."""
    import interest_migration  # noqa: F401  (registration and compat)
    from interest_migration.compat import get_model_class
    from recbole.quick_start import run_recbole

    get_model_class(model)
    record = RunRecord(model=model, dataset=dataset)
    with _instrumented_trainers(record):
        result = run_recbole(
            model=model,
            dataset=dataset,
            config_file_list=config_file_list,
            config_dict=config_dict,
            saved=saved,
        )
    record.best_valid = dict(result["best_valid_result"] or {})
    record.test = dict(result["test_result"] or {})
    record.peak_rss_mb = _peak_rss_mb()
    return record
