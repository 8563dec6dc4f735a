"""Top-N recommendations out of RecBole: one row per (user, rank), as CSV, JSON lines or Parquet.

Works for every RecBole general and sequential model; InterestShiftCNN rows also carry the
user's predicted migration (``p_shift`` and the three most likely next categories).

Scoring follows :func:`recbole.utils.case_study.full_sort_scores`: ``full_sort_predict``
(``predict`` over the catalogue for models without it), the padding item masked. What a
user's scores are computed from depends on ``context``:

* ``latest`` (default): everything the dataset knows about the user. A sequential model reads
  the user's last ``MAX_ITEM_LIST_LENGTH`` interactions *including* the ones RecBole held out
  for validation and test, i.e. the sequence RecBole's augmentation would build for the
  user's next, still unknown, interaction. History = every item the user interacted with.
* ``test``: exactly the input of RecBole's test evaluation and of ``full_sort_topk``: the
  test split's sequence (which ends before the held-out test item). History = what RecBole
  masks at test time (train and validation items).

Users are scored in batches, so memory stays at ``batch_size x n_items`` scores.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import torch

from interest_migration.utils.cli import add_trust_checkpoint_argument

logger = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl", "parquet")
CONTEXTS = ("latest", "test")
N_MIGRATION_CATEGORIES = 3
_SUFFIX_FORMAT = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


class ExportError(ValueError):
    """Bad export input; the message names the file or value and what was expected."""


class UnknownUsersError(ExportError):
    """User ids that cannot be exported, with no ``skipped`` list to report them to."""


@dataclass(frozen=True)
class SkippedUser:
    """A requested user with no recommendations, and why."""

    user_id: str
    line: int | None
    reason: str


# --------------------------------------------------------------------------- users


def read_user_ids(path) -> list[tuple[int, str]]:
    """(line number, external id) of a file with one user id per line.

    Blank lines are skipped; a first line ``user_id`` (or ``user_id:token``) is a header.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: user list not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ExportError(f"{path}: user list is not UTF-8 text ({exc})") from None
    out = []
    for number, line in enumerate(lines, start=1):
        token = line.strip()
        if not token:
            continue
        if not out and number == 1 and token.split(":")[0] in ("user_id", "uid", "session_id"):
            continue
        out.append((number, token))
    return out


def _is_sequential(loaded) -> bool:
    from recbole.utils import ModelType

    return loaded.config["MODEL_TYPE"] == ModelType.SEQUENTIAL


