"""Is a model's ``p_shift`` right? Calibration and ranking quality against what users did next.

The outcome of a test interaction is a *shift*: the target item's category differs from the
category of the last item in the user's history. ``p_shift`` is judged by its reliability curve
(predicted vs observed shift rate per probability bin), expected calibration error, Brier score,
log loss and ROC AUC, side by side with the naive predictor "the user's historical switch rate"
(the share of category changes between consecutive items of the same history). A model worth its
migration head should beat the naive predictor on AUC and Brier score.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

logger = logging.getLogger(__name__)

NAIVE = "historical switch rate"


def _as_arrays(probability, outcome) -> tuple[np.ndarray, np.ndarray]:
    probability = np.asarray(probability, dtype=np.float64).ravel()
    outcome = np.asarray(outcome).ravel().astype(bool)
    if probability.shape != outcome.shape:
        raise ValueError(f"probability and outcome differ in length: {probability.size} vs {outcome.size}")
    if probability.size and (np.nanmin(probability) < 0 or np.nanmax(probability) > 1 or np.isnan(probability).any()):
        raise ValueError("probabilities must lie in [0, 1] and not be NaN")
    return probability, outcome


def reliability_curve(probability, outcome, n_bins: int = 10) -> pd.DataFrame:
    """Predicted vs observed shift rate in ``n_bins`` equal-width bins of [0, 1] (empty bins kept,
    with NaN means). The last bin includes 1.0."""
    probability, outcome = _as_arrays(probability, outcome)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, probability, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(which, weights=probability, minlength=n_bins) / count
        observed = np.bincount(which, weights=outcome.astype(float), minlength=n_bins) / count
    return pd.DataFrame({"bin_lower": edges[:-1], "bin_upper": edges[1:], "count": count,
                         "mean_predicted": predicted, "observed_rate": observed})


def expected_calibration_error(probability, outcome, n_bins: int = 10) -> float:
    """Count-weighted mean |predicted - observed| over the reliability bins."""
    curve = reliability_curve(probability, outcome, n_bins)
    used = curve["count"] > 0
    if not used.any():
        return float("nan")
    gap = (curve["mean_predicted"] - curve["observed_rate"]).abs()[used]
    return float((gap * curve["count"][used]).sum() / curve["count"][used].sum())


def roc_auc(probability, outcome) -> float:
    """Area under the ROC curve (Mann–Whitney U with tied scores averaged); NaN with one class."""
    probability, outcome = _as_arrays(probability, outcome)
    n_pos = int(outcome.sum())
    n_neg = outcome.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(probability)
    return float((ranks[outcome].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def brier_score(probability, outcome) -> float:
    probability, outcome = _as_arrays(probability, outcome)
    return float(np.mean((probability - outcome) ** 2)) if outcome.size else float("nan")


def log_loss(probability, outcome, eps: float = 1e-7) -> float:
    probability, outcome = _as_arrays(probability, outcome)
    if not outcome.size:
        return float("nan")
    p = np.clip(probability, eps, 1.0 - eps)
    return float(-np.mean(np.where(outcome, np.log(p), np.log1p(-p))))


def history_switch_rate(history_categories, lengths, fallback: float | None = None) -> np.ndarray:
    """The naive predictor: share of category changes between consecutive items of each history.

    ``history_categories`` is [B, L], right-padded, each row's first ``lengths[b]`` entries real.
    Histories with fewer than two items have no rate; they get ``fallback``, by default the mean
    rate of the other histories (0.5 when there are none).
    """
    history = np.asarray(history_categories)
    lengths = np.asarray(lengths, dtype=np.int64)
    if history.ndim != 2 or history.shape[0] != lengths.shape[0]:
        raise ValueError(f"history must be [B, L] with one length per row, got {history.shape} and {lengths.shape}")
    if history.shape[1] < 2:
        switches = np.zeros(len(lengths))
    else:
        real_pair = np.arange(1, history.shape[1])[None, :] < lengths[:, None]
        switches = ((history[:, 1:] != history[:, :-1]) & real_pair).sum(axis=1)
    pairs = lengths - 1
    defined = pairs > 0
    rate = np.full(len(lengths), np.nan)
    rate[defined] = switches[defined] / pairs[defined]
    if fallback is None:
        fallback = float(rate[defined].mean()) if defined.any() else 0.5
    rate[~defined] = fallback
    return rate


def compare_predictors(outcome, predictors: dict, n_bins: int = 10) -> tuple[pd.DataFrame, dict]:
    """Score each named probability array against ``outcome``.

    Returns a summary table (one row per predictor: n, observed shift rate, mean predicted, AUC,
    Brier, log loss, ECE) and the reliability curve of each predictor.
    """
    rows, curves = [], {}
    outcome = np.asarray(outcome).astype(bool)
    for name, probability in predictors.items():
        probability = np.asarray(probability, dtype=np.float64)
        curves[name] = reliability_curve(probability, outcome, n_bins)
        rows.append({
            "predictor": name, "n": int(outcome.size),
            "observed_shift_rate": float(outcome.mean()) if outcome.size else float("nan"),
            "mean_predicted": float(probability.mean()) if probability.size else float("nan"),
            "auc": roc_auc(probability, outcome), "brier": brier_score(probability, outcome),
            "log_loss": log_loss(probability, outcome),
            "ece": expected_calibration_error(probability, outcome, n_bins),
        })
    return pd.DataFrame(rows), curves


# --------------------------------------------------------------------------- model checkpoints

def shift_predictions(model, dataloader, item_categories=None) -> pd.DataFrame:
    """``p_shift``, the naive rate and the observed shift for every evaluated interaction.

    ``dataloader`` is a RecBole full-sort evaluation loader (leave-one-out test or validation);
    ``item_categories`` maps item id to category id (0 = unknown), by default the model's own
    ``item2cat``. Interactions whose target or last history item has no category are left out;
    their count is logged.
    """
    import torch

    if not hasattr(model, "predict_migration"):
        raise TypeError(f"{type(model).__name__} has no predict_migration(): it does not predict interest shifts")
    item2cat = model.item2cat if item_categories is None else torch.as_tensor(item_categories)
    item2cat = item2cat.to(model.device)
    model.eval()
    frames, skipped = [], 0
    with torch.no_grad():
        for batch in dataloader:
            interaction = batch[0] if isinstance(batch, (tuple, list)) else batch
            if model.ITEM_SEQ not in interaction.interaction:
                raise ValueError("the dataloader yields no item sequences: use a sequential model's evaluation data")
            interaction = interaction.to(model.device)
            p_shift = model.predict_migration(interaction)["p_shift"]
            seq, length = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
            history = item2cat[seq]
            last = history.gather(1, (length - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
            target = item2cat[interaction[model.POS_ITEM_ID]]
            known = (last > 0) & (target > 0) & (length > 0)
            skipped += int((~known).sum())
            frames.append(pd.DataFrame({
                "p_shift": p_shift[known].float().cpu().numpy(),
                "shifted": (target != last)[known].cpu().numpy(),
                "history_length": length[known].cpu().numpy(),
                "naive": history_switch_rate(history[known].cpu().numpy(), length[known].cpu().numpy(), np.nan),
            }))
    if skipped:
        logger.warning("left out %d interactions whose target or last history item has no category", skipped)
    if not frames:
        return pd.DataFrame({"p_shift": [], "shifted": [], "history_length": [], "naive": []})
    frame = pd.concat(frames, ignore_index=True)
    # Histories of one item have no switch rate: give them the mean rate of the others.
    fallback = frame["naive"].mean() if frame["naive"].notna().any() else 0.5
    frame["naive"] = frame["naive"].fillna(fallback)
    frame.attrs["left_out"] = skipped
    return frame


def load_checkpoint_predictions(
    checkpoint: str | Path, split: str = "test", *, trust_pickle: bool = False, data_path=None
) -> tuple[pd.DataFrame, dict]:
    """Load an InterestShiftCNN checkpoint and score ``p_shift`` on its test (or valid) split.

    Loading goes through :func:`interest_migration.checkpoint.load`: a safe checkpoint always, a
    RecBole pickle checkpoint only with ``trust_pickle=True``. Returns the per-interaction
    predictions and a small info dict (model, dataset, split, checkpoint).
    """
    from interest_migration import checkpoint as checkpoints

    if split not in ("test", "valid"):
        raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
    loaded = checkpoints.load(checkpoint, trust_pickle=trust_pickle, data_path=data_path)
    mode = loaded.config["eval_args"]["mode"]
    mode = mode.get(split, mode) if isinstance(mode, dict) else mode
    if mode != "full":
        raise ValueError(f"{checkpoint}: calibration needs full-ranking evaluation data (eval_args.mode: full), got {mode!r}")
    frame = shift_predictions(loaded.model, loaded.test_data if split == "test" else loaded.valid_data)
    info = {"model": loaded.config["model"], "dataset": loaded.config["dataset"], "split": split,
            "checkpoint": str(checkpoint)}
    return frame, info
