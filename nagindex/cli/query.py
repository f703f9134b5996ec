"""`nag query`: a thin wrapper over `Index.run_query`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from nagindex.atomic import check_output_path
from nagindex.errors import NagError
from nagindex.schemas import DATASET, DEFAULT_NEURON_TYPE, NEURON_TYPES
from nagindex.cli import scoring as S
from nagindex.cli.app import MODEL_HELP, app


def _check_output(out: Path) -> None:
    """Refuse an output we could not write before doing any work."""
    if out.exists() and out.is_dir():
        raise NagError(f"--out {out} is a directory; give a .parquet file path")
    check_output_path(out)
    parent = out.parent if str(out.parent) else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise NagError(f"cannot write {out}: {probe} is not a writable directory")


def _write(result, out: Path) -> None:
    try:
        result.write_parquet(out)
    except OSError as e:
        raise NagError(f"cannot write {out}: {e.strerror or e}") from None


def format_summary(summary: dict, out: Path | None) -> str:
    lines = []
    dmin, dmax = summary["distance_min"], summary["distance_max"]
    share = summary["selected_tokens"] / summary["pool_tokens"] if summary["pool_tokens"] else 0.0
    lines.append(
        f"selected {summary['selected_docs']} of {summary['pool_docs']} documents, "
        f"{summary['selected_tokens']} of {summary['pool_tokens']} tokens ({share:.1%})"
        + (f" -> {out}" if out else "")
    )
    if dmin is not None:
        lines.append(f"nag_distance {dmin:.6f} .. {dmax:.6f}")
    if summary.get("scoring"):
        lines.append(f"scored by {summary['scoring']}"
                     + (f" ({summary['mode']}: {summary['mode_reason']})" if summary.get("mode_reason") else ""))
    targets = ", ".join(f"{name} ({n} docs)" for name, n in summary["targets"].items())
    lines.append(f"targets: {targets}")
    if summary.get("missing_quality"):
        lines.append(f"left out {summary['missing_quality']} rows with missing or non-finite quality")
    datasets = list(summary["datasets"].items())
    shown = datasets[:12]
    lines.append("per dataset: " + ", ".join(f"{k} {v}" for k, v in shown) + (" ..." if len(datasets) > 12 else ""))
    for p in summary["plans"]:
        lines.append(f"plan {p}")
    return "\n".join(lines)


@app.command("query")
def query(
    index_dir: Path = typer.Argument(..., help="An index made by `nag index build`."),
    targets: Optional[List[str]] = typer.Argument(
        None,
        help="Target documents as raw text: web parquet (doc), final parquet (content_split), JSONL "
        "(text or doc) or .txt (one document per line). Each TARGET is one target set (quote a glob "
        "like 'arc/*.parquet', or give a directory, to pass shards of one set); several TARGETs make the "
        "multi-target mixture, named after their files. Their NAG is extracted with the index's own backbone "
        "and settings.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output parquet of the selected rows, in rank order. "
                             "Written atomically; a missing directory is created."),
    fraction: Optional[float] = typer.Option(
        None, "--fraction", help="Token budget per query: keep the best-ranked documents whose tokens fit in "
        "floor(fraction * pool tokens); with M targets each gets fraction/M. In (0, 1]. Default: 0.2."),
    top: Optional[int] = typer.Option(
        None, "--top", help="Keep the best N documents instead of a token budget (split over the targets)."),
    target_features: Optional[List[Path]] = typer.Option(
        None, "--target-features", help="Precomputed target features instead of raw text (nagindex parquet "
        "from `nag extract` or upstream JSONL); repeat for several targets. Checked against the index's backbone, L and K."),
    target_filter: Optional[List[str]] = typer.Option(
        None, "--target-filter", help="Keep only target documents whose --target-filter-col equals this value "
        "(text targets and --target-features alike). Once: every target; repeated: one per target in order "
        "(TARGETs, then --target-features), '-' for none."),
    target_filter_col: str = typer.Option(DATASET, "--target-filter-col", help="Column --target-filter reads. Default: dataset."),
    preset: Optional[str] = S.PRESET,
    weighting: Optional[str] = S.WEIGHTING,
    power: Optional[float] = S.POWER,
    discount: Optional[str] = S.DISCOUNT,
    top_k: Optional[int] = S.TOP_K,
    layers: Optional[str] = S.LAYERS,
    mode: Optional[str] = S.MODE,
    embedding_score: Optional[str] = S.EMBEDDING_SCORE,
    neighbours: Optional[int] = S.NEIGHBOURS,
    fusion: Optional[str] = S.FUSION,
    nag_weight: Optional[float] = S.NAG_WEIGHT,
    neuron_type: str = typer.Option(DEFAULT_NEURON_TYPE, "--neuron-type", "-t",
                                    help=f"Neuron type to rank by, one of {', '.join(NEURON_TYPES)} that the index has. Default: fwd_up."),
    dedupe: bool = typer.Option(False, "--dedupe", help="With several targets, keep each docid once (its first "
                                "selection). Default: duplicates kept."),
    quality_col: Optional[str] = typer.Option(
        None, "--quality-col", help="Numeric payload column to combine with the NAG distance: both are min-max "
        "normalised over the pool and summed (lower is better). Rows with missing or non-finite (inf, nan) quality are left out and counted."),
    invert_quality: bool = typer.Option(False, "--invert-quality", help="The quality column is higher-is-better "
                                        "(e.g. a classifier probability): use 1 - quality. Default: used as is."),
    with_text: bool = typer.Option(False, "--with-text", help="Include the document text column in the output."),
    contrast: Optional[str] = S.CONTRAST,
    plan: str = typer.Option("auto", "--plan", help="Ranking path: auto, scan or inverted (the answer is the same). Default: auto."),
    engine: str = typer.Option("local", "--engine", help="local (this machine) or ray (score on a Ray cluster; "
                               "same answer). Default: local."),
    explain_plan: bool = typer.Option(False, "--explain-plan", help="Print which path ranked each target and why."),
    fmt: str = typer.Option("auto", "--format", "-f", help="Layout of TARGET files: auto, web, final, jsonl or txt. Default: auto."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Target documents per forward pass. Default: 32."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help=MODEL_HELP),
    each: bool = typer.Option(False, "--each", help="Select for each TARGET on its own (the whole --fraction or "
                              "--top, not a share of it), all from one pass over the pool; the output holds every "
                              "selection with a target column naming it. Default: several TARGETs make one mixture."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object instead of text."),
    server: Optional[str] = typer.Option(
        None, "--server", envvar="NAG_SERVER", help="Send the query to a running `nag serve` at this URL (or "
        "$NAG_SERVER) instead of opening the index here: its models are loaded already. TARGET files are read "
        "by the server (their absolute paths are sent); --target-features files are sent whole."),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Query the index as it was at this version (a number "
                                        "from `nag index versions`, or a tag from `nag index tag`). Default: the current one."),
) -> None:
    """Rank the pool of INDEX_DIR against TARGET documents and write the selection.

    One TARGET selects by token budget (--fraction) or best N (--top); several
    make the multi-target mixture. Prints a one-screen summary.
    """
    from nagindex.api import Index
    from nagindex.ranking.request import QueryRequest

    if not targets and not target_features:
        raise NagError("give at least one TARGET file or --target-features")
    _check_output(out)
    request = QueryRequest.build(
        [str(t) for t in targets or []],
        target_features=[str(f) for f in target_features or []],
        target_filter=[None if f == "-" else f for f in target_filter] if target_filter else None,
        target_filter_col=target_filter_col,
        fraction=fraction,
        top=top,
        **S.scoring_flags(preset, weighting, power, discount, top_k, layers, mode, embedding_score, neighbours,
                          contrast, fusion, nag_weight),
        neuron_type=neuron_type,
        dedupe=dedupe,
        quality_col=quality_col,
        invert_quality=invert_quality,
        with_text=with_text,
        plan=plan,
        fmt=fmt,
        batch_size=batch_size,
        progress=progress,
        each=each,
    )
    if server:
        from nagindex.service.client import Client

        if model is not None:
            raise NagError("--model: a server queries with the backbone it holds; leave --model out with --server")
        if engine != "local":
            raise NagError("--engine: a server queries where it runs; leave --engine out with --server")
        result = Client(server).run_query(request, as_of=as_of, index=index_dir.absolute())
    else:
        result = Index.open(index_dir, model=model, version=as_of).run_query(request, engine=engine)
    _write(result, out)
    summary = dict(result.summary)
    if as_json:
        import json

        if not server:
            summary.update(plans=[{"target": p.target, "path": p.path, "why": p.describe()} for p in result.plans])
        summary.update(out=str(out))
        typer.echo(json.dumps(summary, default=str))
        return
    if not explain_plan and not server:
        summary["plans"] = [p.target + ": " + p.path for p in result.plans]
    typer.echo(format_summary(summary, out))
