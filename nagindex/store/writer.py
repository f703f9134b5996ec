"""Writing an index: create, append, compact, under one lock, with crash recovery.

Every write takes the index's lock (`locked`), first repairs what a crashed
writer may have left (uncommitted segments, deleted-row files, a Lance table
ahead of the manifest), writes new immutable files, and commits by replacing
manifest.json (see `manifest`). Until that rename nothing a reader sees has
changed; after it, the old files that no commit names are removed.

Tests make a writer kill itself at named steps (`CRASH_ENV`) to check that
every step before the commit leaves the previous version intact.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import signal
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nagindex.atomic import atomic_write_bytes, is_temporary, process_alive
from nagindex.errors import NagError
from nagindex.io import SeenDocids, check_unique_docids, normalize_documents
from nagindex.schemas import DOCID, ROW, TOKEN_NUM, FeatureSpec, index_schema
from nagindex.store import checksums, doctable, ingest
from nagindex.store import versions as index_versions
from nagindex.store.index import (
    DELETED_PREFIX,
    LANCE_ERRORS,
    LOCK_NAME,
    SEGMENTS_DIR,
    IndexSnapshot,
    check_own_entries,
    damaged,
    first_line,
    live_rows,
)
from nagindex.store.manifest import (
    CHECKSUM_NAME,
    DELETED_FILE_NAME,
    LANCE_TABLE_NAME,
    SEGMENT_NAME,
    Manifest,
    SegmentRef,
    read_manifest,
    write_manifest,
)
from nagindex.store.segment import TMP_PREFIX, SegmentWriter

Features = dict[str, np.ndarray]
Batches = Iterable[tuple[pa.Table, Features]]

# Tests set this to a step name to make a writer kill itself there (SIGKILL).
CRASH_ENV = "NAGINDEX_CRASH_AT"


def crash_point(step: str) -> None:
    """Die like `kill -9` at a named step, when a test asks for it."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class AppendResult:
    added: int
    skipped: int
    replaced: int


def progress_bar(total: int | None, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="doc", unit_scale=True, dynamic_ncols=True)


def os_error_message(exc: Exception, path: Path, action: str) -> str:
    """One line for an OS or Lance error met while writing an index."""
    code = getattr(exc, "errno", None)
    text = first_line(exc)
    if code == errno.ENOSPC or "no space left" in text.lower():
        return f"disk full while {action} {path}; the index is unchanged (free space and run the command again)"
    if isinstance(exc, PermissionError) or code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"no permission to write to {path} while {action} it; the index is unchanged"
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return (f"I/O error while {action} {path}{where}: {text}; the index is unchanged "
            f"(run `nag index check {path}` if it persists)")


def _write_failure(exc: BaseException) -> bool:
    """An error of the disk or of Lance (LanceError(IO) is an OSError, some are RuntimeError),
    not a NagError or a bug of ours."""
    return isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, (NagError, NotImplementedError, RecursionError))


# -- create, lock, recover -------------------------------------------------------------


