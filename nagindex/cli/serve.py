"""`nag serve`: a thin wrapper over `service.app.serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nagindex.cli.app import MODEL_HELP, app
from nagindex.errors import require_extra


@app.command("serve")
def serve(
    index_dir: Path = typer.Argument(..., help="An index made by `nag index build`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Default: 127.0.0.1 (this machine only)."),
    port: int = typer.Option(8000, "--port", "-p", help="Port to listen on. Default: 8000."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    warm: bool = typer.Option(True, "--warm/--lazy", help="Load the backbone and embedder before the first "
                              "request (default), or on the first text query."),
) -> None:
    """Serve queries of INDEX_DIR over HTTP, its models held warm: POST /query (what `nag query`
    takes; JSON, or Arrow with Accept: application/vnd.apache.arrow.stream), /explain, GET /info,
    /versions, /health. Appends and compactions by other processes are seen by the next request."""
    require_extra("fastapi", "serve", "nag serve")
    require_extra("uvicorn", "serve", "nag serve")
    from nagindex.api import Index
    from nagindex.service.app import serve as run

    Index.open(index_dir, model=model)  # a bad path is one line before the server starts
    typer.echo(f"nag serve: {index_dir} at http://{host}:{port} (Ctrl-C stops)")
    run(index_dir, host=host, port=port, model=model, warm=warm)
