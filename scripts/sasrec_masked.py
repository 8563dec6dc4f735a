"""SASRec trained on the candidates it is ranked on: does a baseline gain from history masking?

InterestShiftCNN's ``mask_history_items`` leaves the input sequence's items out of its training
softmax where ranking excludes seen items (the ``novel`` protocol). This script gives RecBole's
own SASRec the same change (its cross-entropy over the items outside its input sequence, the
target spared) by replacing ``SASRec.calculate_loss`` in this process only, and runs it through
the same ``run_model`` as ``compare``, with the configs and data of a ``compare`` run folder, so
that the two can be set side by side. It prints and writes one row per seed.

    python scripts/sasrec_masked.py --run-dir results/taobao/seeds-mask --seeds 2020 2021 2022
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from interest_migration.model.sequential_recommender import InterestShiftCNN
from bench_report import emit  # scripts/bench_report.py


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="a compare run folder with runs/novel/SASRec-seed<N>.spec.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2020])
    parser.add_argument("--work-dir", default=None, help="RecBole's log and checkpoint folder (default: <run-dir>/masked)")
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    return parser.parse_args()


def masked_calculate_loss(self, interaction):
    """SASRec's CE loss with the input sequence's items masked out of the softmax, target spared."""
    if self.loss_type != "CE":
        raise ValueError(f"SASRec: loss_type {self.loss_type!r}; the masking applies to the full softmax (CE) only")
    item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
    seq_output = self.forward(item_seq, item_seq_len)
    target = interaction[self.POS_ITEM_ID]
    logits = seq_output @ self.item_embedding.weight.t()
    return self.loss_fct(InterestShiftCNN._mask_history(logits, item_seq, target), target)


def main():
    args = parse_args()
    if args.out:
        args.out = str(Path(args.out).resolve())
    from interest_migration.experiment import run_model  # the package is imported above: registration and compat
    from recbole.model.sequential_recommender.sasrec import SASRec

    SASRec.calculate_loss = masked_calculate_loss
    torch.set_num_threads(1)
    run_dir = Path(args.run_dir).resolve()
    work = Path(args.work_dir or run_dir / "masked").resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # RecBole writes its log folders into the working directory
    rows = ["| seed | valid NDCG@10, masked | test NDCG@10, masked | valid NDCG@10, stored run | test NDCG@10, stored run |",
            "|---:|---:|---:|---:|---:|"]
    for seed in args.seeds:
        spec_file = run_dir / "runs" / "novel" / f"SASRec-seed{seed}.spec.json"
        if not spec_file.is_file():
            raise SystemExit(f"{spec_file}: no such file; run compare with --models SASRec --protocols novel first")
        spec = json.loads(spec_file.read_text())
        if spec["config_dict"].get("exclude_seen_items") is not True:
            raise SystemExit(f"{spec_file}: config_dict.exclude_seen_items is not true; masking is for the novel protocol")
        stored = json.loads(Path(spec["result_file"]).read_text())
        config = {**spec["config_dict"], "seed": seed, "checkpoint_dir": str(work / "saved")}
        record = run_model("SASRec", spec["dataset"], spec["config_files"], config, saved=False)
        rows.append(
            f"| {seed} | {record.best_valid['ndcg@10']:.4f} | {record.test['ndcg@10']:.4f} "
            f"| {stored['best_valid']['ndcg@10']:.4f} | {stored['test']['ndcg@10']:.4f} |"
        )
    emit("\n".join(rows), args.out)


if __name__ == "__main__":
    main()