def _last_row_per_user(inter, uid_field) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, row index of each user's last row) of a RecBole ``Interaction``.

    RecBole sorts interactions by time with a stable sort after its augmentation (which is in
    user-then-time order), so the last row of a user is the latest one.
    """
    uids = inter[uid_field].numpy()
    reversed_unique, first_in_reversed = np.unique(uids[::-1], return_index=True)
    return reversed_unique, len(uids) - 1 - first_in_reversed


def _append_targets(rows, dataset):
    """The sequences RecBole would build for each row's *next* interaction.

    Each ``<field>_list`` gets the row's own ``<field>`` appended (dropping the oldest entry when
    the list is full), exactly as ``SequentialDataset.data_augmentation`` would for one more event.
    """
    suffix = dataset.config["LIST_SUFFIX"]
    length_field = dataset.item_list_length_field
    lengths = rows[length_field].long()
    max_len = dataset.max_item_list_len
    full = lengths >= max_len
    new = {}
    for field in rows.interaction:
        list_field = field + suffix
        if field == dataset.uid_field or list_field not in rows.interaction:
            continue
        lists, values = rows[list_field].clone(), rows[field]
        if full.any():
            lists[full] = torch.cat([lists[full, 1:], values[full].unsqueeze(1).to(lists.dtype)], dim=1)
        short = torch.nonzero(~full, as_tuple=True)[0]
        lists[short, lengths[short]] = values[short].to(lists.dtype)
        new[list_field] = lists
    new[length_field] = torch.clamp(lengths + 1, max=max_len).to(rows[length_field].dtype)
    rows.update(type(rows)(new))
    return rows


class _Inputs:
    """What each user is scored from, and which items count as their history."""

    def __init__(self, loaded, context: str):
        if context not in CONTEXTS:
            raise ExportError(f"context must be one of {', '.join(CONTEXTS)}, got {context!r}")
        self.loaded = loaded
        self.context = context
        self.dataset = loaded.dataset
        self.uid_field = self.dataset.uid_field
        self.sequential = _is_sequential(loaded)
        self.n_users = self.dataset.user_num
        self.row_of_user = None
        if self.sequential:
            source = loaded.dataset if context == "latest" else loaded.test_data.dataset
            users, rows = _last_row_per_user(source.inter_feat, self.uid_field)
            self.rows = source.inter_feat[torch.from_numpy(rows)]
            if context == "latest":
                if loaded.config["eval_args"]["order"] != "TO":
                    logger.warning(
                        "eval_args.order is %r: the latest sequence of a user is only well defined for data "
                        "ordered by time (order: TO)", loaded.config["eval_args"]["order"],
                    )
                self.rows = _append_targets(self.rows, self.dataset)
            self.row_of_user = np.full(self.n_users, -1, dtype=np.int64)
            self.row_of_user[users] = np.arange(len(users))
        elif context == "test":  # a general model scores any user, but RecBole tests only these
            self.row_of_user = np.full(self.n_users, -1, dtype=np.int64)
            self.row_of_user[loaded.test_data.uid_list.numpy()] = 0

    def missing_reason(self, uid: int) -> str | None:
        if self.row_of_user is None or self.row_of_user[uid] >= 0:
            return None
        if self.context == "test":
            return "no test interaction: RecBole's split left this user without a test sequence"
        return "fewer than 2 interactions: RecBole's sequential data holds no sequence for this user"

    def interaction(self, uids: np.ndarray):
        from recbole.data.interaction import Interaction

        if self.sequential:
            rows = self.rows[torch.from_numpy(self.row_of_user[uids])]
            return self.dataset.join(rows)
        return self.dataset.join(Interaction({self.uid_field: torch.from_numpy(uids)}))

    def history(self):
        """user x item sparse matrix (CSR) of the items to leave out."""
        import scipy.sparse as sp

        loaded = self.loaded
        shape = (self.dataset.user_num, self.dataset.item_num)
        if self.context == "latest":
            return self.dataset.inter_matrix(form="csr").astype(bool)
        if not self.sequential:  # exactly what full_sort_scores masks
            uid2history = loaded.test_data.uid2history_item
            rows, cols = [], []
            for uid, items in enumerate(uid2history):
                if items is not None and len(items):
                    rows.append(np.full(len(items), uid))
                    cols.append(items.numpy())
            if not rows:
                return sp.csr_matrix(shape, dtype=bool)
            data = np.ones(sum(map(len, rows)), dtype=bool)
            return sp.csr_matrix((data, (np.concatenate(rows), np.concatenate(cols))), shape=shape)
        matrix = loaded.train_data.dataset.inter_matrix(form="csr") + loaded.valid_data.dataset.inter_matrix(form="csr")
        return matrix.astype(bool)


def resolve_users(loaded, users=None, context: str = "latest") -> tuple[np.ndarray, list[SkippedUser]]:
    """Internal ids to export, in output order, and the requested users that cannot be.

    ``users``: None for every user (ascending internal id), or external ids: strings, or
    ``(line, id)`` pairs as :func:`read_user_ids` returns them.
    """
    inputs = _Inputs(loaded, context)
    return _resolve(inputs, users)


def _resolve(inputs: _Inputs, users) -> tuple[np.ndarray, list[SkippedUser]]:
    dataset = inputs.dataset
    skipped = []
    if users is None:
        requested = [(None, str(t), uid) for uid, t in enumerate(dataset.field2id_token[inputs.uid_field]) if uid]
    else:
        token2id = dataset.field2token_id[inputs.uid_field]
        requested, seen = [], {}
        for position, entry in enumerate(users, start=1):
            line, token = entry if isinstance(entry, tuple) else (position, entry)
            token = str(token)
            uid = token2id.get(token)
            if uid is None or uid == 0:
                skipped.append(SkippedUser(token, line, f"unknown user id: not in dataset {dataset.dataset_name!r}"))
            elif token in seen:
                skipped.append(SkippedUser(token, line, f"duplicate: already exported for line {seen[token]}"))
            else:
                seen[token] = line
                requested.append((line, token, uid))
    chosen = []
    for line, token, uid in requested:
        reason = inputs.missing_reason(uid)
        if reason is None:
            chosen.append(uid)
        else:
            skipped.append(SkippedUser(token, line, reason))
    return np.asarray(chosen, dtype=np.int64), skipped


# --------------------------------------------------------------------------- scoring


def _full_scores(model, interaction, dataset) -> torch.Tensor:
    """[B, n_items] scores, as ``full_sort_scores`` computes them."""
    n_items = dataset.item_num
    try:
        scores = model.full_sort_predict(interaction)
    except NotImplementedError:  # score every (user, item) pair with predict, as RecBole does
        batch = len(interaction)
        expanded = interaction.repeat_interleave(n_items)
        expanded.update(dataset.get_item_feature().repeat(batch))
        scores = model.predict(expanded)
    return scores.view(-1, n_items).clone()


def _migration_frame(model, dataset, prediction, n: int) -> pd.DataFrame:
    field = model.CATEGORY_FIELD
    frame = {"p_shift": prediction["p_shift"].double().numpy()}
    top, probs = prediction["top_categories"].numpy(), prediction["top_category_probs"].double().numpy()
    for j in range(N_MIGRATION_CATEGORIES):
        if j < top.shape[1]:
            frame[f"next_category_{j + 1}"] = dataset.id2token(field, top[:, j]).astype(object)
            frame[f"next_category_{j + 1}_prob"] = probs[:, j]
        else:
            frame[f"next_category_{j + 1}"] = np.full(n, None, dtype=object)
            frame[f"next_category_{j + 1}_prob"] = np.full(n, np.nan)
    return pd.DataFrame(frame)


def has_migration(model) -> bool:
    """Whether the model predicts interest migration (InterestShiftCNN with categories)."""
    return callable(getattr(model, "predict_migration", None)) and bool(getattr(model, "use_category", False))


def columns_for(model) -> list[str]:
    """The columns of an export of ``model``, in order."""
    columns = ["user_id", "rank", "item_id", "score"]
    if has_migration(model):
        columns.append("p_shift")
        for j in range(1, N_MIGRATION_CATEGORIES + 1):
            columns += [f"next_category_{j}", f"next_category_{j}_prob"]
    return columns


def effective_k(loaded, k: int) -> int:
    """``k`` capped at the catalogue (every item but RecBole's padding id 0), with a warning."""
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ExportError(f"k must be a positive integer, got {k!r}")
    n_items = loaded.dataset.item_num - 1
    if k > n_items:
        logger.warning("k=%d is larger than the catalogue of %d items: capped at %d", k, n_items, n_items)
        return n_items
    return int(k)


@torch.no_grad()
def iter_recommendations(
    loaded,
    users=None,
    k: int = 20,
    exclude_history: bool = True,
    batch_size: int = 256,
    *,
    context: str = "latest",
    skipped: list | None = None,
    show_progress: bool = False,
) -> Iterator[pd.DataFrame]:
    """Yield the top-``k`` of each user as DataFrames, one per batch of users, in output order.

    ``loaded`` is a :class:`interest_migration.checkpoint.LoadedCheckpoint`. ``users`` is None
    (every user) or external ids (see :func:`resolve_users`). Requested users that cannot be
    exported are appended to ``skipped`` as :class:`SkippedUser`; without a ``skipped`` list they
    raise :class:`UnknownUsersError`. A user whose history covers nearly the whole catalogue gets
    fewer than ``k`` rows: excluded items are never padded in.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ExportError(f"batch_size must be a positive integer, got {batch_size!r}")
    k = effective_k(loaded, k)
    inputs = _Inputs(loaded, context)
    uids, missing = _resolve(inputs, users)
    if missing:
        if skipped is None:
            shown = "; ".join(f"{s.user_id!r}: {s.reason}" for s in missing[:5])
            raise UnknownUsersError(f"{len(missing)} requested user(s) cannot be exported: {shown}")
        skipped.extend(missing)
    model, dataset = loaded.model.eval(), loaded.dataset
    history = inputs.history() if exclude_history else None
    migration = has_migration(model)
    uid_tokens = dataset.field2id_token[inputs.uid_field]
    iid_tokens = dataset.field2id_token[dataset.iid_field]
    starts = range(0, len(uids), batch_size)
    for start in tqdm(starts, desc="export", unit="batch", disable=not show_progress, file=sys.stderr):
        batch = uids[start : start + batch_size]
        interaction = inputs.interaction(batch)
        if migration:  # scores and migration from one encoder pass
            scores, prediction = model.full_sort_predict_with_migration(interaction, k=N_MIGRATION_CATEGORIES)
            scores = scores.clone()
        else:
            scores = _full_scores(model, interaction, dataset)
        scores[:, 0] = -np.inf
        if history is not None:
            rows, cols = history[batch].nonzero()
            scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -np.inf
        top_scores, top_items = torch.topk(scores, k, dim=1)
        keep = torch.isfinite(top_scores).numpy()
        row_of, rank = np.nonzero(keep)
        frame = pd.DataFrame(
            {
                "user_id": uid_tokens[batch[row_of]].astype(object),
                "rank": (rank + 1).astype(np.int64),
                "item_id": iid_tokens[top_items.numpy()[row_of, rank]].astype(object),
                "score": top_scores.double().numpy()[row_of, rank],
            }
        )
        if migration:
            per_user = _migration_frame(model, dataset, prediction, len(batch))
            frame = pd.concat([frame, per_user.iloc[row_of].reset_index(drop=True)], axis=1)
        yield frame


# --------------------------------------------------------------------------- writers


def format_for(path, fmt: str | None = None) -> str:
    """The output format: ``fmt`` if given, else from the file's suffix."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX_FORMAT:
        raise ExportError(
            f"{path}: cannot tell the format from the suffix {suffix!r}; pass --format ({', '.join(FORMATS)})"
        )
    return _SUFFIX_FORMAT[suffix]


def _arrow_schema(columns):
    import pyarrow as pa

    types = {"user_id": pa.string(), "item_id": pa.string(), "rank": pa.int64()}
    return pa.schema([(c, types.get(c, pa.string() if c.startswith("next_category") and not c.endswith("_prob")
                                    else pa.float64())) for c in columns])


def write_recommendations(frames: Iterable[pd.DataFrame], path, fmt: str, columns: list[str]) -> int:
    """Stream ``frames`` into ``path`` (written atomically); returns the number of rows."""
    from interest_migration.utils.io import atomic_path

    fmt = format_for(path, fmt)
    n_rows = 0
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = _arrow_schema(columns)
            with pq.ParquetWriter(tmp, schema) as writer:
                for frame in frames:
                    writer.write_table(pa.Table.from_pandas(frame[columns], schema=schema, preserve_index=False))
                    n_rows += len(frame)
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                if fmt == "csv":
                    handle.write(",".join(columns) + "\n")
                for frame in frames:
                    if fmt == "csv":
                        frame[columns].to_csv(handle, header=False, index=False)
                    elif len(frame):
                        text = frame[columns].to_json(orient="records", lines=True, force_ascii=False)
                        handle.write(text if text.endswith("\n") else text + "\n")
                    n_rows += len(frame)
    return n_rows


def skipped_path_for(out) -> Path:
    """``recs.csv`` -> ``recs.skipped.csv``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.skipped.csv")


def write_skipped(skipped: list[SkippedUser], path) -> None:
    from interest_migration.utils.io import atomic_open

    frame = pd.DataFrame(
        {
            "user_id": [s.user_id for s in skipped],
            "line": pd.array([s.line for s in skipped], dtype="Int64"),
            "reason": [s.reason for s in skipped],
        }
    )
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, index=False)


def export(
    loaded,
    out,
    *,
    fmt: str | None = None,
    users=None,
    k: int = 20,
    exclude_history: bool = True,
    batch_size: int = 256,
    context: str = "latest",
    skipped_out=None,
    show_progress: bool = False,
) -> dict:
    """Write the recommendations and the side file of skipped users; returns a summary."""
    fmt = format_for(out, fmt)
    skipped: list[SkippedUser] = []
    frames = iter_recommendations(
        loaded, users, k, exclude_history, batch_size, context=context, skipped=skipped, show_progress=show_progress
    )
    n_rows = write_recommendations(frames, out, fmt, columns_for(loaded.model))
    skipped_out = Path(skipped_out) if skipped_out is not None else skipped_path_for(out)
    write_skipped(skipped, skipped_out)
    return {"out": Path(out), "rows": n_rows, "skipped": len(skipped), "skipped_out": skipped_out, "format": fmt}


# --------------------------------------------------------------------------- command line


def configure_parser(parser):
    parser.add_argument("--checkpoint", required=True, help="safe checkpoint (or RecBole's, with --trust-checkpoint)")
    parser.add_argument("--out", required=True, help="file to write")
    parser.add_argument("--format", choices=FORMATS, default=None, help="default: from the suffix of --out")
    parser.add_argument("--k", type=int, default=20, help="recommendations per user (capped at the catalogue)")
    parser.add_argument("--users", default=None, help="file with one external user id per line (default: all users)")
    parser.add_argument("--keep-history", action="store_true", help="allow items the user already interacted with")
    parser.add_argument(
        "--context",
        choices=CONTEXTS,
        default="latest",
        help="latest: score from every known interaction (default); test: RecBole's test input, as full_sort_topk",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="users scored at once (memory: batch x items)")
    parser.add_argument("--skipped", default=None, help="side file of users not exported (default: <out>.skipped.csv)")
    parser.add_argument("--data-path", default=None, help="folder holding the dataset, if it moved")
    add_trust_checkpoint_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from interest_migration.checkpoint import CheckpointError, load

    saved_argv = sys.argv
    sys.argv = sys.argv[:1]  # RecBole's Config would read our flags as overrides
    try:
        fmt = format_for(args.out, args.format)
        users = read_user_ids(args.users) if args.users else None
        loaded = load(args.checkpoint, trust_pickle=args.trust_checkpoint, data_path=args.data_path)
        summary = export(
            loaded,
            args.out,
            fmt=fmt,
            users=users,
            k=args.k,
            exclude_history=not args.keep_history,
            batch_size=args.batch_size,
            context=args.context,
            skipped_out=args.skipped,
            show_progress=not args.quiet,
        )
    except (CheckpointError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv
    print(
        f"wrote {summary['rows']} rows to {summary['out']} ({summary['format']}); "
        f"{summary['skipped']} user(s) not exported, listed in {summary['skipped_out']}"
    )
    return 0
