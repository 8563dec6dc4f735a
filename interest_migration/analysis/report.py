"""``python -m interest_migration analyze``: measure and plot interest migration in a dataset.

Writes into ``--out``: ``report.md``, the PNG figures it shows, ``users.csv`` and
``users.parquet`` (one row per user), and with ``--checkpoint`` the ``p_shift`` calibration of a
trained InterestShiftCNN. :func:`analyze` does the computation and :func:`write_report` the
files, so scripts (the benchmark) can time them apart.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from interest_migration.analysis import drift, transitions
from interest_migration.analysis.shift_points import ShiftPointDetector
from interest_migration.analysis.timelines import DEFAULT_CATEGORY_FIELD, Timelines, load_atomic
from interest_migration.utils.cli import add_trust_checkpoint_argument
from interest_migration.utils.io import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

DAY = 86400.0


@dataclass
class MigrationAnalysis:
    """Everything the report shows, computed once."""

    timelines: Timelines
    users: pd.DataFrame
    counts: sp.csr_matrix
    flows: pd.DataFrame
    daily: pd.DataFrame
    flows_by_period: pd.DataFrame
    period: str
    shifts: pd.DataFrame
    shift_probability: np.ndarray
    detector: ShiftPointDetector
    window: str
    seconds: dict = field(default_factory=dict)


def analyze(
    timelines: Timelines,
    detector: ShiftPointDetector | None = None,
    window_events: int | None = 20,
    window_seconds: float | None = None,
    top_flows: int = 20,
    daily_flows: int = 5,
    utc_offset_hours: float = 0.0,
) -> MigrationAnalysis:
    """Compute per-user drift, population transitions, daily flows and shift points."""
    detector = detector or ShiftPointDetector()
    seconds = {}
    clock = time.perf_counter()

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = now - clock
        clock = now

    users = drift.user_drift(timelines, window_events, window_seconds)
    lap("drift")
    counts = transitions.transition_counts(timelines)
    flows = transitions.top_flows(timelines, top_flows)
    period = transitions.choose_period(timelines, utc_offset_hours)
    per_period = transitions.migration_per_period(timelines, utc_offset_hours, period)
    flows_by_period = transitions.flows_per_period(timelines, utc_offset_hours, daily_flows, period)
    lap("transitions")
    probability = detector.shift_probability(timelines)
    shifts = detector.decode(timelines, probability)
    lap("shift_points")
    n_shifts = np.bincount(shifts["user"], minlength=timelines.n_users)
    users["n_shifts"] = n_shifts
    with np.errstate(invalid="ignore", divide="ignore"):
        users["shifts_per_100_events"] = np.where(timelines.lengths > 0, 100.0 * n_shifts / np.maximum(timelines.lengths, 1), np.nan)
    positions = shifts.groupby("user")["position"].agg(lambda p: ";".join(map(str, p)))
    users["shift_positions"] = ""
    users.loc[positions.index.to_numpy(), "shift_positions"] = positions.to_numpy()
    lap("user_table")
    window = f"{window_events} events" if window_events is not None else f"{window_seconds / 3600:g} hours"
    return MigrationAnalysis(timelines, users, counts, flows, per_period, flows_by_period, period, shifts,
                             probability, detector, window, seconds)


# --------------------------------------------------------------------------- writing

def _markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table (no extra dependency)."""
    def cell(value):
        if isinstance(value, (float, np.floating)):
            return "" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _timeline_users(analysis: MigrationAnalysis, n: int) -> np.ndarray:
    """A few readable users with detected shifts: most shifts per event among 30–300-event users."""
    users = analysis.users
    lengths = users["n_events"].to_numpy()
    readable = (users["n_shifts"] > 0) & (lengths >= 30) & (lengths <= 300)
    candidates = users[readable] if readable.any() else users[users["n_shifts"] > 0]
    ranked = candidates.sort_values(["shifts_per_100_events", "n_events"], ascending=[False, False], kind="stable")
    return ranked.index.to_numpy()[:n]


