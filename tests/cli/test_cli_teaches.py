"""The command line teaches: version, -h, an example per command, defaults once, JSON, ranges, quiet bars."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from nagindex.cli import app
from nagindex.cli.help import EXAMPLES, _commands
from nagindex.io import write_features_parquet
from nagindex.ranking.scoring import resolve_layers
from nagindex.schemas import FeatureSpec

L, K, W = 4, 3, 10
SPEC = FeatureSpec(backbone="synthetic", backbone_hash="h0", num_layers=L, top_k=K, neuron_types=("fwd_up",),
                   layer_widths={"fwd_up": W})


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_version_and_short_help():
    from nagindex import __version__

    res = run("--version")
    assert res.exit_code == 0 and res.output.strip() == f"nagindex {__version__}"
    assert run("-h").exit_code == 0 and "Usage" in run("-h").output
    assert "Usage" in run("index", "build", "-h").output


def test_every_command_has_an_example_and_each_default_once():
    paths = [path for path, _ in _commands(app)]
    assert set(paths) <= set(EXAMPLES), set(paths) - set(EXAMPLES)
    for path in paths:
        assert "Example" in run(*path.split(), "--help").output, path
    import typer

    def walk(command):
        yield command
        for sub in getattr(command, "commands", {}).values():
            yield from walk(sub)

    for command in walk(typer.main.get_command(app)):
        for param in command.params:
            if "Default:" in (getattr(param, "help", None) or ""):
                assert not param.show_default, (command.name, param.name)  # said once, in the help text


def test_layer_ranges():
    assert resolve_layers("0-3", 8) == (0, 1, 2, 3)
    assert resolve_layers("0..2,6", 8) == (0, 1, 2, 6)


def _index(tmp_path):
    ids = [f"d{i}" for i in range(10)]
    rng = np.random.default_rng(0)
    feats = np.argsort(rng.random((10, L, W)), axis=2)[:, :, :K].reshape(10, L * K).astype(np.uint16)
    pq.write_table(pa.table({"docid": ids, "doc": ids, "token_num": [1] * 10}), tmp_path / "pool.parquet")
    write_features_parquet(tmp_path / "f.parquet", ids, {"fwd_up": feats}, SPEC)
    return tmp_path / "f.parquet"


def test_json_summaries_and_quiet_bars(tmp_path):
    feats = _index(tmp_path)
    res = run("index", "build", tmp_path / "idx", tmp_path / "pool.parquet", "--features", feats, "--no-progress",
              "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["documents"] == 10
    res = run("index", "append", tmp_path / "idx", tmp_path / "pool.parquet", "--features", feats, "--no-progress",
              "--json")
    assert json.loads(res.output)["skipped"] == 10
    res = run("query", tmp_path / "idx", "--target-features", feats, "--top", "3", "--layers", "0-1", "--json",
              "--no-progress", "--out", tmp_path / "s.parquet")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["selected_docs"] == 3 and summary["out"] == str(tmp_path / "s.parquet")
    if "transformers" in sys.modules:
        from transformers.utils import logging

        assert not logging.is_progress_bar_enabled()
