"""Core errors are plain exceptions naming Python parameters; the CLI says them as one line
with the flag, and exit code 2."""

import pytest
from typer.testing import CliRunner

from nagindex.cli import app
from nagindex.errors import NagError
from nagindex.ranking.request import QueryRequest


def test_nag_error_is_not_a_cli_exception():
    assert NagError.__mro__[1] is Exception
    error = NagError.for_param("top", "must be at least 1, got 0")
    assert str(error) == "top must be at least 1, got 0" and error.param == "top"
    assert error.cli_message() == "--top must be at least 1, got 0"


def test_python_api_names_the_parameter():
    with pytest.raises(NagError, match="^top must be at least 1") as info:
        QueryRequest.build(["t.jsonl"], top=0)
    assert info.value.param == "top"


@pytest.mark.parametrize("args, line", [
    (["--top", "0"], "Error: --top must be at least 1, got 0"),
    (["--fraction", "0.1", "--top", "3"], "Error: give either --fraction or --top, not both"),
    (["--fraction", "2"], "Error: --fraction must be in (0, 1], got 2.0"),
    (["--each", "--dedupe"], "Error: --dedupe mixes targets; with --each every target keeps its own selection"),
])
def test_cli_says_the_flag_on_one_line_and_exits_2(tmp_path, args, line):
    result = CliRunner().invoke(app, ["query", str(tmp_path / "idx"), "t.jsonl", "--out", str(tmp_path / "o.parquet"),
                                      *args])
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert lines == [line]
