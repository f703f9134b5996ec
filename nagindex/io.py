"""Reading documents and reading/writing feature files.

Documents of every supported layout become one Arrow table:
``docid`` (string, unique), ``doc`` (string), ``token_num`` (int64, null when
the input has none), ``dataset`` (string, nullable), then every other input
column, carried through unchanged.

| fmt     | input                                                              |
|---------|--------------------------------------------------------------------|
| `web`   | parquet with `docid`, `doc`, optional `token_num`, `dataset`       |
| `final` | parquet with a `meta` struct holding `docid`, and `content_split`  |
| `jsonl` | one JSON object a line (`.gz` ok): `docid` or `id`, `doc` or `text`|
| `txt`   | one document a line; docid ``<file stem>:<line number>``; blank lines skipped |
| `auto`  | by extension, and for parquet by its columns                       |

Documents whose text is missing, not a string or blank are skipped with one
counted warning (or refused with ``strict=True``).

Feature files: nagindex parquet (``docid`` + ``<type>_feature`` fixed-size
uint16 lists, the FeatureSpec in the schema metadata) and the upstream JSONL
layout ``{"docid": ..., "<type>_feature": {"layer_topk_value_index": [...]}}``.
Every writer writes a temporary sibling and renames it into place.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nagindex.atomic import atomic_path
from nagindex.errors import NagError
from nagindex.schemas import (
    DATASET,
    DOCID,
    NEURON_TYPES,
    TEXT,
    TOKEN_NUM,
    FeatureSpec,
    feature_column,
    features_schema,
)

FORMATS = ("auto", "web", "final", "jsonl", "txt")
SKIPPED_METADATA_KEY = b"nagindex.skipped_docs"


class SkippedDocumentsWarning(UserWarning):
    """Some documents had no usable text and were left out."""


# --------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------


def _detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")):
        return "jsonl"
    if name.endswith((".txt", ".txt.gz")):
        return "txt"
    if name.endswith((".parquet", ".pq")):
        names = _parquet_schema(path).names
        if "meta" in names and "content_split" in names and DOCID not in names:
            return "final"
        return "web"
    raise NagError(f"cannot tell the format of {path} from its name; pass --format (web, final, jsonl, txt)")


def _parquet_schema(path: Path) -> pa.Schema:
    """The schema of a parquet file, or one line saying why it cannot be read (empty, not parquet)."""
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise NagError(f"cannot read {path} as parquet: {str(exc).splitlines()[0]}") from None


def _parquet_batches(path: Path, batch_size: int) -> Iterator[pa.Table]:
    """Row batches of a parquet file; a damaged file is one line, wherever it fails."""
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield pa.Table.from_batches([batch])
    except (pa.ArrowException, OSError) as exc:
        raise NagError(f"cannot read {path} as parquet: {str(exc).splitlines()[0]}") from None


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _array(values: list) -> pa.Array:
    """Arrow array of arbitrary JSON values; mixed types fall back to JSON text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in values], pa.string())


# Documents and feature records are flat; JSON nested deeper than this is refused, and
# checked before any parser recurses into it (pyarrow's JSON reader crashes the process
# on a line nested 20,000 deep, Python's raises RecursionError).
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_nesting_depth(text: str) -> int:
    """The deepest nesting of [] and {} in JSON text (brackets inside strings skipped)."""
    depth = deepest = 0
    for ch in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if ch in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


_BRACKET_CODES = np.zeros(256, dtype=np.uint8)
_BRACKET_CODES[[ord("["), ord("{")]] = 1
_BRACKET_CODES[[ord("]"), ord("}")]] = 2
_BRACKET_CODES[ord("\n")] = 3


def _bracket_depth_bound(path: Path, chunk_bytes: int = 16 << 20) -> int:
    """An upper bound of the nesting depth of every line of a JSON Lines file (brackets
    inside strings counted too, so a text full of "[" only overestimates), read in chunks
    with numpy: only the brackets and newlines are looked at, cheap next to parsing."""
    deepest = carry = 0
    with pa.input_stream(str(path), compression="detect") as stream:
        while chunk := stream.read(chunk_bytes):
            codes = _BRACKET_CODES[np.frombuffer(chunk, dtype=np.uint8)]
            codes = codes[codes != 0]
            if not len(codes):
                continue
            level = np.cumsum(np.where(codes == 1, 1, np.where(codes == 2, -1, 0)), dtype=np.int64) + carry
            newline = np.flatnonzero(codes == 3)
            if len(newline):  # every line starts again from 0
                last = np.full(len(codes), -1, dtype=np.int64)
                last[newline] = newline
                last = np.maximum.accumulate(last)
                level -= np.where(last >= 0, level[np.maximum(last, 0)], 0)
            deepest = max(deepest, int(level.max()))
            carry = int(level[-1])
    return deepest


