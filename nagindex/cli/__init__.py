"""The `nag` command line: a thin layer over the Python API.

Each module below registers its commands on the apps of `app.py`; importing
them here is what makes the commands exist.
"""

from nagindex.cli.app import app
from nagindex.cli import extract, index, query, demo, analysis  # noqa: F401, I001  (registration, in help order)


def main() -> None:
    app()
