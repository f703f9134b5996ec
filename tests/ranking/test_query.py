"""`run_query` / `nag query`: the scan against a plain SPEC reference, the
inverted lists against the scan, the variants, and bad input."""

import functools
import math
from collections import Counter
from fractions import Fraction

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nagindex.ranking import inverted as INV
from nagindex.ranking import planner as P
from nagindex.ranking import query as Q
from nagindex.store.index import live_rows
from nagindex.errors import NagError
from nagindex.schemas import FeatureSpec
from nagindex.store.postings import PostingLists, StackedPostingLists, layer_postings

from test_scoring import random_features
from test_selection import reference_selection

# These tests check the SPEC formula: they query with the paper preset (the
# default configuration's own paths are tested in tests/ranking/test_scoring_options.py).
paper_query = functools.partial(Q.run_query, preset="paper")



# ---------------------------------------------------------------------------
# An in-memory index with the store's query interface (fast to make per case)
# ---------------------------------------------------------------------------
class MemoryIndex:
    def __init__(self, spec, features, payload, live=None, segment_rows=None):
        self.spec = spec
        self._features = features
        self._payload = payload
        self._live = live
        self._segment_rows = segment_rows or max(len(features), 1)

    @property
    def num_rows(self):
        return len(self._features)

    def live_mask(self):
        return self._live

    def feature_segments(self, neuron_type="fwd_up"):
        self.spec.width(neuron_type)
        n = self.num_rows
        return [(s, self._features[s : s + self._segment_rows]) for s in range(0, n, self._segment_rows)]

    @property
    def num_documents(self):
        return self.num_rows if self._live is None else int(self._live.sum())

    def token_num(self):
        return self._payload.column("token_num").to_numpy().astype(np.int64)

    def token_blocks(self):
        tokens = self.token_num()
        for s in range(0, len(tokens), self._segment_rows):
            yield s, tokens[s : s + self._segment_rows]

    def live_tokens(self):
        tokens = self.token_num()
        return int(tokens.sum() if self._live is None else tokens[self._live].sum())

    def docids(self):
        return self._payload.column("docid").combine_chunks()

    def docids_at(self, rows):
        return self.docids().take(pa.array(np.asarray(rows, dtype=np.int64)))

    def postings(self, neuron_type="fwd_up"):
        L, K, W = self.spec.num_layers, self.spec.top_k, self.spec.width(neuron_type)
        inv = faiss.ArrayInvertedLists(L * W, 1)
        for l in range(L):
            block = self._features[:, l * K : (l + 1) * K]
            for j in range(W):
                ids = np.flatnonzero((block == j).any(axis=1)).astype(np.int64)
                if len(ids):
                    inv.add_entries(l * W + j, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(np.zeros(len(ids), np.uint8)))
        return inv

    def posting_lists(self, neuron_type="fwd_up"):
        L, K, W = self.spec.num_layers, self.spec.top_k, self.spec.width(neuron_type)
        sizes, ids = zip(*(layer_postings(self._features[:, l * K : (l + 1) * K], W, 0) for l in range(L)))
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(sizes))])
        return StackedPostingLists([PostingLists(offsets, np.concatenate(ids))], L * W)

    def columns(self):
        return self._payload.column_names

    def take(self, rows, columns=None):
        t = self._payload if columns is None else self._payload.select(list(columns))
        return t.take(pa.array(np.asarray(rows, dtype=np.int64)))

    def backbone(self):  # pragma: no cover - raw-text targets are tested with the real store
        raise AssertionError("not used")


def make_spec(L, K, W):
    return FeatureSpec(backbone="synthetic", backbone_hash="0" * 16, num_layers=L, top_k=K,
                       neuron_types=("fwd_up",), layer_widths={"fwd_up": W})


def make_pool(rng, n, L, K, W, docids=None):
    feats = random_features(rng, n, L, K, W)
    docids = docids or [f"doc{int(x)}" for x in rng.permutation(n * 3)[:n]]
    payload = pa.table({
        "docid": pa.array(docids, pa.string()),
        "token_num": pa.array(rng.integers(0, 30, n), pa.int64()),
        "dataset": pa.array(rng.choice(["web", "code", "wiki"], n).tolist()),
        "doc": pa.array([f"text {i}" for i in range(n)]),
        "quality": pa.array([None if rng.random() < 0.1 else float(rng.integers(0, 5)) for _ in range(n)], pa.float64()),
    })
    return feats, payload