def _jsonl_records(path: Path):
    """(line number, object) of every non-blank line; a clear error for anything else."""
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if line.count("[") + line.count("{") > MAX_JSON_DEPTH and json_nesting_depth(line) > MAX_JSON_DEPTH:
                raise NagError(f"{path}:{lineno}: nested more than {MAX_JSON_DEPTH} deep")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise NagError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise NagError(f"{path}:{lineno}: nested more than {MAX_JSON_DEPTH} deep") from None
            if not isinstance(obj, dict):
                raise NagError(f"{path}:{lineno}: expected a JSON object per line")
            yield lineno, obj


def _read_jsonl(path: Path) -> pa.Table:
    """JSONL documents through pyarrow.json (fast, typed); records it cannot type
    (mixed value types, a bad line) or that may nest too deep for it go through the
    line reader, which names the line."""
    if _bracket_depth_bound(path) > MAX_JSON_DEPTH:
        return _read_jsonl_lines(path)
    table = _read_jsonl_arrow(path)
    return table if table is not None else _read_jsonl_lines(path)


def _read_jsonl_arrow(path: Path) -> pa.Table | None:
    import pyarrow.json as pj

    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            table = pj.read_json(stream, read_options=pj.ReadOptions(block_size=16 << 20))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    try:
        table.validate(full=True)  # the reader lets bytes that are not UTF-8 into its strings
    except pa.ArrowInvalid:
        raise NagError(f"cannot read {path}: it is not UTF-8 text (JSON Lines must be UTF-8)") from None
    names = list(table.column_names)
    for alias, name in (("id", DOCID), ("text", TEXT)):
        if name not in names and alias in names:
            names[names.index(alias)] = name
    if DOCID not in names:
        raise NagError(f"{path}: no 'docid' (or 'id') key in the JSON records")
    table = table.rename_columns(names)
    if TEXT in names and not pa.types.is_string(table.schema.field(TEXT).type):
        return None  # non-string texts: the line reader turns each into null, to be skipped
    return table


def _read_jsonl_lines(path: Path) -> pa.Table:
    rows = [obj for _, obj in _jsonl_records(path)]
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    id_key = DOCID if DOCID in keys else ("id" if "id" in keys else None)
    text_key = TEXT if TEXT in keys else ("text" if "text" in keys else None)
    if id_key is None:
        raise NagError(f"{path}: no 'docid' (or 'id') key in the JSON records")
    cols: dict[str, pa.Array] = {}
    cols[DOCID] = pa.array([None if r.get(id_key) is None else str(r[id_key]) for r in rows], pa.string())
    if text_key is not None:
        # A non-string text becomes null, so it is skipped (or refused) like an empty one.
        cols[TEXT] = pa.array([v if isinstance(v := r.get(text_key), str) else None for r in rows], pa.string())
    for k in keys:
        if k in (id_key, text_key) or k in cols:
            continue
        cols[k] = _array([r.get(k) for r in rows])
    return pa.table(cols)


def _read_txt(path: Path) -> pa.Table:
    ids, docs = [], []
    stem = path.name.split(".")[0]
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            text = line.rstrip("\r\n")
            if text.strip():
                ids.append(f"{stem}:{lineno}")
                docs.append(text)
    return pa.table({DOCID: pa.array(ids, pa.string()), TEXT: pa.array(docs, pa.string())})


