"""`nag` commands: demo."""

from .app import app  # noqa: F401
