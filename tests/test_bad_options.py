"""Options that were silently ignored or misread (issue 22): each is refused in one line,
before any work, with nothing changed on disk."""

from __future__ import annotations

import pytest

from nagindex import Index, NagError
from nagindex.io import write_features_parquet
from nagindex.ranking.options import ScoringOptions
from tests.test_bad_input import SPEC, assert_one_line_error, features_for, nag, write_pool


def _index(tmp_path):
    ids = ["a", "b", "c"]
    pool = write_pool(tmp_path / "pool.parquet", ids)
    write_features_parquet(tmp_path / "f.parquet", ids, {"fwd_up": features_for(3)}, SPEC)
    return Index.build(tmp_path / "idx", [pool], features=[tmp_path / "f.parquet"], progress=False)


def test_append_refuses_an_unknown_engine_like_build(tmp_path):
    index = _index(tmp_path)
    write_pool(tmp_path / "more.parquet", ["d"])
    write_features_parquet(tmp_path / "g.parquet", ["d"], {"fwd_up": features_for(1)}, SPEC)
    with pytest.raises(NagError, match="bogus"):
        index.append([tmp_path / "more.parquet"], features=[tmp_path / "g.parquet"], engine="bogus", progress=False)
    assert Index.open(tmp_path / "idx").num_documents == 3


@pytest.mark.parametrize("k,needle", [("0", "--top-k must be at least 1"), ("50", "K=3")])
def test_build_with_features_refuses_a_top_k_they_were_not_made_with(tmp_path, k, needle):
    ids = ["a", "b"]
    pool = write_pool(tmp_path / "pool.parquet", ids)
    write_features_parquet(tmp_path / "f.parquet", ids, {"fwd_up": features_for(2)}, SPEC)
    code, _, err = nag("index", "build", tmp_path / "idx", pool, "--features", tmp_path / "f.parquet", "--top-k", k,
                       "--embedder", "none", "--no-progress")
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "idx").exists()


def test_the_paper_preset_does_not_combine_with_embedding_modes():
    for mode in ("embedding", "fusion"):
        with pytest.raises(NagError, match="--preset paper"):
            ScoringOptions.from_preset("paper").with_overrides(mode=mode)


def test_explain_refuses_negative_neighbours(tmp_path):
    index = _index(tmp_path)
    from nagindex.analysis.explain import explain

    with pytest.raises(NagError, match="neighbours must be 0 or more") as error:
        explain(index, "a", features_for(2), neighbours=-1)
    assert error.value.cli_message().startswith("--neighbours must be 0 or more")  # the CLI names the flag


def test_the_strict_that_the_skip_warning_names_exists_in_build_and_append(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _index(tmp_path)
    pq.write_table(pa.table({"docid": ["d", "e"], "doc": ["text", " "], "token_num": [1, 1]}), tmp_path / "blank.parquet")
    write_features_parquet(tmp_path / "g.parquet", ["d", "e"], {"fwd_up": features_for(2)}, SPEC)
    code, _, err = nag("index", "append", tmp_path / "idx", tmp_path / "blank.parquet", "--features", tmp_path / "g.parquet",
                       "--strict", "--no-progress")
    assert_one_line_error(code, err, "docid 'e'")
    code, _, err = nag("index", "build", tmp_path / "new", tmp_path / "blank.parquet", "--features", tmp_path / "g.parquet",
                       "--strict", "--embedder", "none", "--no-progress")
    assert_one_line_error(code, err, "docid 'e'")
    assert Index.open(tmp_path / "idx").num_documents == 3 and not (tmp_path / "new").exists()
