"""The core install stays lean: what only an optional feature uses lives in its extra."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from nagindex.errors import NagError

ROOT = Path(__file__).resolve().parents[1]


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements):
    return {r.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in requirements}


def test_core_is_lean_and_extras_hold_the_rest():
    project = _project()
    core = _names(project["dependencies"])
    assert not core & {"rich", "numba", "scipy", "matplotlib"}, core
    extras = {name: _names(reqs) for name, reqs in project["optional-dependencies"].items()}
    assert "numba" in extras["fast"] and {"matplotlib", "scipy"} <= extras["plots"]
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert all(name in setup for name in extras), "setup.sh --test must install every extra"
    readme = (ROOT / "README.md").read_text()
    assert all(f"| `{name}` |" in readme for name in extras), "README says what each extra adds"


def test_missing_plots_extra_is_one_clear_line(monkeypatch, tmp_path):
    from nagindex.analysis import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(NagError, match=r"pip install 'nagindex\[plots\]'"):
        plots.plot_scores({}, tmp_path / "x.png")


def test_scores_need_no_numba(monkeypatch):
    from nagindex.ranking import scoring

    rng = np.random.default_rng(0)
    L, K, W = 3, 4, 16
    feats = np.argsort(rng.random((50, L, W)), axis=2)[:, :, :K].reshape(50, L * K).astype(np.uint16)
    profile = scoring.build_profile(feats[:5], num_layers=L, top_k=K, width=W)
    monkeypatch.setattr(scoring, "HAVE_NUMBA", False)  # as if the `fast` extra were not installed
    assert scoring.choose_kernel(10**9) == "numpy"
    got = scoring.score_features(feats, profile)
    # the SPEC formula, plainly: the sum of the target counts of each document's neurons
    counts = np.zeros((L, W), np.int64)
    for row in feats[:5].reshape(5, L, K):
        for layer in range(L):
            counts[layer, row[layer]] += 1
    want = [sum(counts[layer, n] for layer in range(L) for n in doc[layer]) for doc in feats.reshape(50, L, K)]
    assert np.argsort(-np.asarray(got), kind="stable").tolist()[:5] == np.argsort(-np.asarray(want), kind="stable").tolist()[:5]
    assert np.array_equal(np.asarray(got) * (np.asarray(want)[0] or 1), np.asarray(want) * (np.asarray(got)[0] or 1))
