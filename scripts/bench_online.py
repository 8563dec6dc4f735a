"""Latency and throughput of online serving on a Beauty-sized model.

Builds InterestShiftCNN (untrained: latency does not depend on the weights) on Amazon Beauty
5-core (22,363 users, 12,101 items), converted from ``../shared/datasets/amazon-5core`` unless
``--data-path`` already holds ``amazon-beauty/``, then measures:

* in-process ``OnlineRecommender.recommend()`` p50/p99, with and without micro-batching;
* HTTP ``GET /recommendations/{user}`` p50/p99 and throughput with 1, 4 and 16 concurrent
  keep-alive loopback clients against ``python -m interest_migration serve`` in its own process;
* HTTP ``POST /events`` (one event, group-commit fsync) p50/p99 with 1 and 16 clients.

Every level is bounded by a request count and a time limit. Besides latency, it reports CPU time
per request (the calling thread in process, the server process over HTTP), which unlike latency
does not grow when other jobs compete for the cores, and the mean micro-batch size. Prints a
Markdown table and writes it to ``--out``.

    python scripts/bench_online.py --out bench_online.md
"""
from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench_data import prepared_dataset  # scripts/bench_data.py

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "datasets" / "amazon-5core"
DATASET = "amazon-beauty"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-path", default=None, help=f"folder holding {DATASET}/ (default: convert into a temp folder)"
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per level (in-process) / per client cap")
    parser.add_argument("--seconds", type=float, default=15.0, help="time limit of each level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for scoring")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    return parser.parse_args()


def prepare_data(data_path, workdir: Path) -> Path:
    return prepared_dataset(data_path, workdir, DATASET, ["amazon", "--input", str(SOURCE)])


def build_model(data_root: Path, workdir: Path):
    """Config, untrained model and dataset of InterestShiftCNN on Beauty, plus a safe checkpoint of them."""
    import interest_migration  # noqa: F401
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from interest_migration.checkpoint import save_safe
    from interest_migration.compat import get_model_class
    from interest_migration.configs import config_files_for

    model_class = get_model_class("InterestShiftCNN")
    config = Config(
        model=model_class,
        dataset=DATASET,
        config_file_list=config_files_for("InterestShiftCNN", DATASET, REPO / "recbole_configs"),
        config_dict={"data_path": str(data_root), "checkpoint_dir": str(workdir), "show_progress": False},
    )
    config["model"] = "InterestShiftCNN"
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = model_class(config, train_data._dataset).eval()
    checkpoint = save_safe(workdir / "beauty.safe.pth", config, model, dataset)
    return config, model, dataset, checkpoint


def percentiles(seconds: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.array(seconds) * 1000, [50, 99])
    return float(p50), float(p99)


def bench_in_process(config, model, dataset, users, args) -> list[dict]:
    from interest_migration.serving.online import OnlineRecommender

    rows = []
    for batching in (False, True):
        recommender = OnlineRecommender(config, model, dataset, batching=batching)
        rng = random.Random(0)
        for _ in range(20):  # warm-up
            recommender.recommend(rng.choice(users), args.k)
        latencies, deadline = [], time.perf_counter() + args.seconds
        cpu_start = time.thread_time()
        while len(latencies) < args.requests and time.perf_counter() < deadline:
            user = rng.choice(users)
            start = time.perf_counter()
            recommender.recommend(user, args.k)
            latencies.append(time.perf_counter() - start)
        cpu = time.thread_time() - cpu_start
        recommender.close()
        p50, p99 = percentiles(latencies)
        rows.append(
            {"what": f"in-process recommend(), micro-batching {'on' if batching else 'off'}", "clients": 1,
             "requests": len(latencies), "p50": p50, "p99": p99, "rps": len(latencies) / sum(latencies),
             "cpu_ms": cpu * 1000 / len(latencies)}
        )
        print(rows[-1], flush=True)
    return rows


def start_server(checkpoint: Path, workdir: Path, threads: int):
    log = workdir / "events.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "interest_migration", "serve", "--checkpoint", str(checkpoint), "--port", "0",
         "--event-log", str(log), "--threads", str(threads)],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server exited with {proc.wait()} before serving")
        if line.startswith("serving "):
            url = line.split(" on ", 1)[1].split()[0]
            host, port = url.removeprefix("http://").rsplit(":", 1)
            return proc, host, int(port)
    proc.kill()
    raise RuntimeError("server did not start within 300 s")


