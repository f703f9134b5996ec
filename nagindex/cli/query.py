"""`nag` commands: query."""

from .app import app  # noqa: F401
