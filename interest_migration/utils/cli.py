"""Command-line pieces shared by the subcommands that read a checkpoint."""

from __future__ import annotations

import argparse


def add_trust_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint``: one flag, one wording, wherever a RecBole pickle may be loaded.

    Unpickling can run code, so loading RecBole's own ``.pth`` is opt-in (see
    :mod:`interest_migration.checkpoint`)."""
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow a RecBole pickle checkpoint (loading it can run code): only for files you made yourself; "
        "convert-checkpoint makes a safe copy",
    )
