"""``python -m interest_migration compare``: every model, one dataset, identical data, split and seeds.

Each model runs through RecBole's ``run_recbole`` (via :func:`interest_migration.experiment.run_model`)
in its own process, under each protocol of :mod:`interest_migration.benchmark.protocols`, with
the YAML of ``recbole_configs/`` (protocol, then dataset, then model). Outputs go to
``<out>/<dataset>/<run>/``: ``results.csv``, ``results.md``, ``results.json``, PNG plots, and
``runs/<protocol>/<model>-seed<seed>.{json,users.csv,log}`` per run. Running the same command
again reuses every finished run; a failed run is retried, and its row says why it failed.

A "model" is the stem of a YAML in ``recbole_configs/models/``. A YAML may name another RecBole
model with ``model_class:``, which is how ablations (``InterestShiftCNN-nocat`` …) are listed
beside the real models. Any other ``--key=value`` is a RecBole config override for every run.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ACCEPTS_OVERRIDES = True

OURS = "InterestShiftCNN"
CF_MODELS = ["Pop", "ItemKNN", "BPR", "LightGCN"]
SEQUENTIAL_MODELS = ["GRU4Rec", "SASRec", "BERT4Rec", "Caser", "NextItNet", "RepeatNet", OURS]
MODEL_GROUPS = {
    "all": CF_MODELS + SEQUENTIAL_MODELS,
    "cf": CF_MODELS,
    "sequential": SEQUENTIAL_MODELS,
    "ablations": [OURS, f"{OURS}-norepeat", f"{OURS}-nocat", f"{OURS}-noaux", f"{OURS}-nobehavior", f"{OURS}-notime"],
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", "-d", required=True, help="dataset name (datasets/<name>/ or ml-100k)")
    parser.add_argument("--models", "-m", nargs="+", default=["all"],
                        help=f"model YAML names or groups {sorted(MODEL_GROUPS)} (default: all)")
    parser.add_argument("--protocols", nargs="+", default=["repeats", "novel"], help="repeats and/or novel")
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds (seed, seed+1, ...); default 1")
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: protocol.yaml's seed)")
    parser.add_argument("--out", default="results", help="output root (default: results)")
    parser.add_argument("--run", default="main", help="run name: the results go to <out>/<dataset>/<run>/")
    parser.add_argument("--data-path", default="datasets", help="folder holding <dataset>/ (default: datasets)")
    parser.add_argument("--config-dir", default=None, help="folder with protocol.yaml, datasets/, models/")
    parser.add_argument("--max-epochs", nargs="+", default=None, metavar="N|PROTOCOL=N",
                        help="cap every model's epochs at N, or per protocol, e.g. repeats=60 novel=200")
    parser.add_argument("--timeout", type=float, default=None, help="seconds one model run may take (default: none)")
    parser.add_argument("--ours", default=OURS, help=f"the model tested against the best baseline (default {OURS})")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each run's RecBole checkpoint")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per model run (default 1: fastest when the machine is shared)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="run failed runs again (by default a failure is kept until its config changes)")
    parser.epilog = "Any other --key=value is a RecBole config override applied to every run."


# --------------------------------------------------------------------------- configuration

def _yaml(path: Path) -> dict:
    import yaml

    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def merged_yaml(files) -> dict:
    merged = {}
    for path in files:
        merged.update(_yaml(Path(path)))
    return merged


def parse_overrides(items) -> dict:
    """``--key=value`` pairs (values parsed as YAML), as RecBole's command line takes them."""
    import yaml

    out = {}
    for item in items or []:
        if not item.startswith("--") or "=" not in item:
            raise ValueError(f"unexpected argument {item!r}: config overrides look like --key=value")
        key, value = item[2:].split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def resolve_models(names, config_dir: Path) -> list[tuple[str, str]]:
    """(label, RecBole model class) for each requested model or group, in order, without duplicates."""
    labels = []
    for name in names:
        for label in MODEL_GROUPS.get(name, [name]):
            if label not in labels:
                labels.append(label)
    resolved = []
    for label in labels:
        path = config_dir / "models" / f"{label}.yaml"
        model = label
        if path.is_file():
            model = _yaml(path).get("model_class") or label
        elif "-" in label:
            raise FileNotFoundError(f"{path}: no YAML for the model variant {label!r}")
        resolved.append((label, model))
    return resolved


