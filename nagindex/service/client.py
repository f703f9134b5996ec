"""`Client`: `Index.query` against a running `nag serve`, the same table back.

Standard library HTTP only (no extra needed on the client side). Text target
files are read by the server (their absolute paths are sent), feature files
and feature tables are sent whole, target texts as strings.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

import pyarrow as pa

from nagindex.errors import NagError
from nagindex.io import write_table_atomic
from nagindex.ranking.request import QueryRequest
from nagindex.service import wire

SERVER_ENV = "NAG_SERVER"


class RemoteResult:
    """A query answered by a server: `table` and `summary`, as `QueryResult` has them."""

    def __init__(self, table: pa.Table, summary: dict):
        self.table = table
        self.summary = summary

    def write_parquet(self, path) -> None:
        write_table_atomic(self.table, path)


class Client:
    """The query service at `url` (e.g. ``http://127.0.0.1:8000``)."""

    def __init__(self, url: str | None = None, *, timeout: float = 600.0):
        url = url or os.environ.get(SERVER_ENV)
        if not url:
            raise NagError(f"no server given: pass its URL or set {SERVER_ENV}")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict | None = None, accept: str = "application/json") -> bytes:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Accept": accept, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as answer:
                return answer.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace").strip() or e.reason
            if 400 <= e.code < 500:
                raise NagError(message) from None
            raise RuntimeError(f"the server at {self.url} failed ({e.code}): {message}") from None
        except urllib.error.URLError as e:
            raise NagError(f"cannot reach the server at {self.url} ({e.reason})") from None

    def _json(self, method: str, path: str, body: dict | None = None):
        return json.loads(self._call(method, path, body))

    def run_query(self, targets: Any = (), *, as_of: int | str | None = None, index: Any = None,
                  **options) -> RemoteResult:
        """`Index.run_query` on the server: targets and options as `Index.query` takes them
        (or one `QueryRequest`); the table and summary."""
        request = targets if isinstance(targets, QueryRequest) else QueryRequest.build(targets, **options)
        body = wire.request_to_json(request, format="arrow", as_of=as_of,
                                    index=None if index is None else str(index))
        table, summary = wire.read_arrow(self._call("POST", "/query", body, accept=wire.ARROW_STREAM))
        return RemoteResult(table, summary)

    def query(self, targets: Any = (), **options) -> pa.Table:
        """`Index.query` on the server: the selection as an Arrow table, in rank order."""
        return self.run_query(targets, **options).table

    def explain(self, docid: str, targets: Any = (), **options) -> dict:
        body = {"docid": docid}
        extra = {k: options.pop(k) for k in ("neighbours", "as_of") if k in options}
        request = QueryRequest.build(targets, **options)
        body.update(wire.request_to_json(request))
        body.update(extra)
        return self._json("POST", "/explain", body)

    def info(self, as_of: int | str | None = None) -> dict:
        return self._json("GET", "/info" + (f"?as_of={as_of}" if as_of is not None else ""))

    def versions(self) -> list[dict]:
        return self._json("GET", "/versions")

    def health(self) -> dict:
        return self._json("GET", "/health")
