"""Appends and compactions are all or nothing, even under kill -9.

A child process appends (or compacts) and is killed with SIGKILL, either at a
named step (the NAGINDEX_CRASH_AT hook) or after a random delay. The index
must then open at the old or the new state, with every part (manifest,
segments, inverted lists, Lance rows) agreeing, and rerunning the append
must finish it without duplicates.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nagindex import Index
from nagindex.io import write_features_parquet
from nagindex.store.postings import list_ids
from nagindex.schemas import FeatureSpec
from nagindex.store.writer import CRASH_ENV

L, K, W = 2, 3, 8
N_OLD, N_NEW = 40, 700
SPEC = FeatureSpec(backbone="synthetic", backbone_hash="h0", num_layers=L, top_k=K, neuron_types=("fwd_up",), layer_widths={"fwd_up": W})

CHILD = textwrap.dedent(
    """
    import sys
    from nagindex import Index
    index = Index.open(sys.argv[1])
    index.batch_rows, index.segment_rows = 50, 400
    if sys.argv[2] == "compact":
        index.compact()
    else:
        index.append([sys.argv[3]], features=[sys.argv[4]], replace=sys.argv[2] == "replace", progress=False)
    print("done")
    """
)


def features_for(n, seed):
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((n, L, W)), axis=2)[:, :, :K].reshape(n, L * K).astype(np.uint16)


@pytest.fixture
def setup(tmp_path):
    old_ids = [f"o{i}" for i in range(N_OLD)]
    new_ids = [f"n{i}" for i in range(N_NEW)]
    old_f, new_f = features_for(N_OLD, 1), features_for(N_NEW, 2)
    index = Index.create(tmp_path / "idx", SPEC, postings=True)
    index.batch_rows = 16
    index.append(documents=pa.table({"docid": old_ids, "token_num": np.ones(N_OLD, np.int64)}), feature_arrays={"fwd_up": old_f}, progress=False)
    pq.write_table(pa.table({"docid": new_ids, "doc": [f"t{i}" for i in range(N_NEW)], "token_num": np.full(N_NEW, 2, np.int64)}), tmp_path / "pool.parquet")
    write_features_parquet(tmp_path / "f.parquet", new_ids, {"fwd_up": new_f}, SPEC)
    (tmp_path / "child.py").write_text(CHILD)
    old = (old_ids, old_f)
    new = (old_ids + new_ids, np.concatenate([old_f, new_f]))
    return tmp_path, old, new


def run_child(tmp_path, mode="append", crash_at=None, kill_after=None):
    env = dict(os.environ)
    if crash_at:
        env[CRASH_ENV] = crash_at
    args = [sys.executable, str(tmp_path / "child.py"), str(tmp_path / "idx"), mode, str(tmp_path / "pool.parquet"), str(tmp_path / "f.parquet")]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if kill_after is not None:
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out.decode(), err.decode()


def append_in_process(tmp_path, **kw):
    index = Index.open(tmp_path / "idx")
    index.batch_rows, index.segment_rows = 50, 400
    return index.append([tmp_path / "pool.parquet"], features=[tmp_path / "f.parquet"], progress=False, **kw)


def check_consistent(index_dir, states) -> int:
    """The index equals one of `states` in every part; returns which."""
    index = Index.open(index_dir)
    docids = index.docids().to_pylist()
    matches = [i for i, (ids, _) in enumerate(states) if docids == ids]
    assert matches, f"index has {len(docids)} rows, not a committed state"
    ids, feats = states[matches[0]]
    np.testing.assert_array_equal(index.features("fwd_up"), feats)
    lance = index.take(np.arange(index.num_rows), columns=["docid", "fwd_up_feature", "_row"])
    assert lance.column("docid").to_pylist() == ids
    np.testing.assert_array_equal(np.array(lance.column("fwd_up_feature").to_pylist()).reshape(-1, L * K), feats)
    postings = index.postings("fwd_up")
    total = sum(postings.list_size(i) for i in range(L * W))
    assert total == len(ids) * L * K
    np.testing.assert_array_equal(list_ids(postings, 0), np.flatnonzero((feats[:, :K] == 0).any(axis=1)))
    return matches[0]


@pytest.mark.parametrize("step", ["lance-batch", "segment", "before-commit", "after-commit"])
def test_kill_at_named_steps(setup, step):
    tmp_path, old, new = setup
    code, _, err = run_child(tmp_path, crash_at=step)
    assert code == -signal.SIGKILL, err
    state = check_consistent(tmp_path / "idx", [old, new])
    assert state == (1 if step == "after-commit" else 0)
    result = append_in_process(tmp_path)
    assert result.added == (0 if state == 1 else N_NEW) and result.skipped == (N_NEW if state == 1 else 0)
    assert check_consistent(tmp_path / "idx", [old, new]) == 1
    assert sorted(p.name for p in (tmp_path / "idx" / "segments").iterdir()) == [s.name for s in Index.open(tmp_path / "idx").manifest.segments]


def test_kill_at_random_moments(setup):
    tmp_path, old, new = setup
    rng = np.random.default_rng(0)
    started = time.time()
    code, out, err = run_child(tmp_path)  # one complete run, to time it
    full = time.time() - started
    assert code == 0 and "done" in out, err
    # rebuild the old state and kill later appends at random points of that duration
    seen = set()
    for trial in range(3):
        index_dir = tmp_path / "idx"
        shutil.rmtree(index_dir)
        index = Index.create(index_dir, SPEC, postings=True)
        index.append(documents=pa.table({"docid": old[0], "token_num": np.ones(N_OLD, np.int64)}), feature_arrays={"fwd_up": old[1]}, progress=False)
        delay = float(rng.uniform(0.3 * full, 1.1 * full))
        run_child(tmp_path, kill_after=delay)
        seen.add(check_consistent(index_dir, [old, new]))
        append_in_process(tmp_path)
        assert check_consistent(index_dir, [old, new]) == 1
        assert len(set(Index.open(index_dir).docids().to_pylist())) == N_OLD + N_NEW
    assert seen <= {0, 1}


def test_kill_during_replace(setup):
    tmp_path, old, new = setup
    append_in_process(tmp_path)
    assert run_child(tmp_path, mode="replace", crash_at="before-commit")[0] == -signal.SIGKILL
    index = Index.open(tmp_path / "idx")
    assert index.live_mask() is None and index.num_rows == N_OLD + N_NEW
    assert run_child(tmp_path, mode="replace")[0] == 0
    index = Index.open(tmp_path / "idx")
    assert index.num_rows == N_OLD + 2 * N_NEW and index.num_documents == N_OLD + N_NEW
    live_ids = np.array(index.docids().to_pylist())[index.live_mask()]
    assert sorted(live_ids) == sorted(new[0])


def test_kill_during_compaction(setup):
    tmp_path, old, new = setup
    append_in_process(tmp_path)
    assert run_child(tmp_path, mode="compact", crash_at="compact-before-commit")[0] == -signal.SIGKILL
    assert check_consistent(tmp_path / "idx", [new]) == 0
    assert run_child(tmp_path, mode="compact")[0] == 0
    assert check_consistent(tmp_path / "idx", [new]) == 0
    index = Index.open(tmp_path / "idx")
    assert index.info()["deltas_pending"] == 0 and index.manifest.lance_table != "docs"