def _commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "interest_migration", "recbole_configs"],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine(threads: int) -> str:
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    return (f"{platform.node() or 'this machine'} ({os.cpu_count()} CPU cores, shared; load average {load} "
            f"when the tables were written; {threads} thread(s) per run)")


# --------------------------------------------------------------------------- the comparison

def epoch_caps(values) -> dict:
    """``--max-epochs`` as {protocol: cap}: ``["60"]`` caps every protocol, ``["repeats=60"]`` one."""
    from interest_migration.benchmark.protocols import PROTOCOLS

    caps = {}
    for value in values or []:
        name, _, number = value.rpartition("=")
        if not number.isdigit() or (name and name not in PROTOCOLS):
            raise ValueError(f"--max-epochs {value!r}: expected N or PROTOCOL=N with PROTOCOL in {sorted(PROTOCOLS)}")
        caps.update({p: int(number) for p in ([name] if name else PROTOCOLS)})
    return caps


def build_specs(args, config_dir: Path, models, protocols, data: dict, seeds, overrides) -> list:
    from interest_migration.benchmark.runner import RunSpec
    from interest_migration.configs import config_files_for

    caps = epoch_caps(args.max_epochs)
    specs = []
    for protocol in protocols:
        for label, model in models:
            files = [str(Path(f).resolve()) for f in config_files_for(label, args.dataset, config_dir, protocol.name)]
            config = {**protocol.config(), "data_path": data[protocol.name]["data_path"], **overrides}
            cap = caps.get(protocol.name)
            if cap is not None:
                epochs = config.get("epochs", merged_yaml(files).get("epochs", cap))
                config["epochs"] = min(int(epochs), cap)
            for seed in seeds:
                specs.append(RunSpec(label=label, model=model, protocol=protocol.name, seed=seed,
                                     dataset=data[protocol.name]["dataset"], config_files=files,
                                     config_dict=config, keep_checkpoint=args.keep_checkpoints,
                                     threads=args.threads))
    return specs


def execute(specs, runs_dir: Path, work_dir: Path, timeout=None, retry_failed=False) -> list[dict]:
    from tqdm import tqdm

    from interest_migration.benchmark.runner import load_finished, run_spec

    results = []
    with tqdm(total=len(specs), desc="model runs", unit="run", file=sys.stderr, dynamic_ncols=True) as bar:
        for spec in specs:
            bar.set_postfix_str(spec.key)
            result = load_finished(runs_dir, spec, retry_failed)
            how = "reused"
            if result is None:
                result = run_spec(spec, runs_dir, work_dir, timeout)
                how = "trained"
            if result["status"] == "ok":
                line = (f"{spec.key}: {how}, NDCG@10 {result['test'].get('ndcg@10', float('nan')):.4f}, "
                        f"{result['epochs']} epochs, {result['seconds_per_epoch']:.2f} s/epoch")
            else:
                line = f"{spec.key}: {'FAILED' if how == 'trained' else 'failed before, kept'} ({result['error'][:200]})"
            bar.write(line)
            results.append(result)
            bar.update(1)
    return results


def _per_user(results, runs_dir: Path) -> dict:
    """Seed-averaged per-user metrics of each (protocol, label), indexed by user token."""
    from interest_migration.benchmark.per_user import read_users, seed_average
    from interest_migration.benchmark.runner import RunSpec, result_paths

    frames = {}
    for r in results:
        if r["status"] != "ok":
            continue
        spec = RunSpec(label=r["label"], model=r["model"], protocol=r["protocol"], seed=r["seed"],
                       dataset=r["dataset"], config_files=[])
        frames.setdefault((r["protocol"], r["label"]), []).append(read_users(result_paths(runs_dir, spec)[1]))
    return {key: seed_average(parts) for key, parts in frames.items()}


