"""The manifest of an index: the one file whose replacement commits a change.

An index directory holds a LanceDB database (documents + payload), immutable
segment directories (forward index + inverted lists) and `manifest.json`.
Writers add files first and replace the manifest last (temp file, fsync,
os.replace), so a reader that loads the manifest sees exactly the segments and
the Lance version of one committed state, whatever a crashed writer left
behind.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from nagindex.atomic import atomic_write_bytes
from nagindex.errors import NagError
from nagindex.io import json_nesting_depth
from nagindex.schemas import SCHEMA_VERSION, FeatureSpec

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "nagindex"

# The only names a writer ever gives the files a manifest refers to. Anything
# else (a path with a separator, "..", an absolute path) is refused, so that a
# manifest can never make a reader or a writer touch a file outside the index.
SEGMENT_NAME = re.compile(r"seg-[0-9]{6,}")
LANCE_TABLE_NAME = re.compile(r"docs(_[0-9]{6,})?")
DELETED_FILE_NAME = re.compile(r"deleted-[0-9]{6,}\.npy")
CHECKSUM_NAME = re.compile(
    r"(segments/seg-[0-9]{6,}/[A-Za-z0-9_.-]+|deleted-[0-9]{6,}\.npy|docs(_[0-9]{6,})?\.lance/data/[A-Za-z0-9_-]+\.lance)"
)


# An index's JSON files are small and flat (a manifest nests 4 deep); a crafted one
# nested thousands deep is refused before the parser recurses into it.
MAX_JSON_DEPTH = 64


def parse_index_json(data: bytes):
    """The value of one of an index's JSON files, or ValueError with one line saying
    why not (not UTF-8, not JSON, nested deeper than MAX_JSON_DEPTH)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"it is not UTF-8 text (byte {e.start})") from None
    if json_nesting_depth(text) > MAX_JSON_DEPTH:
        raise ValueError(f"it is nested more than {MAX_JSON_DEPTH} deep")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{e.msg} at line {e.lineno}") from None
    except RecursionError:
        raise ValueError(f"it is nested more than {MAX_JSON_DEPTH} deep") from None


@dataclass(frozen=True)
class SegmentRef:
    """One immutable segment: rows [first_row, first_row + num_rows)."""

    name: str
    first_row: int
    num_rows: int

    @property
    def end_row(self) -> int:
        return self.first_row + self.num_rows


@dataclass(frozen=True)
class Manifest:
    """A committed state of an index."""

    spec: FeatureSpec
    lance_table: str = "docs"  # compaction writes a new table and switches to it
    lance_version: int | None = None  # None until the first rows are committed
    segments: tuple[SegmentRef, ...] = ()
    deleted_file: str | None = None  # .npy of sorted global rows replaced by newer ones
    num_deleted: int = 0
    generation: int = 0  # bumped by every commit; names new files uniquely
    next_segment: int = 0
    base_segments: int = 0  # leading segments written by the build or the last compaction
    schema_version: int = SCHEMA_VERSION
    # {file relative to the index: [size, "algorithm:digest"]} of every immutable
    # file the commit names (see `checksums`); empty for indexes written before
    checksums: dict = field(default_factory=dict, compare=False)
    # segments carry inverted lists (`nag index build --postings`); True is what manifests written
    # before the option meant, so the field is read with that default
    postings: bool = True
    embedder: str | None = None  # what embeds documents (extraction.embedder.load_embedder), if any
    embedding_dim: int | None = None
    # the generation of the last commit that replaced documents (carried through compactions): a
    # snapshot older than it may not read its payload from a newer state by docid
    last_replace: int = 0

    @property
    def num_rows(self) -> int:
        return self.segments[-1].end_row if self.segments else 0

    @property
    def deltas(self) -> int:
        """Segments appended since the build or the last compaction."""
        return len(self.segments) - self.base_segments

    @property
    def num_live(self) -> int:
        return self.num_rows - self.num_deleted

    def to_dict(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "schema_version": self.schema_version,
            "generation": self.generation,
            "spec": self.spec.to_dict(),
            "lance_table": self.lance_table,
            "lance_version": self.lance_version,
            "segments": [dict(vars(s)) for s in self.segments],
            "next_segment": self.next_segment,
            "base_segments": self.base_segments,
            "deleted_file": self.deleted_file,
            "num_deleted": self.num_deleted,
            "num_rows": self.num_rows,
            "checksums": dict(sorted(self.checksums.items())),
            "postings": self.postings,
            "embedder": self.embedder,
            "embedding_dim": self.embedding_dim,
            "last_replace": self.last_replace,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        version = int(d.get("schema_version", 0))
        if version > SCHEMA_VERSION:
            raise NagError(
                f"this index was written by a newer nagindex (schema version {version}; "
                f"this one reads up to {SCHEMA_VERSION}); upgrade nagindex"
            )
        segments = tuple(SegmentRef(s["name"], int(s["first_row"]), int(s["num_rows"])) for s in d["segments"])
        m = cls(
            spec=FeatureSpec.from_dict(d["spec"]),
            lance_table=str(d.get("lance_table", "docs")),
            lance_version=d.get("lance_version"),
            segments=segments,
            deleted_file=d.get("deleted_file"),
            num_deleted=int(d.get("num_deleted", 0)),
            generation=int(d.get("generation", 0)),
            next_segment=int(d.get("next_segment", len(segments))),
            base_segments=int(d.get("base_segments", min(1, len(segments)))),
            schema_version=version,
            checksums=_checksums(d.get("checksums", {})),
            postings=bool(d.get("postings", True)),
            embedder=d.get("embedder"),
            embedding_dim=None if d.get("embedding_dim") is None else int(d["embedding_dim"]),
            last_replace=int(d.get("last_replace", 0)),
        )
        check_segments_contiguous(m.segments)
        if int(d.get("num_rows", m.num_rows)) != m.num_rows:
            raise NagError("index manifest is inconsistent (row count does not match its segments)")
        check_names(m)
        if m.lance_version is not None and (not isinstance(m.lance_version, int) or m.lance_version < 1):
            raise NagError(f"index manifest is inconsistent (Lance version {m.lance_version!r})")
        check_counters(m)
        if not 0 <= m.num_deleted <= m.num_rows or (m.num_deleted > 0) != (m.deleted_file is not None):
            raise NagError(f"index manifest is inconsistent ({m.num_deleted} deleted rows, file {m.deleted_file})")
        return m

    def evolve(self, **changes) -> "Manifest":
        return replace(self, **changes)


def _checksums(raw) -> dict:
    if not isinstance(raw, dict):
        raise TypeError("checksums must be an object")
    out = {}
    for name, value in raw.items():
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int) and isinstance(value[1], str)):
            raise TypeError(f"checksum of {name} must be [size, digest]")
        out[str(name)] = value
    return out