def _read_final(path: Path) -> pa.Table:
    table = pq.read_table(path)
    if "meta" not in table.column_names or not pa.types.is_struct(table.schema.field("meta").type):
        raise NagError(f"{path}: 'final' format needs a 'meta' struct column with 'docid'")
    meta = table.column("meta").combine_chunks()
    meta_names = [meta.type.field(i).name for i in range(meta.type.num_fields)]
    if DOCID not in meta_names:
        raise NagError(f"{path}: the 'meta' column has no 'docid' field")
    cols: dict[str, Any] = {DOCID: meta.field(DOCID)}
    if "content_split" in table.column_names:
        cols[TEXT] = table.column("content_split")
    for name in (TOKEN_NUM, DATASET):
        if name in table.column_names:
            cols[name] = table.column(name)
        elif name in meta_names:
            cols[name] = meta.field(name)
    for name in table.column_names:
        if name not in ("meta", "content_split") and name not in cols:
            cols[name] = table.column(name)
    # every other meta field is payload too: under its own name, or meta_<name> where that is taken
    for name in meta_names:
        if name not in (DOCID, TOKEN_NUM, DATASET) and f"meta_{name}" not in cols:
            cols[name if name not in cols else f"meta_{name}"] = meta.field(name)
    return pa.table(cols)


def _read_one(path: Path, fmt: str) -> pa.Table:
    if not path.exists():
        raise NagError(f"input file not found: {path}")
    if path.is_dir():
        raise NagError(f"input is a directory, not a file: {path}")
    kind = _detect_format(path) if fmt == "auto" else fmt
    try:
        if kind == "web":
            return pq.read_table(path)
        if kind == "final":
            return _read_final(path)
        if kind == "jsonl":
            return _read_jsonl(path)
        if kind == "txt":
            return _read_txt(path)
    except NagError:
        raise
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise NagError(f"cannot read {path} as {kind}: {str(exc).splitlines()[0]}") from None
    raise NagError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def _is_usable_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _normalise(table: pa.Table, source: str, *, require_text: bool, strict: bool) -> tuple[pa.Table, int]:
    """Put a raw table into the document layout; returns (table, number of rows skipped)."""
    if DOCID not in table.column_names:
        raise NagError(f"{source}: no 'docid' column (columns: {', '.join(table.column_names) or 'none'})")
    if require_text and TEXT not in table.column_names:
        raise NagError(f"{source}: no 'doc' text column (columns: {', '.join(table.column_names)})")
    table = set_column(table, DOCID, _docid_column(table.column(DOCID), source))
    skipped = 0
    if TEXT in table.column_names:
        text = table.column(TEXT)
        if pa.types.is_string(text.type) or pa.types.is_large_string(text.type):
            ok = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), False)
            keep = np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)
        else:
            keep = np.array([_is_usable_text(v) for v in text.to_pylist()], dtype=bool)
        skipped = int((~keep).sum())
        if skipped:
            first = table.column(DOCID).filter(pa.array(~keep))[0].as_py()
            if strict:
                raise NagError(f"{source}: {skipped} documents have empty or non-string text (first: docid {first!r})")
            warnings.warn(
                f"{source}: skipped {skipped} documents with empty or non-string text "
                f"(first: docid {first!r}); use --strict to fail instead",
                SkippedDocumentsWarning,
                stacklevel=3,
            )
            table = table.filter(pa.array(keep))
        text = table.column(TEXT)
        table = set_column(table, TEXT, text if pa.types.is_string(text.type) else text.cast(pa.string()))
    else:
        table = set_column(table, TEXT, pa.nulls(table.num_rows, pa.string()))
    table = normalize_documents(table, source)
    # the layout's column order: docid, doc, token_num, dataset, then the payload
    front = [DOCID, TEXT, TOKEN_NUM, DATASET]
    return table.select(front + [c for c in table.column_names if c not in front]), skipped


def document_layout(table: pa.Table, source: str, *, require_text: bool = True, strict: bool = False) -> pa.Table:
    """A raw table in memory put into the document layout (unusable texts skipped or refused)."""
    return _normalise(table, source, require_text=require_text, strict=strict)[0]


