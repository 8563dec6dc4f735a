"""Safe checkpoints: tensors and plain data only, loadable with ``torch.load(weights_only=True)``.

RecBole 1.2.1 checkpoints pickle the whole ``Config`` object, so loading one runs whatever code
the file names. A *safe* checkpoint holds only what a model needs to come back to life:

* ``state_dict`` (and RecBole's ``other_parameter``, e.g. Pop's counts) as tensors;
* the RecBole config as a plain dict (derived values such as the device or the model type
  are dropped and derived again on load);
* the dataset's name, a fingerprint of its id mappings and the external tokens of the
  user, item, category and behaviour fields.

Loading rebuilds the dataset the way RecBole's ``load_data_and_model`` does (same seed, same
``create_dataset`` and ``data_preparation``), so ids map identically, and checks the
fingerprint. A RecBole pickle checkpoint is refused unless the caller trusts it explicitly;
``convert-checkpoint`` turns one into a safe file once.
"""
from __future__ import annotations

import copy
import enum
import hashlib
import logging
import os
import pickle
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from recbole.config import Config

from interest_migration.utils.cli import add_trust_checkpoint_argument

SAFE_FORMAT = "interest_migration.safe/1"

#: Config values RecBole derives in ``Config.__init__``; stored values would clash with the derivation.
_DERIVED_KEYS = frozenset(
    {
        "MODEL_TYPE",
        "MODEL_INPUT_TYPE",
        "eval_type",
        "valid_metric_bigger",
        "device",
        "single_spec",
        "local_rank",
        "valid_neg_sample_args",
        "test_neg_sample_args",
    }
)
#: Config values RecBole rewrites in place (``data_path`` gets the dataset name appended, a CE
#: model's ``train_neg_sample_args`` becomes a dict that RecBole then rejects): stored as given.
_RAW_KEYS = ("data_path", "train_neg_sample_args")

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the reason."""


class UntrustedCheckpointError(CheckpointError):
    """A pickle checkpoint (RecBole's own format) opened without ``trust_pickle=True``."""


class DatasetMismatchError(CheckpointError):
    """The dataset on disk is not the one the checkpoint was trained on."""


@dataclass
class LoadedCheckpoint:
    """A model back from a checkpoint, with the data RecBole built for it."""

    path: Path
    format: str  # "safe" or "pickle"
    config: Any  # recbole.config.Config
    model: Any  # eval mode, on CPU
    dataset: Any  # the full RecBole dataset, after data_preparation
    train_data: Any
    valid_data: Any
    test_data: Any
    fingerprint: str


# --------------------------------------------------------------------------- dataset identity


def _token_fields(dataset, config) -> list[str]:
    """User, item, category and behaviour fields whose external tokens a checkpoint keeps."""
    wanted = [dataset.uid_field, dataset.iid_field, config["CATEGORY_FIELD"], config["BEHAVIOR_FIELD"]]
    return [f for f in dict.fromkeys(wanted) if f and f in dataset.field2id_token]


def dataset_fingerprint(dataset) -> str:
    """sha256 over every id mapping of ``dataset`` and its interaction count.

    Needs the dataset as ``data_preparation`` leaves it (what ``run_recbole`` and
    ``load_data_and_model`` hand out): a sequential dataset counts its augmented rows.
    """
    import pandas as pd

    if isinstance(dataset.inter_feat, pd.DataFrame):
        raise ValueError(
            "dataset_fingerprint needs the dataset after data_preparation (RecBole's built dataset), "
            "not the one create_dataset returns"
        )
    digest = hashlib.sha256()
    digest.update(f"dataset={dataset.dataset_name}\ninter_num={len(dataset.inter_feat)}\n".encode())
    for field in sorted(dataset.field2id_token):
        tokens = dataset.field2id_token[field]
        digest.update(f"field={field} n={len(tokens)}\n".encode())
        digest.update("\x1f".join(map(str, tokens)).encode("utf-8", "surrogatepass"))
        digest.update(b"\n")
    return digest.hexdigest()


# --------------------------------------------------------------------------- plain data


def _plain(value, where: str):
    """``value`` as plain Python data (str, int, float, bool, None, list, dict), or raise."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"{where}: a {type(value).__name__} is not plain data")


def config_to_dict(config) -> dict:
    """The values of a RecBole ``Config`` that rebuild it, as plain data.

    Derived values (device, model type, input type, evaluator type, negative-sampling
    arguments of evaluation) are dropped: ``Config`` derives them again.
    """
    final = dict(config.final_config_dict)
    raw = {**getattr(config, "internal_config_dict", {}), **getattr(config, "external_config_dict", {})}
    for key in _RAW_KEYS:
        if key in raw:
            final[key] = raw[key]
        else:
            final.pop(key, None)
    out = {}
    for key, value in final.items():
        if key in _DERIVED_KEYS:
            continue
        try:
            out[key] = _plain(value, key)
        except TypeError as exc:
            logger.warning("config value not stored in the safe checkpoint: %s", exc)
    return out


def _pack_other(value, where: str):
    """RecBole's ``other_parameter`` values (tensors, numpy arrays, scipy sparse) as tensors."""
    import scipy.sparse as sp

    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"{where}: numpy arrays of Python objects cannot go into a safe checkpoint")
        return {"__numpy__": torch.from_numpy(np.ascontiguousarray(value))}
    if sp.issparse(value):
        coo = value.tocoo()
        return {
            "__scipy_sparse__": value.format,
            "shape": list(coo.shape),
            "row": torch.from_numpy(coo.row.astype(np.int64)),
            "col": torch.from_numpy(coo.col.astype(np.int64)),
            "data": torch.from_numpy(np.ascontiguousarray(coo.data)),
        }
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{where}: a {type(value).__name__} cannot go into a safe checkpoint")


