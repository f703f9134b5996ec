"""`nag serve`: one index and its models held warm, queries answered over HTTP (FastAPI).

Each request reads one committed snapshot. Before it, the manifest is looked
at (a stat, then its generation where the file changed): after an append or
a compaction by another process the index is reopened, so the next request
answers from the new version without a restart, with the backbone and
embedder already loaded carried over. `as_of` reads a past version.

Endpoints: POST /query (a `wire` request; JSON or Arrow answer), POST
/explain, GET /info, /versions, /health. A bad request is answered 4xx with
its one-line message; any other exception in a request is a 500 with its
message, and the server goes on answering.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from nagindex.analysis.explain import explain as explain_row
from nagindex.ranking.query import embeds, load_targets
from nagindex.api import Index
from nagindex.errors import NagError
from nagindex.service import wire
from nagindex.store.manifest import manifest_path, read_manifest


REMEMBERED_TARGETS = 64  # target sets (texts) whose features and embeddings a server keeps


class Served:
    """The index a server answers from: reopened when its manifest changes."""

    def __init__(self, path: str | os.PathLike, *, model: Any = None):
        self.path = Path(path)
        self.model = model
        self._lock = threading.Lock()
        self._stamp = None
        self.index = self._open()

    def _manifest_stamp(self):
        try:
            st = manifest_path(self.path).stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _open(self, version: int | str | None = None) -> Index:
        stamp = self._manifest_stamp()
        index = Index.open(self.path, model=self.model, version=version)
        old = getattr(self, "index", None)
        if old is not None and old._extractor is not None and old.spec == index.spec:
            index._extractor = old._extractor  # the models (and the targets they read) stay across versions
        else:
            # a client that asks again for the same target set with other options is answered without
            # running the models; the answer is what they gave for those very inputs
            index.extractor().remember(REMEMBERED_TARGETS)
        if version is None:
            self._stamp = stamp
        return index

    def current(self) -> Index:
        """The newest committed snapshot (reopened where another process committed one)."""
        with self._lock:
            if self._manifest_stamp() != self._stamp:
                if read_manifest(self.path).generation != self.index.manifest.generation:
                    self.index = self._open()
                else:
                    self._stamp = self._manifest_stamp()
            return self.index

    def snapshot(self, as_of: int | str | None = None) -> Index:
        current = self.current()
        if as_of is None:
            return current
        with self._lock:
            return self._open(version=as_of)  # a number or a tag: the store resolves it (ASCII digits only)


def _wants_arrow(accept: str | None, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "arrow"
    return bool(accept) and wire.ARROW_STREAM in accept


def create_app(path: str | os.PathLike, *, model: Any = None, warm: bool = False):
    """The FastAPI application that serves the index at `path` (`model`: as `Index.open` takes it).
    `warm=True` loads the backbone (and embedder) now instead of on the first text query."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    served = Served(path, model=model)
    if warm:
        try:
            served.index.backbone()
            if served.index.has_embeddings:
                served.index.embedder()
        except NagError:
            pass  # e.g. an index of upstream features without a backbone: feature queries still work
    app = FastAPI(title="nagindex", summary=f"NAG queries of {served.path}")
    app.state.served = served

    @app.exception_handler(NagError)
    async def _bad_request(request, error: NagError):
        return JSONResponse({"error": str(error)}, status_code=400)

    @app.exception_handler(Exception)
    async def _failed(request, error: Exception):
        line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return JSONResponse({"error": f"internal error: {type(error).__name__}: {line}"}, status_code=500)

    async def _body(request: Request) -> dict:
        raw = await request.body()
        try:
            import json

            return json.loads(raw or b"{}")
        except ValueError as e:
            raise NagError(f"the request body is not JSON ({e})") from None

    def _check_index(named: Any) -> None:
        # a client names the index it means; another index on this machine is refused (a path this
        # machine does not have may be the same index mounted elsewhere)
        if named is None:
            return
        path = Path(str(named))
        if path.is_dir() and path.resolve() != served.path.resolve():
            raise NagError(f"this server answers for {served.path}, not {named}")

    @app.get("/health")
    def health():
        index = served.current()
        return {"status": "ok", "path": str(served.path), "version": index.manifest.generation,
                "documents": index.num_documents}

    @app.get("/info")
    def info(as_of: str | None = None):
        return wire.to_jsonable(served.snapshot(as_of).info())

    @app.get("/versions")
    def versions():
        return wire.to_jsonable(served.current().versions())

    @app.post("/query")
    async def query(request: Request):
        body = await _body(request)
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(_query, body, request.headers.get("accept"))

    def _query(body: dict, accept: str | None):
        staging = Path(tempfile.mkdtemp(prefix="nag-serve-"))
        try:
            req, service = wire.request_from_json(body, staging)
            _check_index(service.get("index"))
            index = served.snapshot(service.get("as_of"))
            result = index.run_query(req)
            table, summary = result.table, dict(result.summary)
            summary["version"] = index.manifest.generation
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if _wants_arrow(accept, service.get("format")):
            return Response(wire.arrow_bytes(table, summary), media_type=wire.ARROW_STREAM)
        return JSONResponse(wire.json_answer(table, summary))

    @app.post("/explain")
    async def explain(request: Request):
        body = await _body(request)
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(_explain, body)

    def _explain(body: dict):
        body = dict(body) if isinstance(body, dict) else {}
        docid = body.pop("docid", None)
        if docid is None:
            raise NagError("docid: give the document to explain")
        neighbours = int(body.pop("neighbours", 5))  # here: the nearest selected documents listed
        staging = Path(tempfile.mkdtemp(prefix="nag-serve-"))
        try:
            req, service = wire.request_from_json(body, staging)
            _check_index(service.get("index"))
            index = served.snapshot(service.get("as_of"))
            targets = load_targets(index, req, embed=embeds(index, req))
            if len(targets) != 1:
                raise NagError(f"explain takes one target, got {len(targets)}")
            ex = explain_row(index, str(docid), targets[0].features, neuron_type=req.neuron_type,
                             neighbours=neighbours, request=req, target=targets[0])
            return wire.to_jsonable(ex)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    return app


class BackgroundServer:
    """A server on its own thread (tests, benchmarks): `url`, then `stop()`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.url = f"http://{host}:{self._socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True)
        self._thread.start()
        import time

        for _ in range(500):
            if self.server.started:
                break
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


def serve(path: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, model: Any = None,
          warm: bool = True) -> None:
    """Serve the index at `path` until interrupted."""
    import uvicorn

    uvicorn.run(create_app(path, model=model, warm=warm), host=host, port=port, log_level="warning")
