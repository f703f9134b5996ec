"""`nag extract`: NAG features of document files, sharded and resumable.

Shards of the input are extracted one at a time and written atomically to
`<out>.parts/`; a rerun of the same job reuses the finished shards, so a
crash or `kill -9` loses at most one shard of work. Under `accelerate launch`
each process takes every N-th shard and process 0 writes the final file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nagindex.atomic import check_output_path
from nagindex import io as nio
from nagindex.errors import NagError
from nagindex.extraction.backbones import Backbone
from nagindex.extraction.extractor import extractor_for
from nagindex.extraction.features import count_tokens
from nagindex.progress import silence_library_bars
from nagindex.schemas import (
    DEFAULT_INDEX_TOP_K,
    DEFAULT_MAX_LENGTH,
    EMBEDDING,
    DEFAULT_NEURON_TYPE,
    DEFAULT_TOP_K,
    FeatureSpec,
    parse_neuron_types,
)

JOB_METADATA_KEY = b"nagindex.extract_job"
DEFAULT_SHARD_SIZE = 10_000


def parts_dir(out: Path) -> Path:
    """Where per-shard outputs of `out` live until the final file is written."""
    return out.with_name(out.name + ".parts")


def _file_identity(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


# Bumped when a part file's columns change, so that parts of the old layout are redone.
_PART_LAYOUT = 2  # 2: the `dataset` column is kept (for --target-filter on features)


def _job_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps((_PART_LAYOUT, *parts), sort_keys=True, default=str).encode()).hexdigest()


def _read_job_key(path: Path) -> str | None:
    """The job key of a finished output, or None when the file is absent or unreadable."""
    import pyarrow.parquet as pq

    try:
        md = pq.read_schema(path).metadata or {}
    except Exception:
        return None
    key = md.get(JOB_METADATA_KEY)
    return key.decode() if key else None


def _process_layout() -> tuple[int, int, Any]:
    """(process index, number of processes, accelerate state) under `accelerate launch`."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState()
        return state.process_index, state.num_processes, state
    return 0, 1, None


