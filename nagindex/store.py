"""`Index`: a pool of documents with their NAG features, ready to be queried.

An index is a directory:

    manifest.json            the committed state (see `manifest`): spec, Lance
                             table + version, segments, replaced rows
    docs*.lance/             LanceDB table: docid, token_num, dataset, payload
                             (text included), one uint16 feature column per
                             neuron type, `_row` (global row number)
    segments/seg-NNNNNN/     forward index + inverted lists of a row range
    deleted-NNNNNN.npy       global rows replaced by newer versions (--replace)
    .lock                    held by the one process that writes

Global row r is the r-th document ever added (Lance offset r in the table the
manifest names); rows replaced by `append(replace=True)` stay until `compact`
and are masked by `live_mask()`.

Writes (append, compact) take the lock, first repair what a crashed writer may
have left (uncommitted segments, a Lance table ahead of the manifest), write
new files, and commit by replacing manifest.json. A reader (`Index.open`)
pins one manifest: its segments are immutable and its Lance version is
checked out, so it sees one consistent state while an append commits.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import doctable, ingest
from .errors import NagError
from .manifest import Manifest, SegmentRef, atomic_write_bytes, read_manifest, write_manifest, MANIFEST_NAME
from .schemas import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_NEURON_TYPE,
    DEFAULT_TOP_K,
    DOCID,
    ROW,
    TOKEN_NUM,
    FeatureSpec,
    feature_column,
    index_schema,
)
from .segment import Segment, SegmentWriter, gather_rows

# Lance logs "No existing dataset ... will be created" as a warning on every new table.
os.environ.setdefault("LANCEDB_LOG", "error")

SEGMENTS_DIR = "segments"
LOCK_NAME = ".lock"
DELETED_PREFIX = "deleted-"

# Rows handled at once while streaming (memory ~ BATCH_ROWS * L*K * 2 bytes per type).
BATCH_ROWS = 65_536
# Largest segment: bounds the memory of building its inverted lists.
SEGMENT_ROWS = 1 << 20

# Tests set this to a step name to make a writer kill itself there (SIGKILL).
CRASH_ENV = "NAGINDEX_CRASH_AT"


def _crash_point(step: str) -> None:
    """Die like `kill -9` at a named step, when a test asks for it."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class AppendResult:
    added: int
    skipped: int
    replaced: int


def _progress(total: int | None, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="doc", unit_scale=True, dynamic_ncols=True)


def _dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _os_error_message(exc: OSError, path: Path, action: str) -> str:
    if exc.errno == errno.ENOSPC:
        return f"disk full while {action} {path}; the index is unchanged ({exc.strerror})"
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"no permission to write to {path} while {action} it; the index is unchanged"
    return f"I/O error while {action} {path}: {exc}; the index is unchanged"


def _backbone_source(spec: FeatureSpec):
    """What `load_backbone` needs to reload the backbone named in a spec."""
    from . import backbones

    return None if spec.backbone == backbones.EMBEDDED_NAME else spec.backbone


