"""The plugin's model through RecBole's own entry points, by name."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import interest_migration
from interest_migration.model.sequential_recommender import InterestShiftCNN
from synthetic_data import planted_config, write_planted_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run_recbole of InterestShiftCNN, shared by the tests below."""
    from recbole.quick_start import run_recbole

    root = tmp_path_factory.mktemp("registry")
    write_planted_dataset(root / "data")
    config = planted_config(root / "data", checkpoint_dir=str(root / "saved"), epochs=2)
    result = run_recbole(model="InterestShiftCNN", dataset="planted", config_dict=config)
    (checkpoint,) = (root / "saved").glob("InterestShiftCNN-*.pth")
    return {"result": result, "checkpoint": checkpoint, "config": config, "root": root}


def test_get_model_by_name():
    from recbole.utils import get_model

    assert get_model("InterestShiftCNN") is InterestShiftCNN


def test_run_recbole_by_name_trains_and_evaluates(trained):
    test = trained["result"]["test_result"]
    assert set(test) == {"recall@10", "ndcg@10", "mrr@10"}
    assert 0.0 < test["ndcg@10"] <= 1.0


def test_checkpoint_reloads_in_fresh_process_with_same_metrics(trained):
    script = textwrap.dedent(
        f"""
        import json
        import interest_migration
        from recbole.quick_start import load_data_and_model
        from recbole.utils import get_trainer
        config, model, dataset, train_data, valid_data, test_data = load_data_and_model({str(trained["checkpoint"])!r})
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        result = trainer.evaluate(test_data, load_best_model=False)
        print(json.dumps({{"model": type(model).__name__, "test": dict(result)}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=trained["root"]
    )
    reloaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert reloaded["model"] == "InterestShiftCNN"
    assert reloaded["test"] == pytest.approx(dict(trained["result"]["test_result"]), abs=1e-4)


def test_full_sort_topk_returns_k_external_ids(trained):
    import torch
    from recbole.quick_start import load_data_and_model
    from recbole.utils.case_study import full_sort_topk

    config, model, dataset, _, _, test_data = load_data_and_model(str(trained["checkpoint"]))
    users = ["u1", "u2", "u3"]
    uids = dataset.token2id(dataset.uid_field, users)
    scores, items = full_sort_topk(torch.as_tensor(uids), model, test_data, k=5, device=config["device"])
    external = dataset.id2token(dataset.iid_field, items.cpu())
    assert external.shape == (3, 5)
    assert all(str(i).startswith("i") for i in external.ravel())
    assert torch.all(scores[:, :-1] >= scores[:, 1:])


def test_model_defaults_apply_at_lowest_priority(tmp_path):
    from recbole.config import Config

    write_planted_dataset(tmp_path / "data")
    base = planted_config(tmp_path / "data")
    for key in ("dilations", "n_layers", "embedding_size"):
        base.pop(key)
    config = Config(model="InterestShiftCNN", dataset="planted", config_dict=base)
    defaults = yaml.safe_load((REPO / "interest_migration/properties/model/InterestShiftCNN.yaml").read_text())
    assert config["dilations"] == defaults["dilations"]
    assert config["n_layers"] == defaults["n_layers"]
    assert config["train_neg_sample_args"]["distribution"] == "none"

    user_yaml = tmp_path / "user.yaml"
    user_yaml.write_text("n_layers: 3\nkernel_size: 5\n")
    config = Config(
        model="InterestShiftCNN", dataset="planted", config_file_list=[str(user_yaml)],
        config_dict={**base, "kernel_size": 2},
    )
    assert config["n_layers"] == 3  # user YAML beats the model default
    assert config["kernel_size"] == 2  # config_dict beats the user YAML

    # a built-in model's config does not see the plugin's keys
    sasrec = Config(model="SASRec", dataset="planted", config_dict={**base, "train_neg_sample_args": None})
    assert sasrec["lambda_shift"] is None


def test_hyper_tuning_objective_by_name(tmp_path):
    from recbole.quick_start import objective_function
    from recbole.trainer import HyperTuning

    write_planted_dataset(tmp_path / "data")
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(yaml.safe_dump(planted_config(tmp_path / "data", model="InterestShiftCNN", epochs=1)))
    space = tmp_path / "space.hyper"
    space.write_text("lambda_shift choice [0.0,0.5]\n")
    tuner = HyperTuning(objective_function, params_file=str(space), fixed_config_file_list=[str(fixed)], algo="exhaustive")
    tuner.run()
    assert tuner.model == "InterestShiftCNN"
    assert len(tuner.params2result) == 2
    assert tuner.best_params["lambda_shift"] in (0.0, 0.5)


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "interest_migration", *args], capture_output=True, text=True, cwd=cwd
    )


@pytest.mark.parametrize("model", ["InterestShiftCNN", "Pop"])
def test_cli_run_mirrors_run_recbole(tmp_path, model):
    write_planted_dataset(tmp_path / "data")
    config = planted_config(tmp_path / "data", epochs=1)
    config.pop("data_path")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    out = _cli(
        "run", f"--model={model}", "--dataset=planted", "--config_files=cfg.yaml",
        f"--data_path={tmp_path / 'data'}", "--topk=[5]", "--valid_metric=NDCG@5", cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    log = (out.stdout + out.stderr)
    assert "test result" in log
    assert "ndcg@5" in log and "ndcg@10" not in log.split("test result")[-1]  # --topk override applied


def test_cli_unknown_model_is_clear(tmp_path):
    out = _cli("run", "--model=SASrec", "--dataset=ml-100k", cwd=tmp_path)
    assert out.returncode != 0
    assert "unknown model 'SASrec'" in out.stderr
    assert "lightgbm" not in out.stderr.split("RecBole said")[0]
