"""The LanceDB table of an index: documents, payload and features, one row per global row.

Rows are only ever appended (replaced rows stay until compaction), so Lance
offset r at the committed version is global row r; `_row` stores it too.
A write that fails or dies leaves the table ahead of the manifest; `rollback`
(or the next writer's recovery) restores the committed version.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from nagindex.errors import NagError
from nagindex.store.manifest import Manifest
from nagindex.schemas import DOCID, EMBEDDING, ROW, TOKEN_NUM, FeatureSpec, feature_column, payload_fields


def table_names(db) -> list[str]:
    res = db.list_tables()
    return list(getattr(res, "tables", res))


def new_payload_fields(docs: pa.Schema, schema: pa.Schema, spec: FeatureSpec) -> list[pa.Field]:
    """Columns of a document batch that the index's table does not have yet (nullable)."""
    features = {feature_column(t) for t in spec.neuron_types}
    out = []
    for f in docs:
        if f.name in schema.names or f.name in features or f.name == ROW:
            continue
        typ = pa.string() if pa.types.is_null(f.type) else f.type  # an all-null column: store it as text
        out.append(pa.field(f.name, typ, nullable=True))
    return out


def conform(docs: pa.Table, schema: pa.Schema, spec: FeatureSpec) -> pa.Table:
    """Cast a document batch to the index's payload columns (missing ones become null)."""
    wanted = {f.name for f in payload_fields(schema, spec)} | {DOCID, TOKEN_NUM, "dataset"}
    if EMBEDDING in schema.names:
        if EMBEDDING not in docs.column_names:
            raise NagError("this index stores an embedding per document, and these documents come without one")
        wanted.add(EMBEDDING)
    extra = [c for c in docs.column_names if c not in wanted and c not in {feature_column(t) for t in spec.neuron_types}]
    if extra:
        have = ", ".join(f.name for f in payload_fields(schema, spec)) or "none"
        raise NagError(f"column(s) {', '.join(extra)} are not in this index (its payload columns: {have})")
    cols = []
    for f in schema:
        if f.name == ROW or f.name in {feature_column(t) for t in spec.neuron_types}:
            continue
        if f.name in docs.column_names:
            col = docs.column(f.name)
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except (pa.ArrowException, ValueError):
                    raise NagError(f"column {f.name} has type {col.type}; this index stores {f.type}") from None
        else:
            col = pa.nulls(docs.num_rows, f.type)
        cols.append(col)
    names = [f.name for f in schema if f.name != ROW and f.name not in {feature_column(t) for t in spec.neuron_types}]
    return pa.table(cols, names=names)


def lance_rows(docs: pa.Table, feats: dict[str, np.ndarray], first_row: int, schema: pa.Schema, spec: FeatureSpec) -> pa.Table:
    """The Lance rows of a conformed document batch: payload + feature columns + `_row`."""
    n = docs.num_rows
    columns = {name: docs.column(name) for name in docs.column_names}
    for t in spec.neuron_types:
        columns[feature_column(t)] = pa.FixedSizeListArray.from_arrays(pa.array(feats[t].reshape(-1)), spec.feature_length)
    columns[ROW] = pa.array(np.arange(first_row, first_row + n, dtype=np.int64))
    return pa.table([columns[f.name] for f in schema], schema=schema)


def rollback(db, manifest: Manifest, created_table: bool) -> bool:
    """Bring the Lance table back to the committed version after a failed write;
    False when that failed (the next writer's recovery does it)."""
    try:
        if created_table or manifest.lance_version is None:
            if manifest.lance_table in table_names(db):
                db.drop_table(manifest.lance_table)
            return True
        table = db.open_table(manifest.lance_table)
        if table.version != manifest.lance_version:
            table.restore(manifest.lance_version)
        return True
    except Exception:
        return False  # the next writer repairs it (`Index._recover`); readers follow the manifest anyway


def check_row_order(table, n: int) -> None:
    """Lance offsets must equal global rows; check a sample after rewriting the table."""
    if n == 0:
        return
    sample = np.unique(np.concatenate([[0, n - 1], np.linspace(0, n - 1, 64).astype(np.int64)]))
    got = table.take_offsets(sample.tolist()).select([ROW]).to_arrow().column(ROW).to_numpy()
    if table.count_rows() != n or not np.array_equal(got, sample):
        raise RuntimeError("the rewritten Lance table does not keep the row order; compaction aborted")
