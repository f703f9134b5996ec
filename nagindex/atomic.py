"""One way to write a file or a directory atomically.

Readers see the old version or the complete new one, never a mix: everything
is written under a hidden temporary sibling name and renamed into place. A
crash leaves at most that hidden temporary, which no reader trusts. Files and
directories get the permissions a plain `open()` or `mkdir()` would give under
the user's umask (temporary files are created 0600), so an evaluation job
under another account can read what nagindex writes. `durable=True` also
fsyncs the data and the directory entry (the commit point of an index).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nagindex.errors import NagError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _follow_umask(folder: Path) -> None:
    """Give what libraries wrote inside `folder` the umask's modes: some (safetensors)
    create their files 0600 whatever the umask says."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                os.chmod(full, (0o777 if os.access(full, os.X_OK) else 0o666) & ~mask)


# What marks a directory as a nagindex index (the names `store` gives them; this
# base module cannot import the store). An output must never land in one: the
# index's recovery would treat it as a crashed writer's leftover, or worse, it
# would replace a file the manifest names.
INDEX_MARKER = "manifest.json"
INDEX_PARTS = ("segments", ".lock")


def index_containing(path: Path) -> Path | None:
    """The index directory that `path` (symlinks resolved) lies in, or None."""
    try:
        resolved = Path(os.path.realpath(path))
    except (OSError, ValueError):
        return None
    for folder in (resolved, *resolved.parents):
        try:
            if (folder / INDEX_MARKER).is_file() and any((folder / part).exists() for part in INDEX_PARTS):
                return folder
        except OSError:
            continue
    return None


def check_output_path(path: str | os.PathLike, *, directory: bool = False) -> None:
    """Refuse an output path that nagindex must not replace: an existing entry of another
    kind (a device such as /dev/full, a FIFO, a socket, a directory where a file is
    written), or a place inside an index directory. Every output goes through here
    (`atomic_path`), and commands call it before they start long work."""
    path = Path(path)
    try:
        st = os.stat(path)  # follows a symlink: what would be replaced is what it names
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise NagError(f"cannot write {path}: {e.strerror or e}") from None
    if st is not None:
        if directory and not stat.S_ISDIR(st.st_mode):
            raise NagError(f"cannot write {path}: it exists and is not a directory; give a new directory path")
        if not directory and stat.S_ISDIR(st.st_mode):
            raise NagError(f"cannot write {path}: it is a directory; give a file path")
        if not directory and not stat.S_ISREG(st.st_mode):
            raise NagError(f"cannot write {path}: it exists and is not a regular file (a device, FIFO or socket); "
                           "give a file path")
    root = index_containing(path)
    if root is not None:
        raise NagError(f"cannot write {path}: it lies inside the index {root}; write outputs outside index directories")


def process_alive(pid: int) -> bool:
    """Whether process `pid` may still be running (another user's counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftover_pattern(name: str) -> "re.Pattern[str]":
    """The names this module's temporaries of output `name` take, and the staging folders
    beside it (`staging_prefix`), each with its writer's PID."""
    stem = re.escape(f".{name}.")
    return re.compile(stem + r"(?:([0-9]+)-[A-Za-z0-9_]+\.tmp|tmp-([0-9]+)-[A-Za-z0-9_]+|stage-([0-9]+)-[A-Za-z0-9_]+)")


def staging_prefix(path: Path) -> str:
    """The prefix of a folder staged beside output `path` while it is written (removed by the
    next write of `path` once this process is gone, if a kill left it)."""
    return f".{path.name}.stage-{os.getpid()}-"


def remove_stale_leftovers(path: Path) -> None:
    """Remove what killed writers of `path` left beside it (partial temporaries, staging
    folders) once their process is gone; nothing of a live writer, nothing else."""
    pattern = _leftover_pattern(path.name)
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if not m or process_alive(int(next(g for g in m.groups() if g))):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            try:
                os.unlink(entry.path)
            except OSError:
                pass


def is_temporary(name: str) -> bool:
    """True for the name of a temporary that `atomic_path` made (what a crash can leave)."""
    return name.startswith(".") and (name.endswith(".tmp") or ".tmp-" in name)


@contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False, durable: bool = False,
                index_file: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path to write `path`'s new content to; on success it is
    renamed over `path` (a directory replaces an existing one), on failure removed.

    Every path is an output (`check_output_path`) unless `index_file`: the store's
    own files (manifest, versions, tags, deleted rows), which the store places."""
    path = Path(path)
    if index_file:
        if not directory and path.is_dir():
            raise NagError(f"cannot write {path}: it is a directory; give a file path")
    else:
        check_output_path(path, directory=directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not index_file:
        remove_stale_leftovers(path)  # the store's own leftovers are recovery's
    # the writer's PID in the name: what a kill leaves is known for stale once it is gone
    if directory:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-"))
        os.chmod(tmp, 0o777 & ~_umask())
    else:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        if directory:
            _follow_umask(tmp)
        if durable and not directory:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if directory and path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True, index_file: bool = False) -> None:
    """Write `data` to `path` atomically (and durably, by default)."""
    with atomic_path(path, durable=durable, index_file=index_file) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, durable: bool = False, index_file: bool = False) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable, index_file=index_file)
