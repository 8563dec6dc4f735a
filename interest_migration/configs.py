"""Where the YAML of an experiment comes from: ``recbole_configs/`` in the project.

Every run is ``protocol.yaml`` + ``datasets/<dataset>.yaml`` + ``models/<model>.yaml``, in that
order (later files override earlier ones), so every model sees the same data and split. Under a
comparison protocol, ``datasets/<dataset>-<protocol>.yaml`` (when present) comes right after the
dataset's file: settings one protocol needs on one dataset, e.g. smaller batches where the
``novel`` filter leaves only a few thousand interactions.
"""
from __future__ import annotations

from pathlib import Path

_PROJECT_CONFIGS = Path(__file__).resolve().parents[1] / "recbole_configs"


def default_config_dir() -> Path:
    """``./recbole_configs`` when run from a project folder, else the one beside the package."""
    local = Path("recbole_configs")
    return local if local.is_dir() else _PROJECT_CONFIGS


def config_files_for(
    model: str, dataset: str, config_dir: str | Path | None = None, protocol: str | None = None
) -> list[str]:
    """The YAML files of one run (under comparison ``protocol``, if given); the protocol file must
    exist, the others are optional."""
    root = Path(config_dir) if config_dir is not None else default_config_dir()
    shared = root / "protocol.yaml"
    if not shared.is_file():
        raise FileNotFoundError(f"{shared}: the evaluation protocol file is missing (expected in {root}/)")
    files = [shared, root / "datasets" / f"{dataset}.yaml"]
    if protocol is not None:
        files.append(root / "datasets" / f"{dataset}-{protocol}.yaml")
    files.append(root / "models" / f"{model}.yaml")
    return [str(f) for f in files if f.is_file()]
