"""What goes into an index: validated document batches joined to their features.

Every batch that reaches the store has passed these checks, so that a bad
input is refused with a NagError naming the problem before the index changes:
docids present, text-typed, unique; token_num integer and >= 0 (or counted
with a tokenizer); every feature vector of length L*K with indices inside the
layer width. Feature files are joined to the pool payload on docid while both
stream, so memory stays bounded when the two are in the same order (the
usual case: `nag extract` writes features in pool order).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nagindex.errors import NagError
from nagindex.io import (
    check_unique_docids,
    normalize_documents,
    read_feature_files,
    set_column,
    token_num_column,
)
from nagindex.schemas import (
    DOCID,
    NEURON_TYPES,
    RESERVED_INDEX_COLUMNS,
    TEXT,
    TOKEN_NUM,
    FeatureSpec,
    feature_column,
    is_reserved_column,
)
from nagindex.sources import count_rows as count
from nagindex.sources import document_batches as batches

Features = dict[str, np.ndarray]

# Rows decoded at once from a feature parquet file.
PARQUET_READ_ROWS = 8192


# -- documents ---------------------------------------------------------------


def fill_token_num(table: pa.Table, count: Callable[[list[str]], np.ndarray] | None, source: str) -> pa.Table:
    """Count the tokens of documents without token_num, or refuse when no tokenizer is at hand."""
    col = table.column(TOKEN_NUM)
    if col.null_count == 0:
        return table
    missing = pc.is_null(col)
    if count is None:
        first = table.column(DOCID).filter(missing)[0].as_py()
        raise NagError(
            f"{source}: {col.null_count} documents have no token_num (first: docid {first!r}) and no model "
            "is given to count their tokens; add a token_num column or pass --model"
        )
    if TEXT not in table.column_names:
        raise NagError(f"{source}: documents without token_num need a '{TEXT}' text column to count tokens")
    texts = table.column(TEXT).filter(missing).to_pylist()
    if any(t is None for t in texts):
        raise NagError(f"{source}: documents have neither token_num nor text")
    counted = np.asarray(count(texts), dtype=np.int64)
    values = np.array(pc.fill_null(col, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    values[np.asarray(missing.to_numpy(zero_copy_only=False), dtype=bool)] = counted
    return set_column(table, TOKEN_NUM, pa.array(values, pa.int64()))


# -- features ----------------------------------------------------------------


def check_features(features: Features, spec: FeatureSpec, n: int, source: str = "features") -> Features:
    """Validated uint16 (n, L*K) arrays for every neuron type of `spec`."""
    out = {}
    for t in spec.neuron_types:
        if t not in features:
            raise NagError(f"{source}: no {t} features (the index has {', '.join(spec.neuron_types)})")
        arr = np.asarray(features[t])
        if arr.ndim != 2 or arr.shape[0] != n:
            raise NagError(f"{source}: {t} features have shape {arr.shape}, expected ({n}, {spec.feature_length})")
        if arr.shape[1] != spec.feature_length:
            raise NagError(
                f"{source}: {t} feature vectors have length {arr.shape[1]}, expected L*K = "
                f"{spec.num_layers}*{spec.top_k} = {spec.feature_length}"
            )
        if not np.issubdtype(arr.dtype, np.integer):
            raise NagError(f"{source}: {t} features must be integers, found {arr.dtype}")
        width = spec.width(t)
        if arr.size:
            low, high = int(arr.min()), int(arr.max())
            if low < 0 or high >= width:
                bad = low if low < 0 else high
                raise NagError(f"{source}: {t} feature has neuron index {bad} outside the layer width 0..{width - 1}")
        out[t] = np.ascontiguousarray(arr, dtype=np.uint16)
    return out


def features_from_columns(table: pa.Table, spec: FeatureSpec, source: str) -> Features:
    """uint16 (n, L*K) arrays from the `<type>_feature` list columns of `table`."""
    out = {}
    for t in spec.neuron_types:
        name = feature_column(t)
        if name not in table.column_names:
            raise NagError(f"{source}: no {name} column")
        col = table.column(name)
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        if col.null_count:
            raise NagError(f"{source}: {col.null_count} documents have no {name}")
        if pa.types.is_fixed_size_list(col.type):
            length = col.type.list_size
        elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            if lengths.size and (lengths.min() != lengths.max()):
                raise NagError(f"{source}: {name} vectors have different lengths ({lengths.min()}..{lengths.max()})")
            length = int(lengths[0]) if lengths.size else spec.feature_length
        else:
            raise NagError(f"{source}: {name} must be a list column, found {col.type}")
        if length != spec.feature_length:
            raise NagError(
                f"{source}: {name} vectors have length {length}, expected L*K = "
                f"{spec.num_layers}*{spec.top_k} = {spec.feature_length}"
            )
        flat = col.flatten()
        if flat.null_count:
            raise NagError(f"{source}: {name} has missing entries")
        values = flat.to_numpy(zero_copy_only=False)
        out[t] = values.reshape(len(col), length) if len(col) else np.zeros((0, length), values.dtype)
    return check_features(out, spec, table.num_rows, source)


def feature_file_spec(paths: Sequence[str | os.PathLike]) -> FeatureSpec | None:
    """The FeatureSpec recorded in nagindex feature parquet files (None for upstream JSONL)."""
    spec = None
    for p in map(Path, paths):
        if not p.exists():
            raise NagError(f"feature file not found: {p}")
        if _is_jsonl(p):
            continue
        try:
            md = pq.read_schema(p).metadata
        except (pa.ArrowException, OSError) as e:
            raise NagError(f"cannot read feature file {p}: {str(e).splitlines()[0]}") from None
        file_spec = FeatureSpec.from_metadata(md)
        if file_spec is None:
            continue
        if spec is None:
            spec = file_spec
        else:
            spec.check_compatible(file_spec, what=f"features in {p}")
    return spec


def _is_jsonl(path: Path) -> bool:
    return path.name.lower().endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz"))


def iter_feature_tables(paths: Sequence[str | os.PathLike], batch_rows: int) -> Iterator[pa.Table]:
    """Feature tables (docid + feature columns) streamed from parquet, whole from JSONL."""

    for p in map(Path, paths):
        if _is_jsonl(p):
            table, _ = read_feature_files([p])
            for i in range(0, table.num_rows, batch_rows):
                yield table.slice(i, batch_rows)
            continue
        try:
            # pre_buffer would keep every column chunk read so far; decoding list
            # columns needs ~8 bytes per value transiently, so read small batches
            # (`join_features` gathers them into pool-sized ones)
            pf = pq.ParquetFile(p, pre_buffer=False)
            if DOCID not in pf.schema_arrow.names:
                raise NagError(f"{p}: no 'docid' column")
            for batch in pf.iter_batches(batch_size=min(batch_rows, PARQUET_READ_ROWS)):
                yield pa.Table.from_batches([batch])
        except (pa.ArrowException, OSError) as e:
            raise NagError(f"cannot read feature file {p}: {str(e).splitlines()[0]}") from None


def join_features(
    documents: Iterable[pa.Table], feature_tables: Iterable[pa.Table], spec: FeatureSpec
) -> Iterator[tuple[pa.Table, Features]]:
    """Pair every document batch with its features, matched on docid.

    Feature rows are read ahead only until every docid of the current batch
    is found; rows read ahead but not yet used wait in a buffer. In pool
    order the buffer stays about one batch long; in any other order it
    grows, but the result is the same. Documents without features, and
    features without a document, are refused.
    """
    feature_iter = iter(feature_tables)
    buffer: pa.Table | None = None
    exhausted = False
    for docs in documents:
        ids = docs.column(DOCID)
        while True:
            have = buffer is not None and bool(pc.all(pc.is_in(ids, value_set=buffer.column(DOCID))).as_py())
            if have or exhausted:
                break
            try:
                more = next(feature_iter)
            except StopIteration:
                exhausted = True
                continue
            keep = [DOCID, TOKEN_NUM, *[feature_column(t) for t in spec.neuron_types]]
            more = more.select([c for c in keep if c in more.column_names])
            more = more.set_column(0, DOCID, more.column(DOCID).cast(pa.string()))
            buffer = more if buffer is None else pa.concat_tables([buffer, more], promote_options="permissive")
            # a repeated docid would otherwise be joined once (first copy wins) and the rest dropped
            check_unique_docids(buffer.column(DOCID), "feature files")
        if buffer is None:
            raise NagError(f"{len(ids)} pool documents have no features (first: docid {ids[0].as_py()!r})")
        pos = pc.index_in(ids, value_set=buffer.column(DOCID))
        if pos.null_count:
            missing = ids.filter(pc.is_null(pos))
            raise NagError(f"{len(missing)} pool documents have no features (first: docid {missing[0].as_py()!r})")
        matched = buffer.take(pos)
        buffer = buffer.filter(pc.invert(pc.is_in(buffer.column(DOCID), value_set=ids)))
        if buffer.num_rows == 0:
            buffer = None
        if TOKEN_NUM in matched.column_names and docs.column(TOKEN_NUM).null_count:
            # `nag extract` records token counts: use them where the pool has none
            counted = token_num_column(matched.column(TOKEN_NUM), "feature files")
            docs = set_column(docs, TOKEN_NUM, pc.coalesce(docs.column(TOKEN_NUM), counted))
        yield docs, features_from_columns(matched, spec, "feature files")
    extra = [] if buffer is None else [buffer]
    for more in feature_iter:
        extra.append(more)
        break
    if extra:
        first = extra[0].column(DOCID)[0].as_py()
        raise NagError(
            f"features for docid {first!r} have no document in the pool (docids missing from the payload, "
            "or repeated in the feature files)"
        )


# -- batches for the store ---------------------------------------------------------


def count_rows(sources: Sequence) -> int | None:
    """Total documents of the pools (for the progress bar), None when unknown."""

    return count(sources)


def document_batches(sources: Sequence, fmt: str, batch_rows: int, require_text: bool,
                     strict: bool = False) -> Iterator[pa.Table]:
    """Pool documents streamed in batches (files of any format `io` reads, or tables in memory,
    as `sources.expand_sources` lists them), normalised. A pool column named like a
    feature column is refused: the index's own feature column would replace it."""

    for table in batches(sources, fmt, batch_rows, require_text=require_text, strict=strict):
        check_payload_names(table)
        yield normalize_documents(table, "pool")


