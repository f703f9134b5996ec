"""The `nag` command line: a thin layer over the Python API.

Each module below registers its commands on the apps of `app.py`; importing
them here is what makes the commands exist.
"""

from .app import app
from . import extract, index, query, demo, analysis  # noqa: F401  (registration)


def main() -> None:
    app()