def normalize_documents(table: pa.Table, source: str = "documents") -> pa.Table:
    """docid as non-null string, token_num as nullable int64 >= 0, dataset as string.

    Other columns are kept as they are (the payload).
    """
    names = table.column_names
    repeated = next((n for n in names if names.count(n) > 1), None)
    if repeated is not None:
        raise NagError(f"{source}: column {repeated!r} appears {names.count(repeated)} times; give every column its own name")
    if DOCID not in table.column_names:
        raise NagError(f"{source}: no 'docid' column (columns: {', '.join(table.column_names) or 'none'})")
    table = set_column(table, DOCID, _docid_column(table.column(DOCID), source))
    if TOKEN_NUM in table.column_names:
        table = set_column(table, TOKEN_NUM, token_num_column(table.column(TOKEN_NUM), source))
    else:
        table = set_column(table, TOKEN_NUM, pa.nulls(table.num_rows, pa.int64()))
    if DATASET in table.column_names:
        ds = table.column(DATASET)
        if not pa.types.is_string(ds.type):
            try:
                ds = ds.cast(pa.string())
            except pa.ArrowException:
                raise NagError(f"{source}: 'dataset' must be text, found {ds.type}") from None
        table = set_column(table, DATASET, ds)
    else:
        table = set_column(table, DATASET, pa.nulls(table.num_rows, pa.string()))
    return table


def set_column(table: pa.Table, name: str, column) -> pa.Table:
    """`table` with column `name` replaced, or appended when it has none."""
    i = table.schema.get_field_index(name)
    if i < 0:
        return table.append_column(name, column)
    return table.set_column(i, name, column)


def _docid_column(docid, source: str):
    if not pa.types.is_string(docid.type):
        try:
            docid = docid.cast(pa.string())
        except pa.ArrowException:
            raise NagError(f"{source}: 'docid' must be text, found {docid.type}") from None
    if docid.null_count:
        raise NagError(f"{source}: {docid.null_count} documents have no docid")
    return docid


def token_num_column(col, source: str):
    if pa.types.is_integer(col.type):
        try:
            col = col.cast(pa.int64())
        except pa.ArrowInvalid:  # an unsigned count past int64 (2**64-1)
            raise NagError(f"{source}: 'token_num' holds {pc.max(col).as_py()}, more than any token count "
                           "(at most 2**63-1); check the column") from None
    elif pa.types.is_floating(col.type):
        values = col.to_numpy(zero_copy_only=False) if isinstance(col, pa.Array) else col.combine_chunks().to_numpy(zero_copy_only=False)
        finite = values[~np.isnan(values)]
        if finite.size and not np.all(np.floor(finite) == finite):
            bad = finite[np.floor(finite) != finite][0]
            raise NagError(f"{source}: 'token_num' must be an integer column, found {bad} (not a whole number)")
        col = pa.array(values, pa.float64(), from_pandas=True).cast(pa.int64())
    elif pa.types.is_null(col.type):
        col = col.cast(pa.int64())
    else:
        raise NagError(f"{source}: 'token_num' must be an integer column, found {col.type}")
    if col.null_count < len(col):
        low = pc.min(col).as_py()
        if low is not None and low < 0:
            raise NagError(f"{source}: token_num must be >= 0, found {low}")
    return col


