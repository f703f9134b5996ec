"""`nag` commands: index."""

from .app import app  # noqa: F401
