"""A query's output: the selected rows with their values, made into the output table
batch by batch, so that writing a selection needs memory for one batch of it, not
for all of it: docids come from the store per batch, the payload is read from the
store once in row order and staged in a temporary file beside the output."""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nagindex.atomic import atomic_path, staging_prefix
from nagindex.heap import release_free_heap
from nagindex.store.mapped import MappedArrow
from nagindex.schemas import DATASET, DOCID, EMBEDDING, TEXT, TOKEN_NUM, feature_column

# output rows made (and written) at a time
OUTPUT_BATCH_ROWS = 65_536
# selected rows read from the store per call when the payload is staged, in row order
STAGE_ROWS = 65_536


@dataclass
class Selection:
    """Selected global rows in output order, with the values each output row carries."""

    rows: np.ndarray
    tokens: np.ndarray  # int64 token counts
    distance: np.ndarray  # float64 NAG distance, nan where the NAG did not score
    combined: np.ndarray | None = None  # the quality-combined score, where used
    target: np.ndarray | None = None  # the number of each row's target, where targets are named
    target_names: Sequence[str] = ()
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # more float64 columns, by name

    def __len__(self) -> int:
        return len(self.rows)


def payload_columns(index, with_text: bool) -> list[str]:
    """The store's columns an output row carries besides the ones the query computes."""
    hidden = {DOCID, TOKEN_NUM, "_row", EMBEDDING} | {feature_column(t) for t in index.spec.neuron_types}
    if not with_text:
        hidden.add(TEXT)
    return [c for c in index.columns() if c not in hidden]


def output_batches(index, selection: Selection, *, with_text: bool, batch_rows: int | None = None,
                   payload_of=None) -> Iterator[pa.Table]:
    """The output table of `selection` in batches of `batch_rows` rows (default
    `OUTPUT_BATCH_ROWS`), all of one schema (one empty batch for an empty selection).
    `payload_of(rows)` gives the payload columns of those rows (default: read from the store)."""
    batch_rows = batch_rows or OUTPUT_BATCH_ROWS
    columns = payload_columns(index, with_text)
    if payload_of is None:
        payload_of = lambda rows: index.take(rows, columns)  # noqa: E731
    names = pa.array(list(selection.target_names), pa.string())
    for lo in range(0, max(len(selection), 1), batch_rows):
        yield _batch(index, selection, slice(lo, lo + batch_rows), payload_of, names)


class StagedPayload:
    """The payload of the selected rows, read from the store once in row order into a
    temporary Arrow file, then taken by position for each batch of the output.

    Output batches come in rank order, so each one's rows lie all over the Lance
    table, and Lance reads the pages a call touches again on every call; read in
    row order, every page is read once, and the staged file is mapped and read
    with its pages handed back (`store.mapped.MappedArrow`)."""

    def __init__(self, index, rows: np.ndarray, columns: list[str], directory: Path):
        self.rows = np.unique(np.asarray(rows, dtype=np.int64))
        self._empty = index.take(self.rows[:0], columns)
        path = Path(directory) / "payload.arrow"
        with pa.OSFile(str(path), "wb") as sink:
            with pa.ipc.new_file(sink, self._empty.schema) as writer:
                for lo in range(0, len(self.rows), STAGE_ROWS):
                    writer.write_table(index.take(self.rows[lo : lo + STAGE_ROWS], columns))
                    release_free_heap()
        self._mapped = MappedArrow(path)

    def take(self, rows: np.ndarray) -> pa.Table:
        if not len(rows):
            return self._empty
        return self._mapped.take(np.searchsorted(self.rows, rows))


def _batch(index, sel: Selection, part: slice, payload_of, names: pa.Array) -> pa.Table:
    rows = sel.rows[part]
    payload = payload_of(rows)
    distance = np.asarray(sel.distance[part], dtype=np.float64)
    cols: dict[str, pa.Array] = {
        DOCID: index.docids_at(rows),
        TOKEN_NUM: pa.array(sel.tokens[part], type=pa.int64()),
        DATASET: payload.column(DATASET) if DATASET in payload.column_names else pa.nulls(len(rows), pa.string()),
        # null where the NAG did not score (--mode embedding)
        "nag_distance": pa.array(distance, type=pa.float64(), mask=np.isnan(distance)),
    }
    for name, values in sel.extra.items():
        cols[name] = pa.array(values[part], type=pa.float64())
    if sel.combined is not None:
        cols["combined_score"] = pa.array(sel.combined[part], type=pa.float64())
    if sel.target is not None:
        cols["target"] = names.take(pa.array(sel.target[part]))
    for c in payload.column_names:
        if c not in cols:
            cols[c] = payload.column(c)
    return pa.table(cols)


def output_table(index, selection: Selection, *, with_text: bool) -> pa.Table:
    """The whole output table (one read of the store)."""
    return next(output_batches(index, selection, with_text=with_text, batch_rows=max(len(selection), 1)))


def write_parquet(index, selection: Selection, path, *, with_text: bool) -> dict[str, int]:
    """Write the output table to the parquet file `path` batch by batch (readers see the
    old file or the whole new one); with the text and more than one batch, the
    payload is staged beside it meanwhile (`StagedPayload`). Returns the selected
    rows per dataset."""
    import pyarrow.parquet as pq

    counts: dict[str, int] = {}
    # the text is most of what Lance reads: with more than one batch, read each page of it once
    staging = with_text and len(selection) > OUTPUT_BATCH_ROWS
    with atomic_path(path) as tmp:
        stage_dir = tempfile.TemporaryDirectory(dir=tmp.parent, prefix=staging_prefix(Path(path))) if staging else None
        with stage_dir or contextlib.nullcontext() as stage:
            payload_of = None
            if stage is not None:
                payload_of = StagedPayload(index, selection.rows, payload_columns(index, with_text), Path(stage)).take
            writer = None
            try:
                for batch in output_batches(index, selection, with_text=with_text, payload_of=payload_of):
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, batch.schema)
                    writer.write_table(batch)
                    add_dataset_counts(counts, batch.column(DATASET))
                    del batch
                    release_free_heap()
            finally:
                if writer is not None:
                    writer.close()
    return counts


def add_dataset_counts(counts: dict[str, int], column) -> dict[str, int]:
    """Add the rows of each value of a `dataset` column to `counts` (nulls as "(none)")."""
    if len(column):
        for item in pc.value_counts(column.cast(pa.string())).to_pylist():
            key = "(none)" if item["values"] is None else str(item["values"])
            counts[key] = counts.get(key, 0) + int(item["counts"])
    return counts


def selection_summary(selection: Selection, dataset_counts: dict[str, int]) -> dict:
    """What a query selected: rows, tokens, the distance range and the rows per dataset."""
    dist = np.asarray(selection.distance, dtype=np.float64)
    scored = len(dist) and not np.isnan(dist).all()
    return {
        "selected_docs": len(selection),
        "selected_tokens": int(np.asarray(selection.tokens, dtype=np.int64).sum()),
        "distance_min": float(np.nanmin(dist)) if scored else None,
        "distance_max": float(np.nanmax(dist)) if scored else None,
        "datasets": dict(sorted(dataset_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