def write_report(
    analysis: MigrationAnalysis,
    out: str | Path,
    title: str,
    calibration: tuple[pd.DataFrame, dict] | None = None,
    timeline_users: int = 4,
    heatmap_top: int = 20,
) -> dict:
    """Write report.md, the figures and the user table into ``out``; return the written paths."""
    from interest_migration.analysis import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tl = analysis.timelines
    labels = tl.labels()
    written = {}
    written["heatmap"] = plots.transition_heatmap(analysis.counts, labels, heatmap_top, out / "transition_heatmap.png")
    written["drift"] = plots.drift_histograms(analysis.users, out / "drift_histogram.png")
    chosen = _timeline_users(analysis, timeline_users)
    written["timelines"] = plots.user_timelines(tl, chosen, analysis.shifts, analysis.shift_probability,
                                                out / "user_timelines.png")
    written["daily"] = plots.daily_flows(analysis.daily, analysis.flows_by_period, out / "daily_flows.png",
                                         transitions.PERIODS[analysis.period])
    if calibration is not None:
        predictions, info = calibration
        summary, curves = _calibration_summary(predictions)
        written["calibration"] = plots.calibration_plot(curves, summary, predictions["p_shift"].to_numpy(),
                                                        out / "p_shift_calibration.png")
        with atomic_path(out / "p_shift_calibration.csv") as tmp:
            summary.to_csv(tmp, index=False)
        written["calibration_table"] = out / "p_shift_calibration.csv"
    with atomic_path(out / "users.csv") as tmp:
        analysis.users.to_csv(tmp, index=False)
    written["users_csv"] = out / "users.csv"
    with atomic_path(out / "users.parquet") as tmp:
        analysis.users.to_parquet(tmp, index=False)
    written["users_parquet"] = out / "users.parquet"
    text = _report_text(analysis, title, chosen, calibration)
    atomic_write_text(out / "report.md", text)
    written["report"] = out / "report.md"
    return written


def _calibration_summary(predictions: pd.DataFrame):
    from interest_migration.analysis.calibration import NAIVE, compare_predictors

    return compare_predictors(predictions["shifted"].to_numpy(),
                              {"InterestShiftCNN p_shift": predictions["p_shift"].to_numpy(),
                               NAIVE: predictions["naive"].to_numpy()})


def _describe(values: pd.Series) -> str:
    values = values.dropna()
    if not len(values):
        return "n/a"
    q = values.quantile([0.1, 0.5, 0.9]).to_numpy()
    return f"{q[1]:.3g} (10–90%: {q[0]:.3g}–{q[2]:.3g})"