def _unpack_other(value):
    import scipy.sparse as sp

    if isinstance(value, dict) and "__numpy__" in value:
        return value["__numpy__"].numpy()
    if isinstance(value, dict) and "__scipy_sparse__" in value:
        coo = sp.coo_matrix(
            (value["data"].numpy(), (value["row"].numpy(), value["col"].numpy())), shape=tuple(value["shape"])
        )
        return coo.asformat(value["__scipy_sparse__"])
    return value


# --------------------------------------------------------------------------- save


def save_safe(path, config, model, dataset) -> Path:
    """Write ``model`` trained on ``dataset`` with ``config`` as a safe checkpoint, atomically."""
    import recbole

    import interest_migration
    from interest_migration.utils.io import atomic_path

    path = Path(path)
    fields = _token_fields(dataset, config)
    payload = {
        "format": SAFE_FORMAT,
        "model": config["model"],
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "other_parameter": {
            k: _pack_other(v.detach().cpu() if isinstance(v, torch.Tensor) else v, f"other_parameter.{k}")
            for k, v in model.other_parameter().items()
        },
        "config": config_to_dict(config),
        "dataset": {
            "name": config["dataset"],
            "fingerprint": dataset_fingerprint(dataset),
            "field2id_token": {f: [str(t) for t in dataset.field2id_token[f]] for f in fields},
            "uid_field": dataset.uid_field,
            "iid_field": dataset.iid_field,
        },
        "versions": {
            "interest_migration": str(interest_migration.__version__),
            "recbole": str(recbole.__version__),
            "torch": str(torch.__version__),
        },
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


# --------------------------------------------------------------------------- load


def _unpickler_reason(exc: Exception) -> str:
    """What torch's weights-only unpickler refused, without its advice to turn the check off."""
    text = str(exc)
    _, found, rest = text.partition("WeightsUnpickler error:")
    reason = " ".join(rest.split("Check the documentation")[0].split()) if found else ""
    return f"refused: {reason}" if reason else type(exc).__name__


def _read_safe(path: Path) -> dict:
    """The payload of a safe checkpoint; clear errors for anything else."""
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UntrustedCheckpointError(
            f"{path}: this is a pickle checkpoint (RecBole's own format, or a file holding other "
            "Python objects than tensors and plain data); loading it can run arbitrary code. Only for a "
            "file you made yourself: pass --trust-checkpoint (trust_pickle=True), or convert it once with "
            f"`python -m interest_migration convert-checkpoint --checkpoint {path} --trust-checkpoint`. "
            f"(weights-only loader {_unpickler_reason(exc)})"
        ) from None
    except Exception as exc:  # zip reader, EOF, bad magic number: torch raises several kinds
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(
            f"{path}: a torch file, but not a checkpoint of this plugin (no 'format' key; expected {SAFE_FORMAT!r})"
        )
    if payload["format"] != SAFE_FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {payload['format']!r} (expected {SAFE_FORMAT!r})")
    missing = [k for k in ("model", "state_dict", "config", "dataset") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing {', '.join(missing)}")
    return payload


class StoredConfig(Config):
    """A ``Config`` whose ``config_dict`` is taken literally and that ignores ``sys.argv``.

    RecBole ``eval``s every string of ``config_dict`` and reads ``--key=value`` from the command
    line; values read back from a file must do neither.
    """

    def _load_variable_config_dict(self, config_dict):
        return copy.deepcopy(config_dict) if config_dict else dict()

    def _load_cmd_line(self):
        return dict()


def rebuild_config(model: str, stored: dict, data_path: str | os.PathLike | None = None):
    """A RecBole ``Config`` from the plain dict :func:`config_to_dict` made."""
    from interest_migration.compat import get_model_class

    if not isinstance(model, str) or not model.isidentifier():
        raise CheckpointError(f"model name {model!r} is not a valid identifier")
    stored = copy.deepcopy(stored)
    dataset = stored.pop("dataset", None)
    stored.pop("model", None)
    if data_path is not None:
        stored["data_path"] = str(data_path)
    return StoredConfig(model=get_model_class(model), dataset=dataset, config_dict=stored)


def _build(path: Path, payload: dict, data_path) -> LoadedCheckpoint:
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from interest_migration.compat import get_model_class

    name = payload["model"]
    stored_dataset = payload["dataset"]
    config = rebuild_config(name, payload["config"], data_path)
    config["device"] = torch.device("cpu")
    folder = Path(config["data_path"])
    if config["dataset"] != "ml-100k" and not folder.is_dir():
        raise CheckpointError(
            f"{path}: the dataset {config['dataset']!r} it was trained on is not at {folder} "
            "(pass data_path / --data-path with the folder that holds it)"
        )
    # create_dataset and data_preparation unpickle saved datasets/dataloaders from checkpoint_dir:
    # point them at an empty private folder so only the atomic files are read.
    checkpoint_dir = config["checkpoint_dir"]
    with tempfile.TemporaryDirectory(prefix="im-load-") as private:
        for key, value in {"checkpoint_dir": private, "dataset_save_path": None, "dataloaders_save_path": None,
                           "save_dataset": False, "save_dataloaders": False}.items():
            config[key] = value
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
    config["checkpoint_dir"] = checkpoint_dir

    fingerprint = dataset_fingerprint(dataset)
    if fingerprint != stored_dataset.get("fingerprint"):
        raise DatasetMismatchError(
            f"{path}: checkpoint was trained on a different dataset: {stored_dataset.get('name')!r} had "
            f"fingerprint {str(stored_dataset.get('fingerprint'))[:12]}..., the data at {folder} gives "
            f"{fingerprint[:12]}... (other users, items, categories or interactions)"
        )

    init_seed(config["seed"], config["reproducibility"])
    model = get_model_class(name)(config, train_data._dataset)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit model {name!r}: {exc}") from None
    other = payload.get("other_parameter") or {}
    model.load_other_parameter({k: _unpack_other(v) for k, v in other.items()})
    model.eval()
    return LoadedCheckpoint(path, "safe", config, model, dataset, train_data, valid_data, test_data, fingerprint)


def _load_pickle(path: Path) -> LoadedCheckpoint:
    from recbole.quick_start import load_data_and_model

    from interest_migration.compat import trusted_torch_load

    try:
        with trusted_torch_load():
            config, model, dataset, train_data, valid_data, test_data = load_data_and_model(str(path))
    except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{path}: not a loadable RecBole checkpoint (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from None
    model = model.cpu().eval()
    config["device"] = torch.device("cpu")
    return LoadedCheckpoint(
        path, "pickle", config, model, dataset, train_data, valid_data, test_data, dataset_fingerprint(dataset)
    )


def load(path, *, trust_pickle: bool = False, data_path=None) -> LoadedCheckpoint:
    """Load a checkpoint: a safe one always, a RecBole pickle one only with ``trust_pickle=True``.

    ``data_path`` replaces the folder the dataset was read from at training time (safe
    checkpoints only); the dataset's fingerprint must still match.
    """
    import interest_migration  # noqa: F401  (compat and model registration)

    path = Path(path)
    try:
        payload = _read_safe(path)
    except UntrustedCheckpointError:
        if not trust_pickle:
            raise
        if data_path is not None:
            logger.warning("data_path is ignored for a RecBole pickle checkpoint: it reads its own config")
        return _load_pickle(path)
    return _build(path, payload, data_path)


def convert(src, out=None, *, trust_pickle: bool = False, data_path=None) -> Path:
    """Turn a RecBole checkpoint into a safe one; returns the path written."""
    src = Path(src)
    out = Path(out) if out is not None else src.with_name(src.stem + ".safe.pth")
    if out.resolve() == src.resolve():
        raise CheckpointError(f"{out}: the safe checkpoint would overwrite its source; choose another --out")
    loaded = load(src, trust_pickle=trust_pickle, data_path=data_path)
    return save_safe(out, loaded.config, loaded.model, loaded.dataset)


# --------------------------------------------------------------------------- command line


def configure_parser(parser):
    parser.add_argument("--checkpoint", required=True, help="a RecBole checkpoint (saved/<Model>-<date>.pth)")
    parser.add_argument("--out", default=None, help="the safe checkpoint to write (default: <checkpoint>.safe.pth)")
    add_trust_checkpoint_argument(parser)
    parser.add_argument("--data-path", default=None, help="folder holding the dataset, if it moved (safe input only)")


def run(args) -> int:
    saved_argv = sys.argv
    sys.argv = sys.argv[:1]  # RecBole's Config would read our flags as overrides
    try:
        out = convert(args.checkpoint, args.out, trust_pickle=args.trust_checkpoint, data_path=args.data_path)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv
    print(f"wrote {out}")
    return 0