def check_unique_docids(docids: pa.Array | pa.ChunkedArray, source: str = "input") -> None:
    """NagError naming a repeated docid, if any."""
    counts = pc.value_counts(docids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        example = repeated[0]["values"].as_py()
        raise NagError(f"{source}: {len(repeated)} docids occur more than once (e.g. {example!r})")


def docid_hashes(docids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes of every docid (uint64 each), computed on the
    Arrow buffers without a Python object per docid.

    Each is a random linear form of the UTF-8 bytes and the length, mod 2**64
    (fixed seeds): two distinct docids share both with odds near 2**-112, so
    equal pairs stand for equal docids (a 100M-document pool has ~1e-18 odds
    of a single false match)."""
    arr = pc.cast(docids, pa.large_string())
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = arr.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    start, lengths = offsets[:-1] - offsets[0], np.diff(offsets)
    raw = data[offsets[0] : offsets[-1]].astype(np.uint64)
    pos = np.arange(len(raw), dtype=np.int64) - np.repeat(start, lengths)
    out = []
    for seed in (0x5EED1, 0x5EED2):
        mult = _hash_multipliers(seed, int(lengths.max(initial=0)) + 1)
        h = mult[0] * lengths.astype(np.uint64)  # the length, so "" and "\0" differ
        if len(raw):
            terms = raw * mult[1:][pos]
            nonempty = lengths > 0
            h[nonempty] += np.add.reduceat(terms, start[nonempty])
        out.append(h)
    return out[0], out[1]


_MULTIPLIERS: dict[int, np.ndarray] = {}


def _hash_multipliers(seed: int, count: int) -> np.ndarray:
    have = _MULTIPLIERS.get(seed)
    if have is None or len(have) < count:
        size = max(count, 256, 2 * (len(have) if have is not None else 0))
        rng = np.random.default_rng(seed)  # the same stream every time: a prefix stays the same
        have = rng.integers(0, 2**64, size=size, dtype=np.uint64) | np.uint64(1)
        _MULTIPLIERS[seed] = have
    return have[:count]


class SeenDocids:
    """Docids seen so far across a stream of batches, kept as pairs of 64-bit
    hashes (`docid_hashes`) in sorted runs: 16 bytes a document and no Python
    object per docid, so that reading a pool stays flat in memory where a set
    of strings cost ~100 bytes a document. Runs merge when one grows as large
    as the one before it, so the work stays O(n log n)."""

    def __init__(self):
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, docids: pa.Array | pa.ChunkedArray) -> int | None:
        """Record a batch (its docids unique among themselves); the position in it of
        a docid seen in an earlier batch, else None (the batch is then recorded)."""
        h1, h2 = docid_hashes(docids)
        for r1, r2 in self._runs:
            lo = np.searchsorted(r1, h1, side="left")
            hi = np.searchsorted(r1, h1, side="right")
            for i in np.flatnonzero(hi > lo):  # equal first hashes: rare, unless a docid repeats
                if np.any(r2[lo[i] : hi[i]] == h2[i]):
                    return int(i)
        order = np.argsort(h1, kind="stable")
        self._runs.append((h1[order], h2[order]))
        del order
        while len(self._runs) > 1 and len(self._runs[-2][0]) <= len(self._runs[-1][0]):
            b = self._runs.pop()
            a = self._runs.pop()
            self._runs.append(_merge_runs(a, b))
        return None


def _merge_runs(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted runs of hash pairs as one, by the slots the second's entries take
    (no argsort of the whole: the last merge of a large pool is its memory peak)."""
    (a1, a2), (b1, b2) = a, b
    slots = np.searchsorted(a1, b1, side="right")
    slots += np.arange(len(b1), dtype=slots.dtype)
    from_a = np.ones(len(a1) + len(b1), dtype=bool)
    from_a[slots] = False
    out = []
    for x, y in ((a1, b1), (a2, b2)):
        merged = np.empty(len(from_a), dtype=x.dtype)
        merged[slots] = y
        merged[from_a] = x
        out.append(merged)
    return out[0], out[1]


def read_documents(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    fmt: str = "auto",
    *,
    require_text: bool = True,
    strict: bool = False,
) -> pa.Table:
    """Read document files (see the module docstring) into one table with unique docids.

    The number of skipped documents is kept in the schema metadata
    (`skipped_count(table)`).
    """
    if fmt not in FORMATS:
        raise NagError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise NagError("no input files given")
    tables, skipped = [], 0
    for p in paths:
        table, n_skipped = _normalise(_read_one(p, fmt), str(p), require_text=require_text, strict=strict)
        tables.append(table)
        skipped += n_skipped
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    check_unique_docids(table.column(DOCID), ", ".join(map(str, paths)) if len(paths) <= 3 else f"{len(paths)} input files")
    md = dict(table.schema.metadata or {})
    md[SKIPPED_METADATA_KEY] = str(skipped).encode()
    return table.replace_schema_metadata(md)


def skipped_count(table: pa.Table) -> int:
    """How many documents `read_documents` left out for unusable text."""
    md = table.schema.metadata or {}
    return int(md.get(SKIPPED_METADATA_KEY, b"0"))


def iter_document_batches(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    fmt: str = "auto",
    batch_size: int = 10_000,
    *,
    require_text: bool = True,
    strict: bool = False,
    seen: SeenDocids | None = None,
) -> Iterator[pa.Table]:
    """Documents in tables of at most `batch_size` rows, same layout as `read_documents`.

    Parquet is streamed row group by row group, so a pool larger than memory
    can be indexed; docids are checked for uniqueness across all batches
    (NagError at the first repeat); `seen` carries that check on from
    earlier inputs.
    """
    if fmt not in FORMATS:
        raise NagError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    seen = SeenDocids() if seen is None else seen
    for p in map(Path, paths):
        if not p.exists():
            raise NagError(f"input file not found: {p}")
        kind = _detect_format(p) if fmt == "auto" else fmt
        if kind == "web":
            raw_batches = _parquet_batches(p, batch_size)
        else:
            whole = _read_one(p, kind)
            raw_batches = (whole.slice(i, batch_size) for i in range(0, whole.num_rows, batch_size))
        for raw in raw_batches:
            table, _ = _normalise(raw, str(p), require_text=require_text, strict=strict)
            check_unique_docids(table.column(DOCID), str(p))
            dup = seen.add(table.column(DOCID))
            if dup is not None:
                raise NagError(f"{p}: docid {table.column(DOCID)[dup].as_py()!r} occurs more than once across the inputs")
            if table.num_rows:
                yield table


# --------------------------------------------------------------------------
# Atomic writing
# --------------------------------------------------------------------------


def write_table_atomic(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a parquet file so that readers see either the old file or the complete new one."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


# --------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------


def embedding_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """(n, dim) vectors as the float32 fixed-size-list column an index and a feature file store."""
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1), pa.float32()), arr.shape[1])