# ---------------------------------------------------------------------------
# The plain reference: dict counts per layer, exact fractions, python sort
# ---------------------------------------------------------------------------
def ref_similarities(target, pool, L, K, layers, power):
    weights = {}
    for l in layers:
        counts = Counter(int(x) for row in target for x in row[l * K : (l + 1) * K])
        if power == 1.0:
            total = sum(counts.values())
            weights[l] = {j: Fraction(c, total) for j, c in counts.items()}
        else:
            raised = {j: c**power for j, c in counts.items()}
            total = sum(raised.values())
            weights[l] = {j: v / total for j, v in raised.items()}
    sims = []
    for doc in pool:
        terms = [weights[l].get(int(x), 0) for l in layers for x in doc[l * K : (l + 1) * K]]
        # fsum is exactly rounded, so equal multisets give equal floats
        sims.append(sum(terms, Fraction(0)) / len(layers) if power == 1.0 else math.fsum(terms) / len(layers))
    return sims


def _weight_multiset(target, doc, K, layers):
    """What a document's similarity depends on: the (layer, target count) of its entries."""
    key = []
    for l in layers:
        counts = Counter(int(x) for row in target for x in row[l * K : (l + 1) * K])
        key += [(l, counts.get(int(x), 0)) for x in doc[l * K : (l + 1) * K]]
    return tuple(sorted(key))


@st.composite
def query_cases(draw):
    L = draw(st.integers(1, 4))
    K = draw(st.integers(1, 3))
    W = draw(st.integers(K, 8))
    n = draw(st.integers(1, 80))
    seed = draw(st.integers(0, 2**31))
    n_target = draw(st.integers(1, 6))
    power = draw(st.sampled_from([1.0, 1.0, 0.5, 2.0]))
    layers = draw(st.sampled_from(["all", "first", "last", "0"]))
    use_top = draw(st.booleans())
    top = draw(st.integers(1, 20)) if use_top else None
    fraction = None if use_top else draw(st.floats(0.001, 1.0))
    replaced = draw(st.floats(0, 0.3))
    return L, K, W, n, seed, n_target, power, layers, top, fraction, replaced


