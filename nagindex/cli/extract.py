"""`nag` commands: extract."""

from .app import app  # noqa: F401