def _report_text(analysis: MigrationAnalysis, title: str, chosen: np.ndarray, calibration) -> str:
    tl, users = analysis.timelines, analysis.users
    active = users[users["n_events"] > 0]
    lines = [f"# Interest migration: {title}", ""]
    if tl.n_events:
        start = pd.to_datetime(tl.timestamp.min(), unit="s")
        end = pd.to_datetime(tl.timestamp.max(), unit="s")
        span = f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} UTC"
    else:
        span = "no events"
    lines += [
        "## Data", "",
        f"- {tl.n_events:,} events of {tl.n_users:,} users ({len(active):,} with events) in {tl.n_categories:,} categories; {span}.",
        "- Categories are labelled with " + ("their `category_name`." if tl.category_names is not None
                                             else "the values of the category field (no `category_name` field)."),
    ]
    lines += [f"- {note}" for note in tl.notes]
    lines += [
        "", "## Drift per user", "",
        f"Windows for the Jensen–Shannon divergence: {analysis.window}. All measures in bits; "
        "a user needs 2 events for a switch rate and 2 windows for a divergence.", "",
        "| measure | median (10–90%) | users with it |", "|---|---|---|",
    ]
    for column, name in [("n_events", "events"), ("n_categories", "distinct categories"),
                         ("switch_rate", "category switch rate"), ("entropy_bits", "category entropy"),
                         ("mean_window_jsd", "mean window JSD"), ("max_window_jsd", "max window JSD"),
                         ("n_shifts", "detected shifts")]:
        lines.append(f"| {name} | {_describe(active[column].astype(float))} | {int(active[column].notna().sum()):,} |")
    n_trans = int(analysis.counts.sum())
    n_mig = int(analysis.counts.sum() - analysis.counts.diagonal().sum())
    lines += [
        "", "![drift histogram](drift_histogram.png)", "",
        "## Population migration", "",
        f"{n_trans:,} transitions between consecutive events of a user; {n_mig:,} "
        f"({n_mig / max(n_trans, 1):.1%}) change category.", "",
        "![transition heatmap](transition_heatmap.png)", "",
        f"Top {len(analysis.flows)} flows (`share_of_source`: share of all transitions out of `from`):", "",
        _markdown_table(analysis.flows[["from", "to", "count", "share_of_source"]]) if len(analysis.flows) else "_no flows_",
        "", f"## Migration per {transitions.PERIODS[analysis.period]}", "",
        _markdown_table(analysis.daily) if len(analysis.daily) else "_no transitions_", "",
        "![daily flows](daily_flows.png)", "",
        "## Shift points", "",
        f"Bayesian segmentation of each category sequence (see `interest_migration.analysis.shift_points`): "
        f"hazard {analysis.detector.hazard:g}, concentration {analysis.detector.concentration:g}, "
        f"stickiness {analysis.detector.stickiness:g}, exploration {analysis.detector.exploration:g}, "
        f"min_segment {analysis.detector.min_segment}, a shift is reported where the posterior mass within "
        f"±{analysis.detector.tolerance} events is at least {analysis.detector.threshold:g}.", "",
        f"- {len(analysis.shifts):,} shifts in {int((users['n_shifts'] > 0).sum()):,} users; "
        f"mean confidence {analysis.shifts['confidence'].mean() if len(analysis.shifts) else float('nan'):.3f}.",
        f"- Timelines below: users {', '.join(map(str, tl.user_tokens[chosen])) or 'none'} "
        "(most shifts per event among users with 30–300 events).", "",
        "![user timelines](user_timelines.png)", "",
    ]
    if calibration is not None:
        predictions, info = calibration
        summary, _ = _calibration_summary(predictions)
        left_out = predictions.attrs.get("left_out", 0)
        lines += [
            "## Model: calibration of p_shift", "",
            f"Checkpoint `{info['checkpoint']}` ({info['model']} on {info['dataset']}), {info['split']} split: "
            f"{len(predictions):,} interactions"
            + (f" ({left_out:,} left out: target or last item without category)" if left_out else "")
            + ". A shift is a target item whose category differs from the last history item's. "
            "The naive predictor is the user's switch rate over the same history.", "",
            _markdown_table(summary), "",
            "![p_shift calibration](p_shift_calibration.png)", "",
        ]
    lines += [
        "## Files", "",
        "- `users.csv`, `users.parquet`: one row per user (events, distinct categories, switch rate, entropy, "
        "window JSD mean/max, detected shifts and their positions).",
        "", f"Computed in {sum(analysis.seconds.values()):.1f} s "
        f"({', '.join(f'{k} {v:.1f} s' for k, v in analysis.seconds.items())}).", "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line

def configure_parser(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="name of a converted dataset in --datasets-dir (e.g. taobao)")
    source.add_argument("--data-path", help="folder of a converted dataset (RecBole atomic .inter + .item)")
    parser.add_argument("--datasets-dir", default="datasets", help="where --dataset NAME is looked up (default: datasets)")
    parser.add_argument("--out", help="output folder (default: reports/<dataset name>/)")
    parser.add_argument("--category-field", default=DEFAULT_CATEGORY_FIELD, help="category field (default: category_id)")
    parser.add_argument("--behaviors", help="comma-separated behaviour types to keep (default: all)")
    window = parser.add_mutually_exclusive_group()
    window.add_argument("--window-events", type=int, default=None, help="JSD window length in events (default 20)")
    window.add_argument("--window-days", type=float, default=None, help="JSD window length in days instead")
    parser.add_argument("--utc-offset", type=float, default=0.0,
                        help="hours added to UTC for calendar days (Taobao: 8); default 0")
    parser.add_argument("--top", type=int, default=20, help="categories in the heatmap and flows in the table (default 20)")
    parser.add_argument("--timeline-users", type=int, default=4, help="users drawn with their shift points (default 4)")
    parser.add_argument("--hazard", type=float, default=ShiftPointDetector.hazard, help="prior shift rate per event")
    parser.add_argument("--min-segment", type=int, default=ShiftPointDetector.min_segment, help="shortest segment, in events")
    parser.add_argument("--checkpoint", help="InterestShiftCNN checkpoint (safe, or RecBole's with --trust-checkpoint): "
                                             "adds the p_shift calibration")
    add_trust_checkpoint_argument(parser)
    parser.add_argument("--checkpoint-data-path", help="data_path for a safe checkpoint whose dataset has moved")
    parser.add_argument("--split", default="test", choices=["test", "valid"], help="split scored for calibration")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    folder = Path(args.data_path) if args.data_path else Path(args.datasets_dir) / args.dataset
    name = args.dataset or folder.name
    out = Path(args.out) if args.out else Path("reports") / name
    behaviors = [b.strip() for b in args.behaviors.split(",") if b.strip()] if args.behaviors else None
    timelines = load_atomic(folder, category_field=args.category_field, behaviors=behaviors)
    if args.window_days is not None:
        window_events, window_seconds = None, args.window_days * DAY
    else:
        window_events, window_seconds = args.window_events or 20, None
    detector = ShiftPointDetector(hazard=args.hazard, min_segment=args.min_segment)
    analysis = analyze(timelines, detector, window_events, window_seconds, top_flows=args.top,
                       utc_offset_hours=args.utc_offset)
    calibration = None
    if args.checkpoint:
        from interest_migration.analysis.calibration import load_checkpoint_predictions

        calibration = load_checkpoint_predictions(args.checkpoint, args.split, trust_pickle=args.trust_checkpoint,
                                                  data_path=args.checkpoint_data_path)
    written = write_report(analysis, out, name, calibration, args.timeline_users, args.top)
    print(f"wrote {written['report']} and {len(written) - 1} other files into {out}/")
    return 0
