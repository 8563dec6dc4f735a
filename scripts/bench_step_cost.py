"""CPU cost of one training step of several models on the same batches, side by side.

Wall-clock seconds per epoch from ``compare`` depend on what else runs on the machine. This
script builds each model on one dataset with the comparison configs (``recbole_configs/``),
takes the same training batches for every model, and measures the CPU time of the calling
thread per optimiser step (forward, backward, Adam), alternating the models round by round so
that a change in load hits them alike. It prints CPU ms per step, steps per epoch and the
implied CPU seconds per epoch, relative to the first model.

    python scripts/bench_step_cost.py --dataset amazon-beauty --models SASRec InterestShiftCNN
    python scripts/bench_step_cost.py --dataset taobao-novel --data-path results/taobao/main/data \
        --base-config recbole_configs/datasets/taobao.yaml
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from bench_report import emit  # scripts/bench_report.py

from interest_migration.benchmark.protocols import PROTOCOLS

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "recbole_configs"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--models", nargs="+", default=["SASRec", "InterestShiftCNN"],
                        help="model YAML names, variants included (InterestShiftCNN-nofeatures), as compare takes them")
    parser.add_argument("--data-path", default=str(REPO / "datasets"), help="folder holding <dataset>/")
    parser.add_argument(
        "--base-config", nargs="*", default=[],
        help="YAML files read before the dataset's own (e.g. recbole_configs/datasets/taobao.yaml for taobao-novel)",
    )
    parser.add_argument(
        "--protocol", choices=sorted(PROTOCOLS), default=None,
        help="set exclude_seen_items as this protocol of compare does (novel: InterestShiftCNN then masks the "
             "history in training too); the data are --dataset's own. Default: the YAML files as they are",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    return parser.parse_args()


def build(label: str, model_name: str, args):
    """(model, optimiser, train loader) for the model YAML ``label`` (RecBole class ``model_name``)
    under the comparison configs."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from interest_migration.compat import get_model_class
    from interest_migration.configs import config_files_for

    model_class = get_model_class(model_name)
    protocol = PROTOCOLS[args.protocol].config() if args.protocol else {}
    config = Config(
        model=model_class,
        dataset=args.dataset,
        config_file_list=_with_base(config_files_for(label, args.dataset, CONFIG_DIR), args.base_config),
        config_dict={"data_path": args.data_path, "show_progress": False, **protocol},
    )
    init_seed(config["seed"], config["reproducibility"])
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = model_class(config, train_data._dataset).train()
    import torch

    return model, torch.optim.Adam(model.parameters(), lr=config["learning_rate"]), train_data


def _with_base(files: list[str], base: list[str]) -> list[str]:
    return files[:1] + [str(Path(f).resolve()) for f in base] + files[1:]  # protocol first, as compare does


def step_seconds(model, optimiser, batches) -> float:
    start = time.thread_time()
    for batch in batches:
        optimiser.zero_grad()
        model.calculate_loss(batch).backward()
        optimiser.step()
    return (time.thread_time() - start) / len(batches)


def main() -> int:
    args = parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from the command line
    import torch

    import interest_migration  # noqa: F401  (registers InterestShiftCNN)

    from interest_migration.compare import resolve_models

    torch.set_num_threads(args.threads)
    built = {label: build(label, model, args) for label, model in resolve_models(args.models, CONFIG_DIR)}
    batches = {}
    for name, (model, optimiser, train_data) in built.items():
        loader = iter(train_data)
        batches[name] = [next(loader) for _ in range(args.steps + 2)]
        step_seconds(model, optimiser, batches[name][:2])  # warm-up
    timings = {name: [] for name in built}
    for _ in range(args.rounds):
        for name, (model, optimiser, _) in built.items():
            timings[name].append(step_seconds(model, optimiser, batches[name][2:]))

    base = statistics.median(timings[next(iter(built))])
    lines = [
        f"{args.dataset}{f' ({args.protocol})' if args.protocol else ''}: CPU time per training step "
        f"(median of {args.rounds} rounds of {args.steps} steps, {args.threads} thread(s))",
        "",
        "| model | CPU ms/step | steps/epoch | CPU s/epoch | relative |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in built:
        seconds = statistics.median(timings[name])
        n_steps = len(built[name][2])
        lines.append(f"| {name} | {seconds * 1000:.1f} | {n_steps} | {seconds * n_steps:.1f} | {seconds / base:.2f} |")
    emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
