"""The `nag` command line: a thin layer over the Python API.

Each module below registers its commands on the apps of `app.py`; importing
them here is what makes the commands exist.
"""

from nagindex.cli.app import app
from nagindex.cli import extract, index, query, serve, demo, analysis  # noqa: F401, I001  (registration, in help order)
from nagindex.cli.help import teach, version_option

teach(app)


@app.callback()
def _root(version: bool = version_option()) -> None:
    """nagindex: target-oriented pretraining data selection with Neuron-Activated Graphs (NAG).
    Index a pool once with `nag index build`, then rank it against any target set with `nag query`.
    Start with `nag demo`."""


def main() -> None:
    app()