def create_index(path: str | os.PathLike, spec: FeatureSpec, *, postings: bool = False, embedder: str | None = None,
                 embedding_dim: int | None = None) -> Path:
    """Make an empty index directory for features made as `spec` says (with `postings`,
    inverted lists in every segment: 4.8 of ~7 kB a document at K=20, which no query
    on text-like pools reads faster than the scan; and, with `embedder`, an embedding
    of `embedding_dim` per document)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise NagError(f"{path} already exists and is not empty; choose a new directory for the index")
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / SEGMENTS_DIR).mkdir(exist_ok=True)
        (path / LOCK_NAME).touch()
        commit(path, Manifest(spec=spec, postings=postings, embedder=embedder,
                              embedding_dim=None if embedder is None else int(embedding_dim)))
    except OSError as e:
        raise NagError(os_error_message(e, path, "creating")) from None
    return path


BUILDING_INFIX = ".building-"


def build_directory(path: Path) -> Path:
    """The hidden sibling a build of `path` writes into (renamed into place when complete),
    after removing those that killed builds of `path` left (their process is gone)."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}{BUILDING_INFIX}") + r"([0-9]+)")
    for entry in path.parent.iterdir() if path.parent.is_dir() else ():
        m = pattern.fullmatch(entry.name)
        if m and entry.is_dir() and not entry.is_symlink() and not process_alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
    tmp = path.parent / f".{path.name}{BUILDING_INFIX}{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def publish_build(tmp: Path, path: Path) -> None:
    """Rename a complete build into place; a one-line error when another build got there first."""
    try:
        if path.exists():
            path.rmdir()  # an empty directory the user made for it
        os.rename(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise NagError(
                f"{path} was created by another process while this build ran; this build was discarded "
                "(use `nag index append` to add to that index, or build into a new directory)"
            ) from None
        raise NagError(os_error_message(e, path, "building")) from None


@contextmanager
def locked(index: IndexSnapshot, action: str) -> Iterator[Manifest]:
    """Hold the write lock, repair leftovers of a crashed writer, and yield the current
    manifest, with `index` moved to it if another writer committed since it was opened."""
    if index.pinned_version is not None and action != "tagging":
        raise NagError(f"{index.path} is open at its past version {index.pinned_version}, read-only; "
                       "open it without a version to change it")
    if not os.access(index.path, os.W_OK):
        raise NagError(f"no permission to write to {index.path}")
    check_own_entries(index.path)  # before the lock is opened: it may be the link
    try:
        # O_NOFOLLOW: a link planted after the check is not followed either
        fd = os.open(index.path / LOCK_NAME, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise NagError(os_error_message(e, index.path, action)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NagError(f"another process is writing to {index.path}; try again when it has finished") from None
        check_own_entries(index.path)  # again under the lock: what recovery and the write follow
        manifest = adopt_added_columns(index.path, read_manifest(index.path))
        recover(index.path, manifest)
        if manifest.generation != index.manifest.generation:
            index._load(manifest)
        yield manifest
    finally:
        os.close(fd)


# Written (durably) before an append adds a payload column to the Lance table and
# removed after its commit: a later Lance version with only new columns is then a
# killed append's, rolled back by recovery, never a column added outside nagindex.
# A temporary's name, so that recovery removes it.
PENDING_COLUMNS = ".columns-pending.tmp"


def adopt_added_columns(path: Path, manifest: Manifest) -> Manifest:
    """Commit columns that were added to the documents table outside nagindex (plain
    LanceDB `add_columns`): a later Lance version with the same rows and only new
    columns becomes the committed one, instead of being rolled back as a crashed write."""
    if manifest.lance_version is None or (path / PENDING_COLUMNS).exists():
        return manifest
    import lancedb

    try:
        table = lancedb.connect(str(path)).open_table(manifest.lance_table)
        latest = table.version
        if latest == manifest.lance_version or table.count_rows() != manifest.num_rows:
            return manifest
        latest_schema = table.schema
        table.checkout(manifest.lance_version)
        committed_names = set(table.schema.names)
        if not committed_names < set(latest_schema.names):
            return manifest
        table.checkout_latest()
        # later documents will not have the column: it must take nulls (an SQL-computed one is non-nullable)
        strict = [f.name for f in latest_schema if f.name not in committed_names and not f.nullable]
        if strict:
            table.alter_columns(*({"path": name, "nullable": True} for name in strict))
            latest = table.version
    except LANCE_ERRORS:
        return manifest  # recovery names the damage
    adopted = manifest.evolve(lance_version=latest, generation=manifest.generation + 1)
    commit(path, adopted)
    return adopted


def commit(path: Path, manifest: Manifest) -> None:
    """Make `manifest` the index's state (the manifest write is the commit) and keep it as a version."""
    write_manifest(path, manifest)
    index_versions.record(path, manifest)


def tag(index: IndexSnapshot, name: str, version: int | str | None = None) -> int:
    """Name a version (default: the current one) so that compaction keeps it readable;
    returns its number."""
    index_versions.check_tag_name(name)
    try:
        with locked(index, "tagging") as manifest:
            generation = manifest.generation if version is None else index_versions.resolve(index.path, version).generation
            index_versions.set_tag(index.path, name, generation)
    except OSError as e:  # tags.json is written atomically: the old one stays
        raise NagError(os_error_message(e, index.path, "tagging")) from None
    return generation


def recover(path: Path, manifest: Manifest) -> None:
    """Undo whatever a writer of this index that died before committing left behind.

    The committed state is checked first (every segment, file and Lance
    version the manifest names is there, with its recorded size): if anything
    is missing, the index is damaged and nothing is removed. Then only what
    a writer makes and no commit names goes: segment directories and their
    temporaries, deleted-row files, temporary files, and the Lance tables a
    first append or a compaction created, unless a kept version (`versions`:
    every commit since the last compaction, and tagged ones) names them. Any
    other file is left alone.
    """
    import lancedb

    try:
        db = lancedb.connect(str(path))
        tables = doctable.table_names(db)
        committed_table = _check_committed(path, manifest, db, tables)
    except LANCE_ERRORS as e:
        if isinstance(e, NagError):
            raise
        raise damaged(path, f"its Lance table {manifest.lance_table}.lance cannot be read ({first_line(e)})") from None
    segments_dir = path / SEGMENTS_DIR
    segments_dir.mkdir(exist_ok=True)
    index_versions.record(path, manifest)  # an index made before versions were kept, or a crash after a commit
    kept = index_versions.kept(path, manifest)
    committed = {s.name for m in kept for s in m.segments}
    deleted_files = {m.deleted_file for m in kept if m.deleted_file}
    kept_tables = {m.lance_table for m in kept if m.lance_version is not None}
    for entry in segments_dir.iterdir():
        ours = SEGMENT_NAME.fullmatch(entry.name) or entry.name.startswith(TMP_PREFIX)
        if ours and entry.name not in committed:
            shutil.rmtree(entry, ignore_errors=True)
    for entry in path.iterdir():
        stale_deleted = DELETED_FILE_NAME.fullmatch(entry.name) and entry.name not in deleted_files
        if entry.is_file() and (stale_deleted or is_temporary(entry.name)):
            entry.unlink(missing_ok=True)
    for name in tables:
        if LANCE_TABLE_NAME.fullmatch(name) and name not in kept_tables:
            db.drop_table(name)  # a table no commit refers to (a crashed compaction or first append)
    if committed_table is not None and committed_table.version != manifest.lance_version:
        committed_table.restore(manifest.lance_version)  # rows added after the last commit


def _check_committed(path: Path, manifest: Manifest, db, tables: list[str]):
    """NagError unless every part of the committed state is present; the committed table."""
    for ref in manifest.segments:
        if not (path / SEGMENTS_DIR / ref.name).is_dir():
            raise damaged(path, f"its segment {SEGMENTS_DIR}/{ref.name} is missing")
    for name, expected in manifest.checksums.items():
        problem = checksums.size_problem(path, name, expected)
        if problem:
            raise damaged(path, problem)
    if manifest.deleted_file and not (path / manifest.deleted_file).is_file():
        raise damaged(path, f"its deleted-row file {manifest.deleted_file} is missing")
    if manifest.lance_version is None:
        return None
    if manifest.lance_table not in tables:
        raise damaged(path, f"its Lance table {manifest.lance_table}.lance is missing")
    table = db.open_table(manifest.lance_table)
    versions = [v["version"] if isinstance(v, dict) else v.version for v in table.list_versions()]
    if manifest.lance_version not in versions:
        raise damaged(path, f"the manifest names version {manifest.lance_version} of {manifest.lance_table}.lance, "
                            f"which has versions {min(versions)}..{max(versions)}")
    # a version of another row count (a hand-set older one) would put new rows at the wrong offsets
    pinned = db.open_table(manifest.lance_table)
    pinned.checkout(manifest.lance_version)
    rows = pinned.count_rows()
    if rows != manifest.num_rows:
        raise damaged(path, f"version {manifest.lance_version} of {manifest.lance_table}.lance has {rows} rows, "
                            f"the manifest {manifest.num_rows}")
    return table


def lance_checksums(path: Path, table_name: str, version: int, recorded: dict) -> dict[str, list]:
    """{`<table>.lance/data/<file>`: [size, digest]} of every data file of `version` of a Lance
    table (immutable once written, like a segment's), so that `check` reads them too; files
    already in `recorded` are not hashed again. Empty where pylance is not installed."""
    try:
        import lance
    except ImportError:
        return {}
    out = {}
    for fragment in lance.dataset(str(path / f"{table_name}.lance"), version=version).get_fragments():
        for data in fragment.data_files():
            name = f"{table_name}.lance/data/{data.path}"
            if CHECKSUM_NAME.fullmatch(name):  # a layout of another Lance release is left unrecorded
                out[name] = recorded.get(name) or checksums.describe(path / name)
    return out


def _without_lance(sums: dict) -> dict:
    return {k: v for k, v in sums.items() if ".lance/" not in k}


# -- segments ---------------------------------------------------------------------------


class SegmentFiller:
    """Writes consecutive rows into new segments of at most `segment_rows` rows each."""

    def __init__(self, index_path: Path, spec: FeatureSpec, first_segment: int, first_row: int, segment_rows: int,
                 on_finish: Callable[[], None] = lambda: None, postings: bool = True):
        self.dir = index_path / SEGMENTS_DIR
        self.postings = postings
        self.spec = spec
        self.next_segment = first_segment
        self.next_row = first_row
        self.segment_rows = segment_rows
        self.on_finish = on_finish
        self.refs: list[SegmentRef] = []
        self.checksums: dict[str, list] = {}  # of every segment written, for the manifest
        self._writer: SegmentWriter | None = None

    def add(self, docids: pa.Array, token_num: np.ndarray, features: Features) -> None:
        n, done = len(docids), 0
        while done < n:
            if self._writer is None:
                self._writer = SegmentWriter(self.dir, self.next_segment, self.spec, self.next_row,
                                             postings=self.postings)
                self.next_segment += 1
            take = min(n - done, self.segment_rows - self._writer.num_rows)
            self._writer.add(docids.slice(done, take), token_num[done : done + take],
                             {t: f[done : done + take] for t, f in features.items()})
            done += take
            self.next_row += take
            if self._writer.num_rows >= self.segment_rows:
                self._finish()

    def _finish(self) -> None:
        self.refs.append(self._writer.finish())
        self.checksums.update(self._writer.checksums)
        self._writer = None
        self.on_finish()

    def close(self) -> list[SegmentRef]:
        """Finish the open segment; the refs of every segment written."""
        if self._writer is not None:
            self._finish()
        return self.refs

    def abort(self) -> None:
        """Remove everything written (the segments are not committed)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        for ref in self.refs:
            shutil.rmtree(self.dir / ref.name, ignore_errors=True)


# -- append -------------------------------------------------------------------------------


def checked_batches(batches: Batches, spec: FeatureSpec) -> Iterator[tuple[pa.Table, Features]]:
    """Validate a stream of (documents, features) batches made elsewhere (e.g. by Ray):
    documents normalised, features of the index's shape, docids unique across the stream."""
    seen = SeenDocids()
    for i, (docs, feats) in enumerate(batches):
        docs = normalize_documents(docs, f"batch {i}")
        ingest.check_payload_names(docs)
        ids = docs.column(DOCID).combine_chunks()
        check_unique_docids(ids, f"batch {i}")
        if seen.add(ids) is not None:
            raise NagError(f"batch {i}: a docid of an earlier batch occurs again")
        yield docs, ingest.check_features(feats, spec, docs.num_rows, f"batch {i}")


def append_batches(
    index: IndexSnapshot,
    batches: Batches,
    *,
    replace: bool = False,
    count_tokens: Callable[[list[str]], np.ndarray] | None = None,
    progress: bool = True,
    total: int | None = None,
) -> AppendResult:
    """Add a stream of (documents table, {type: uint16 (n, L*K)}) batches as one commit.

    Docids already live are skipped and counted, or with `replace` their old
    rows are marked replaced. `count_tokens` fills missing token counts. All
    or nothing: any failure or crash leaves the index as it was.
    """
    with locked(index, "appending to") as manifest, progress_bar(total, progress, "indexing") as bar:
        return _append_locked(index, manifest, batches, replace, count_tokens, bar)


def _append_locked(index, manifest: Manifest, batches: Batches, replace: bool, count_tokens, bar) -> AppendResult:
    import lancedb

    spec = manifest.spec
    db = lancedb.connect(str(index.path))
    table = db.open_table(manifest.lance_table) if manifest.lance_version is not None else None
    schema = table.schema if table is not None else None
    live_ids, live_row_numbers = index._live_docids()
    filler = SegmentFiller(index.path, spec, manifest.next_segment, manifest.num_rows, index.segment_rows,
                           on_finish=lambda: crash_point("segment"), postings=manifest.postings)
    replaced_rows: list[np.ndarray] = []
    tokens = TokenTotal(index)
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
                    replaced_rows.append(live_row_numbers[old])
                else:
                    skipped += int(present.sum())
                    keep = pa.array(~present)
                    docs = docs.filter(keep)
                    feats = {t: f[~present] for t, f in feats.items()}
            if docs.num_rows == 0:
                continue
            docs = ingest.fill_token_num(docs, count_tokens, "documents")
            tokens.add(docs.column(TOKEN_NUM))
            if table is None:
                schema = index_schema(spec, docs.schema, manifest.embedding_dim)
                table = db.create_table(manifest.lance_table, schema=schema, mode="overwrite")
                created_table = True
            new_fields = doctable.new_payload_fields(docs.schema, schema, spec)
            if new_fields:
                # the payload schema evolves: a new nullable column, null in every earlier row, which
                # belongs to this append's commit (`PENDING_COLUMNS`)
                atomic_write_bytes(index.path / PENDING_COLUMNS, b"", index_file=True)
                table.add_columns(new_fields)
                schema = table.schema
            docs = doctable.conform(docs, schema, spec)
            for start in range(0, docs.num_rows, index.batch_rows):
                part = docs.slice(start, index.batch_rows)
                part_feats = {t: f[start : start + part.num_rows] for t, f in feats.items()}
                rows = doctable.lance_rows(part, part_feats, filler.next_row, schema, spec)
                filler.add(rows.column(DOCID).combine_chunks(), pc.fill_null(rows.column(TOKEN_NUM), 0).to_numpy(), part_feats)
                table.add(rows)
                crash_point("lance-batch")
                added += part.num_rows
        new_refs = filler.close()
        if not added and not replaced_rows:
            return AppendResult(0, skipped, 0)
        generation = manifest.generation + 1
        deleted_file, num_deleted = manifest.deleted_file, manifest.num_deleted
        replaced = int(sum(len(r) for r in replaced_rows))
        if replaced:
            deleted = np.unique(np.concatenate([index._deleted, *replaced_rows]))
            deleted_file = new_deleted_file = f"{DELETED_PREFIX}{generation:06d}.npy"
            save_npy_atomic(index.path / deleted_file, deleted)
            num_deleted = len(deleted)
        sums = _without_lance(manifest.checksums)
        sums.update(filler.checksums)
        sums.update(lance_checksums(index.path, manifest.lance_table, table.version, manifest.checksums))
        if new_deleted_file:
            sums = {k: v for k, v in sums.items() if not DELETED_FILE_NAME.fullmatch(k)}
            sums[new_deleted_file] = checksums.describe(index.path / new_deleted_file)
        crash_point("before-commit")
        new = manifest.evolve(
            checksums=sums,
            lance_version=table.version,
            segments=manifest.segments + tuple(new_refs),
            deleted_file=deleted_file,
            num_deleted=num_deleted,
            generation=generation,
            next_segment=filler.next_segment,
            base_segments=len(new_refs) if manifest.num_rows == 0 else manifest.base_segments,
            last_replace=generation if replaced else manifest.last_replace,
        )
        commit(index.path, new)
    except BaseException as exc:
        filler.abort()
        if new_deleted_file:
            (index.path / new_deleted_file).unlink(missing_ok=True)
        if doctable.rollback(db, manifest, created_table):  # else recovery must still roll the columns back
            (index.path / PENDING_COLUMNS).unlink(missing_ok=True)
        if _write_failure(exc):
            raise NagError(os_error_message(exc, index.path, "appending to")) from exc
        raise
    (index.path / PENDING_COLUMNS).unlink(missing_ok=True)
    crash_point("after-commit")
    index._load(new)
    return AppendResult(added, skipped, replaced)


class TokenTotal:
    """The index's token total as documents arrive: refused before it leaves int64
    (sums, budgets and the summary are int64 everywhere downstream)."""

    LIMIT = 2**62  # headroom: a fraction of the total is still exact in float64 arithmetic

    def __init__(self, index: IndexSnapshot):
        self.total = sum(int(np.sum(t, dtype=np.float64)) for t in (np.asarray(s.token_num) for s in index._segments))

    def add(self, column) -> None:
        values = pc.fill_null(column, 0).to_numpy(zero_copy_only=False)
        self.total += int(np.sum(values, dtype=np.float64))
        if self.total >= self.LIMIT or (len(values) and int(values.max()) >= self.LIMIT):
            raise NagError(
                f"token counts add up to more than 2**62 ({self.total:.3e} tokens) with these documents; "
                "token_num must count tokens (check the column)"
            )


# -- compact ----------------------------------------------------------------------------


def compact(index: IndexSnapshot, progress: bool = False) -> None:
    """Fold all segments into as few as possible, drop replaced rows, and rewrite the
    Lance table compactly (LanceDB optimize + cleanup). Query results do not change.

    Readers that opened the index before a compaction must reopen it.
    """
    import lancedb

    with locked(index, "compacting") as manifest:
        if manifest.num_rows == 0:
            return
        spec = manifest.spec
        db = lancedb.connect(str(index.path))
        generation = manifest.generation + 1
        table_name = f"docs_{generation:06d}"
        kept_rows = live_rows(index)
        filler = SegmentFiller(index.path, spec, manifest.next_segment, 0, index.segment_rows,
                               postings=manifest.postings)
        table = None
        try:
            with progress_bar(len(kept_rows), progress, "compacting") as bar:
                for start in range(0, len(kept_rows), index.batch_rows):
                    rows = kept_rows[start : start + index.batch_rows]
                    chunk = index.take(rows, columns=index.columns())
                    feats = {t: index._feature_rows(t, rows) for t in spec.neuron_types}
                    n = len(rows)
                    new_rows = pa.array(np.arange(filler.next_row, filler.next_row + n, dtype=np.int64))
                    chunk = chunk.set_column(chunk.schema.get_field_index(ROW), ROW, new_rows)
                    if table is None:
                        table = db.create_table(table_name, schema=chunk.schema, mode="overwrite")
                    filler.add(chunk.column(DOCID).combine_chunks(), index.token_num()[rows], feats)
                    table.add(chunk)
                    bar.update(n)
            new_refs = filler.close()
            with warnings.catch_warnings():
                # the table is new and no reader uses it yet: drop its intermediate versions
                warnings.simplefilter("ignore")
                table.optimize(cleanup_older_than=timedelta(0))
            doctable.check_row_order(table, filler.next_row)
            crash_point("compact-before-commit")
            new = manifest.evolve(
                checksums={**filler.checksums, **lance_checksums(index.path, table_name, table.version, {})},
                lance_table=table_name,
                lance_version=table.version,
                segments=tuple(new_refs),
                deleted_file=None,
                num_deleted=0,
                generation=generation,
                next_segment=filler.next_segment,
                base_segments=len(new_refs),
            )
            commit(index.path, new)
        except BaseException as exc:
            filler.abort()
            try:
                if table_name in doctable.table_names(db):
                    db.drop_table(table_name)
            except LANCE_ERRORS:
                pass  # the next writer's recovery drops it
            if _write_failure(exc):
                raise NagError(os_error_message(exc, index.path, "compacting")) from exc
            raise
        # the old files are no longer committed: remove them now, but those of tagged versions
        index._load(new)
        index_versions.forget_untagged(index.path, new)
        recover(index.path, new)


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue(), index_file=True)
