"""The query service's wire format: a `QueryRequest` as JSON, and a selection as JSON or Arrow.

A request is one JSON object: the options of `nag query` under their Python
names, targets as target file paths the server reads (`targets`), strings
(`target_texts`: a list, or {name: list}) or feature files sent whole
(`target_features`: [{"name", "suffix", "data": base64}]), and `as_of`. The
answer is the selection: an Arrow IPC stream (its schema metadata holds the
summary) when the request asks for it (``Accept: application/vnd.apache.arrow.stream``
or ``"format": "arrow"``), else JSON ``{"summary", "columns": {name: [values]}}``.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nagindex.errors import NagError
from nagindex.ranking.options import ScoringOptions
from nagindex.ranking.request import SCORING_KEYS, QueryRequest

ARROW_STREAM = "application/vnd.apache.arrow.stream"
SUMMARY_KEY = b"nagindex.summary"
FORMATS = ("json", "arrow")

# the QueryRequest fields a request carries as they are
PLAIN_FIELDS = ("target_filter_col", "fraction", "top", "each", "dedupe", "quality_col", "invert_quality", "preset",
                "neuron_type", "with_text", "plan", "batch_size")
# fields of the request object that are the service's own, not the query's
SERVICE_FIELDS = ("format", "as_of", "index")


def to_jsonable(value: Any) -> Any:
    """numpy scalars and arrays, paths and tuples as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(to_jsonable(value))


# -- the request ----------------------------------------------------------------


def feature_file_payload(source: Any, name: str | None = None) -> dict:
    """A feature file (path) or feature table as the request carries it: its bytes, base64."""
    if isinstance(source, (pa.Table, pa.RecordBatch)):
        sink = io.BytesIO()
        pq.write_table(pa.table(source) if isinstance(source, pa.RecordBatch) else source, sink)
        return {"name": name or "features", "suffix": ".parquet", "data": base64.b64encode(sink.getvalue()).decode()}
    path = Path(source)
    if not path.is_file():
        raise NagError(f"target features {path} is not a file (the client sends feature files whole)")
    return {"name": name or path.stem, "suffix": path.suffix or ".parquet",
            "data": base64.b64encode(path.read_bytes()).decode()}


def request_to_json(request: QueryRequest, **service: Any) -> dict:
    """The JSON object of `request` (plus the service's own fields: format, as_of, index).

    Text targets go as file paths the server reads (made absolute here), feature
    files go whole, target texts as strings.
    """
    body: dict[str, Any] = {}
    targets = []
    for t in request.targets:
        if isinstance(t, (str, os.PathLike)):
            targets.append(str(Path(t).absolute()))
        elif isinstance(t, list) and all(isinstance(x, (str, os.PathLike)) for x in t):
            targets.append([str(Path(x).absolute()) for x in t])
        else:
            raise NagError("a query sent to a server takes its targets as file paths, target_texts or "
                           f"target_features, not {type(t).__name__}")
    if targets:
        body["targets"] = targets
    if request.target_features:
        body["target_features"] = [feature_file_payload(f) for f in request.target_features]
    if request.target_texts:
        body["target_texts"] = {name: list(texts) for name, texts in request.target_texts}
    if request.target_filter is not None:
        body["target_filter"] = (list(request.target_filter) if isinstance(request.target_filter, tuple)
                                 else request.target_filter)
    for name in PLAIN_FIELDS:
        body[name] = getattr(request, name)
    body["target_format"] = request.fmt
    if request.scoring is not None:
        body["scoring_options"] = dataclasses.asdict(request.scoring)
    body.update({k: v for k, v in request.overrides})
    body.update({k: v for k, v in service.items() if v is not None})
    return to_jsonable(body)


def request_from_json(body: Any, staging: Path) -> tuple[QueryRequest, dict]:
    """(the QueryRequest, the service's own fields) of a request object; feature files are
    written to `staging` for the query to read."""
    if not isinstance(body, dict):
        raise NagError("a query is one JSON object")
    known = set(PLAIN_FIELDS) | set(SCORING_KEYS) | set(SERVICE_FIELDS) | {
        "targets", "target_features", "target_texts", "target_filter", "target_format", "scoring_options"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise NagError(f"unknown field(s) {', '.join(unknown)}; a query takes {', '.join(sorted(known))}")
    service = {k: body.get(k) for k in SERVICE_FIELDS}
    if service["format"] not in (None, *FORMATS):
        raise NagError(f"unknown format {service['format']!r}; use json or arrow")
    features = []
    for i, item in enumerate(body.get("target_features") or []):
        if isinstance(item, str):
            features.append(item)  # a file the server reads
            continue
        if not isinstance(item, dict) or "data" not in item:
            raise NagError(f"target_features[{i}]: give a path or {{name, suffix, data (base64)}}")
        name = Path(str(item.get("name") or f"features{i}")).name
        suffix = str(item.get("suffix") or ".parquet")
        if suffix not in (".parquet", ".jsonl", ".json"):
            raise NagError(f"target_features[{i}]: suffix {suffix!r}; use .parquet or .jsonl")
        folder = staging / f"{i}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}{suffix}"
        try:
            path.write_bytes(base64.b64decode(item["data"], validate=True))
        except (ValueError, TypeError):
            raise NagError(f"target_features[{i}]: data is not base64") from None
        features.append(str(path))
    scoring = body.get("scoring_options")
    if scoring is not None:
        if not isinstance(scoring, dict):
            raise NagError("scoring_options: give an object of ScoringOptions fields")
        try:
            scoring = ScoringOptions(**scoring)
        except TypeError as e:
            raise NagError(f"scoring_options: {e}") from None
        scoring.check()
    options = {k: body[k] for k in PLAIN_FIELDS if body.get(k) is not None}
    options.update({k: body[k] for k in SCORING_KEYS if body.get(k) is not None})
    texts = body.get("target_texts")
    if texts is not None and not isinstance(texts, (list, dict)):
        raise NagError("target_texts: give a list of strings or {name: [strings]}")
    targets = body.get("targets") or []
    if not isinstance(targets, list):
        raise NagError("targets: give a list of target file paths")
    request = QueryRequest.build(
        targets, target_features=features, target_texts=texts, target_filter=body.get("target_filter"),
        fmt=body.get("target_format") or "auto", scoring_options=scoring, **options)
    return request, service


# -- the answer -----------------------------------------------------------------


def table_with_summary(table: pa.Table, summary: dict) -> pa.Table:
    metadata = dict(table.schema.metadata or {})
    metadata[SUMMARY_KEY] = dumps(summary).encode()
    return table.replace_schema_metadata(metadata)


def arrow_bytes(table: pa.Table, summary: dict) -> bytes:
    table = table_with_summary(table, summary)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def read_arrow(data: bytes) -> tuple[pa.Table, dict]:
    """(the table without the summary metadata, the summary) of an Arrow answer."""
    table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    metadata = dict(table.schema.metadata or {})
    summary = json.loads(metadata.pop(SUMMARY_KEY, b"{}"))
    return table.replace_schema_metadata(metadata or None), summary


def json_answer(table: pa.Table, summary: dict) -> dict:
    return {"summary": to_jsonable(summary), "columns": to_jsonable(table.to_pydict())}
