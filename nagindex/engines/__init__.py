"""Execution engines: where extraction and ranking run.

`local` runs everything in this process (the default). `ray` runs extraction
as a Ray Data `map_batches` over actors (one per GPU, or CPU workers where
there is no GPU) and ranking as a parallel scan of the index's Lance table,
with an exact global merge; both give the same results. Ray is an optional
extra (``pip install 'nagindex[ray]'``), imported only when asked for.
`get_engine` is the one place an engine name is read.
"""

from __future__ import annotations

from nagindex.engines.base import Engine
from nagindex.engines.local import LocalEngine
from nagindex.engines.ray import RayEngine
from nagindex.errors import NagError

ENGINES: tuple[str, ...] = ("local", "ray")
DEFAULT_ENGINE = "local"

RAY_MISSING = (
    "the ray engine needs Ray Data, which is not installed; "
    "install it with: pip install 'nagindex[ray]'"
)


def check_engine(engine: str | None) -> str:
    """Validate an engine name (None means the default) and return it."""
    name = DEFAULT_ENGINE if engine is None else str(engine).strip().lower()
    if name not in ENGINES:
        raise NagError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    return name


def ray_available() -> bool:
    """True when Ray Data can be imported (the `ray` extra is installed)."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def get_engine(engine=None):
    """The engine of that name (None: the default), or an Engine instance as given."""

    if isinstance(engine, Engine):
        return engine
    name = check_engine(engine)
    if name == "ray":
        if not ray_available():
            raise NagError(RAY_MISSING)

        return RayEngine()

    return LocalEngine()


__all__ = ["ENGINES", "DEFAULT_ENGINE", "check_engine", "ray_available", "get_engine"]
