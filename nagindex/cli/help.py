"""What every command's help shows: an example, each default once, ``-h`` and ``--version``.

Applied to the typer apps once every command is registered (`teach`), so the
command modules keep plain docstrings and options.
"""

from __future__ import annotations

import inspect

import typer

# One example per command, by its path below `nag`.
EXAMPLES = {
    "extract": "nag extract 'pool/*.parquet' --out feats/ --model Qwen/Qwen3-1.7B-Base",
    "query": "nag query idx arc_train.jsonl --fraction 0.1 --out selected.parquet",
    "serve": "nag serve idx --port 8000   # then: nag query idx t.jsonl --server http://127.0.0.1:8000 --out s.parquet",
    "demo": "nag demo --out demo-run",
    "explain": "nag explain idx DOCID arc_train.jsonl",
    "index build": "nag index build idx 'pool/*.parquet' --model Qwen/Qwen3-1.7B-Base",
    "index append": "nag index append idx new/ --json",
    "index info": "nag index info idx --json",
    "index compact": "nag index compact idx",
    "index check": "nag index check idx",
    "index tag": "nag index tag idx paper-run",
    "index versions": "nag index versions idx",
    "deactivate keys": "nag deactivate keys idx arc_train.jsonl --out keys.json",
    "deactivate apply": "nag deactivate apply --model embedded --keys keys.json --out smollm2-off",
    "deactivate eval": "nag deactivate eval arc_test.jsonl --keys keys.json --control wiki.jsonl",
    "plot scores": "nag plot scores idx arc_train.jsonl --out scores.png",
    "plot layers": "nag plot layers idx arc_train.jsonl --out layers.png",
    "plot map": "nag plot map idx --out map.png",
}

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _commands(app: typer.Typer, prefix: str = ""):
    for info in app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        yield (prefix + name).strip(), info
    for group in app.registered_groups:
        yield from _commands(group.typer_instance, f"{prefix}{group.name} ")


def _with_example(doc: str, example: str) -> str:
    if "Example" in doc:
        return doc
    # "\b" keeps click from re-wrapping the example into the paragraph above
    return f"{doc.rstrip()}\n\n\b\nExample:\n  {example}"


def teach(app: typer.Typer) -> None:
    """Add the examples and show each default once (the help texts say "Default: ...")."""
    for path, info in _commands(app):
        doc = info.help or inspect.getdoc(info.callback) or ""
        if path in EXAMPLES:
            info.help = _with_example(doc, EXAMPLES[path])
        info.context_settings = {**CONTEXT, **(info.context_settings or {})}
        for param in inspect.signature(info.callback).parameters.values():
            default = param.default
            if isinstance(default, typer.models.ParameterInfo) and "Default:" in (default.help or ""):
                default.show_default = False


def version_option():
    def show(value: bool) -> None:
        if value:
            from importlib.metadata import PackageNotFoundError, version

            try:
                number = version("nagindex")
            except PackageNotFoundError:  # run from a source tree that was never installed
                number = "(not installed)"
            typer.echo(f"nagindex {number}")
            raise typer.Exit()

    return typer.Option(False, "--version", callback=show, is_eager=True, help="Print the version and exit.")