def run_clients(host, port, n_clients, make_request, args, server=None) -> dict:
    """``n_clients`` threads, each with its own keep-alive connection, until the count or time runs out.

    ``server`` (a psutil.Process) adds the server's CPU time per request: unlike latency, it
    does not grow when other jobs compete for the cores.
    """
    latencies = [[] for _ in range(n_clients)]
    errors = []
    barrier = threading.Barrier(n_clients + 1)
    stop_at = [0.0]

    def client(index):
        rng = random.Random(index)
        conn = http.client.HTTPConnection(host, port, timeout=10)
        barrier.wait()
        try:
            while len(latencies[index]) < args.requests and time.perf_counter() < stop_at[0]:
                method, path, body = make_request(rng)
                start = time.perf_counter()
                conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
                response = conn.getresponse()
                response.read()
                latencies[index].append(time.perf_counter() - start)
                if response.status != 200:
                    errors.append(response.status)
        except Exception as exc:  # noqa: BLE001  (counted and reported)
            errors.append(repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for thread in threads:
        thread.start()
    cpu_before = sum(server.cpu_times()[:2]) if server is not None else 0.0
    stop_at[0] = time.perf_counter() + args.seconds
    start = time.perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    flat = [x for per in latencies for x in per]
    p50, p99 = percentiles(flat)
    row = {"clients": n_clients, "requests": len(flat), "p50": p50, "p99": p99, "rps": len(flat) / wall,
           "errors": len(errors)}
    if server is not None:
        row["cpu_ms"] = (sum(server.cpu_times()[:2]) - cpu_before) * 1000 / max(len(flat), 1)
    return row


def scored(host, port) -> tuple[float, int]:
    """(recommendations scored by the model, micro-batches) so far, from /metrics."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/metrics")
    batches = json.loads(conn.getresponse().read())["recommend_micro_batches"]
    conn.close()
    return (batches["mean_batch_size"] or 0.0) * batches["batches"], batches["batches"]


def bench_http(checkpoint, workdir, users, items, args) -> list[dict]:
    import psutil

    proc, host, port = start_server(checkpoint, workdir, args.threads)
    server = psutil.Process(proc.pid)
    rows = []
    try:
        def recommend(rng):
            return "GET", f"/recommendations/{rng.choice(users)}?k={args.k}", None

        def event(rng):
            body = json.dumps({"user": rng.choice(users), "item": rng.choice(items)})
            return "POST", "/events", body.encode()

        run_clients(host, port, 1, recommend, argparse.Namespace(requests=50, seconds=10))  # warm-up
        for n in args.clients:
            before = scored(host, port)
            row = {"what": "HTTP GET /recommendations", **run_clients(host, port, n, recommend, args, server)}
            after = scored(host, port)
            row["mean_batch"] = (after[0] - before[0]) / max(after[1] - before[1], 1)
            rows.append(row)
            print(row, flush=True)
        for n in sorted({min(args.clients), max(args.clients)}):
            row = {"what": "HTTP POST /events (1 event, fsync group commit)",
                   **run_clients(host, port, n, event, args, server)}
            rows.append(row)
            print(row, flush=True)
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", "/metrics")
        metrics = json.loads(conn.getresponse().read())
        print("server-side latency:", json.dumps({k: v.get("latency_ms") for k, v in metrics["routes"].items()}))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def table(rows, args, model, dataset) -> str:
    lines = [
        f"InterestShiftCNN (untrained, default size: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"MAX_ITEM_LIST_LENGTH {model.max_seq_length}) on amazon-beauty ({dataset.user_num - 1:,} users, "
        f"{dataset.item_num - 1:,} items); k={args.k}; torch threads {args.threads}; "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
        f"load average {args.load_before:.1f} before and {os.getloadavg()[0]:.1f} after the run.",
        "",
        "| what | clients | requests | p50 ms | p99 ms | requests/s | CPU ms/request | mean micro-batch | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        batch = f"{row['mean_batch']:.1f}" if "mean_batch" in row else ""
        lines.append(
            f"| {row['what']} | {row['clients']} | {row['requests']} | {row['p50']:.2f} | {row['p99']:.2f} | "
            f"{row['rps']:.0f} | {row['cpu_ms']:.2f} | {batch} | {row.get('errors', 0)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    args.load_before = os.getloadavg()[0]
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from the command line
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-online-") as tmp:
        workdir = Path(tmp)
        data_root = prepare_data(args.data_path, workdir)
        config, model, dataset, checkpoint = build_model(data_root, workdir)
        users = [str(u) for u in dataset.field2id_token[dataset.uid_field][1:]]
        items = [str(i) for i in dataset.field2id_token[dataset.iid_field][1:]]
        rows = bench_in_process(config, model, dataset, users, args)
        # the clients share this process with the dataset and model built above: keep the
        # collector from walking that heap while it times requests
        gc.collect()
        gc.freeze()
        rows += bench_http(checkpoint, workdir, users, items, args)
    text = table(rows, args, model, dataset)
    print(text)
    if args.out:
        from interest_migration.utils.io import atomic_write_text

        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