def analyse(results, per_user, summary, protocols, data, category_field, ours) -> tuple[dict, dict, dict]:
    """Paired tests (ours vs the best baseline) and drift-bucket tables, per protocol."""
    from interest_migration.benchmark import per_user as stats

    tests, buckets, tables = {}, {}, {}
    for protocol in protocols:
        rows = summary[(summary["protocol"] == protocol.name) & summary.get("ndcg@10").notna()] \
            if "ndcg@10" in summary else summary.iloc[0:0]
        baselines = rows[~rows["model"].str.startswith(ours)]
        if (protocol.name, ours) in per_user and len(baselines):
            best = baselines.sort_values("ndcg@10", ascending=False)["model"].iloc[0]
            test = stats.paired_test(per_user[(protocol.name, ours)]["ndcg@10"],
                                     per_user[(protocol.name, best)]["ndcg@10"])
            tests[protocol.name] = {"a": ours, "b": best, **test}
        if category_field:
            rates = stats.training_switch_rate(data[protocol.name]["folder"], category_field)
            labels = [label for (p, label) in per_user if p == protocol.name]
            if labels:
                users = per_user[(protocol.name, labels[0])].index
                groups = stats.drift_buckets(rates, users)
                table = stats.bucket_table({label: per_user[(protocol.name, label)] for label in labels}, groups)
                from interest_migration.benchmark.report import bucket_markdown

                tables[protocol.name] = table
                buckets[protocol.name] = {"markdown": bucket_markdown(table),
                                          "table": table.reset_index().to_dict(orient="records")}
    return tests, buckets, tables


def run(args) -> int:
    from interest_migration.benchmark import report
    from interest_migration.benchmark.protocols import get_protocol, prepare_dataset
    from interest_migration.configs import config_files_for, default_config_dir

    config_dir = Path(args.config_dir) if args.config_dir else default_config_dir()
    overrides = parse_overrides(getattr(args, "overrides", []))
    protocols = [get_protocol(name) for name in args.protocols]
    models = resolve_models(args.models, config_dir)
    dataset_config = merged_yaml(config_files_for(models[0][0], args.dataset, config_dir)[:2])
    dataset_config.update(overrides)
    seed0 = args.seed if args.seed is not None else int(dataset_config.get("seed", 2020))
    seeds = [seed0 + i for i in range(max(args.seeds, 1))]

    out = Path(args.out) / args.dataset / args.run
    runs_dir, work_dir = out / "runs", out / "work"
    fields = tuple(dataset_config.get(k, d) for k, d in
                   (("USER_ID_FIELD", "user_id"), ("ITEM_ID_FIELD", "item_id"), ("TIME_FIELD", "timestamp")))
    data = {p.name: prepare_dataset(args.dataset, p, args.data_path, out / "data", fields) for p in protocols}
    specs = build_specs(args, config_dir, models, protocols, data, seeds, overrides)
    print(f"{len(specs)} model runs ({len(models)} models x {len(protocols)} protocols x {len(seeds)} seeds) "
          f"-> {out}", flush=True)
    results = execute(specs, runs_dir, work_dir, args.timeout, args.retry_failed)

    summary = report.summarise(results, per_user := _per_user(results, runs_dir))
    category_field = dataset_config.get("CATEGORY_FIELD")
    tests, buckets, tables = analyse(results, per_user, summary, protocols, data, category_field, args.ours)
    protocol_info = {}
    for p in protocols:
        rows = summary[summary["protocol"] == p.name]
        n_users = int(rows["n_test_users"].max()) if "n_test_users" in rows and rows["n_test_users"].notna().any() \
            else None
        protocol_info[p.name] = {"data_filter": p.data_filter, "candidates": p.candidates,
                                 "exclude_seen_items": p.exclude_seen_items, "dataset": data[p.name]["dataset"],
                                 "rows_in": data[p.name]["rows_in"], "rows_kept": data[p.name]["rows_kept"],
                                 "n_test_users": n_users}
    command = "python -m interest_migration compare " + " ".join(shlex.quote(a) for a in getattr(args, "argv", []))
    info = {"dataset": args.dataset, "command": command, "commit": _commit(), "machine": _machine(args.threads),
            "seeds": seeds, "models": [{"label": l, "model_class": m} for l, m in models],
            "protocols": protocol_info, "overrides": overrides, "paired_tests": tests, "buckets": buckets,
            "runs": results}
    report.write_tables(out, summary, info)
    if len(summary):
        report.plot_metric_bars(summary, out / "metrics.png")
        if "ndcg@10" in summary and summary["ndcg@10"].notna().any():
            report.plot_quality_vs_time(summary, out / "ndcg_vs_train_time.png")
    if tables:
        report.plot_buckets(tables, out / "drift_buckets.png")
    print((out / "results.md").read_text(encoding="utf-8"))
    return 0 if any(r["status"] == "ok" for r in results) else 1
