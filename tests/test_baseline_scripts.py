"""scripts/repeat_ceiling.py and scripts/transition_baseline.py on planted data whose rule only the right ranking sees."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "repeat_ceiling.py"


def _write(folder: Path, n_users: int = 60, blocks: int = 8, new_last: bool = False) -> None:
    """Each user: X (carted), then blocks of Y, a new item, X; and a last Y. The item two steps back
    in the distinct history always comes next, so recency scores exactly 1/log2(4) = 0.5 on both
    the validation target (X) and the test target (Y), and a learned ranking can score 1.
    ``new_last``: every even user ends with an item of their own instead of Y."""
    rows, items = [], []
    for user in range(n_users):
        x, y = f"x{user}", f"y{user}"
        sequence = [(x, "cart")]
        for block in range(blocks):
            sequence += [(y, "pv"), (f"a{user}_{block}", "pv"), (x, "pv")]
        sequence.append((f"n{user}" if new_last and user % 2 == 0 else y, "pv"))
        rows += [(f"u{user}", item, 1_000_000 + 60 * step, behaviour)
                 for step, (item, behaviour) in enumerate(sequence)]
        items += [(item, f"c{len(item) % 5}") for item, _ in sequence]
    (folder / "planted").mkdir(parents=True)
    pd.DataFrame(rows, columns=["user_id:token", "item_id:token", "timestamp:float", "behavior_type:token"]).to_csv(
        folder / "planted" / "planted.inter", sep="\t", index=False)
    pd.DataFrame(items, columns=["item_id:token", "category_id:token"]).drop_duplicates("item_id:token").to_csv(
        folder / "planted" / "planted.item", sep="\t", index=False)


def _table(stdout: str) -> dict[str, list[float]]:
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ") and cells[1].replace(".", "").isdigit():
            rows[cells[0]] = [float(cell) for cell in cells[1:]]
    return rows


def test_learned_reranker_finds_the_rule_that_recency_misses(tmp_path):
    _write(tmp_path)
    out = tmp_path / "ceiling.md"
    # one OpenMP thread: scikit-learn's threads spin-wait, and on a busy 2-core machine two of them
    # can take minutes over what takes seconds alone
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--dataset", "planted", "--data-path", str(tmp_path),
         "--decays", "0.8", "--learned", "--out", str(out)],
        capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert "60 users; test target already in the last 50 events: 100.0%" in result.stdout
    table = _table(result.stdout)
    assert out.read_text().strip() == result.stdout.strip()
    # valid, test, test on targets in history
    assert table["recency"][:3] == [0.5, 0.5, 0.5]  # no target leaks into its own history
    learned = next(values for name, values in table.items() if name.startswith("learned re-ranker"))
    assert learned[0] >= 0.95 and learned[1] >= 0.95
    assert learned[1] > table["decayed frequency, decay 0.8"][1] + 0.2


def test_missing_column_names_the_file(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "bad.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    result = subprocess.run([sys.executable, str(SCRIPT), "--dataset", "bad", "--data-path", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "bad.inter: no column 'timestamp'" in result.stderr


def test_knowing_the_revisits_takes_the_history_ranking_there_and_the_new_item_files_elsewhere(tmp_path):
    _write(tmp_path, new_last=True)
    users = [f"u{user}" for user in range(60)]
    files = []
    for seed, on_new in ((2020, 1.0), (2021, 0.6)):  # 0.8 on average; the re-visit rows must not count
        path = tmp_path / f"model-seed{seed}.users.csv"
        pd.DataFrame({"user_id": users, "ndcg@10": [on_new if u % 2 == 0 else 0.3 for u in range(60)]}).to_csv(
            path, index=False)
        files.append(str(path))
    run = [sys.executable, str(SCRIPT), "--dataset", "planted", "--data-path", str(tmp_path), "--decays", "0.8"]
    result = subprocess.run([*run, "--new-items", *files], capture_output=True, text=True, check=True)
    assert "test target already in the last 50 events: 50.0%" in result.stdout
    after = result.stdout.split("Knowing which test targets are re-visits")[1]
    assert "(0.8000 there)" in after
    assert _table(after)["recency"] == [0.5 * 0.5 + 0.5 * 0.8]
    truncated = pd.read_csv(files[0]).iloc[:-1]
    truncated.to_csv(files[0], index=False)
    result = subprocess.run([*run, "--new-items", *files], capture_output=True, text=True)
    assert result.returncode != 0 and "model-seed2020.users.csv: no row for 1 test user(s), e.g. 'u59'" in result.stderr


def test_history_rankings_by_hand():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from repeat_ceiling import decayed_frequency, recency
    finally:
        sys.path.remove(str(REPO / "scripts"))
    history = ["a", "b", "a", "c", "b"]
    assert recency(history) == ["b", "c", "a"]
    # b: 1 + 0.8**3 = 1.512, a: 0.8**2 + 0.8**4 = 1.050, c: 0.8
    assert decayed_frequency(history, 0.8) == ["b", "a", "c"]
    assert decayed_frequency(history, 0.5) == ["b", "c", "a"]  # a: 0.25 + 0.0625 < c: 0.5
    assert decayed_frequency(["a", "b"], 1.0) == ["b", "a"]  # equal counts: the most recent first


def test_transition_baseline_finds_the_item_two_steps_back_only_with_a_span(tmp_path):
    """Triples (a, noise, partner of a): the target is fixed by the item two steps back, which a
    first-order table (span 1) never links to it and a span of 2 does."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for user in range(100):
        step = 0
        for _ in range(5):
            a = int(rng.integers(20))
            for item in (f"a{a}", f"r{rng.integers(300)}", f"b{a}"):
                rows.append((f"u{user}", item, 1_000 + step))
                step += 1
    (tmp_path / "triples").mkdir()
    pd.DataFrame(rows, columns=["user_id:token", "item_id:token", "timestamp:float"]).to_csv(
        tmp_path / "triples" / "triples.inter", sep="\t", index=False)
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "transition_baseline.py"), "--dataset", "triples",
         "--data-path", str(tmp_path), "--spans", "1", "2", "--weights", "1", "1", "--keep-seen"],
        capture_output=True, text=True, check=True,
    )
    rows = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0].isdigit():
            rows[int(cells[0]), int(cells[1].split()[0])] = (float(cells[2]), float(cells[3]))
    assert set(rows) == {(1, 1), (1, 2), (2, 1), (2, 2)}
    assert rows[2, 2][1] >= 0.8, rows  # test targets: the partner of the item two back
    assert max(rows[1, 1][1], rows[1, 2][1]) <= 0.3, rows
