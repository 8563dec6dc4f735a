"""How a benchmark script hands over its table: printed, and written atomically to ``--out`` if given."""
from __future__ import annotations


def emit(text: str, out: str | None) -> None:
    print(text)
    if out:
        from interest_migration.utils.io import atomic_write_text

        atomic_write_text(out, text + "\n")
