"""The validation target sets (benchmarks/validation_targets.py): committed features of the right shape,
a draw that reproduces the items they were extracted from, and no benchmark kept apart for the final check."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import validation_targets as V  # noqa: E402

needs_package = pytest.mark.skipif(importlib.util.find_spec(V.PACKAGE) is None,
                                   reason=f"the item texts come from {V.PACKAGE_PIN}")


def test_every_set_is_committed_with_features_of_the_eval_layout():
    assert V.set_names() == sorted(V.SETS)
    scored = [n for n, (_, domains) in V.SETS.items() if domains]
    assert len(scored) >= 20 and sum(len(V.SETS[n][1]) > 1 for n in scored) >= 10
    for name in V.set_names():
        s = V.load_set(name)
        assert s.domains == V.SETS[name][1]
        n = len(s.ids)
        assert n == (V.ITEMS if s.domains else V.CONTROL_ITEMS) or name == "cb"  # cb has 56 items in all
        assert s.top100.shape == (n, 30, 100) and s.top100.dtype == np.uint16
        assert int(s.top100.max()) < 1536 and len(set(s.ids.tolist())) == n
        # per layer, a document's 100 neurons are distinct
        row = s.top100[0]
        assert all(len(set(layer.tolist())) == 100 for layer in row)
        assert (s.token_num > 0).all()


def test_no_source_is_kept_apart_or_a_pool_source():
    named = " ".join(f"{src.name} {src.path}" for src in V.SOURCES.values()).lower()
    for kept in V.KEPT_APART:
        assert kept not in named
    for pool_source in ("sciq", "piqa", "boolq", "squad", "drop", "coqa", "qasper", "sciriff", "medmcqa", "mbpp",
                        "minerva", "protocolqa"):
        assert pool_source not in named


@needs_package
def test_the_draw_reproduces_the_committed_items_and_mixtures_never_reuse_a_single_sets_items():
    drawn = V.draw_sets()
    assert drawn == V.draw_sets()  # fixed seed
    in_singles: dict[str, str] = {}
    for name in V.set_names():
        s = V.load_set(name, texts=drawn)  # raises when the ids differ
        assert len(s.texts) == len(s.ids) and all(t.strip() for t in s.texts)
        if len(V.SETS[name][0]) == 1:
            for item_id in s.ids.tolist():
                assert item_id not in in_singles
                in_singles[item_id] = name
    for name, (parts, _) in V.SETS.items():
        if len(parts) > 1:
            reused = [i for i, _ in drawn[name] if i in in_singles]
            assert not reused, f"{name} reuses {reused[:3]}"
            # a mixture draws evenly from its parts
            per_part = [sum(i.startswith(p + "-") for i, _ in drawn[name]) for p in parts]
            assert max(per_part) - min(per_part) <= 1 and sum(per_part) == len(drawn[name])


@needs_package
def test_a_changed_draw_is_refused(tmp_path):
    drawn = V.draw_sets()
    name = V.set_names()[0]
    drawn[name] = list(reversed(drawn[name]))
    with pytest.raises(SystemExit, match="not the ones"):
        V.load_set(name, texts=drawn)