def _case_index(L, K, W, n, seed, replaced):
    rng = np.random.default_rng(seed)
    feats, payload = make_pool(rng, n, L, K, W)
    live = rng.random(n) >= replaced
    if live.all():
        live = None
    elif not live.any():
        live[0] = True
    return MemoryIndex(make_spec(L, K, W), feats, payload, live, segment_rows=max(n // 3, 1)), rng


@settings(max_examples=150, deadline=None)
@given(query_cases())
def test_scan_matches_the_reference(case):
    L, K, W, n, seed, n_target, power, layers, top, fraction, replaced = case
    index, rng = _case_index(L, K, W, n, seed, replaced)
    target = random_features(rng, n_target, L, K, W)
    res = paper_query(index, [target], fraction=fraction, top=top, power=power, layers=layers, plan="scan")
    kept_layers = list({"all": range(L), "first": [0], "last": [L - 1], "0": [0]}[layers])
    sims = ref_similarities(target, index._features, L, K, list(kept_layers), power)
    if power != 1.0:
        # Fixed point makes equal weight multisets tie exactly; distinct
        # multisets whose exact similarities coincide (possible with p = 2)
        # may be split by a 2**-32 rounding, so leave such cases out.
        by_multiset = {}
        for doc, sim in zip(index._features, sims):
            by_multiset[_weight_multiset(target, doc, K, kept_layers)] = sim
        distinct = sorted(by_multiset.values())
        assume(all(b - a > 1e-9 for a, b in zip(distinct, distinct[1:])))
    docids = index.docids().to_pylist()
    tokens = index.token_num().tolist()
    rows = list(live_rows(index))
    expected = reference_selection(sims, docids, tokens, rows, fraction=fraction, top=top)
    assert res.table.column("docid").to_pylist() == [docids[i] for i in expected]
    got = np.array(res.table.column("nag_distance").to_pylist())
    want = np.array([1 - float(sims[i]) for i in expected])
    assert np.max(np.abs(got - want), initial=0) <= 1e-6
    assert res.table.column("token_num").to_pylist() == [tokens[i] for i in expected]


@pytest.fixture
def tight_inverted(monkeypatch):
    """Make the inverted path insist on few candidates so it widens, and never give up early."""
    monkeypatch.setattr(INV, "INVERTED_MIN_CANDIDATES", 1)
    monkeypatch.setattr(INV, "INVERTED_MAX_CANDIDATE_SHARE", 0.0)
    monkeypatch.setattr(INV, "INVERTED_MAX_POSTINGS_SHARE", 10.0)


@settings(max_examples=120, deadline=None)
@given(query_cases())
def test_inverted_lists_give_the_scan_answer(case):
    L, K, W, n, seed, n_target, power, layers, top, fraction, replaced = case
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(INV, "INVERTED_MIN_CANDIDATES", 1)
        mp.setattr(INV, "INVERTED_MAX_CANDIDATE_SHARE", 0.0)
        mp.setattr(INV, "INVERTED_MAX_POSTINGS_SHARE", 10.0)
        index, rng = _case_index(L, K, W, n, seed, replaced)
        target = random_features(rng, n_target, L, K, W)
        kw = dict(fraction=fraction, top=top, power=power, layers=layers)
        scan = paper_query(index, [target], plan="scan", **kw)
        inv = paper_query(index, [target], plan="inverted", **kw)
    assert inv.table.column("docid").to_pylist() == scan.table.column("docid").to_pylist()
    assert inv.table.column("nag_distance").to_pylist() == scan.table.column("nag_distance").to_pylist()


def test_inverted_path_prunes_on_a_skewed_pool(tight_inverted):
    # a pool where the target's neurons are rare: the heaviest lists settle the top 5
    rng = np.random.default_rng(7)
    L, K, W = 3, 4, 64
    index = MemoryIndex(make_spec(L, K, W), *make_pool(rng, 3000, L, K, W))
    target = index._features[:3]  # three pool docs as the target: they must come first
    inv = paper_query(index, [target], top=5, plan="inverted")
    scan = paper_query(index, [target], top=5, plan="scan")
    assert inv.plans[0].path == "inverted", inv.explain()
    assert inv.plans[0].stats["candidates"] < 3000
    assert inv.table.column("docid").to_pylist() == scan.table.column("docid").to_pylist()
    assert set(index.docids().to_pylist()[:3]) <= set(inv.table.column("docid").to_pylist())


def test_inverted_path_falls_back_to_the_scan_when_it_cannot_prove(monkeypatch):
    monkeypatch.setattr(INV, "INVERTED_MAX_POSTINGS_SHARE", 0.0)
    monkeypatch.setattr(INV, "INVERTED_MIN_CANDIDATES", 1)
    monkeypatch.setattr(INV, "INVERTED_MAX_CANDIDATE_SHARE", 0.0)
    rng = np.random.default_rng(8)
    index = MemoryIndex(make_spec(2, 3, 10), *make_pool(rng, 200, 2, 3, 10))
    target = random_features(rng, 4, 2, 3, 10)
    res = paper_query(index, [target], top=3, plan="inverted")
    assert res.plans[0].path == "scan" and "fell back" in res.plans[0].reason
    assert res.table.column("docid").to_pylist() == paper_query(index, [target], top=3, plan="scan").table.column("docid").to_pylist()


def test_planner_choices():
    assert P.choose_plan("auto", num_rows=10**6, n_live=10**6, top=1000, fraction=None, quality=False)[0] == "inverted"
    assert P.choose_plan("auto", num_rows=10**6, n_live=10**6, top=None, fraction=0.2, quality=False)[0] == "scan"
    assert P.choose_plan("auto", num_rows=1000, n_live=1000, top=1, fraction=None, quality=False)[0] == "scan"
    assert P.choose_plan("inverted", num_rows=10**6, n_live=10**6, top=5, fraction=None, quality=True)[0] == "scan"


# ---------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------
@pytest.fixture
def pool_index():
    rng = np.random.default_rng(11)
    index = MemoryIndex(make_spec(3, 3, 12), *make_pool(rng, 120, 3, 3, 12))
    return index, rng


def test_mixture_splits_the_fraction_and_labels_targets(pool_index):
    index, rng = pool_index
    t1, t2 = random_features(rng, 5, 3, 3, 12), random_features(rng, 5, 3, 3, 12)
    mix = paper_query(index, [t1, t2], fraction=0.4)
    one = paper_query(index, [t1], fraction=0.2).table
    two = paper_query(index, [t2], fraction=0.2).table
    assert mix.table.column("docid").to_pylist() == one.column("docid").to_pylist() + two.column("docid").to_pylist()
    assert mix.table.column("target").to_pylist() == ["target0"] * one.num_rows + ["target1"] * two.num_rows
    dedup = paper_query(index, [t1, t2], fraction=0.4, dedupe=True).table
    ids = dedup.column("docid").to_pylist()
    assert len(ids) == len(set(ids)) and ids == list(dict.fromkeys(mix.table.column("docid").to_pylist()))
    # the distances follow their rows through the dedupe
    d = dict(zip(mix.table.column("docid").to_pylist()[: one.num_rows], mix.table.column("nag_distance").to_pylist()))
    assert all(d[i] == x for i, x in zip(ids, dedup.column("nag_distance").to_pylist()) if i in d)


def test_top_is_split_over_targets(pool_index):
    index, rng = pool_index
    ts = [random_features(rng, 3, 3, 3, 12) for _ in range(3)]
    res = paper_query(index, ts, top=7)
    assert res.table.column("target").to_pylist() == ["target0"] * 3 + ["target1"] * 2 + ["target2"] * 2


def test_quality_combination_ranks_by_the_combined_score(pool_index):
    index, rng = pool_index
    target = random_features(rng, 5, 3, 3, 12)
    res = paper_query(index, [target], fraction=0.3, quality_col="quality", invert_quality=True)
    q = index._payload.column("quality").to_pylist()
    assert res.summary["missing_quality"] == sum(v is None for v in q)
    # reference: min-max both over rows with quality, 1 - q, sum, sort by (combined, docid)
    sims = ref_similarities(target, index._features, 3, 3, [0, 1, 2], 1.0)
    rows = [i for i in range(len(q)) if q[i] is not None]
    d = [1 - float(sims[i]) for i in rows]
    qq = [q[i] for i in rows]
    norm = lambda v: [(x - min(v)) / (max(v) - min(v)) if max(v) > min(v) else 0.0 for x in v]  # noqa: E731
    comb = {r: a + (1 - b) for r, a, b in zip(rows, norm(d), norm(qq))}
    docids, tokens = index.docids().to_pylist(), index.token_num().tolist()
    order = sorted(rows, key=lambda i: (round(comb[i], 12), docids[i]))
    budget = math.floor(sum(tokens[i] for i in rows) * 0.3)
    kept, total = [], 0
    for i in order:
        if total + tokens[i] > budget:
            break
        total += tokens[i]
        kept.append(i)
    assert res.table.column("docid").to_pylist() == [docids[i] for i in kept]
    assert np.allclose(res.table.column("combined_score").to_pylist(), [comb[i] for i in kept])


def test_output_columns_and_text(pool_index):
    index, rng = pool_index
    target = random_features(rng, 4, 3, 3, 12)
    res = paper_query(index, [target], top=5)
    assert res.table.column_names[:4] == ["docid", "token_num", "dataset", "nag_distance"]
    assert "doc" not in res.table.column_names and "quality" in res.table.column_names
    assert "doc" in paper_query(index, [target], top=5, with_text=True).table.column_names
    s = res.summary
    assert s["selected_docs"] == 5 and sum(s["datasets"].values()) == 5


@pytest.mark.parametrize("with_text", [False, True])
def test_output_is_written_batch_by_batch_and_atomically(pool_index, tmp_path, monkeypatch, with_text):
    # with the text, the payload is staged in row order (batches of 5) and taken back per batch
    from nagindex.ranking import output

    index, rng = pool_index
    t1, t2 = random_features(rng, 4, 3, 3, 12), random_features(rng, 4, 3, 3, 12)
    monkeypatch.setattr(output, "OUTPUT_BATCH_ROWS", 7)
    monkeypatch.setattr(output, "STAGE_ROWS", 5)
    staged = []
    monkeypatch.setattr(output.StagedPayload, "take",
                        lambda self, rows, real=output.StagedPayload.take: staged.append(1) or real(self, rows))
    res = paper_query(index, [t1, t2], fraction=0.6, with_text=with_text)
    path = tmp_path / "sel.parquet"
    res.write_parquet(path)
    written = pq.read_table(path)
    assert written.num_rows > 14 and pq.ParquetFile(path).num_row_groups == -(-written.num_rows // 7)
    assert written.equals(res.table) and ("doc" in written.column_names) == with_text
    assert bool(staged) == with_text
    # the summary counts the datasets as the batches went by, and the same from the table
    fresh = paper_query(index, [t1, t2], fraction=0.6, with_text=with_text)
    expected = Counter(res.table.column("dataset").to_pylist())
    assert res.summary["datasets"] == fresh.summary["datasets"] == dict(expected)
    # a failure after some batches leaves the old file whole and no temporary behind
    calls = []
    real = output._batch

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(*args)

    monkeypatch.setattr(output, "_batch", failing)
    with pytest.raises(OSError):
        fresh.write_parquet(path)
    assert pq.read_table(path).equals(written) and sorted(p.name for p in tmp_path.iterdir()) == ["sel.parquet"]


def test_layer_subset_applies_to_target_and_pool(pool_index):
    index, rng = pool_index
    target = random_features(rng, 4, 3, 3, 12)
    last = paper_query(index, [target], top=10, layers="last").table
    # the same as indexing only layer 2 of everything
    sub = MemoryIndex(make_spec(1, 3, 12), np.ascontiguousarray(index._features[:, 6:9]), index._payload)
    only = paper_query(sub, [target[:, 6:9]], top=10).table
    assert last.column("docid").to_pylist() == only.column("docid").to_pylist()
    assert last.column("nag_distance").to_pylist() == only.column("nag_distance").to_pylist()


def test_bad_query_arguments(pool_index):
    index, rng = pool_index
    target = random_features(rng, 4, 3, 3, 12)
    for kw, msg in [
        (dict(fraction=0.0), "fraction"),
        (dict(fraction=1.5), "fraction"),
        (dict(layers="7"), "unknown layer"),
        (dict(quality_col="nope"), "quality column"),
        (dict(quality_col="dataset"), "not numeric"),
        (dict(top=0), "top"),
        (dict(top=3, fraction=0.2), "either"),
        (dict(neuron_type="att_q"), "neuron type"),
    ]:
        with pytest.raises(NagError, match=msg):
            paper_query(index, [target], **kw)
    with pytest.raises(NagError, match="no target"):
        paper_query(index, [])
    with pytest.raises(NagError, match="empty"):
        paper_query(index, [target[:0]])


# ---------------------------------------------------------------------------
# The real store and the CLI
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store_index(tmp_path_factory):
    from nagindex import Index

    rng = np.random.default_rng(21)
    L, K, W = 3, 4, 20
    feats, payload = make_pool(rng, 400, L, K, W)
    root = tmp_path_factory.mktemp("q")
    path = root / "idx"
    index = Index.create(path, make_spec(L, K, W), postings=True)
    index.append(documents=payload, feature_arrays={"fwd_up": feats}, progress=False)
    # replace some rows: the replaced versions must not be selected
    again = payload.slice(0, 40)
    newf = random_features(rng, 40, L, K, W)
    Index.open(path).append(documents=again, feature_arrays={"fwd_up": newf}, replace=True, progress=False)
    current = feats.copy()
    current[:40] = newf
    return path, current, payload, rng


def test_store_query_matches_the_memory_index(store_index):
    from nagindex import Index

    path, feats, payload, rng = store_index
    index = Index.open(path)
    assert index.num_rows == 440 and index.live_mask() is not None
    mem = MemoryIndex(index.spec, feats, payload)
    target = random_features(rng, 6, 3, 4, 20)
    for kw in (dict(fraction=0.2), dict(top=15), dict(top=15, plan="inverted"), dict(fraction=0.05, plan="inverted")):
        got = paper_query(index, [target], **kw).table
        want = paper_query(mem, [target], **{k: v for k, v in kw.items() if k != "plan"}).table
        assert got.column("docid").to_pylist() == want.column("docid").to_pylist(), kw
        assert got.column("nag_distance").to_pylist() == want.column("nag_distance").to_pylist()
        assert got.column("dataset").to_pylist() == want.column("dataset").to_pylist()


def _features_file(path, target, spec, datasets=None):
    from nagindex.io import write_features_parquet

    cols = {"dataset": pa.array(datasets)} if datasets is not None else None
    write_features_parquet(path, [f"t{i}" for i in range(len(target))], {"fwd_up": target}, spec, columns=cols)


def test_cli_query_writes_the_selection(store_index, tmp_path):
    from nagindex.cli import app
    from nagindex import Index

    path, feats, payload, rng = store_index
    spec = Index.open(path).spec
    target = random_features(rng, 6, 3, 4, 20)
    labels = ["arc"] * 3 + ["mmlu"] * 3
    tf = tmp_path / "target.parquet"
    _features_file(tf, target, spec, labels)
    out = tmp_path / "new" / "dir" / "sel.parquet"
    r = CliRunner().invoke(app, ["query", str(path), "--target-features", str(tf), "--out", str(out), "--top", "12",
                                 "--target-filter", "arc", "--explain-plan", "--no-progress", "--preset", "paper"])
    assert r.exit_code == 0, r.output
    assert "selected 12 of 400 documents" in r.output and "plan" in r.output
    table = pq.read_table(out)
    mem = MemoryIndex(spec, feats, payload)
    want = paper_query(mem, [target[:3]], top=12).table
    assert table.column("docid").to_pylist() == want.column("docid").to_pylist()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--fraction", "0"], "fraction"),
        (["--fraction", "1.2"], "fraction"),
        (["--layers", "9"], "unknown layer"),
        (["--quality-col", "missing"], "quality column"),
        (["--quality-col", "dataset"], "not numeric"),
        (["--target-filter", "nothing"], "empty"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(store_index, tmp_path, extra, message):
    from nagindex.cli import app
    from nagindex import Index

    path, feats, payload, rng = store_index
    tf = tmp_path / "target.parquet"
    _features_file(tf, random_features(rng, 3, 3, 4, 20), Index.open(path).spec, ["arc"] * 3)
    out = tmp_path / "sel.parquet"
    r = CliRunner().invoke(app, ["query", str(path), "--target-features", str(tf), "--out", str(out), "--no-progress", *extra])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not out.exists()


def test_cli_refuses_features_of_another_backbone_or_k(store_index, tmp_path):
    from nagindex.cli import app

    path, feats, payload, rng = store_index
    out = tmp_path / "sel.parquet"
    for spec, target in [
        (FeatureSpec(backbone="other", backbone_hash="f" * 16, num_layers=3, top_k=4, neuron_types=("fwd_up",),
                     layer_widths={"fwd_up": 20}), random_features(rng, 3, 3, 4, 20)),
        (make_spec(3, 2, 20), random_features(rng, 3, 3, 2, 20)),
    ]:
        tf = tmp_path / "bad.parquet"
        _features_file(tf, target, spec)
        r = CliRunner().invoke(app, ["query", str(path), "--target-features", str(tf), "--out", str(out), "--no-progress"])
        assert r.exit_code == 2 and "incompatible" in r.output, r.output
        assert not out.exists()


def test_cli_unwritable_output(store_index, tmp_path):
    from nagindex.cli import app

    path, feats, payload, rng = store_index
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = CliRunner().invoke(app, ["query", str(path), "--target-features", "x.parquet", "--out", str(blocker / "sel.parquet")])
    assert r.exit_code == 2 and "cannot write" in r.output


def test_raw_text_targets_are_extracted_with_the_index_backbone(tmp_path, tiny_llama):
    from nagindex.extraction.features import extract_texts
    from nagindex import Index

    texts = [f"document number {i} about {'cats' if i % 2 else 'the stock market'} and more" for i in range(40)]
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"docid": [f"p{i}" for i in range(40)], "doc": texts,
                             "token_num": list(range(1, 41)), "dataset": ["a", "b"] * 20}), pool)
    index = Index.build(tmp_path / "idx", [pool], model=tiny_llama, top_k=3, max_length=16, progress=False, embedder=None)
    target_texts = ["cats are small animals", "the cat sat", "stock prices fell today"]
    target = tmp_path / "target.jsonl"
    target.write_text("\n".join(
        f'{{"docid": "t{i}", "text": "{t}", "dataset": "{"pets" if i < 2 else "money"}"}}' for i, t in enumerate(target_texts)
    ) + "\n")
    got = paper_query(index, [str(target)], top=8, target_filter="pets")
    feats = extract_texts(tiny_llama, target_texts[:2], top_k=3, max_length=16)["fwd_up"]
    want = paper_query(index, [feats], top=8)
    assert got.table.column("docid").to_pylist() == want.table.column("docid").to_pylist()
    assert got.summary["targets"] == {"target": 2}
    with pytest.raises(NagError, match="empty"):
        paper_query(index, [str(target)], top=8, target_filter="nothing")


def test_planner_skips_hopeless_inverted_tries():
    from nagindex.ranking import scoring

    rng = np.random.default_rng(7)
    L, K, W = 3, 4, 64
    index = MemoryIndex(make_spec(L, K, W), *make_pool(rng, 3000, L, K, W))
    live = live_rows(index)
    focused = scoring.build_profile(index._features[:3], num_layers=L, top_k=K, width=W)
    spread = scoring.build_profile(random_features(rng, 200, L, K, W), num_layers=L, top_k=K, width=W)
    # a focused target whose heavy lists fit in the cap: worth a try
    assert INV.inverted_looks_hopeless(index, focused, "fwd_up", live, share=5 / 3000, max_postings_share=0.5) == (False, "")
    # a target spread like the pool: the bound cannot drop within 5% of the postings
    hopeless, why = INV.inverted_looks_hopeless(index, spread, "fwd_up", live, share=5 / 3000, max_postings_share=0.05)
    assert hopeless and "bound" in why


# ---------------------------------------------------------------------------
# --each: several targets, each its own selection, one pass over the pool
# ---------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(query_cases(), st.integers(2, 4), st.sampled_from(["scan", "inverted", "auto"]), st.booleans())
def test_each_target_selects_as_if_queried_alone(case, m, plan, quality):
    L, K, W, n, seed, n_target, power, layers, top, fraction, replaced = case
    index, rng = _case_index(L, K, W, n, seed, replaced)
    targets = [random_features(rng, n_target, L, K, W) for _ in range(m)]
    kw = dict(fraction=fraction, top=top, power=power, layers=layers, plan=plan,
              quality_col="quality" if quality else None)
    both = Q.run_query(index, targets, each=True, **kw).table
    names = both.column("target").to_pylist()
    assert names == sorted(names, key=[f"target{i}" for i in range(m)].index)  # in target order
    for i, target in enumerate(targets):
        alone = Q.run_query(index, [target], **kw).table
        mine = both.filter(pa.array([t == f"target{i}" for t in names], pa.bool_()))
        for col in ("docid", "nag_distance", "token_num") + (("combined_score",) if quality else ()):
            assert mine.column(col).to_pylist() == alone.column(col).to_pylist(), (i, col)


def test_each_refuses_dedupe():
    index, rng = _case_index(2, 2, 6, 30, 1, 0.0)
    with pytest.raises(NagError, match="each"):
        Q.run_query(index, [random_features(rng, 3, 2, 2, 6)] * 2, each=True, dedupe=True)


def test_cli_each_names_every_selection_after_its_file(store_index, tmp_path):
    from nagindex.cli import app
    from nagindex import Index

    path, feats, payload, rng = store_index
    spec = Index.open(path).spec
    targets = {name: random_features(rng, 4, 3, 4, 20) for name in ("arc", "gsm8k", "medqa")}
    files = []
    for name, t in targets.items():
        _features_file(tmp_path / f"{name}.parquet", t, spec)
        files += ["--target-features", str(tmp_path / f"{name}.parquet")]
    out = tmp_path / "each.parquet"
    r = CliRunner().invoke(app, ["query", str(path), *files, "--out", str(out), "--top", "7", "--each", "--no-progress"])
    assert r.exit_code == 0, r.output
    table = pq.read_table(out)
    mem = MemoryIndex(spec, feats, payload)
    for name, t in targets.items():
        mine = table.filter(pa.array([x == name for x in table.column("target").to_pylist()], pa.bool_()))
        assert mine.column("docid").to_pylist() == Q.run_query(mem, [t], top=7).table.column("docid").to_pylist()


def test_each_scans_the_pool_once(monkeypatch):
    index, rng = _case_index(3, 2, 8, 60, 2, 0.0)
    calls = []
    real = P.scan_scores
    monkeypatch.setattr(P, "scan_scores", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    Q.run_query(index, [random_features(rng, 3, 3, 2, 8) for _ in range(6)], each=True, plan="scan")
    assert calls == [6]  # one pass, six profiles
