"""Multi-process training (``recbole.quick_start.run(..., nproc=N)``) with the plugin, on CPU and GPUs.

RecBole 1.2.1 trains with PyTorch DistributedDataParallel when ``nproc > 1`` or ``world_size > 0``,
but only with NCCL on CUDA devices, and its evaluation across ranks is wrong in several ways (on
GPUs too). Each function below fixes one problem, names the RecBole version it works around and
is safe to call twice; :func:`apply` (called from :func:`interest_migration.compat.apply`) runs
them all. They only change RecBole's behaviour inside a multi-process run: a single-process run
goes through RecBole's own code unchanged.

New config key: ``dist_backend`` (``gloo`` or ``nccl``). Default: ``nccl`` when CUDA devices are
visible (RecBole's own path, untouched), else ``gloo`` on CPU.
"""
from __future__ import annotations

import importlib
import os
import sys

import torch
import torch.distributed as dist

BACKENDS = ("gloo", "nccl")
_QUICK_START = "recbole.quick_start.quick_start"
_FIXES = "__interest_migration_fixes__"
_ORIGINAL_RUN_RECBOLES = []  # RecBole's own spawn target, kept once its module is imported


def _patch(owner, name: str, fix: str, make) -> None:
    """Replace ``owner.name`` by ``make(original)``, once per ``fix`` even if called again."""
    original = getattr(owner, name)
    done = getattr(original, _FIXES, frozenset())
    if fix in done:
        return
    patched = make(original)
    patched.__wrapped__ = original
    setattr(patched, _FIXES, done | {fix})
    setattr(owner, name, patched)


