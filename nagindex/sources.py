"""What a pool or a target can be: files, directories, globs, or tables already in memory.

Every command and API call that reads documents passes its inputs through
here first, so that they all accept the same things:

- a file path (any layout `io` reads);
- a directory: every document file directly inside it (sorted by name);
- a glob such as ``'pool/*.parquet'`` (quoted on the command line, expanded here);
- a URL (``s3://bucket/pool/``, ``file:///data/pool.parquet``): read as a
  `pyarrow.dataset`, streamed, through fsspec where pyarrow has no filesystem;
- a table in memory: a pyarrow Table, RecordBatch or Dataset (`pyarrow.dataset`),
  a pandas or polars DataFrame, or a Hugging Face `datasets.Dataset`. None of
  those libraries is imported unless the object is one of theirs.

Tables in memory use the `web` layout (``docid``, ``doc``, optional
``token_num``, ``dataset``, any payload columns); ``id`` and ``text`` are
accepted for ``docid`` and ``doc`` as in JSONL.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import pyarrow as pa

from nagindex.errors import NagError
from nagindex.io import SeenDocids, check_unique_docids, iter_document_batches, document_layout
from nagindex.schemas import DOCID, TEXT

# Document files a directory is read for.
DOCUMENT_SUFFIXES = (".parquet", ".pq", ".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".txt", ".txt.gz")

_GLOB_CHARS = "*?["


def _module_of(obj: Any) -> str:
    return type(obj).__module__.split(".")[0]


def is_table_like(obj: Any) -> bool:
    """A table in memory that `to_arrow` converts (not a path, not a list of paths)."""
    if isinstance(obj, (pa.Table, pa.RecordBatch)):
        return True
    module = _module_of(obj)
    if module in ("pandas", "polars"):
        return type(obj).__name__ == "DataFrame"  # not a Series (nor a polars LazyFrame)
    if module == "datasets":
        return hasattr(obj, "with_format") and hasattr(obj, "column_names")
    if module == "pyarrow":
        return hasattr(obj, "to_batches") and hasattr(obj, "schema")  # pyarrow.dataset.Dataset
    return False


def arrow_batches(obj: Any, batch_size: int) -> Iterator[pa.Table]:
    """A table in memory as Arrow tables of at most `batch_size` rows (a Dataset is streamed)."""
    module = _module_of(obj)
    if isinstance(obj, pa.RecordBatch):
        table = pa.Table.from_batches([obj])
    elif isinstance(obj, pa.Table):
        table = obj
    elif module == "pandas":
        table = pa.Table.from_pandas(obj, preserve_index=False)
    elif module == "polars":
        table = obj.to_arrow()
    elif module == "datasets":
        # the arrow format applies any selection or shuffle (indices mapping) of the Dataset
        table = obj.with_format("arrow")[:]
    else:  # pyarrow.dataset.Dataset: never materialised whole
        for batch in obj.to_batches(batch_size=batch_size):
            if batch.num_rows:
                yield pa.Table.from_batches([batch])
        return
    for start in range(0, table.num_rows, batch_size):
        yield table.slice(start, batch_size)


def to_arrow(obj: Any) -> pa.Table:
    """A table in memory as one Arrow table."""
    parts = list(arrow_batches(obj, 1 << 30))
    if not parts:
        schema = obj.schema if isinstance(getattr(obj, "schema", None), pa.Schema) else pa.schema([])
        return schema.empty_table()
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts)


def remote_dataset(url: str):
    """A file or folder at a URL (``s3://``, ``gs://``, ``file://`` ...) as a `pyarrow.dataset`
    Dataset, streamed: through pyarrow's own filesystems, or fsspec's where pyarrow has none."""
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    fmt = "json" if url.lower().rstrip("/").endswith((".jsonl", ".json", ".ndjson", ".jsonl.gz")) else "parquet"
    try:
        filesystem, root = pafs.FileSystem.from_uri(url)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        try:
            import fsspec
        except ImportError:
            raise NagError(f"cannot open {url}: pyarrow has no filesystem for it; install fsspec "
                           "(and its package for this scheme)") from None
        try:
            fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError, OSError) as exc:  # an unknown scheme, or its package (s3fs, aiohttp) missing
            raise NagError(f"cannot open {url}: {str(exc).splitlines()[0] or type(exc).__name__} "
                           "(install the fsspec package for this scheme)") from None
        filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    try:
        return pads.dataset(root, format=fmt, filesystem=filesystem)
    except (pa.ArrowException, OSError, FileNotFoundError) as exc:
        raise NagError(f"cannot open {url}: {str(exc).splitlines()[0]}") from None


def expand_path(item: str | os.PathLike, what: str = "input") -> list[Path]:
    """The files a path, directory or glob names, sorted; NagError when there are none
    (`what` names the kind of file in that error)."""
    text = str(item)
    if any(ch in text for ch in _GLOB_CHARS) and not Path(text).exists():
        found = sorted(Path(p) for p in glob.glob(os.path.expanduser(text)) if not Path(p).is_dir())
        if not found:
            raise NagError(f"no file matches {text}")
        return found
    path = Path(text).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(DOCUMENT_SUFFIXES))
        if not found:
            raise NagError(f"{path} is a directory without document files ({', '.join(DOCUMENT_SUFFIXES)})")
        return found
    if not path.exists():
        raise NagError(f"{what} file not found: {path}")
    return [path]


def expand_sources(sources: Any) -> list[Any]:
    """One list of inputs: paths expanded to files, tables in memory kept as they are."""
    if sources is None:
        return []
    if isinstance(sources, (str, os.PathLike)) or is_table_like(sources):
        sources = [sources]
    out: list[Any] = []
    for item in sources:
        if is_table_like(item):
            out.append(item)
        elif isinstance(item, str) and "://" in item:
            out.append(remote_dataset(item))
        elif isinstance(item, (str, os.PathLike)):
            out.extend(expand_path(item))
        else:
            raise NagError(f"cannot read documents from a {type(item).__name__}: give file paths, directories, "
                           "globs or tables (pyarrow, pandas, polars, datasets)")
    if not out:
        raise NagError("no input files given")
    return out


def _web_aliases(table: pa.Table) -> pa.Table:
    """``id``/``text`` columns (Hugging Face and JSONL habits) as ``docid``/``doc``."""
    names = list(table.column_names)
    if DOCID not in names and "id" in names:
        names[names.index("id")] = DOCID
    if TEXT not in names and "text" in names:
        names[names.index("text")] = TEXT
    return table.rename_columns(names) if names != table.column_names else table


def count_rows(sources: Sequence[Any]) -> int | None:
    """Total documents (for a progress bar), None when it is not known without reading."""
    import pyarrow.parquet as pq

    total = 0
    for item in sources:
        if is_table_like(item):
            n = getattr(item, "num_rows", None)
            if callable(getattr(item, "count_rows", None)):
                n = item.count_rows()
            elif n is None:
                n = len(item)
            total += int(n)
        elif str(item).endswith((".parquet", ".pq")):
            try:
                total += pq.ParquetFile(item).metadata.num_rows
            except Exception:
                return None
        else:
            return None
    return total


def document_batches(sources: Sequence[Any], fmt: str = "auto", batch_size: int = 10_000, *,
                     require_text: bool = True, strict: bool = False) -> Iterator[pa.Table]:
    """Documents of expanded `sources` in batches of the `io` layout, docids unique across all."""
    seen = SeenDocids()  # hashes, not a set of strings: flat memory over a large pool

    def check(tables: Iterable[pa.Table], source: str) -> Iterator[pa.Table]:
        for table in tables:
            dup = seen.add(table.column(DOCID))
            if dup is not None:
                raise NagError(f"{source}: docid {table.column(DOCID)[dup].as_py()!r} occurs more than once "
                               "across the inputs")
            yield table

    files: list[Path] = []
    for item in list(sources) + [None]:
        if isinstance(item, Path):
            files.append(item)
            continue
        if files:  # consecutive files are read as one run of `io`
            yield from iter_document_batches(files, fmt, batch_size, require_text=require_text, strict=strict,
                                             seen=seen)
            files = []
        if item is None:
            break
        source = f"the {type(item).__name__}"
        for raw in arrow_batches(item, batch_size):
            table = document_layout(_web_aliases(raw), source, require_text=require_text, strict=strict)
            check_unique_docids(table.column(DOCID), source)
            if table.num_rows:
                yield from check([table], source)


def read_documents(sources: Any, fmt: str = "auto", *, require_text: bool = True, strict: bool = False) -> pa.Table:
    """Every document of `sources` (paths, directories, globs, tables) as one table."""
    parts = list(document_batches(expand_sources(sources), fmt, 1 << 30, require_text=require_text, strict=strict))
    if not parts:
        return pa.table({DOCID: pa.array([], pa.string()), TEXT: pa.array([], pa.string())})
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts, promote_options="permissive")


def texts_table(texts: Sequence[str], name: str = "text") -> pa.Table:
    """Target texts given as strings, as a documents table (docids ``<name>:<i>``)."""
    if isinstance(texts, (str, bytes)):
        raise NagError("target_texts must be a list of strings (one document each), not one string")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise NagError(f"target_texts[{bad[0]}] is a {type(texts[bad[0]]).__name__}, not a string")
    return pa.table({DOCID: pa.array([f"{name}:{i}" for i in range(len(texts))], pa.string()),
                     TEXT: pa.array(texts, pa.string())})


def source_name(source: Any) -> str:
    """A short name for a target: a file's stem, a glob's or directory's folder name, else the type."""
    if isinstance(source, (list, tuple)) and source:
        return source_name(source[0]) if len(source) == 1 else source_name(source[0]) + "+"
    if is_table_like(source):
        return type(source).__name__
    path = Path(str(source))
    if any(ch in path.name for ch in _GLOB_CHARS) or path.is_dir():
        folder = path.parent if not path.is_dir() else path
        return folder.name or str(source)
    name = path.name
    for suffix in sorted(DOCUMENT_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