def check_payload_names(table: pa.Table) -> None:
    """Refuse a pool column with a name the index or its outputs keep (`schemas.is_reserved_column`)."""
    clash = [c for c in table.column_names if is_reserved_column(c)]
    if clash:
        raise NagError(f"pool column {clash[0]!r} has a name reserved for the index's own columns "
                       f"({', '.join(RESERVED_INDEX_COLUMNS)}, <type>_feature); rename it in the pool")


def table_batches(documents: pa.Table, feature_arrays: dict | None, spec: FeatureSpec, batch_rows: int):
    """Validate an in-memory documents table (+ features) entirely, then yield it in batches."""
    documents = normalize_documents(documents, "documents")
    check_unique_docids(documents.column(DOCID).combine_chunks(), "documents")
    if feature_arrays is None:
        feats = features_from_columns(documents, spec, "documents")
        documents = documents.drop_columns([c for c in documents.column_names if c in {feature_column(t) for t in spec.neuron_types}])
    else:
        feats = check_features(feature_arrays, spec, documents.num_rows, "feature_arrays")
    check_payload_names(documents)  # after the feature columns it reads are taken out
    for start in range(0, documents.num_rows, batch_rows):
        yield documents.slice(start, batch_rows), {t: f[start : start + batch_rows] for t, f in feats.items()}


def regroup(batches: Iterable[tuple[pa.Table, Features]], rows: int,
            on_batch: Callable[[int], None] | None = None) -> Iterator[tuple[pa.Table, Features]]:
    """Small (documents, features) batches gathered into batches of about `rows` rows.

    Reading and extracting in small batches lets progress move per batch
    (`on_batch` is told each one's size), while the store still writes few,
    large fragments.
    """
    docs: list[pa.Table] = []
    feats: list[Features] = []
    held = 0
    for table, features in batches:
        if on_batch is not None:
            on_batch(table.num_rows)
        docs.append(table)
        feats.append(features)
        held += table.num_rows
        if held >= rows:
            yield _joined(docs, feats)
            docs, feats, held = [], [], 0
    if docs:
        yield _joined(docs, feats)


def _joined(docs: list[pa.Table], feats: list[Features]) -> tuple[pa.Table, Features]:
    if len(docs) == 1:
        return docs[0], feats[0]
    table = pa.concat_tables(docs, promote_options="permissive")
    return table, {t: np.concatenate([f[t] for f in feats]) for t in feats[0]}
