"""Targets: the NAG features of one target set, from text, feature files or arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nagindex.errors import NagError
from nagindex.io import features_from_table, read_feature_files
from nagindex.schemas import DATASET, EMBEDDING, TEXT, feature_column
from nagindex.sources import expand_path, read_documents, source_name, texts_table


@dataclass
class Target:
    """One target set: its name (shown in the `target` column), its NAG
    features for the queried neuron type, (n, L*K) uint16, and where known
    its embeddings, (n, dim) unit vectors made by the index's embedder."""

    name: str
    features: np.ndarray
    embeddings: np.ndarray | None = None


def _filter_rows(table: pa.Table, value: str | None, column: str, source: str) -> pa.Table:
    if value is None:
        return table
    if column not in table.column_names:
        raise NagError(f"{source} has no column {column!r} to filter the target on")
    col = table.column(column).cast(pa.string())
    mask = pc.equal(col, pa.scalar(str(value)))
    return table.filter(pc.fill_null(mask, False))


def load_text_target(index, source, *, neuron_type: str, target_filter=None, target_filter_col=DATASET,
                     fmt: str = "auto", batch_size: int = 32, progress: bool = False,
                     texts: list[str] | None = None, name: str | None = None,
                     embed: bool = False) -> Target:
    """Read raw target documents (files, directories, globs or a table in memory; or
    `texts`, strings given as such) and extract their NAG with the index's own
    backbone and settings (K, max_length); with `embed`, also their embeddings
    with the index's embedder."""
    if texts is not None:
        name = name or "texts"
        docs = texts_table(texts, name)
    else:
        name = name or source_name(source)
        docs = read_documents(source, fmt)
    docs = _filter_rows(docs, target_filter, target_filter_col, name)
    if docs.num_rows == 0:
        raise NagError(f"the target {name} is empty" + (" after filtering" if target_filter is not None else ""))
    texts = docs.column(TEXT).to_pylist()
    extractor = index.extractor()  # the index's backbone (and embedder), loaded once and checked
    feats = extractor.extract(texts, neuron_types=(neuron_type,), batch_size=batch_size, progress=progress)
    vectors = extractor.embed(texts) if embed else None
    return Target(name, feats[neuron_type], vectors)


def load_feature_target(index, source, *, neuron_type: str, target_filter=None,
                        target_filter_col=DATASET, embed: bool = False) -> Target:
    """Read precomputed target features (nagindex parquet or upstream JSONL)
    after checking they were made like the index's; with `embed`, also their
    embeddings where the file carries them (`nag extract --embedder`) with the
    index's width."""

    items = source if isinstance(source, (list, tuple)) else [source]
    paths = [p for item in items for p in expand_path(item, what="target")]
    name = source_name(source)
    table, spec = read_feature_files(paths)
    if spec is not None:
        try:
            index.spec.check_compatible(spec, what=f"the target features {name}")
        except NagError as e:
            if spec.top_k != index.spec.top_k:
                raise NagError(f"{e}; extract them with `nag extract --top-k {index.spec.top_k}`") from None
            raise
    col = feature_column(neuron_type)
    if col not in table.column_names:
        raise NagError(f"the target features {name} have no {col} column")
    table = _filter_rows(table, target_filter, target_filter_col, name)
    if table.num_rows == 0:
        raise NagError(f"the target {name} is empty" + (" after filtering" if target_filter is not None else ""))
    feats = features_from_table(table.select([col]), [neuron_type])[neuron_type]
    vectors = None
    if embed and EMBEDDING in table.column_names:
        column = table.column(EMBEDDING).combine_chunks()
        dim = getattr(index.manifest, "embedding_dim", None)
        if pa.types.is_fixed_size_list(column.type) and column.type.list_size == dim and column.null_count == 0:
            vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(column), dim)
    expected = index.spec.feature_length
    if feats.shape[1] != expected:
        raise NagError(
            f"the target features {name} have {feats.shape[1]} entries per document, this index "
            f"has L*K = {index.spec.num_layers}*{index.spec.top_k} = {expected}"
        )
    return Target(name, feats, vectors)


def as_target(index, item, i: int, neuron_type: str) -> Target:
    """Python API convenience: a `Target`, or an (n, L*K) array of features."""
    if isinstance(item, Target):
        return item
    arr = np.asarray(item)
    if arr.ndim != 2 or arr.shape[1] != index.spec.feature_length:
        raise NagError(f"target {i}: features of shape {arr.shape}, expected (n, {index.spec.feature_length})")
    return Target(f"target{i}", arr.astype(np.uint16, copy=False))