def extract_files(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model: str | os.PathLike | Backbone | None = None,
    fmt: str = "auto",
    neuron_types: Sequence[str] | str = (DEFAULT_NEURON_TYPE,),
    top_k: int = DEFAULT_TOP_K,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 32,
    export_jsonl: str | os.PathLike | None = None,
    strict: bool = False,
    progress: bool = True,
    shard_size: int = DEFAULT_SHARD_SIZE,
    device: str | None = None,
    dtype: Any = None,
    embedder: Any = None,
) -> dict:
    """Extract NAG features of document files into one parquet file (see `nag extract --help`).

    Work is cut into shards (each input file, in chunks of `shard_size`
    documents). Each shard's features go to ``<out>.parts/`` atomically; a
    rerun reuses every part whose job key (spec + input identity + rows)
    matches and recomputes the rest; the final file is written atomically
    and the parts directory removed. Under ``accelerate launch`` process i
    takes shards i, i+n, ...; the main process writes the final file.
    `top_k=None` keeps what `nag index build` keeps (`DEFAULT_INDEX_TOP_K`, or the
    layer width where smaller). With `embedder` (a name for `load_embedder`) every
    document's embedding is written too (an `embedding` column), so that
    `--target-features` queries of an index embedded the same way fuse as text ones do.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq


    if not progress:
        silence_library_bars()

    t0 = time.perf_counter()
    out = Path(out)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise NagError("no input files given")
    if shard_size < 1:
        raise NagError(f"shard size must be at least 1, got {shard_size}")
    types = parse_neuron_types(neuron_types)
    if out.exists() and out.is_dir():
        raise NagError(f"--out must be a file path, {out} is a directory")
    check_output_path(out)  # before any shard is extracted
    if export_jsonl is not None:
        check_output_path(export_jsonl)

    # 1. Read and validate every input before anything is written.
    tables = []
    skipped = 0
    for p in paths:
        table = nio.read_documents([p], fmt, strict=strict)
        skipped += nio.skipped_count(table)
        tables.append(table)
    all_ids = pa.concat_arrays([t.column("docid").combine_chunks() for t in tables]) if tables else pa.array([], pa.string())
    nio.check_unique_docids(all_ids)
    total = len(all_ids)
    if total == 0:
        raise NagError("no documents to extract in " + ", ".join(map(str, paths)))

    if top_k is None:
        probe = extractor_for(model, neuron_types=types, top_k=1, max_length=max_length, device=device, dtype=dtype)
        model = probe.backbone()
        top_k = min([DEFAULT_INDEX_TOP_K] + [probe.spec.width(t) for t in types])
    extractor = extractor_for(model, neuron_types=types, top_k=top_k, max_length=max_length, device=device, dtype=dtype,
                              embedder=embedder)
    backbone, spec = extractor.backbone(), extractor.spec
    embedder_name = extractor.embedder().name if embedder is not None else None
    identities = [_file_identity(p) for p in paths]
    final_key = _job_key(spec.to_dict(), identities, fmt, strict, "final", embedder_name)
    summary = dict(out=str(out), documents=total, skipped=skipped, spec=spec, shards=0, shards_reused=0)

    if _read_job_key(out) == final_key:
        summary.update(seconds=time.perf_counter() - t0, docs_per_s=0.0, already_done=True)
        _maybe_export(out, export_jsonl, spec)
        return summary

    # 2. Shards -> parts.
    rank, world, acc_state = _process_layout()
    pdir = parts_dir(out)
    pdir.mkdir(parents=True, exist_ok=True)
    shards = []
    for fi, table in enumerate(tables):
        for start in range(0, max(table.num_rows, 1), shard_size):
            if table.num_rows == 0:
                break
            length = min(shard_size, table.num_rows - start)
            key = _job_key(spec.to_dict(), identities[fi], fmt, strict, start, length, embedder_name)
            shards.append((fi, start, length, pdir / f"part-{fi:05d}-{start // shard_size:06d}.parquet", key))
    summary["shards"] = len(shards)
    computed_docs = 0
    t_extract = time.perf_counter()
    for si, (fi, start, length, part, key) in enumerate(shards):
        if si % world != rank:
            continue
        if _read_job_key(part) == key:
            summary["shards_reused"] += 1
            continue
        chunk = tables[fi].slice(start, length)
        texts = chunk.column("doc").to_pylist()
        feats = extractor.extract(texts, batch_size=batch_size, progress=progress)
        token_num = chunk.column("token_num").to_numpy(zero_copy_only=False) if "token_num" in chunk.column_names else None
        token_num = _fill_token_num(backbone, texts, token_num)
        embedded = {}
        if embedder_name is not None:
            vectors = extractor.embed(texts, batch_size=batch_size)
            embedded[EMBEDDING] = nio.embedding_array(vectors)
        with _writing(part):
            nio.write_features_parquet(
                part,
                chunk.column("docid").to_pylist(),
                feats,
                spec,
                columns={"token_num": pa.array(token_num, pa.int64()),
                         **({"dataset": chunk.column("dataset")} if "dataset" in chunk.column_names else {}), **embedded},
                metadata={JOB_METADATA_KEY: key.encode()},
            )
        computed_docs += length
    extract_seconds = time.perf_counter() - t_extract

    # 3. Merge (main process only, after every process finished its parts).
    if acc_state is not None:
        acc_state.wait_for_everyone()
    if rank == 0:
        parts = [pq.read_table(part) for (_, _, _, part, _) in shards]
        merged = pa.concat_tables(parts) if parts else None
        schema_md = dict(merged.schema.metadata or {})
        schema_md[JOB_METADATA_KEY] = final_key.encode()
        with _writing(out):
            nio.write_table_atomic(merged.replace_schema_metadata(schema_md), out)
        shutil.rmtree(pdir, ignore_errors=True)
        _maybe_export(out, export_jsonl, spec)
    if acc_state is not None:
        acc_state.wait_for_everyone()
    summary.update(
        seconds=time.perf_counter() - t0,
        docs_per_s=computed_docs / extract_seconds if computed_docs and extract_seconds > 0 else 0.0,
        already_done=False,
        computed=computed_docs,
    )
    return summary


def _fill_token_num(backbone: Backbone, texts: list[str], token_num: np.ndarray | None) -> np.ndarray:
    """token_num as given, with missing (absent or null) counts computed with the tokenizer."""
    if token_num is None:
        return count_tokens(backbone.tokenizer, texts)
    values = np.asarray(token_num, dtype=np.float64)
    missing = np.flatnonzero(np.isnan(values))
    result = np.nan_to_num(values, nan=0).astype(np.int64)
    if len(missing):
        result[missing] = count_tokens(backbone.tokenizer, [texts[i] for i in missing])
    return result


@contextmanager
def _writing(path: Path):
    """One line for a disk that refuses a write (full, read-only); finished parts stay, so
    that the rerun goes on from them."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise NagError(f"disk full while writing {path}; finished shards are kept and the same command "
                           "goes on from them once there is space") from None
        raise NagError(f"cannot write {path}: {e.strerror or e}") from None


def _maybe_export(out: Path, export_jsonl: str | os.PathLike | None, spec: FeatureSpec) -> None:
    if export_jsonl is None:
        return

    table, file_spec = nio.read_feature_files([out])
    feats = nio.features_from_table(table, file_spec or spec)
    with _writing(Path(export_jsonl)):
        nio.write_upstream_jsonl(export_jsonl, table.column("docid").to_pylist(), feats, file_spec or spec)
