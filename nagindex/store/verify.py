"""`nag index check`: read every byte of an index and compare it with its manifest.

Opening an index checks only what is cheap (the manifest, every name in it,
file sizes, the deleted-row file); this reads everything: the recorded hash
of every immutable file, token counts >= 0, every neuron id inside its layer
width, every inverted list sorted and inside its segment's rows with one
entry per feature, and the Lance table at the pinned version (row count,
`_row` equal to the offset, docids equal to the segments').
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nagindex.errors import NagError

from nagindex.schemas import DOCID, ROW
from nagindex.store import checksums
from nagindex.store import versions as index_versions
from nagindex.store.index import LANCE_ERRORS, first_line, token_num_problem
from nagindex.store.manifest import read_manifest
from nagindex.store.postings import ids_path, offsets_path
from nagindex.store.segment import neuron_counts

# Rows read at once (bounded memory whatever the index size).
CHECK_ROWS = 65_536


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    files_hashed: int = 0
    bytes_hashed: int = 0
    rows_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check_path(path, open_index) -> CheckReport:
    """Every problem of the index at `path`, also when it cannot be opened
    (`open_index(path)` opens it; the hashes are checked either way)."""
    manifest = read_manifest(Path(path))
    try:
        index = open_index(path)
    except NagError as e:
        if not hasattr(e, "problem"):
            raise
        report = CheckReport()
        _hash_problems(Path(path), manifest, report)
        report.problems.append(e.problem)
        return report
    return check_index(index)


def check_index(index) -> CheckReport:
    """Every problem of an opened snapshot's files (empty when it is intact)."""
    report = CheckReport()
    m = index.manifest
    _hash_problems(index.path, m, report)
    if m.segments and not m.checksums:
        report.problems.append("the manifest records no checksums (written by an older nagindex): compact the index to add them")
    for segment in index._segments:
        report.problems += _segment_problems(segment, index.spec, postings=m.postings)
    report.problems += _lance_problems(index)
    report.problems += _version_problems(index.path)
    report.rows_checked = index.num_rows
    return report


def _version_problems(path: Path) -> list[str]:
    """Tags that cannot be resolved (`versions.tag_problem`) or a damaged tags.json."""
    try:
        problem = index_versions.tag_problem(path)
    except NagError as e:
        problem = getattr(e, "problem", str(e))
    return [problem] if problem else []


def _hash_problems(path: Path, m, report: CheckReport) -> None:
    for name, expected in sorted(m.checksums.items()):
        problem = checksums.content_problem(path, name, expected)
        if problem:
            report.problems.append(problem)
        else:
            report.files_hashed += 1
            report.bytes_hashed += int(expected[0])


def _segment_problems(segment, spec, *, postings: bool) -> list[str]:
    problems = []
    rel = f"{segment.dir.parent.name}/{segment.dir.name}"
    problem = token_num_problem(np.asarray(segment.token_num))
    if problem:
        problems.append(f"{rel}/token_num.i64 {problem}")
    first, n = segment.ref.first_row, segment.ref.num_rows
    for t in spec.neuron_types:
        width = spec.width(t)
        matrix = segment.features[t]
        stored = segment.neuron_counts[t]
        counted = None if stored is None else np.zeros_like(stored)
        for start in range(0, n, CHECK_ROWS):
            block = np.asarray(matrix[start : start + CHECK_ROWS])
            high = int(block.max(initial=0))
            if high >= width:
                problems.append(f"{rel}/features.{t}.u16 holds neuron id {high}, outside the layer width 0..{width - 1}")
                counted = None
                break
            if counted is not None:
                counted += neuron_counts(block, spec.num_layers, spec.top_k, width)
        if counted is not None and not np.array_equal(counted, stored):
            problems.append(f"{rel}/neuron_counts.{t}.i64 does not match the segment's features")
        if not postings:
            continue
        offsets = np.load(offsets_path(segment.dir, t), allow_pickle=False)
        ids = np.memmap(ids_path(segment.dir, t), dtype=np.int64, mode="r")
        if len(offsets) != spec.num_layers * width + 1 or int(offsets[-1]) != n * spec.feature_length or np.any(np.diff(offsets) < 0):
            problems.append(f"{rel}/postings.{t}.offsets.npy does not describe {n} rows of {spec.feature_length} features")
            continue
        for start in range(0, len(ids), CHECK_ROWS * spec.feature_length):
            chunk = np.asarray(ids[start : start + CHECK_ROWS * spec.feature_length])
            if len(chunk) and (int(chunk.min()) < first or int(chunk.max()) >= first + n):
                problems.append(f"{rel}/postings.{t}.ids names rows outside {first}..{first + n - 1}")
                break
    return problems


def _lance_problems(index) -> list[str]:
    if index.manifest.lance_version is None:
        return []
    where = f"{index.manifest.lance_table}.lance (version {index.manifest.lance_version})"
    docids = index.docids()
    try:
        table = index._lance()
        for start in range(0, index.num_rows, CHECK_ROWS):
            offsets = np.arange(start, min(start + CHECK_ROWS, index.num_rows), dtype=np.int64)
            got = table.take(offsets, [ROW, DOCID])
            if got.num_rows != len(offsets):
                return [f"{where} returned {got.num_rows} of rows {start}..{offsets[-1]}"]
            if not np.array_equal(got.column(ROW).to_numpy(), offsets):
                return [f"{where} does not keep global rows {start}..{offsets[-1]} at their offsets"]
            if not got.column(DOCID).combine_chunks().equals(docids.slice(start, len(offsets))):
                return [f"{where} and the segments disagree on the docids of rows {start}..{offsets[-1]}"]
        count = table.count_rows() if hasattr(table, "count_rows") else None
    except LANCE_ERRORS as e:
        return [f"{where} cannot be read: {first_line(e)}"]
    if count is not None and count != index.num_rows:
        return [f"{where} has {count} rows, the manifest {index.num_rows}"]
    return []
