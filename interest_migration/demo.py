"""``make demo``: InterestShiftCNN next to GRU4Rec and Pop on RecBole's bundled ml-100k.

Needs no network and no data of its own: RecBole's wheel ships ml-100k, whose genres stand
in for shop categories. Every model runs through RecBole's ``run_recbole`` under
``recbole_configs/protocol.yaml`` (leave-one-out by time, full ranking), with a short
training schedule so the whole demo fits in a few minutes on two CPU cores.
"""
from __future__ import annotations

from pathlib import Path

DEMO_MODELS = ("InterestShiftCNN", "GRU4Rec", "Pop")
#: A shorter schedule and history than the benchmark protocol's, for a demo that finishes in minutes
#: on two CPU cores (an ml-100k epoch over 50-item histories takes about a minute per model there).
DEMO_SCHEDULE = {"epochs": 4, "stopping_step": 2, "MAX_ITEM_LIST_LENGTH": 20}
SHARED_DATASETS = Path("..") / "shared" / "datasets"


def configure_parser(parser):
    parser.add_argument("--models", nargs="+", default=list(DEMO_MODELS), help="models to compare")
    parser.add_argument("--epochs", type=int, default=DEMO_SCHEDULE["epochs"], help="maximum training epochs")
    parser.add_argument("--config-dir", default=None, help="folder with protocol.yaml, datasets/, models/")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: with 2, any other busy process makes training many times slower)",
    )


def format_table(records) -> str:
    header = "| model | Recall@10 | NDCG@10 | MRR@10 | epochs | s/epoch |"
    lines = [header, "|---|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(
            f"| {r.model} | {r.test.get('recall@10', float('nan')):.4f} | {r.test.get('ndcg@10', float('nan')):.4f} "
            f"| {r.test.get('mrr@10', float('nan')):.4f} | {r.epochs} | {r.seconds_per_epoch:.1f} |"
        )
    return "\n".join(lines)


def run(args) -> int:
    import torch

    from interest_migration.configs import config_files_for
    from interest_migration.experiment import run_model

    torch.set_num_threads(args.threads)
    records = []
    for model in args.models:
        print(f"== training {model} on ml-100k", flush=True)
        overrides = {**DEMO_SCHEDULE, "epochs": args.epochs}
        records.append(run_model(model, "ml-100k", config_files_for(model, "ml-100k", args.config_dir), overrides))
    print("\nml-100k, leave-one-out by time, full ranking over all items (test set):\n")
    print(format_table(records))
    if SHARED_DATASETS.is_dir():
        print(
            f"\nReal shop data found in {SHARED_DATASETS}. To run the same on it:\n"
            f"  python -m interest_migration prepare taobao --input {SHARED_DATASETS}/taobao-userbehavior-head/"
            "UserBehavior.csv --out datasets/\n"
            "  python -m interest_migration compare --dataset taobao --models all"
        )
    return 0
