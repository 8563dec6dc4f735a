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

``--jobs N`` trains N trials at once. Random search draws its points without looking at the
results, so the seeded sequence is drawn first (a pass that trains nothing), its distinct points
not yet in the file are trained in N processes (``--threads`` threads each) and written to the file
as each finishes, and the search then runs as above, reading every trial back. The trials, their
order and the best are those of a run with one job.
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
    parser.add_argument("--jobs", type=int, default=1,
                        help="trials trained at once, each in its own process with --threads threads")
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
    from interest_migration.registry import model_code_version

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
        base_config = {**protocol.config(), "data_path": data["data_path"],
                       **({"epochs": args.max_epochs} if args.max_epochs else {})}
        if args.jobs > 1:
            points = _drawn_points(HyperTuning, space, files, args.max_evals)
            todo = [p for p in {_key(p): p for p in points}.values() if _key(p) not in done]
            _train_in_parallel(todo, args, model_class, data["dataset"], files, base_config, header, report_path,
                               done)
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
                trial = _train(model_class, data["dataset"], config_file_list, base_config, params)
            trials.append(trial)
            _write_report(report_path, header, trials)
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


def _train(model_class: str, dataset: str, config_files: list, base_config: dict, params: dict,
           threads: int | None = None) -> dict:
    """One trial: a full run at ``params``; ``threads`` is set in a worker process of ``--jobs``.

    The checkpoint goes to a folder of its own, removed after the test: RecBole names it after the
    model and the second the training started, so trials started in the same second (``--jobs``)
    would otherwise overwrite each other's best model and be tested on it."""
    import shutil
    import tempfile

    from interest_migration.experiment import run_model

    if threads is not None:
        import torch

        torch.set_num_threads(max(threads, 1))
    config = {**base_config, **params}
    if "epochs" in base_config:
        config["epochs"] = base_config["epochs"]  # the cap is part of the budget, not of the search
    saved = Path.cwd() / "saved"
    saved.mkdir(exist_ok=True)
    config["checkpoint_dir"] = tempfile.mkdtemp(prefix=f"tune-{model_class}-", dir=saved)
    try:
        record = run_model(model_class, dataset, config_files, config)
    finally:
        shutil.rmtree(config["checkpoint_dir"], ignore_errors=True)
    return {"params": params, "best_valid": record.best_valid, "test": record.test,
            "epochs": record.epochs, "seconds_per_epoch": record.seconds_per_epoch}


def _drawn_points(hyper_tuning, space: Path, files: list, max_evals: int) -> list[dict]:
    """The points the seeded random search draws, in order, found by a pass that trains nothing
    (a rising score, so that the search's no-progress stop does not cut the pass short)."""
    points = []

    def record(config_dict, config_file_list):
        points.append(dict(config_dict))
        return {"model": "", "best_valid_score": float(len(points)), "valid_score_bigger": True,
                "best_valid_result": {}, "test_result": {}}

    hyper_tuning(record, params_file=str(space), algo="random", max_evals=max_evals,
                 fixed_config_file_list=files).run()
    return points


def _train_in_parallel(todo: list[dict], args, model_class: str, dataset: str, files: list, base_config: dict,
                       header: dict, report_path: Path, done: dict) -> None:
    """Train the points of ``todo`` in ``args.jobs`` processes; each finished trial goes into ``done``
    and the report file at once, so an interrupted search resumes from it."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    if not todo:
        return
    print(f"  training {len(todo)} distinct points, {args.jobs} at a time")
    with ProcessPoolExecutor(min(args.jobs, len(todo)), mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_train, model_class, dataset, files, base_config, params, args.threads): params
                   for params in todo}
        for future in as_completed(futures):
            trial = future.result()
            done.setdefault(_key(trial["params"]), []).append(trial)
            _write_report(report_path, header, [t for ts in done.values() for t in ts])


def _write_report(report_path: Path, header: dict, trials: list[dict]) -> None:
    """The search's file: its header, every trial so far and the best of them by validation."""
    from interest_migration.utils.io import atomic_write_text

    best = max(trials, key=lambda t: t["best_valid"]["ndcg@10"])
    atomic_write_text(report_path, json.dumps({**header, "best": best, "trials": trials}, indent=2, default=float))


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
