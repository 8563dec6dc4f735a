"""Command-line entry point: one sub-command per concept, each in its own module.

Sub-command modules are imported only when chosen, so ``--help`` stays fast and a
broken optional feature cannot stop the others. Each module exposes
``configure_parser(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: name -> (module, one-line help)
COMMANDS = {
    "run": ("interest_migration.quick_start", "train and evaluate a model, like RecBole's run_recbole.py"),
    "demo": ("interest_migration.demo", "InterestShiftCNN vs GRU4Rec and Pop on the bundled ml-100k"),
    "prepare": ("interest_migration.data.cli", "convert a raw shop log to RecBole atomic files"),
    "compare": ("interest_migration.compare", "run a set of models under one protocol and tabulate them"),
    "export": ("interest_migration.export", "write top-N recommendations from a checkpoint"),
    "convert-checkpoint": ("interest_migration.checkpoint", "turn a RecBole pickle checkpoint into a safe one"),
    "analyze": ("interest_migration.analysis.report", "measure and plot interest migration in a dataset"),
    "serve": ("interest_migration.serving.http", "serve online recommendations over HTTP"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m interest_migration",
        description="Interest-migration models and tools for RecBole.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<20}{h}" for n, (_, h) in COMMANDS.items()),
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv[:1] or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"python -m interest_migration {name}", description=COMMANDS[name][1])
    module.configure_parser(parser)
    args, unknown = parser.parse_known_args(rest)
    if unknown and not getattr(module, "ACCEPTS_OVERRIDES", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = unknown
    args.argv = rest
    return int(module.run(args) or 0)