def _feature_array(values: np.ndarray, length: int) -> pa.FixedSizeListArray:
    arr = np.ascontiguousarray(values, dtype=np.uint16)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1), pa.uint16()), length)


def features_table(
    docids: Sequence[str],
    features: dict[str, np.ndarray],
    spec: FeatureSpec,
    columns: dict[str, Any] | None = None,
    metadata: dict[bytes, bytes] | None = None,
) -> pa.Table:
    """The `nag extract` layout: docid + one column per neuron type (+ `columns`), spec in metadata."""
    n = len(docids)
    schema = features_schema(spec)
    arrays = [pa.array(list(docids), pa.string())]
    for t in spec.neuron_types:
        if t not in features:
            raise NagError(f"features for {t} are missing")
        f = np.asarray(features[t])
        if f.shape != (n, spec.feature_length):
            raise NagError(f"{t} features have shape {f.shape}, expected ({n}, {spec.feature_length})")
        arrays.append(_feature_array(f, spec.feature_length))
    table = pa.Table.from_arrays(arrays, schema=schema)
    for name, col in (columns or {}).items():
        table = table.append_column(name, col if isinstance(col, (pa.Array, pa.ChunkedArray)) else pa.array(col))
    md = dict(schema.metadata or {})
    md.update(metadata or {})
    return table.replace_schema_metadata(md)


def write_features_parquet(
    path: str | os.PathLike,
    docids: Sequence[str],
    features: dict[str, np.ndarray],
    spec: FeatureSpec,
    *,
    columns: dict[str, Any] | None = None,
    metadata: dict[bytes, bytes] | None = None,
) -> None:
    """Write features as nagindex parquet, atomically."""
    write_table_atomic(features_table(docids, features, spec, columns, metadata), path)


