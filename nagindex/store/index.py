"""The read side of an index: one committed snapshot of its directory.

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
manifest names); rows replaced by an append with `replace=True` stay until
compaction and are masked by `live_mask()`.

A snapshot (`IndexSnapshot.open`) pins one manifest: its segments are
immutable and its Lance version is checked out, so it sees one consistent
state while a writer (`writer`) commits a new one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from nagindex.errors import NagError
from nagindex.schemas import DEFAULT_NEURON_TYPE, ROW, UNKNOWN_HASH, FeatureSpec, feature_column, index_schema
from nagindex.store.manifest import Manifest, read_manifest
from nagindex.store.segment import Segment, gather_rows

# Lance logs "No existing dataset ... will be created" as a warning on every new table.
os.environ.setdefault("LANCEDB_LOG", "error")

SEGMENTS_DIR = "segments"
LOCK_NAME = ".lock"
DELETED_PREFIX = "deleted-"

# Rows handled at once while streaming (memory ~ BATCH_ROWS * L*K * 2 bytes per type).
BATCH_ROWS = 65_536
# Largest segment: bounds the memory of building its inverted lists.
SEGMENT_ROWS = 1 << 20


def _dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total



def backbone_source(spec: FeatureSpec):
    """What `load_backbone` needs to reload the backbone of a spec: its recorded
    location (absolute path, ``org/name@rev``, None for the embedded default);
    the name as typed for indexes older than locations."""
    from nagindex.extraction import backbones

    location = spec.backbone_location
    if location:
        return None if location == backbones.EMBEDDED_LOCATION else location
    if spec.backbone_hash == UNKNOWN_HASH:
        raise NagError(
            f"this index was built from upstream features without a backbone (L={spec.num_layers}, "
            f"K={spec.top_k}); text targets need a loadable backbone: pass --model NAME|PATH of the model "
            "that made the features, or give the targets as features (--target-features)"
        )
    return None if spec.backbone == backbones.EMBEDDED_NAME else spec.backbone



class IndexSnapshot:
    """A NAG index directory, opened read-only as one committed snapshot."""

    segment_rows: int = SEGMENT_ROWS
    batch_rows: int = BATCH_ROWS

    def __init__(self, path: str | os.PathLike, manifest: Manifest, model=None):
        self.path = Path(path)
        self._backbone = None
        # a backbone named by the caller (`--model`): used instead of the recorded location
        self._model = model
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
    def open(cls, path: str | os.PathLike, *, model=None) -> "IndexSnapshot":
        """Open the index at `path` read-only, pinned to its current committed state.

        `model` (a path, hub id, ``embedded`` or a loaded Backbone) replaces the
        recorded backbone location when text must be extracted; its weights
        are checked against the index's.
        """
        path = Path(path)
        last_error: Exception | None = None
        for _ in range(5):
            manifest = read_manifest(path)
            try:
                return cls(path, manifest, model=model)
            except (OSError, ValueError) as e:
                # a compaction may have replaced the files between reading the
                # manifest and opening them: read the manifest again
                last_error = e
                if read_manifest(path).generation == manifest.generation:
                    break
        raise NagError(f"index {path} is damaged: {last_error}")

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
        from nagindex.store.postings import stack_postings

        self.spec.width(neuron_type)
        if not self._segments:
            import faiss

            return faiss.ArrayInvertedLists(self.spec.num_layers * self.spec.width(neuron_type), 0)
        return stack_postings([s.postings(neuron_type) for s in self._segments])

    def posting_lists(self, neuron_type: str = DEFAULT_NEURON_TYPE):
        """The same lists read with numpy (`postings.StackedPostingLists`): `sizes()`, `ids(list_no)`."""
        from nagindex.store.postings import StackedPostingLists

        nlist = self.spec.num_layers * self.spec.width(neuron_type)
        return StackedPostingLists([s.posting_lists(neuron_type) for s in self._segments], nlist)

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

    def backbone(self, *, device=None, dtype=None):
        """The backbone that made the features (loaded on first use, from `model`
        given to `open` or else the recorded location, on `device` in `dtype`),
        checked against the index."""
        if self._backbone is None:
            from nagindex.extraction.backbones import Backbone, load_backbone
            from nagindex.extraction.features import feature_spec

            spec = self.spec
            source = self._model if self._model is not None else backbone_source(spec)
            try:
                backbone = source if isinstance(source, Backbone) else load_backbone(source, device=device, dtype=dtype)
            except NagError as exc:
                if self._model is not None:
                    raise
                raise NagError(f"the index's backbone {spec.backbone} cannot be loaded ({exc}); pass --model "
                               "with the same weights (a local directory, .gguf file or hub id)") from None
            if spec.backbone_hash != UNKNOWN_HASH and backbone.weights_hash != spec.backbone_hash:
                raise NagError(
                    f"the backbone {backbone.name} has weights {backbone.weights_hash[:12]}, "
                    f"the index {spec.backbone} was built with {spec.backbone_hash[:12]}"
                )
            spec.check_compatible(feature_spec(backbone, spec.neuron_types, spec.top_k, spec.max_length),
                                  what=f"the features of the backbone {backbone.name}")
            self._backbone = backbone
        return self._backbone

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

    def _live_docids(self) -> tuple[pa.Array, np.ndarray]:
        """docids of the live rows and their global rows."""
        ids = self.docids()
        mask = self.live_mask()
        if mask is None:
            return ids, np.arange(len(ids), dtype=np.int64)
        return ids.filter(pa.array(mask)), np.flatnonzero(mask).astype(np.int64)

    def _feature_rows(self, neuron_type: str, rows: np.ndarray) -> np.ndarray:
        """Feature rows at sorted global `rows`, gathered from the segments."""
        return gather_rows(self.feature_segments(neuron_type), rows, self.spec.feature_length)


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
