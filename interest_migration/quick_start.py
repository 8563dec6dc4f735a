"""``python -m interest_migration run``: RecBole's ``run_recbole.py``, with the plugin loaded.

Same flags as RecBole's script (``--model``, ``--dataset``, ``--config_files``, ``--nproc``,
``--ip``, ``--port``, ``--world_size``, ``--group_offset``) and the same ``--key=value``
overrides, which RecBole's ``Config`` reads from ``sys.argv`` itself. Runs plugin models and
every built-in model alike.
"""
from __future__ import annotations

import sys

ACCEPTS_OVERRIDES = True


def configure_parser(parser):
    parser.add_argument("--model", "-m", type=str, default="BPR", help="name of a RecBole or plugin model")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="name of the dataset")
    parser.add_argument("--config_files", type=str, default=None, help="config files, space separated")
    parser.add_argument("--nproc", type=int, default=1, help="the number of processes on this machine")
    parser.add_argument("--ip", type=str, default="localhost", help="the ip of the master node")
    parser.add_argument("--port", type=str, default="5678", help="the port of the master node")
    parser.add_argument("--world_size", type=int, default=-1, help="total number of processes")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank offset of this node")
    parser.epilog = "Any other --key=value is a RecBole config override, as with run_recbole.py."


def run(args) -> int:
    import interest_migration  # noqa: F401  (registration and compat in this process)
    from interest_migration.compat import get_model_class
    from recbole.quick_start import run as recbole_run

    get_model_class(args.model)  # a clear error for unknown names, before any data is loaded
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    # RecBole's Config parses sys.argv for --key=value: show it what run_recbole.py would see.
    saved_argv = sys.argv
    sys.argv = [saved_argv[0], *args.argv]
    try:
        recbole_run(
            args.model,
            args.dataset,
            config_file_list=config_file_list,
            nproc=args.nproc,
            world_size=args.world_size,
            ip=args.ip,
            port=args.port,
            group_offset=args.group_offset,
        )
    finally:
        sys.argv = saved_argv
    return 0
