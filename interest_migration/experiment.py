"""One instrumented ``run_recbole``: the metrics RecBole returns plus what it costs.

RecBole's ``run_recbole`` returns only metrics. To report cost next to them without copying
RecBole's pipeline, the trainer it builds is swapped, for the duration of one call, for a
subclass that times each training epoch and each evaluation and counts the parameters.
"""
from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import asdict, dataclass, field


@dataclass
class RunRecord:
    model: str
    dataset: str
    best_valid: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    epoch_seconds: list = field(default_factory=list)
    eval_seconds: list = field(default_factory=list)
    n_params: int = 0
    checkpoint: str | None = None
    peak_rss_mb: float = 0.0

    @property
    def epochs(self) -> int:
        return len(self.epoch_seconds)

    @property
    def seconds_per_epoch(self) -> float:
        return sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else 0.0

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
            train_seconds=self.train_seconds,
            test_eval_seconds=self.test_eval_seconds,
        )
        return row


def _peak_rss_mb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _timed_trainer(trainer_cls, record: RunRecord):
    class TimedTrainer(trainer_cls):
        def __init__(self, config, model):
            super().__init__(config, model)
            record.n_params = sum(p.numel() for p in model.parameters())
            record.checkpoint = getattr(self, "saved_model_file", None)

        def _train_epoch(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super()._train_epoch(*args, **kwargs)
            finally:
                record.epoch_seconds.append(time.perf_counter() - start)

        def evaluate(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super().evaluate(*args, **kwargs)
            finally:
                record.eval_seconds.append(time.perf_counter() - start)

    TimedTrainer.__name__ = TimedTrainer.__qualname__ = trainer_cls.__name__
    return TimedTrainer


@contextlib.contextmanager
def _instrumented_trainers(record: RunRecord):
    from recbole.quick_start import quick_start

    original = quick_start.get_trainer
    quick_start.get_trainer = lambda model_type, model_name: _timed_trainer(original(model_type, model_name), record)
    try:
        yield
    finally:
        quick_start.get_trainer = original


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
