"""The benchmark scripts run in CI at a small size, and their built-in checks hold.

Speed is not asserted here (timings belong to the scripts' printed figures);
what is asserted is what the scripts themselves verify side by side: the fast
paths give the reference's answers, and the index has what was put in it.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
EVAL_POOL = BENCH.parents[1] / "shared" / "eval" / "nag-features" / "pool.npz"  # real neuron statistics


def run_script(name: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.timeout(600)
def test_bench_query_smoke_agrees_with_the_reference():
    out = run_script("bench_query.py", "--smoke")
    diff = float(re.search(r"max \|distance diff\| ([0-9.e+-]+)", out).group(1))
    assert diff <= 1e-6
    # (c): the inverted-list path returns exactly the scan's answer
    assert "identical: True" in out
    # (b): the same number of rows as the upstream-style pipeline
    m = re.search(r"selections: (\d+) vs (\d+) rows", out)
    assert m and m.group(1) == m.group(2)
    # (e): each of six targets in one --each query selects what it selects alone
    assert "each equals its target alone: True" in out


@pytest.mark.timeout(600)
def test_bench_index_smoke_counts_and_append_cost():
    out = run_script("bench_index.py", "--smoke")
    report = json.loads(out.strip().splitlines()[-1])
    assert report["build"]["documents"] == report["n"]
    assert report["rebuild"]["documents"] == report["n"] + report["delta"]
    # an append writes a delta; it must cost less than rebuilding everything
    assert report["append_vs_rebuild"] < 1.0
    # the forward index holds exactly L*K uint16 per document
    assert report["size_rebuilt"]["forward"] >= (report["n"] + report["delta"]) * report["L"] * report["K"] * 2


@pytest.mark.timeout(600)
@pytest.mark.skipif(not EVAL_POOL.is_file(), reason="no labelled eval corpus beside the checkout")
def test_bench_inverted_smoke_gives_the_scan_answer():
    out = run_script("bench_inverted.py", "--smoke")
    # scan, forced inverted lists and the planner's choice select the same rows
    assert "identical: True" in out
    assert re.search(r"auto: +\S+: (scan|inverted) - ", out)
    # the forced run really read the lists (additive scores), rather than scanning at once
    assert re.search(r"inverted: +\S+: (inverted - |scan - .*fell back)", out), out


@pytest.mark.timeout(600)
def test_bench_service_smoke_answers_as_the_cli_and_survives_load():
    out = run_script("bench_service.py", "--smoke")
    report = json.loads(out.strip().splitlines()[-1])
    assert report["same_selection"] and report["server_ok_after_load"]
    assert report["load"]["requests"] > 0
