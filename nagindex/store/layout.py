"""The entries an index directory is made of are its own: real folders and files, never links.

A crafted (or carelessly copied) index whose `segments/`, `versions/`, Lance
table or `.lock` is a symbolic link would make recovery remove, and writers
write, files outside the index. Names in the manifest are already checked
(`manifest.check_names`); this checks the entries themselves, with one
`lstat` each, before any reader or writer uses them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nagindex.store.manifest import DELETED_FILE_NAME, LANCE_TABLE_NAME, MANIFEST_NAME

SEGMENTS_DIR = "segments"
LOCK_NAME = ".lock"
VERSIONS_DIR = "versions"
TAGS_NAME = "tags.json"
# the entries of a Lance table directory that Lance writes into
LANCE_PARTS = ("_versions", "data", "_transactions", "_deletions", "_indices")


def _is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def _listed(folder: Path):
    """(path, is a link) of every entry of `folder` (from the directory listing: no stat each)."""
    try:
        with os.scandir(folder) as entries:
            return [(Path(e.path), e.is_symlink()) for e in entries]
    except OSError:
        return []


def _own_entries(index_dir: Path):
    """(path, is a link) of every entry a reader or writer of the index follows."""
    for name in (MANIFEST_NAME, SEGMENTS_DIR, VERSIONS_DIR, TAGS_NAME, LOCK_NAME):
        yield index_dir / name, _is_link(index_dir / name)
    for path, link in _listed(index_dir):
        name = path.name
        if DELETED_FILE_NAME.fullmatch(name):
            yield path, link
        elif name.endswith(".lance") and LANCE_TABLE_NAME.fullmatch(name[: -len(".lance")]):
            yield path, link
            if not link:
                yield from ((path / part, _is_link(path / part)) for part in LANCE_PARTS)
    for folder in (SEGMENTS_DIR, VERSIONS_DIR):
        if not _is_link(index_dir / folder):
            yield from _listed(index_dir / folder)


def link_problem(index_dir: str | os.PathLike) -> str | None:
    """Which of the index's own entries is a symbolic link, or None."""
    index_dir = Path(index_dir)
    for path, link in _own_entries(index_dir):
        if link:
            return (f"{path.relative_to(index_dir).as_posix()} is a symbolic link (to {os.readlink(path)}); "
                    "an index's own folders and files must not be links")
    return None
