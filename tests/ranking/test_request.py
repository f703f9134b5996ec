"""`QueryRequest`: one frozen value per query, built once, checked before any target is read."""

import dataclasses

import numpy as np
import pytest

from nagindex.errors import NagError
from nagindex.ranking import query as Q
from nagindex.ranking.options import ScoringOptions
from nagindex.ranking.request import QueryRequest

from test_query import MemoryIndex, make_pool, make_spec
from test_scoring import random_features


def test_request_is_frozen_and_holds_resolved_choices():
    req = QueryRequest.build(["a.jsonl"], target_texts={"x": ["one", "two"]}, top=5, power=1.0, preset="paper")
    assert (req.fraction, req.top, req.num_targets) == (None, 5, 2)
    assert req.target_texts == (("x", ("one", "two")),)
    assert req.scoring_options() == ScoringOptions.paper().with_overrides(power=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.top = 6  # type: ignore[misc]
    assert QueryRequest.build(["a.jsonl"]).fraction == Q.DEFAULT_FRACTION


@pytest.mark.parametrize("kwargs, message", [
    (dict(fraction=0.2, top=3), "either fraction or top"),
    (dict(each=True, dedupe=True), "dedupe mixes"),
    (dict(top=0), "^top must be at least 1"),
    (dict(fraction=1.5), r"^fraction must be in \(0, 1\]"),
    (dict(power=-1.0), "power"),
    (dict(plan="fastest"), "unknown plan"),
    (dict(preset="best"), "unknown preset"),
])
def test_bad_request_is_refused_before_any_target_is_read(kwargs, message):
    with pytest.raises(NagError, match=message):
        QueryRequest.build(["/does/not/exist.jsonl"], **kwargs)


def test_run_query_takes_one_request():
    rng = np.random.default_rng(3)
    L, K, W = 3, 4, 12
    feats, payload = make_pool(rng, 60, L, K, W)
    index = MemoryIndex(make_spec(L, K, W), feats, payload)
    target = random_features(rng, 5, L, K, W)
    req = QueryRequest.build([target], top=9, preset="paper")
    got = Q.run_query(index, req)
    want = Q.run_query(index, [target], top=9, preset="paper")
    assert got.table.column("docid").to_pylist() == want.table.column("docid").to_pylist()
    with pytest.raises(TypeError, match="not both"):
        Q.run_query(index, req, top=3)


def test_scoring_default_comes_from_the_index_when_the_request_names_no_preset():
    rng = np.random.default_rng(4)
    L, K, W = 2, 3, 10
    feats, payload = make_pool(rng, 40, L, K, W)
    index = MemoryIndex(make_spec(L, K, W), feats, payload)
    target = random_features(rng, 4, L, K, W)
    index.query_preset = "paper"
    res = Q.run_query(index, QueryRequest.build([target], top=5))
    assert res.summary["scoring"] == ScoringOptions.paper().describe("nag")
    res = Q.run_query(index, QueryRequest.build([target], top=5, preset="default"))
    assert res.summary["scoring"] == ScoringOptions().describe("nag")