def features_from_table(table: pa.Table, spec_or_types: FeatureSpec | Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """{neuron type: uint16 (n, L*K)} from the feature columns of a table."""
    if isinstance(spec_or_types, FeatureSpec):
        types = spec_or_types.neuron_types
    elif spec_or_types is None:
        types = tuple(t for t in NEURON_TYPES if feature_column(t) in table.column_names)
    else:
        types = tuple(spec_or_types)
    out = {}
    for t in types:
        col = feature_column(t)
        if col not in table.column_names:
            raise NagError(f"no {col} column in these features")
        arr = table.column(col).combine_chunks()
        width = arr.type.list_size if pa.types.is_fixed_size_list(arr.type) else None
        flat = arr.flatten().to_numpy(zero_copy_only=False)
        if width is None:
            width = len(flat) // max(len(arr), 1)
        out[t] = flat.astype(np.uint16, copy=False).reshape(len(arr), width)
    return out


def _first_bad_neuron_index(values: list) -> tuple | None:
    """(value,) of the first entry that is not an integer in 0..65535, or None.
    JSON's 3.5, true, null or 10**30 would otherwise be cast (or fail) silently."""
    for v in values:
        if type(v) is not int or not 0 <= v <= 65535:  # bool is an int subclass: refused too
            return (v,)
    return None


def _read_upstream_jsonl(path: Path) -> pa.Table:
    docids: list[str] = []
    cols: dict[str, list] = {}
    for lineno, obj in _jsonl_records(path):
        if DOCID not in obj:
            raise NagError(f"{path}:{lineno}: no 'docid'")
        if not isinstance(obj[DOCID], (str, int)) or isinstance(obj[DOCID], bool):
            # str(None) would make the document "None"
            raise NagError(f"{path}:{lineno}: docid must be text, found {json.dumps(obj[DOCID])}")
        docids.append(str(obj[DOCID]))
        for key, value in obj.items():
            if not key.endswith("_feature"):
                continue
            values = value.get("layer_topk_value_index") if isinstance(value, dict) else value
            if not isinstance(values, list):
                raise NagError(f"{path}:{lineno}: {key} has no layer_topk_value_index list")
            bad = _first_bad_neuron_index(values)
            if bad is not None:
                raise NagError(
                    f"{path}:{lineno}: {key} holds {json.dumps(bad[0])}; neuron indices must be integers in 0..65535"
                )
            cols.setdefault(key, []).append(values)
    if not cols:
        raise NagError(f"{path}: no '<type>_feature' fields found")
    arrays = {DOCID: pa.array(docids, pa.string())}
    for key, rows in cols.items():
        if len(rows) != len(docids):
            raise NagError(f"{path}: {key} is missing in some records")
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            raise NagError(f"{path}: {key} vectors have different lengths {sorted(lengths)}")
        mat = np.asarray(rows, dtype=np.int64)
        if mat.size and (mat.min() < 0 or mat.max() > 65535):
            raise NagError(f"{path}: {key} has neuron indices outside 0..65535")
        arrays[key] = _feature_array(mat, lengths.pop())
    return pa.table(arrays)


def read_feature_files(paths: Sequence[str | os.PathLike] | str | os.PathLike) -> tuple[pa.Table, FeatureSpec | None]:
    """Read nagindex feature parquet or upstream feature JSONL files.

    Returns the concatenated table and the FeatureSpec from the parquet
    metadata (None for upstream JSONL, which does not record how it was made).
    Mixing files made with different specs is refused.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    tables, spec = [], None
    for p in map(Path, paths):
        if not p.exists():
            raise NagError(f"feature file not found: {p}")
        name = p.name.lower()
        if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
            table, file_spec = _read_upstream_jsonl(p), None
        else:
            try:
                # one file: ParquetFile, not read_table, which imports pyarrow.dataset (and
                # with it pandas, ~0.5 s) that a query reading a target never needs
                table = pq.ParquetFile(p).read()
            except (pa.ArrowException, OSError) as exc:
                raise NagError(f"cannot read feature file {p}: {str(exc).splitlines()[0]}") from None
            file_spec = FeatureSpec.from_metadata(table.schema.metadata, str(p))
        if DOCID not in table.column_names:
            raise NagError(f"{p}: no 'docid' column")
        if file_spec is not None:
            if spec is None:
                spec = file_spec
            else:
                spec.check_compatible(file_spec, what=f"features in {p}")
                if tuple(file_spec.neuron_types) != tuple(spec.neuron_types):
                    raise NagError(f"{p} has neuron types {file_spec.neuron_types}, others {spec.neuron_types}")
        tables.append(table.replace_schema_metadata(None))
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    check_unique_docids(table.column(DOCID), "feature files")
    if spec is not None:
        table = table.replace_schema_metadata(spec.to_metadata())
    return table, spec


def write_upstream_jsonl(
    path: str | os.PathLike,
    docids: Sequence[str],
    features: dict[str, np.ndarray],
    spec: FeatureSpec | None = None,
) -> None:
    """Write the upstream JSONL layout, atomically (`.gz` names are gzip-compressed)."""
    path = Path(path)
    types = spec.neuron_types if spec is not None else tuple(features)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with atomic_path(path) as tmp, opener(tmp, "wt", encoding="utf-8") as f:
        lists = {t: np.asarray(features[t]).tolist() for t in types}
        for i, docid in enumerate(docids):
            rec = {DOCID: docid}
            for t in types:
                rec[feature_column(t)] = {"layer_topk_value_index": lists[t][i]}
            f.write(json.dumps(rec) + "\n")
