"""Checksums of an index's immutable files, recorded in the manifest.

Every file a commit adds (a segment's matrices, token counts, docids and
inverted lists; a deleted-row file) is immutable once written, so the
manifest records its size and a fast hash. Opening an index checks only the
sizes (one `stat` per file: a truncated or grown file is caught at once and
opening stays cheap); `nag index check` reads every byte and compares the
hashes. xxhash is used where it is installed, else BLAKE2b from hashlib; the
recorded digest says which, so an index stays checkable on either.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Bytes read per call while hashing (large reads: hashing is bound by the disk).
CHUNK_BYTES = 8 << 20

try:  # pragma: no cover - depends on the environment
    import xxhash

    DEFAULT_ALGORITHM = "xxh3_128"
except ImportError:  # pragma: no cover - depends on the environment
    xxhash = None
    DEFAULT_ALGORITHM = "blake2b"


def _hasher(algorithm: str):
    if algorithm == "blake2b":
        return hashlib.blake2b(digest_size=16)
    if algorithm == "xxh3_128" and xxhash is not None:
        return xxhash.xxh3_128()
    raise ValueError(f"unknown checksum algorithm {algorithm!r} (install xxhash to read it)")


def file_digest(path: Path, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """'<algorithm>:<hex digest>' of a file's content."""
    h = _hasher(algorithm)
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return f"{algorithm}:{h.hexdigest()}"


def describe(path: Path) -> list:
    """[size, digest] of one file, as the manifest records it."""
    return [os.path.getsize(path), file_digest(path)]


def describe_dir(root: Path, directory: Path) -> dict[str, list]:
    """{path relative to `root`: [size, digest]} of every file under `directory`."""
    out = {}
    for dirpath, _, files in os.walk(directory):
        for name in sorted(files):
            full = Path(dirpath) / name
            out[full.relative_to(root).as_posix()] = describe(full)
    return out


def size_problem(root: Path, name: str, expected: list) -> str | None:
    """Why file `name` does not have its recorded size, or None."""
    try:
        size = os.path.getsize(root / name)
    except FileNotFoundError:
        return f"{name} is missing"
    except OSError as e:
        return f"{name} cannot be read ({e.strerror or e})"
    if size != expected[0]:
        return f"{name} has {size} bytes, the manifest recorded {expected[0]}"
    return None


def content_problem(root: Path, name: str, expected: list) -> str | None:
    """Why file `name` does not match its recorded size and hash, or None."""
    problem = size_problem(root, name, expected)
    if problem:
        return problem
    algorithm = str(expected[1]).split(":", 1)[0]
    try:
        digest = file_digest(root / name, algorithm)
    except (ValueError, OSError) as e:
        return f"{name} cannot be hashed ({getattr(e, 'strerror', None) or e})"
    if digest != expected[1]:
        return f"{name} does not match its checksum (its content changed after it was written)"
    return None