def check_names(m: "Manifest") -> None:
    """Every name in the manifest is one a writer makes, inside the index directory."""
    bad = [s.name for s in m.segments if not SEGMENT_NAME.fullmatch(s.name)]
    if not LANCE_TABLE_NAME.fullmatch(m.lance_table):
        bad.append(m.lance_table)
    if m.deleted_file is not None and not DELETED_FILE_NAME.fullmatch(str(m.deleted_file)):
        bad.append(str(m.deleted_file))
    bad += [n for n in m.checksums if not CHECKSUM_NAME.fullmatch(n) or ".." in n.split("/")]
    if bad:
        raise NagError(f"index manifest names {bad[0]!r}, which is not a file of this index; refusing to use it")


def check_counters(m: "Manifest") -> None:
    """generation >= 0, and the next segment number past every committed one (a writer names
    its new segments from it), base segments among the segments."""
    numbers = [int(s.name.split("-", 1)[1]) for s in m.segments]
    if m.generation < 0 or m.next_segment <= max(numbers, default=-1) or not 0 <= m.base_segments <= len(m.segments):
        raise NagError(f"index manifest is inconsistent (generation {m.generation}, next segment {m.next_segment}, "
                       f"base segments {m.base_segments} of {len(m.segments)})")


def check_segments_contiguous(segments: tuple[SegmentRef, ...] | list[SegmentRef]) -> None:
    """Segments must tile the global rows 0..n without gaps or overlaps."""
    expected = 0
    for s in segments:
        if s.first_row != expected or s.num_rows < 1:
            raise NagError(f"index manifest is inconsistent (segment {s.name} starts at row {s.first_row}, expected {expected})")
        expected = s.end_row


def manifest_path(index_dir: Path) -> Path:
    return Path(index_dir) / MANIFEST_NAME


def read_manifest(index_dir: Path) -> Manifest:
    """Load the committed state of the index in `index_dir`, or raise NagError."""
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise NagError(f"{index_dir} is not a nagindex index (no such directory)")
    path = manifest_path(index_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NagError(f"{index_dir} is not a nagindex index (no {MANIFEST_NAME})") from None
    except PermissionError:
        raise NagError(f"cannot read {path}: permission denied") from None
    except OSError as e:
        raise NagError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        d = parse_index_json(data)
    except ValueError as e:
        raise NagError(f"{path} is not a valid index manifest ({e})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
        raise NagError(f"{index_dir} is not a nagindex index ({MANIFEST_NAME} is not a nagindex manifest)")
    try:
        return Manifest.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise NagError(f"{path} is not a valid index manifest ({type(e).__name__}: {e})") from None


def write_manifest(index_dir: Path, manifest: Manifest) -> None:
    """Commit `manifest` (atomic replace of manifest.json)."""
    data = json.dumps(manifest.to_dict(), indent=1, sort_keys=True).encode()
    atomic_write_bytes(manifest_path(index_dir), data, index_file=True)

