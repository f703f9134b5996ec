"""Versions of an index: every commit's manifest kept, names (tags) for some, and what they keep alive.

Each commit (a build, an append, a compaction) is one version, numbered by the
manifest's generation. Its manifest is copied to ``versions/NNNNNN.json``
once committed, so that `IndexSnapshot.open(path, version=...)` can read the
index as it was: segments are immutable, Lance keeps every table version, and
replaced-row files are named by generation.

A version stays readable while the files its manifest names exist. Appends
remove nothing. Compaction folds the segments into new ones and switches to a
new Lance table; afterwards it keeps the files of tagged versions (and of the
new one) and forgets the other versions. ``tags.json`` maps names to
generations.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from nagindex.atomic import atomic_write_text
from nagindex.errors import NagError, damaged
from nagindex.store.layout import TAGS_NAME, VERSIONS_DIR
from nagindex.store.manifest import Manifest, parse_index_json

# A tag starts with a letter and is never a version's spelling (`7`, `v7`, `V7`), so that a
# tag can never shadow a version number. Versions are ASCII digits only: str.isdigit()
# also accepts superscripts ("²") that int() then refuses.
TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
VERSION_TEXT = re.compile(r"[vV]?([0-9]{1,18})")
VERSION_FILE = re.compile(r"([0-9]{6,18})\.json")



def _version_path(index_dir: Path, generation: int) -> Path:
    return Path(index_dir) / VERSIONS_DIR / f"{generation:06d}.json"


def record(index_dir: Path, manifest: Manifest) -> None:
    """Keep a copy of a committed manifest (idempotent)."""
    path = _version_path(index_dir, manifest.generation)
    if path.is_file():
        return
    d = manifest.to_dict()
    d["committed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_text(path, json.dumps(d, indent=1, sort_keys=True), index_file=True)


def _read(path: Path) -> tuple[Manifest, str]:
    try:
        d = parse_index_json(path.read_bytes())
        if not isinstance(d, dict):
            raise ValueError("it is not a JSON object")
        return Manifest.from_dict(d), str(d.get("committed_at", ""))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NagError(f"cannot read version file {path}: {exc}") from None


def generations(index_dir: Path) -> list[int]:
    """Generations with a recorded manifest, oldest first (other files are not versions)."""
    folder = Path(index_dir) / VERSIONS_DIR
    if not folder.is_dir():
        return []
    found = (VERSION_FILE.fullmatch(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def tags(index_dir: Path) -> dict[str, int]:
    """{tag name: generation}; a `tags.json` that is not such a map is damage (one line)."""
    path = Path(index_dir) / TAGS_NAME
    if not path.is_file():
        return {}
    try:
        raw = parse_index_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise damaged(index_dir, f"{TAGS_NAME} cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    if not isinstance(raw, dict):
        raise damaged(index_dir, f"{TAGS_NAME} is not a map of tag names to versions")
    for name, generation in raw.items():
        if VERSION_TEXT.fullmatch(name) or not name.strip():
            raise damaged(index_dir, f"{TAGS_NAME} names a tag {name!r}, which reads as a version number")
        if type(generation) is not int or generation < 0:
            raise damaged(index_dir, f"{TAGS_NAME} maps tag {name!r} to {json.dumps(generation)}, not a version number")
    return dict(raw)


def tag_problem(index_dir: Path) -> str | None:
    """Why a tag cannot be resolved (its version's manifest is gone), or None: then
    nothing may be collected, since what the tag's version needs is unknown."""
    known = set(generations(index_dir))
    for name, generation in sorted(tags(index_dir).items()):
        if generation not in known:
            return (f"tag {name!r} names version {generation}, whose {VERSIONS_DIR}/{generation:06d}.json is missing "
                    f"(restore it, or remove the tag from {TAGS_NAME})")
    return None


def check_tag_name(name: str) -> None:
    if not TAG_NAME.fullmatch(name) or VERSION_TEXT.fullmatch(name):
        raise NagError(f"tag {name!r}: give a name of letters, digits, '.', '_' or '-' that starts with a letter, "
                       "at most 64 characters, and is not a number or a version (7, v7)")


def set_tag(index_dir: Path, name: str, generation: int) -> None:
    """Name a recorded version (the caller holds the write lock)."""
    check_tag_name(name)
    if generation not in generations(index_dir):
        raise NagError(f"version {generation} of {index_dir} is not readable any more (see `nag index versions`)")
    current = tags(index_dir)
    current[name] = int(generation)
    atomic_write_text(Path(index_dir) / TAGS_NAME, json.dumps(current, indent=1, sort_keys=True) + "\n", index_file=True)


def resolve(index_dir: Path, version: int | str) -> Manifest:
    """The manifest of a version given by number or tag name."""
    text = str(version).strip()
    named = tags(index_dir)
    number = VERSION_TEXT.fullmatch(text)
    if number:  # a number is always a version: no tag reads as one
        generation = int(number.group(1))
    elif text in named:
        generation = named[text]
    else:
        raise NagError(f"unknown version {version!r}: give a version number or a tag "
                       f"({', '.join(sorted(named)) or 'this index has no tags'})")
    path = _version_path(index_dir, generation)
    if not path.is_file():
        known = generations(index_dir)
        raise NagError(f"version {generation} of {index_dir} is not readable (readable: "
                       f"{', '.join(map(str, known)) or 'none'}; compaction keeps only tagged versions)")
    return _read(path)[0]


def listing(index_dir: Path) -> list[dict]:
    """Every readable version, oldest first: number, time, documents, Lance version, tags."""
    by_generation: dict[int, list[str]] = {}
    for name, generation in tags(index_dir).items():
        by_generation.setdefault(generation, []).append(name)
    out = []
    for generation in generations(index_dir):
        manifest, committed_at = _read(_version_path(index_dir, generation))
        out.append({"version": generation, "committed_at": committed_at, "documents": manifest.num_live,
                    "rows": manifest.num_rows, "segments": len(manifest.segments),
                    "lance_table": manifest.lance_table, "lance_version": manifest.lance_version,
                    "tags": sorted(by_generation.get(generation, []))})
    return out


def kept(index_dir: Path, current: Manifest) -> list[Manifest]:
    """The manifests whose files must stay: the current one and every recorded version."""
    problem = tag_problem(index_dir)
    if problem:  # what the tag's version needs is unknown: collecting anything could remove it
        raise damaged(index_dir, problem)
    out = [current]
    for generation in generations(index_dir):
        if generation != current.generation:
            out.append(_read(_version_path(index_dir, generation))[0])
    return out


def forget_untagged(index_dir: Path, current: Manifest) -> None:
    """After a compaction: forget every version but the tagged ones and `current`."""
    keep = set(tags(index_dir).values()) | {current.generation}
    for generation in generations(index_dir):
        if generation not in keep:
            _version_path(index_dir, generation).unlink(missing_ok=True)
