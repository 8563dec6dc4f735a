"""Tune a model with RecBole's ``HyperTuning`` under one comparison protocol, with a fixed trial budget.

    python scripts/tune.py --dataset taobao --protocol novel --models SASRec GRU4Rec InterestShiftCNN --max-evals 8

Every model gets the same budget: ``--max-evals`` trials drawn at random (hyperopt, seeded) from
its search space ``recbole_configs/hyper/<model>.hyper`` (RecBole's params-file format). A model
variant of ``compare`` (``recbole_configs/models/<label>.yaml`` with ``model_class:``) is tuned
around its own YAML, in ``hyper/<label>.hyper`` if there is one and otherwise in its model class's
space, so a variant is offered the same points as the model it varies. Each
trial is a full ``run_model`` on the protocol's data, with the YAML files ``compare`` uses for that
protocol (``datasets/<dataset>-<protocol>.yaml`` included), selected on validation NDCG@10; the test
metrics of every trial are kept so nothing is cherry-picked. Writes
``results/<dataset>/tuning/<protocol>-<model>.json`` after every trial and prints one table per
model. A point the random search draws again counts as a trial but is not retrained (the runs are
seeded, so the result would be the same). Resumable: the seeded search draws the same points
again, and a point whose trial is already in that file (same search space, epochs, config files
and their contents, and model code) is read back instead of trained.
"""
import argparse
import json
import os
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--protocol", default="novel", choices=["repeats", "novel"])
    parser.add_argument("--models", nargs="+", default=["SASRec", "GRU4Rec", "InterestShiftCNN"])
    parser.add_argument("--max-evals", type=int, default=8, help="trials per model (the same for every model)")
    parser.add_argument("--data-path", default="datasets")
    parser.add_argument("--config-dir", default="recbole_configs")
    parser.add_argument("--out", default="results")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=2020, help="seed of the random search")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1, as compare: fastest when the machine is shared)")
    args = parser.parse_args(argv)
    os.environ["HYPEROPT_FMIN_SEED"] = str(args.seed)  # hyperopt 0.2.5 reads its rstate from here

    import torch

    import interest_migration  # noqa: F401  (registration: HyperTuning finds the plugin model by name)
    # imported here, not first inside a trial: it imports ray, which reads sys.stdout.encoding, and
    # hyperopt's progress bar replaces sys.stdout with an object that has none
    import recbole.quick_start  # noqa: F401
    from recbole.trainer import HyperTuning

    from interest_migration.benchmark.protocols import get_protocol, prepare_dataset
    from interest_migration.benchmark.runner import hash_files
    from interest_migration.compare import resolve_models
    from interest_migration.configs import config_files_for
    from interest_migration.experiment import run_model
    from interest_migration.registry import model_code_version
    from interest_migration.utils.io import atomic_write_text

    torch.set_num_threads(max(args.threads, 1))
    protocol = get_protocol(args.protocol)
    out = Path(args.out) / args.dataset / "tuning"
    data = prepare_dataset(args.dataset, protocol, args.data_path, Path(args.out) / args.dataset / "main" / "data")
    for model, model_class in resolve_models(args.models, Path(args.config_dir)):
        spaces = [Path(args.config_dir) / "hyper" / f"{name}.hyper" for name in dict.fromkeys([model, model_class])]
        space = next((path for path in spaces if path.is_file()), None)
        if space is None:
            raise SystemExit(f"error: no search space for {model}: expected {' or '.join(map(str, spaces))}")
        files = config_files_for(model, args.dataset, args.config_dir, args.protocol)
        report_path = out / f"{args.protocol}-{model}.json"
        header = {"dataset": args.dataset, "protocol": args.protocol, "model": model, "model_class": model_class,
                  "space": space.read_text(), "code": model_code_version(model_class), "max_evals": args.max_evals,
                  "max_epochs": args.max_epochs, "search": "random (hyperopt), seed " + str(args.seed),
                  "config_files": files, "config_digest": hash_files(files).hexdigest()[:16]}
        done = _finished_trials(report_path, header)
        trials = []

        def objective(config_dict, config_file_list, model_class=model_class, header=header,
                      report_path=report_path, done=done, trials=trials):
            params = dict(config_dict)
            key = _key(params)
            earlier = done.get(key)
            trial = earlier.pop(0) if earlier else None
            drawn_before = next((t for t in trials if _key(t["params"]) == key), None)
            if trial is not None:
                print(f"  reusing the finished trial {params} from {report_path}")
            elif drawn_before is not None:
                # random search over `choice` spaces draws with replacement; a seeded run gives the
                # same result again, so the repeat costs a trial of the budget but no training
                print(f"  the search drew {params} again; its result is repeated, not retrained")
                trial = {**drawn_before, "repeat": True}
            else:
                config = {**protocol.config(), "data_path": data["data_path"], **config_dict}
                if args.max_epochs:
                    config["epochs"] = args.max_epochs
                record = run_model(model_class, data["dataset"], config_file_list, config)
                trial = {"params": params, "best_valid": record.best_valid, "test": record.test,
                         "epochs": record.epochs, "seconds_per_epoch": record.seconds_per_epoch}
            trials.append(trial)
            best = max(trials, key=lambda t: t["best_valid"]["ndcg@10"])
            atomic_write_text(report_path, json.dumps({**header, "best": best, "trials": trials}, indent=2,
                                                      default=float))
            return {"model": model_class, "best_valid_score": trial["best_valid"]["ndcg@10"], "valid_score_bigger": True,
                    "best_valid_result": trial["best_valid"], "test_result": trial["test"]}

        tuner = HyperTuning(objective, params_file=str(space), algo="random", max_evals=args.max_evals,
                            fixed_config_file_list=files)
        tuner.run()
        best = max(trials, key=lambda t: t["best_valid"]["ndcg@10"])
        distinct = len({_key(t["params"]) for t in trials})
        print(f"\n{model} ({args.protocol}, {len(trials)} trials, {distinct} distinct points): best valid NDCG@10 "
              f"{best['best_valid']['ndcg@10']:.4f} with {best['params']} -> test NDCG@10 {best['test']['ndcg@10']:.4f}")
        for t in trials:
            print(f"  {t['params']}: valid {t['best_valid']['ndcg@10']:.4f}, test {t['test']['ndcg@10']:.4f}, "
                  f"{t['epochs']} epochs")
    return 0


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=float)


def _finished_trials(report_path: Path, header: dict) -> dict[str, list]:
    """Trials of an earlier run of the same search, by point; those of a different search are not reused."""
    if not report_path.exists():
        return {}
    report = json.loads(report_path.read_text())
    same = all(report.get(k) == v for k, v in header.items() if k != "max_evals")
    if not same:
        print(f"  {report_path} holds a different search; its trials are not reused")
        return {}
    done = {}
    for trial in report.get("trials", []):
        done.setdefault(_key(trial["params"]), []).append(trial)
    return done


if __name__ == "__main__":
    sys.exit(main())
