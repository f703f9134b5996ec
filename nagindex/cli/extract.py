"""`nag extract`: NAG features of document files, written as parquet."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from nagindex.schemas import DEFAULT_INDEX_TOP_K, DEFAULT_MAX_LENGTH, DEFAULT_NEURON_TYPE, NEURON_TYPES
from nagindex.cli.app import app


@app.command("extract")
def extract(
    inputs: List[Path] = typer.Argument(
        ..., help="Document files: web or final parquet, JSONL (.jsonl/.jsonl.gz) or .txt (one document a line)."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output parquet: docid, token_num and one <type>_feature column per neuron type."
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Backbone: a Hugging Face repo id (e.g. Qwen/Qwen3-1.7B-Base), a local model directory or a .gguf "
        "file. Default: the embedded SmolLM2-135M-Instruct.",
    ),
    fmt: str = typer.Option(
        "auto", "--format", "-f", help="Input layout: auto (by extension and columns), web, final, jsonl or txt."
    ),
    neuron_types: str = typer.Option(
        DEFAULT_NEURON_TYPE,
        "--neuron-types",
        "-t",
        help=f"Comma-separated neuron types to extract, from {', '.join(NEURON_TYPES)}.",
    ),
    top_k: Optional[int] = typer.Option(
        None, "--top-k", "-k", help=f"Neurons kept per layer (K). Default: {DEFAULT_INDEX_TOP_K}, what `nag index "
        "build` keeps (or the layer width where smaller); an index built with --preset paper has K=20."),
    embedder: Optional[str] = typer.Option(
        None, "--embedder", help="Also write each document's sentence embedding (e.g. all-MiniLM-L6-v2, what "
        "`nag index build` embeds with by default), so that --target-features queries fuse as text queries do. "
        "Default: none."),
    max_length: int = typer.Option(
        DEFAULT_MAX_LENGTH, "--max-length", help="Tokens read per document; longer ones are truncated."
    ),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Documents per forward pass."),
    export_jsonl: Optional[Path] = typer.Option(
        None, "--export-jsonl", help="Also write the features in the upstream NAG JSONL layout to this file."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Fail on documents with empty or non-string text instead of skipping them."
    ),
    shard_size: int = typer.Option(
        10_000,
        "--shard-size",
        help="Documents per resumable shard: finished shards are kept in <out>.parts/ and a rerun skips them.",
    ),
    device: Optional[str] = typer.Option(
        None, "--device", help="cpu, cuda, cuda:1 ... Default: this process's GPU if there is one, else cpu."
    ),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32, bf16 or fp16. Default: bf16 on CUDA, fp32 on CPU."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar (docs/s, ETA)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object instead of text."),
) -> None:
    """Extract NAG features (SPEC section 1) of every document in INPUT files.

    Writes one parquet file with the backbone, L, K, neuron types and
    max_length in its metadata. Interrupted runs resume: rerun the same
    command. Several GPUs: `accelerate launch -m nagindex extract INPUT...
    --out FILE` splits the shards over the processes.
    """
    from nagindex.extraction.jobs import extract_files

    summary = extract_files(
        inputs,
        out,
        model=model,
        fmt=fmt,
        neuron_types=neuron_types,
        top_k=top_k,
        max_length=max_length,
        batch_size=batch_size,
        export_jsonl=export_jsonl,
        strict=strict,
        progress=progress,
        shard_size=shard_size,
        device=device,
        dtype=dtype,
        embedder=embedder,
    )
    spec = summary["spec"]
    if as_json:
        import json

        typer.echo(json.dumps({**summary, "spec": spec.to_dict(), "out": str(out)}, default=str))
        return
    if summary.get("already_done"):
        typer.echo(f"{out} is already complete for these inputs and settings; nothing to do")
        return
    typer.echo(
        f"{summary['documents']} documents -> {out} ({spec.backbone}, L={spec.num_layers}, K={spec.top_k}, "
        f"types {','.join(spec.neuron_types)}, max_length {spec.max_length}); "
        f"{summary['skipped']} skipped, {summary['shards_reused']}/{summary['shards']} shards reused, "
        f"{summary['docs_per_s']:.1f} docs/s"
    )