class Index:
    """A NAG index directory, opened as one committed snapshot."""

    segment_rows: int = SEGMENT_ROWS
    batch_rows: int = BATCH_ROWS

    def __init__(self, path: str | os.PathLike, manifest: Manifest):
        self.path = Path(path)
        self._backbone = None
        self._load(manifest)

    # -- opening ---------------------------------------------------------------
    def _load(self, manifest: Manifest) -> None:
        segments_dir = self.path / SEGMENTS_DIR
        segments = [Segment(segments_dir, ref, manifest.spec) for ref in manifest.segments]
        deleted = np.zeros(0, dtype=np.int64)
        if manifest.deleted_file:
            deleted = np.load(self.path / manifest.deleted_file)
            if len(deleted) != manifest.num_deleted:
                raise OSError(f"{manifest.deleted_file} lists {len(deleted)} rows, the manifest {manifest.num_deleted}")
        self.manifest = manifest
        self._segments = segments
        self._deleted = deleted
        self._table = None
        self._docids = None
        self._token_num = None

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Index":
        """Open the index at `path` read-only, pinned to its current committed state."""
        path = Path(path)
        last_error: Exception | None = None
        for _ in range(5):
            manifest = read_manifest(path)
            try:
                return cls(path, manifest)
            except (OSError, ValueError) as e:
                # a compaction may have replaced the files between reading the
                # manifest and opening them: read the manifest again
                last_error = e
                if read_manifest(path).generation == manifest.generation:
                    break
        raise NagError(f"index {path} is damaged: {last_error}")

    @classmethod
    def create(cls, path: str | os.PathLike, spec: FeatureSpec) -> "Index":
        """Create an empty index for features made as `spec` says."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise NagError(f"{path} already exists and is not empty; choose a new directory for the index")
        try:
            path.mkdir(parents=True, exist_ok=True)
            (path / SEGMENTS_DIR).mkdir(exist_ok=True)
            (path / LOCK_NAME).touch()
            write_manifest(path, Manifest(spec=spec))
        except OSError as e:
            raise NagError(_os_error_message(e, path, "creating")) from None
        return cls(path, read_manifest(path))

    @classmethod
    def build(
        cls,
        path: str | os.PathLike,
        pools: Sequence[str | os.PathLike] | str | os.PathLike,
        *,
        model: Any = None,
        features: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
        fmt: str = "auto",
        top_k: int = DEFAULT_TOP_K,
        neuron_types: Sequence[str] | str = (DEFAULT_NEURON_TYPE,),
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_size: int = 32,
        progress: bool = True,
        engine: str = "local",
    ) -> "Index":
        """Index the documents of `pools`.

        With `features` (nagindex parquet or upstream JSONL), the features are
        imported and joined to the pools on docid; otherwise they are
        extracted with `model` (a name/path for `load_backbone`, a loaded
        `Backbone`, or None for the embedded default). The index is built in
        a temporary sibling directory and renamed into place when complete.
        """
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise NagError(f"{path} already exists and is not empty; use `nag index append` to add documents")
        pools = _as_list(pools)
        features = _as_list(features) if features is not None else None
        from .backbones import Backbone
        from .engines import check_engine, require_ray

        engine = check_engine(engine)
        remote = engine == "ray" and not features and not isinstance(model, Backbone)
        backbone = _resolve_backbone(model) if (model is not None or not features) and not remote else None
        if remote:
            # the cluster loads the model; the driver only needs the spec
            spec = require_ray().remote_feature_spec(model, neuron_types=neuron_types, top_k=top_k, max_length=max_length)
        elif features:
            file_spec = ingest.feature_file_spec(features)
            if backbone is not None:
                from .extraction import feature_spec

                spec = feature_spec(backbone, neuron_types, top_k, max_length)
                if file_spec is not None:
                    spec.check_compatible(file_spec, what="the feature files")
                    spec = file_spec
            elif file_spec is None:
                raise NagError(
                    "these feature files do not record which backbone made them (upstream JSONL); "
                    "pass --model to name it"
                )
            else:
                spec = file_spec
        else:
            from .extraction import feature_spec

            spec = feature_spec(backbone, neuron_types, top_k, max_length)
        tmp = path.parent / f".{path.name}.building-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            index = cls.create(tmp, spec)
            index._backbone = backbone
            index.append(pools, features=features, fmt=fmt, progress=progress, batch_size=batch_size,
                         _model=backbone if backbone is not None else model, engine=engine)
            if path.exists():
                path.rmdir()
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        built = cls.open(path)
        built._backbone = backbone
        return built

    # -- the snapshot, for queries -----------------------------------------------
    @property
    def spec(self) -> FeatureSpec:
        return self.manifest.spec

    @property
    def num_rows(self) -> int:
        """Global rows, replaced ones included (see `live_mask`)."""
        return self.manifest.num_rows

    @property
    def num_documents(self) -> int:
        return self.manifest.num_live

    def __len__(self) -> int:
        return self.num_documents

    def live_mask(self) -> np.ndarray | None:
        """bool (num_rows): False for rows replaced by a newer version; None when all are live."""
        if not len(self._deleted):
            return None
        mask = np.ones(self.num_rows, dtype=bool)
        mask[self._deleted] = False
        return mask

    def feature_segments(self, neuron_type: str = DEFAULT_NEURON_TYPE) -> list[tuple[int, np.ndarray]]:
        """[(first global row, uint16 (n, L*K) memory-mapped matrix)] in row order."""
        self.spec.width(neuron_type)
        return [(s.ref.first_row, s.features[neuron_type]) for s in self._segments]

    def features(self, neuron_type: str = DEFAULT_NEURON_TYPE) -> np.ndarray:
        """All feature rows in one (num_rows, L*K) array (a copy when there are several segments)."""
        parts = [m for _, m in self.feature_segments(neuron_type)]
        if not parts:
            return np.zeros((0, self.spec.feature_length), dtype=np.uint16)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def token_num(self) -> np.ndarray:
        """int64 (num_rows): token counts (0 where the pool had none)."""
        if self._token_num is None:
            parts = [np.asarray(s.token_num) for s in self._segments]
            self._token_num = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return self._token_num

    def docids(self) -> pa.StringArray:
        """docid of every global row (num_rows)."""
        if self._docids is None:
            parts = [s.docids for s in self._segments]
            self._docids = pa.concat_arrays(parts) if parts else pa.array([], pa.string())
        return self._docids

    def postings(self, neuron_type: str = DEFAULT_NEURON_TYPE):
        """FAISS inverted lists over all segments: list id = layer * width + neuron, ids = global rows."""
        from .postings import stack_postings

        self.spec.width(neuron_type)
        if not self._segments:
            import faiss

            return faiss.ArrayInvertedLists(self.spec.num_layers * self.spec.width(neuron_type), 0)
        return stack_postings([s.postings(neuron_type) for s in self._segments])

    def _lance(self):
        """The documents table at the manifest's version, for reading.

        Reads go through the Lance dataset itself (pylance) where it is
        installed: `import lancedb` costs over 2 s of start-up (its REST
        namespace client), which dominated a `nag query` from the CLI, while
        the dataset reader loads in a fraction of that. Writes stay with
        LanceDB. Both objects answer `.schema` and take rows by offset.
        """
        if self._table is None:
            if self.manifest.lance_version is None:
                return None
            try:
                import lance
            except ImportError:
                import lancedb

                table = lancedb.connect(str(self.path)).open_table(self.manifest.lance_table)
                table.checkout(self.manifest.lance_version)
                self._table = _LanceDBReader(table)
            else:
                uri = self.path / f"{self.manifest.lance_table}.lance"
                self._table = _LanceReader(lance.dataset(str(uri), version=self.manifest.lance_version))
        return self._table

    def columns(self) -> list[str]:
        """Columns `take` can return."""
        table = self._lance()
        if table is None:
            return list(index_schema(self.spec).names)
        return list(table.schema.names)

    def take(self, rows: np.ndarray | Sequence[int], columns: Sequence[str] | None = None) -> pa.Table:
        """Document rows (payload) in the order of `rows` (global row numbers).

        `columns` defaults to every column except the feature columns and `_row`.
        """
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise NagError(f"row numbers must be in 0..{self.num_rows - 1}")
        available = self.columns()
        if columns is None:
            hidden = {ROW} | {feature_column(t) for t in self.spec.neuron_types}
            columns = [c for c in available if c not in hidden]
        else:
            columns = list(columns)
            unknown = [c for c in columns if c not in available]
            if unknown:
                raise NagError(f"unknown column(s) {', '.join(unknown)}; this index has {', '.join(available)}")
        table = self._lance()
        if table is None or not len(rows):
            schema = pa.schema([f for f in index_schema(self.spec) if f.name in columns]) if table is None else table.schema
            return pa.schema([schema.field(c) for c in columns]).empty_table()
        unique, inverse = np.unique(rows, return_inverse=True)
        parts = []
        for i in range(0, len(unique), 4 * self.batch_rows):
            chunk = unique[i : i + 4 * self.batch_rows]
            parts.append(table.take(chunk, columns))
        got = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        if got.num_rows != len(unique):
            raise NagError(f"index {self.path} is damaged: asked for {len(unique)} rows, Lance returned {got.num_rows}")
        return got.take(pa.array(inverse))

    def backbone(self):
        """The backbone that made the features (loaded on first use)."""
        if self._backbone is None:
            from .backbones import load_backbone

            backbone = load_backbone(_backbone_source(self.spec))
            if backbone.weights_hash != self.spec.backbone_hash:
                raise NagError(
                    f"the backbone {self.spec.backbone} loaded now has weights {backbone.weights_hash[:12]}, "
                    f"the index was built with {self.spec.backbone_hash[:12]}"
                )
            self._backbone = backbone
        return self._backbone

    def query(self, targets=(), **options):
        """Rank this index against target sets; returns the selection as an Arrow table.

        `targets` are raw-text files (extracted with this index's backbone) or,
        with ``target_features=[...]``, precomputed feature files. Options are
        those of `nagindex.query.run_query` (fraction, top, power, layers, ...),
        which also returns the summary and the plan behind the table.
        """
        from .query import run_query

        return run_query(self, targets, **options).table

    def info(self) -> dict:
        """Documents, tokens, backbone, L, K, neuron types, versions, pending deltas, size on disk."""
        spec, m = self.spec, self.manifest
        live = self.live_mask()
        tokens = self.token_num()
        return {
            "path": str(self.path),
            "documents": m.num_live,
            "rows": m.num_rows,
            "replaced_rows": m.num_deleted,
            "tokens": int(tokens[live].sum() if live is not None else tokens.sum()),
            "backbone": spec.backbone,
            "backbone_hash": spec.backbone_hash,
            "tokenizer": spec.tokenizer,
            "num_layers": spec.num_layers,
            "top_k": spec.top_k,
            "neuron_types": list(spec.neuron_types),
            "layer_widths": {t: spec.layer_widths[t] for t in spec.neuron_types},
            "max_length": spec.max_length,
            "schema_version": m.schema_version,
            "generation": m.generation,
            "lance_table": m.lance_table,
            "lance_version": m.lance_version,
            "segments": len(m.segments),
            "deltas_pending": m.deltas,
            "columns": [c for c in self.columns() if c != ROW],
            "size_bytes": _dir_size(self.path),
        }

    # -- writing ---------------------------------------------------------------
    @contextmanager
    def _writing(self, action: str) -> Iterator[Manifest]:
        """Hold the write lock, repair leftovers of a crashed writer, yield the current manifest."""
        if not os.access(self.path, os.W_OK):
            raise NagError(f"no permission to write to {self.path}")
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as e:
            raise NagError(_os_error_message(e, self.path, action)) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise NagError(f"another process is writing to {self.path}; try again when it has finished") from None
            manifest = read_manifest(self.path)
            self._recover(manifest)
            yield manifest
        finally:
            os.close(fd)

    def _recover(self, manifest: Manifest) -> None:
        """Undo whatever a writer that died before committing left behind."""
        segments_dir = self.path / SEGMENTS_DIR
        segments_dir.mkdir(exist_ok=True)
        committed = {s.name for s in manifest.segments}
        for entry in segments_dir.iterdir():
            if entry.name not in committed:
                shutil.rmtree(entry, ignore_errors=True)
        for entry in self.path.iterdir():
            stale_deleted = entry.name.startswith(DELETED_PREFIX) and entry.name != manifest.deleted_file
            stale_tmp = entry.name.startswith(f".{MANIFEST_NAME}.tmp-") or entry.name.startswith(DELETED_PREFIX) and ".tmp" in entry.name
            if stale_deleted or stale_tmp:
                entry.unlink(missing_ok=True)
        import lancedb

        db = lancedb.connect(str(self.path))
        for name in doctable.table_names(db):
            if name != manifest.lance_table or manifest.lance_version is None:
                db.drop_table(name)  # a table no commit refers to (a crashed compaction or first append)
        if manifest.lance_version is not None:
            if manifest.lance_table not in doctable.table_names(db):
                raise NagError(f"index {self.path} is damaged: its Lance table {manifest.lance_table} is missing")
            table = db.open_table(manifest.lance_table)
            if table.version != manifest.lance_version:
                # rows added after the last commit: go back to the committed version
                table.restore(manifest.lance_version)

    def append(
        self,
        pools: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
        *,
        features: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
        documents: pa.Table | None = None,
        feature_arrays: dict[str, np.ndarray] | None = None,
        replace: bool = False,
        progress: bool = True,
        fmt: str = "auto",
        batch_size: int = 32,
        engine: str = "local",
        _model: Any = None,
    ) -> AppendResult:
        """Add documents: from pool files (features extracted, or imported from
        `features` files), or from a `documents` table with `feature_arrays`
        (or with `<type>_feature` columns).

        Docids already in the index are skipped and counted, or with
        `replace=True` the old rows are replaced. All or nothing: a crash
        leaves the index as it was before the call.
        """
        from .engines import check_engine, require_ray

        spec = self.spec
        if (pools is None) == (documents is None):
            raise NagError("give either pool files or a documents table to append")
        if documents is not None:
            batches, total = ingest.table_batches(documents, feature_arrays, spec, self.batch_rows), documents.num_rows
            tokens = None
        else:
            pools = _as_list(pools)
            total = ingest.count_rows(pools)
            docs = ingest.document_batches(pools, fmt, self.batch_rows, require_text=not features)
            if features:
                features = _as_list(features)
                file_spec = ingest.feature_file_spec(features)
                if file_spec is not None:
                    spec.check_compatible(file_spec, what="the feature files")
                    missing = [t for t in spec.neuron_types if t not in file_spec.neuron_types]
                    if missing:
                        raise NagError(f"the feature files have no {', '.join(missing)} features, which this index needs")
                batches = ingest.join_features(docs, ingest.iter_feature_tables(features, self.batch_rows), spec)
            elif check_engine(engine) == "ray":
                # Ray actors extract (and count missing token_num); the commit below is the same.
                source = _model if _model is not None else (self._backbone or _backbone_source(spec))
                batches = require_ray().extract_batches(docs, model=source, spec=spec, batch_size=batch_size)
            else:
                backbone_getter = (lambda: _model) if _model is not None else self.backbone
                batches = ingest.extracted_batches(docs, backbone_getter, spec, batch_size)
            tokens = self._token_counter(_model)
        with self._writing("appending to") as manifest:
            if manifest.generation != self.manifest.generation:
                self._load(manifest)
            with _progress(total, progress, "indexing") as bar:
                result = self._append_batches(manifest, batches, replace, tokens, bar)
        return result

    def append_batches(
        self,
        batches: Iterable[tuple[pa.Table, dict[str, np.ndarray]]],
        *,
        replace: bool = False,
        progress: bool = True,
        total: int | None = None,
    ) -> AppendResult:
        """Add a stream of (documents table, {type: uint16 (n, L*K)}) batches as one commit.

        For engines that compute features elsewhere (e.g. Ray): each batch is
        validated like `append(documents=..., feature_arrays=...)`; docids must
        be unique across the whole stream.
        """
        spec = self.spec

        def checked():
            seen: pa.Array | None = None
            for i, (docs, feats) in enumerate(batches):
                docs = ingest.normalize_documents(docs, f"batch {i}")
                ids = docs.column(DOCID).combine_chunks()
                ingest.check_unique(ids, f"batch {i}")
                if seen is not None and pc.any(pc.is_in(ids, value_set=seen)).as_py():
                    raise NagError(f"batch {i}: a docid of an earlier batch occurs again")
                seen = ids if seen is None else pa.concat_arrays([seen, ids])
                yield docs, ingest.check_features(feats, spec, docs.num_rows, f"batch {i}")

        with self._writing("appending to") as manifest:
            if manifest.generation != self.manifest.generation:
                self._load(manifest)
            with _progress(total, progress, "indexing") as bar:
                return self._append_batches(manifest, checked(), replace, self._token_counter(None), bar)

    def _token_counter(self, model: Any) -> Callable[[list[str]], np.ndarray]:
        """Counts tokens of documents that come without token_num, with the model at hand."""

        def count(texts: list[str]) -> np.ndarray:
            from .extraction import count_tokens

            if model is not None:
                backbone = model
            else:
                try:
                    backbone = self.backbone()
                except NagError:
                    raise NagError(
                        f"{len(texts)} documents have no token_num, and the index's backbone {self.spec.backbone} "
                        "cannot be loaded to count their tokens; add a token_num column or pass --model"
                    ) from None
            return count_tokens(backbone.tokenizer, texts)

        return count

    def _append_batches(
        self,
        manifest: Manifest,
        batches: Iterable[tuple[pa.Table, dict[str, np.ndarray]]],
        replace: bool,
        count_tokens: Callable | None,
        bar,
    ) -> AppendResult:
        import lancedb

        spec = manifest.spec
        db = lancedb.connect(str(self.path))
        table = db.open_table(manifest.lance_table) if manifest.lance_version is not None else None
        schema = table.schema if table is not None else None
        live_ids, live_rows = self._live_docids()
        next_row = manifest.num_rows
        next_segment = manifest.next_segment
        writer: SegmentWriter | None = None
        new_refs: list[SegmentRef] = []
        replaced_rows: list[np.ndarray] = []
        added = skipped = 0
        created_table = False
        new_deleted_file = None
        try:
            for docs, feats in batches:
                bar.update(docs.num_rows)
                ids = docs.column(DOCID)
                if len(live_ids):
                    pos = pc.index_in(ids, value_set=live_ids)
                    present = np.asarray(pc.is_valid(pos).to_numpy(zero_copy_only=False), dtype=bool)
                else:
                    present = np.zeros(docs.num_rows, dtype=bool)
                if present.any():
                    if replace:
                        old = pos.filter(pa.array(present)).to_numpy(zero_copy_only=False).astype(np.int64)
                        replaced_rows.append(live_rows[old])
                    else:
                        skipped += int(present.sum())
                        keep = pa.array(~present)
                        docs = docs.filter(keep)
                        feats = {t: f[~present] for t, f in feats.items()}
                if docs.num_rows == 0:
                    continue
                docs = ingest.fill_token_num(docs, count_tokens, "documents")
                if table is None:
                    schema = index_schema(spec, docs.schema)
                    table = db.create_table(manifest.lance_table, schema=schema, mode="overwrite")
                    created_table = True
                docs = doctable.conform(docs, schema, spec)
                for start in range(0, docs.num_rows, self.batch_rows):
                    part = docs.slice(start, self.batch_rows)
                    n = part.num_rows
                    part_feats = {t: f[start : start + n] for t, f in feats.items()}
                    done = 0
                    while done < n:
                        if writer is None:
                            writer = SegmentWriter(self.path / SEGMENTS_DIR, next_segment, spec, next_row)
                            next_segment += 1
                        take = min(n - done, self.segment_rows - writer.num_rows)
                        rows = doctable.lance_rows(part.slice(done, take), {t: f[done : done + take] for t, f in part_feats.items()}, next_row, schema, spec)
                        writer.add(rows.column(DOCID).combine_chunks(), pc.fill_null(rows.column(TOKEN_NUM), 0).to_numpy(), {t: f[done : done + take] for t, f in part_feats.items()})
                        table.add(rows)
                        _crash_point("lance-batch")
                        next_row += take
                        done += take
                        added += take
                        if writer.num_rows >= self.segment_rows:
                            new_refs.append(writer.finish())
                            writer = None
                            _crash_point("segment")
            if writer is not None:
                new_refs.append(writer.finish())
                writer = None
                _crash_point("segment")
            if not added and not replaced_rows:
                return AppendResult(0, skipped, 0)
            generation = manifest.generation + 1
            deleted_file, num_deleted = manifest.deleted_file, manifest.num_deleted
            replaced = int(sum(len(r) for r in replaced_rows))
            if replaced:
                deleted = np.unique(np.concatenate([self._deleted, *replaced_rows]))
                deleted_file = new_deleted_file = f"{DELETED_PREFIX}{generation:06d}.npy"
                _save_npy_atomic(self.path / deleted_file, deleted)
                num_deleted = len(deleted)
            _crash_point("before-commit")
            new = manifest.evolve(
                lance_version=table.version,
                segments=manifest.segments + tuple(new_refs),
                deleted_file=deleted_file,
                num_deleted=num_deleted,
                generation=generation,
                next_segment=next_segment,
                base_segments=len(new_refs) if manifest.num_rows == 0 else manifest.base_segments,
            )
            write_manifest(self.path, new)
        except BaseException as exc:
            if writer is not None:
                writer.abort()
            for ref in new_refs:
                shutil.rmtree(self.path / SEGMENTS_DIR / ref.name, ignore_errors=True)
            if new_deleted_file:
                (self.path / new_deleted_file).unlink(missing_ok=True)
            doctable.rollback(db, manifest, created_table)
            if isinstance(exc, OSError):
                raise NagError(_os_error_message(exc, self.path, "appending to")) from exc
            raise
        _crash_point("after-commit")
        self._load(new)
        return AppendResult(added, skipped, replaced)

    def _live_docids(self) -> tuple[pa.Array, np.ndarray]:
        """docids of the live rows and their global rows."""
        ids = self.docids()
        mask = self.live_mask()
        if mask is None:
            return ids, np.arange(len(ids), dtype=np.int64)
        return ids.filter(pa.array(mask)), np.flatnonzero(mask).astype(np.int64)

    def compact(self, progress: bool = False) -> None:
        """Fold all segments into as few as possible, drop replaced rows, and rewrite the
        Lance table compactly (LanceDB optimize + cleanup). Query results do not change.

        Readers that opened the index before a compaction must reopen it.
        """
        import lancedb

        with self._writing("compacting") as manifest:
            if manifest.generation != self.manifest.generation:
                self._load(manifest)
            if manifest.num_rows == 0:
                return
            spec = manifest.spec
            db = lancedb.connect(str(self.path))
            generation = manifest.generation + 1
            table_name = f"docs_{generation:06d}"
            live = self.live_mask()
            live_rows = np.arange(self.num_rows, dtype=np.int64) if live is None else np.flatnonzero(live)
            next_segment = manifest.next_segment
            new_refs: list[SegmentRef] = []
            writer = None
            table = None
            new_row = 0
            try:
                with _progress(len(live_rows), progress, "compacting") as bar:
                    for start in range(0, len(live_rows), self.batch_rows):
                        rows = live_rows[start : start + self.batch_rows]
                        chunk = self.take(rows, columns=[c for c in self.columns()])
                        feats = {t: self._feature_rows(t, rows) for t in spec.neuron_types}
                        n = len(rows)
                        chunk = chunk.set_column(chunk.schema.get_field_index(ROW), ROW, pa.array(np.arange(new_row, new_row + n, dtype=np.int64)))
                        if table is None:
                            table = db.create_table(table_name, schema=chunk.schema, mode="overwrite")
                        done = 0
                        while done < n:
                            if writer is None:
                                writer = SegmentWriter(self.path / SEGMENTS_DIR, next_segment, spec, new_row + done)
                                next_segment += 1
                            take = min(n - done, self.segment_rows - writer.num_rows)
                            writer.add(
                                chunk.column(DOCID).slice(done, take).combine_chunks(),
                                self.token_num()[rows[done : done + take]],
                                {t: f[done : done + take] for t, f in feats.items()},
                            )
                            done += take
                            if writer.num_rows >= self.segment_rows:
                                new_refs.append(writer.finish())
                                writer = None
                        table.add(chunk)
                        new_row += n
                        bar.update(n)
                if writer is not None:
                    new_refs.append(writer.finish())
                    writer = None
                with warnings.catch_warnings():
                    # the table is new and no reader uses it yet: drop its intermediate versions
                    warnings.simplefilter("ignore")
                    table.optimize(cleanup_older_than=timedelta(0))
                doctable.check_row_order(table, new_row)
                _crash_point("compact-before-commit")
                new = manifest.evolve(
                    lance_table=table_name,
                    lance_version=table.version,
                    segments=tuple(new_refs),
                    deleted_file=None,
                    num_deleted=0,
                    generation=generation,
                    next_segment=next_segment,
                    base_segments=len(new_refs),
                )
                write_manifest(self.path, new)
            except BaseException as exc:
                if writer is not None:
                    writer.abort()
                for ref in new_refs:
                    shutil.rmtree(self.path / SEGMENTS_DIR / ref.name, ignore_errors=True)
                if table_name in doctable.table_names(db):
                    db.drop_table(table_name)
                if isinstance(exc, OSError):
                    raise NagError(_os_error_message(exc, self.path, "compacting")) from exc
                raise
            # the old files are no longer committed: remove them now
            self._load(new)
            self._recover(new)

    def _feature_rows(self, neuron_type: str, rows: np.ndarray) -> np.ndarray:
        """Feature rows at sorted global `rows`, gathered from the segments."""
        return gather_rows(self.feature_segments(neuron_type), rows, self.spec.feature_length)


# -- helpers ---------------------------------------------------------------------


def _as_list(paths) -> list:
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    return list(paths)


def _resolve_backbone(model: Any):
    from .backbones import Backbone, load_backbone

    if isinstance(model, Backbone):
        return model
    return load_backbone(model)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


class _LanceReader:
    """Rows by offset from a pylance dataset pinned to one version."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.schema = dataset.schema

    def take(self, offsets: np.ndarray, columns: list[str]) -> pa.Table:
        return self.dataset.take(offsets.tolist(), columns=columns)


class _LanceDBReader:
    """The same through LanceDB, where pylance is not installed."""

    def __init__(self, table):
        self.table = table
        self.schema = table.schema

    def take(self, offsets: np.ndarray, columns: list[str]) -> pa.Table:
        return self.table.take_offsets(offsets.tolist()).select(columns).to_arrow()
