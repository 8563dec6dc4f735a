"""Where the YAML of an experiment comes from: ``recbole_configs/`` in the project.

Every run is ``protocol.yaml`` + ``datasets/<dataset>.yaml`` + ``models/<model>.yaml``, in that
order (later files override earlier ones), so every model sees the same data and split.
"""
from __future__ import annotations

from pathlib import Path

_PROJECT_CONFIGS = Path(__file__).resolve().parents[1] / "recbole_configs"


def default_config_dir() -> Path:
    """``./recbole_configs`` when run from a project folder, else the one beside the package."""
    local = Path("recbole_configs")
    return local if local.is_dir() else _PROJECT_CONFIGS


def config_files_for(model: str, dataset: str, config_dir: str | Path | None = None) -> list[str]:
    """The YAML files of one run; the protocol file must exist, the other two are optional."""
    root = Path(config_dir) if config_dir is not None else default_config_dir()
    protocol = root / "protocol.yaml"
    if not protocol.is_file():
        raise FileNotFoundError(f"{protocol}: the evaluation protocol file is missing (expected in {root}/)")
    files = [protocol, root / "datasets" / f"{dataset}.yaml", root / "models" / f"{model}.yaml"]
    return [str(f) for f in files if f.is_file()]
