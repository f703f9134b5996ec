"""`nag` commands: analysis."""

from .app import app  # noqa: F401