def _cores() -> int:
    """Cores this process may run on (a container or ``taskset`` can give fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _in_group(config) -> bool:
    return not config["single_spec"] and dist.is_available() and dist.is_initialized()


def choose_backend(config_dict: dict) -> str:
    """The process-group backend of a run: ``dist_backend`` if set, else nccl with CUDA, else gloo."""
    backend = config_dict.get("dist_backend")
    cuda = bool(str(config_dict.get("gpu_id", ""))) and torch.cuda.is_available()
    if backend is None:
        return "nccl" if cuda else "gloo"
    backend = str(backend).lower()
    if backend not in BACKENDS:
        raise ValueError(f"config key dist_backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "nccl" and not cuda:
        raise ValueError(
            "config key dist_backend: nccl needs CUDA devices and none is visible "
            f"(gpu_id={config_dict.get('gpu_id')!r}); use dist_backend: gloo to train on CPU"
        )
    return backend


def use_gloo_on_cpu() -> None:
    """RecBole 1.2.1 ``Config._init_device`` always starts an NCCL group on CUDA devices.

    With the gloo backend, start a gloo group instead, keep the model on the CPU and give each
    process ``cores // nproc`` threads (torch would give every process all cores). The NCCL path
    is RecBole's own.
    """
    from recbole.config import Config

    def make(original):
        def _init_device(self):
            cfg = self.final_config_dict
            if "local_rank" not in cfg or choose_backend(cfg) == "nccl":
                return original(self)
            cfg["gpu_id"] = ""
            cfg["device"] = torch.device("cpu")
            cfg["single_spec"] = False
            torch.set_num_threads(max(1, _cores() // max(1, int(cfg["nproc"]))))
            dist.init_process_group(
                backend="gloo",
                rank=cfg["local_rank"] + cfg["offset"],
                world_size=cfg["world_size"],
                init_method=f"tcp://{cfg['ip']}:{cfg['port']}",
            )
            if cfg["local_rank"] != 0:  # as RecBole: only each machine's first process logs
                cfg["state"] = "error"
                cfg["show_progress"] = False
                cfg["verbose"] = False

        return _init_device

    _patch(Config, "_init_device", "gloo", make)


def ddp_on_cpu() -> None:
    """RecBole 1.2.1 ``AbstractTrainer.__init__`` wraps the model for CUDA only.

    ``DistributedDataParallel(device_ids=[rank])`` and ``SyncBatchNorm`` both refuse CPU modules:
    on CPU, wrap without ``device_ids`` and keep plain batch norm (each process normalises its
    own batch).
    """
    from torch.nn.parallel import DistributedDataParallel
    from recbole.trainer.trainer import AbstractTrainer

    def make(original):
        def __init__(self, config, model):
            if config["single_spec"] or config["device"].type != "cpu":
                return original(self, config, model)
            self.config = config
            self.model = model
            self.distributed_model = DistributedDataParallel(model)

        return __init__

    _patch(AbstractTrainer, "__init__", "ddp_on_cpu", make)


def run_recboles(rank, *args):
    """Spawn target of ``recbole.quick_start.run``: a fresh interpreter that imports the plugin first.

    ``mp.spawn`` starts each process from scratch, so the registration and fixes applied in the
    parent are gone; importing this module (which imports ``interest_migration``) brings them back
    before any RecBole code runs, then RecBole's own ``run_recboles`` takes over.
    """
    import interest_migration  # noqa: F401  (registration and compat in this process)

    importlib.import_module(_QUICK_START)  # runs the import hook, which records RecBole's target
    return _ORIGINAL_RUN_RECBOLES[0](rank, *args)


def _use_plugin_spawn_target(module) -> None:
    if module.run_recboles is not run_recboles:
        _ORIGINAL_RUN_RECBOLES[:] = [module.run_recboles]
        module.run_recboles = run_recboles


def spawn_plugin_workers() -> None:
    """RecBole 1.2.1 ``run`` spawns ``recbole.quick_start.quick_start.run_recboles``.

    Make :func:`run_recboles` the spawn target instead. ``recbole.quick_start`` imports ray
    (about 1.5 s and a warning), so it is patched when first imported rather than imported here.
    """
    module = sys.modules.get(_QUICK_START)
    if module is not None:
        _use_plugin_spawn_target(module)
    elif not any(isinstance(finder, _PatchOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport(_QUICK_START, _use_plugin_spawn_target))


class _PatchOnImport:
    """Meta-path finder that runs ``patch(module)`` right after ``name`` is first executed."""

    def __init__(self, name: str, patch):
        self.name = name
        self.patch = patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None:
            return spec
        exec_module, patch = spec.loader.exec_module, self.patch

        def exec_and_patch(module):
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch  # the loader object belongs to this spec only
        return spec


def create_dirs_race_free() -> None:
    """RecBole 1.2.1 ``ensure_dir`` checks then creates: ranks race on ``./log`` (``FileExistsError``)."""
    from recbole.utils import utils

    original = utils.ensure_dir
    if getattr(original, _FIXES, None):
        return

    def ensure_dir(dir_path):
        os.makedirs(dir_path, exist_ok=True)

    ensure_dir.__doc__ = original.__doc__
    setattr(ensure_dir, _FIXES, frozenset({"ensure_dir"}))
    # each of these modules bound the function by name at import
    for name in ("recbole.utils.utils", "recbole.utils", "recbole.utils.logger", "recbole.trainer.trainer",
                 "recbole.data.utils", "recbole.data.dataset.dataset"):
        module = importlib.import_module(name)
        if getattr(module, "ensure_dir", None) is original:
            module.ensure_dir = ensure_dir


def _eval_loader_classes():
    from recbole.data.dataloader import FullSortEvalDataLoader, NegSampleEvalDataLoader

    return FullSortEvalDataLoader, NegSampleEvalDataLoader


def evaluate_each_user_once() -> None:
    """RecBole 1.2.1 evaluates with a padding ``DistributedSampler``: when the number of users is
    not a multiple of the world size, the first users are evaluated twice.

    Evaluation needs no equal batch counts (no collective runs per batch), so evaluation loaders
    give rank ``r`` exactly the users ``r, r + world, r + 2 world, ...``. Training keeps the padding,
    which DDP needs (every rank must run the same number of steps).
    """
    from recbole.data.dataloader.abstract_dataloader import AbstractDataLoader

    def make(original):
        def __init__(self, config, *args, **kwargs):
            original(self, config, *args, **kwargs)
            sampler = self.sampler
            if isinstance(sampler, torch.utils.data.DistributedSampler) and isinstance(self, _eval_loader_classes()):
                sampler.total_size = len(sampler.dataset)  # padding_size becomes 0
                sampler.num_samples = len(range(sampler.rank, sampler.total_size, sampler.num_replicas))

        return __init__

    _patch(AbstractDataLoader, "__init__", "eval_no_padding", make)


def seed_distributed_sampler() -> None:
    """RecBole 1.2.1 builds its ``DistributedSampler`` with the default seed 0, whatever ``seed`` says."""
    from recbole.data.dataloader.abstract_dataloader import AbstractDataLoader

    def make(original):
        def __init__(self, config, *args, **kwargs):
            original(self, config, *args, **kwargs)
            if isinstance(self.sampler, torch.utils.data.DistributedSampler):
                self.sampler.seed = int(config["seed"])

        return __init__

    _patch(AbstractDataLoader, "__init__", "sampler_seed", make)


#: per-user (or per-interaction) rows of RecBole's evaluation data; the rest is the same on every rank
_PER_ROW_KEYS = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label")


def pool_users_across_ranks() -> None:
    """RecBole 1.2.1 ``Trainer._map_reduce`` averages each rank's metrics weighted by
    ``len(batched_data)``, which is 4 per batch (the length of the batch tuple), not by users; and
    metrics that are not means over users (ItemCoverage, GiniIndex, ...) cannot be averaged at all.

    Instead, every rank gathers all ranks' per-user rows before computing metrics, so each rank
    computes them exactly as one process would over all users, and ``_map_reduce`` has nothing left
    to do.
    """
    from recbole.evaluator.collector import Collector
    from recbole.trainer.trainer import Trainer

    def make_gather(original):
        def get_data_struct(self):
            struct = original(self)
            if not _in_group(self.config):
                return struct
            local = {key: struct[key] for key in _PER_ROW_KEYS if key in struct}
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, local)
            for key in {key for part in parts for key in part}:
                struct[key] = torch.cat([part[key] for part in parts if key in part], dim=0)
            return struct

        return get_data_struct

    def make_reduce(original):
        def _map_reduce(self, result, num_sample):
            return result  # already computed over the users of every rank

        return _map_reduce

    _patch(Collector, "get_data_struct", "pool_users", make_gather)
    _patch(Trainer, "_map_reduce", "pool_users", make_reduce)


def share_checkpoint_after_barrier() -> None:
    """RecBole 1.2.1: each rank names the best-model file after its own clock, and the final
    ``evaluate(load_best_model=True)`` can read it before rank 0 has written it.

    Every rank takes rank 0's file name when the trainer is built, and waits at a barrier before
    loading the checkpoint.
    """
    from recbole.trainer.trainer import Trainer

    def make_init(original):
        def __init__(self, config, model):
            original(self, config, model)
            if _in_group(config) and hasattr(self, "saved_model_file"):
                name = [self.saved_model_file]
                dist.broadcast_object_list(name, src=0)
                self.saved_model_file = name[0]

        return __init__

    def make_evaluate(original):
        def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
            if load_best_model and _in_group(self.config):
                dist.barrier()
            return original(self, eval_data, load_best_model, model_file, show_progress)

        return evaluate

    _patch(Trainer, "__init__", "shared_checkpoint", make_init)
    _patch(Trainer, "evaluate", "shared_checkpoint", make_evaluate)


def load_distributed_checkpoint_alone() -> None:
    """RecBole 1.2.1 pickles the Config of rank 0 into its checkpoints, ``single_spec=False``
    included; ``load_data_and_model`` in one process then builds distributed samplers and fails
    with "Default process group has not been initialized".

    A Config unpickled where no process group runs becomes single-process again.
    """
    from recbole.config import Config

    if getattr(Config.__dict__.get("__setstate__"), _FIXES, None):
        return

    def __setstate__(self, state):
        self.__dict__.update(state)
        cfg = state.get("final_config_dict", {})
        if cfg.get("single_spec") is False and not (dist.is_available() and dist.is_initialized()):
            cfg["single_spec"] = True

    setattr(__setstate__, _FIXES, frozenset({"checkpoint_alone"}))
    Config.__setstate__ = __setstate__


def apply() -> None:
    """Apply every fix for multi-process training; idempotent."""
    use_gloo_on_cpu()
    ddp_on_cpu()
    spawn_plugin_workers()
    create_dirs_race_free()
    evaluate_each_user_once()
    seed_distributed_sampler()
    pool_users_across_ranks()
    share_checkpoint_after_barrier()
    load_distributed_checkpoint_alone()
