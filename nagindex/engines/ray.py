"""The ray engine: extraction and ranking on a Ray cluster, same results as local.

Extraction is a Ray Data `map_batches` over a callable class: each actor loads
the backbone once (on its own GPU where the cluster has GPUs: one actor per
GPU, ``num_gpus=1``; otherwise CPU actors) and runs the local engine's
`extract_texts` on its blocks. The blocks stream back to the driver in input
order (checked row by row), and the store commits them with its own single,
atomic append, so an index never holds a half-run and its rows are in the
same order as with the local engine.

Ranking is a parallel scan of the index's Lance table at the version its
manifest pins (``ray.data.read_lance``): each block is scored for every target
with the product's integer kernel (`scoring.score_features`) and returns only
the rows that can still be selected (`block_candidates`: its own top N, or its
own prefix under the global token budget, tie groups at the edge whole). The
driver runs the local engine's selection over these candidates (docid
tie-break, budget cut), so the selected docids, their order and their
distances are identical to the local engine's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from nagindex.engines.base import Engine, ModelRef
from nagindex.extraction.extractor import Extractor, extractor_for
from nagindex.errors import NagError
from nagindex.ranking import scoring
from nagindex.ranking.inverted import Candidates
from nagindex.ranking.planner import Plan, PlannedCandidates
from nagindex.ranking.selection import block_candidates
from nagindex.schemas import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_NEURON_TYPE,
    DEFAULT_TOP_K,
    TOKEN_NUM,
    FeatureSpec,
    feature_column,
    parse_neuron_types,
)
from nagindex.schemas import ROW as ROW_COL
from nagindex.store import ingest

# Column that carries each row's position in the input through Ray Data.
ROW = "_nag_row"


# ---------------------------------------------------------------------------
# Cluster
# ---------------------------------------------------------------------------


def connect(address: str | None = None, *, num_cpus: int | None = None):
    """Join a Ray cluster (or start a local one) unless this process already has one.

    `address`: ``"auto"`` or ``"ray://host:port"``; None uses ``RAY_ADDRESS``
    when set, else starts a local cluster with `num_cpus` CPUs (default: all).
    Returns the `ray` module.
    """
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False)
        if address is None and num_cpus is not None:
            kwargs["num_cpus"] = int(num_cpus)
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:  # no cluster at that address
            raise NagError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None
    return ray


def cluster_gpus() -> int:
    """Whole GPUs in the cluster (0 on CPU-only clusters)."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@dataclass(frozen=True)
class WorkerPlan:
    """How many extraction actors run and what each one reserves."""

    workers: int
    gpus_per_worker: float
    cpus_per_worker: float

    @property
    def device(self) -> str | None:
        # A GPU actor sees only its own GPU (Ray sets CUDA_VISIBLE_DEVICES),
        # so "cuda" is that GPU; CPU actors must not grab a GPU by default.
        return "cuda" if self.gpus_per_worker > 0 else "cpu"


def plan_workers(
    gpus: int, cpus: int, *, workers: int | None = None, use_gpus: bool | None = None
) -> WorkerPlan:
    """One actor per GPU where there are GPUs, else CPU actors sharing the cores.

    Pure (takes the cluster's counts) so it is tested without a cluster.
    `use_gpus=False` forces CPU actors on a GPU cluster; `workers` caps the
    number of actors.
    """
    if use_gpus is None:
        use_gpus = gpus > 0
    if use_gpus:
        if gpus < 1:
            raise NagError("GPU extraction asked for, but the Ray cluster has no GPU")
        n = gpus if workers is None else min(int(workers), gpus)
        return WorkerPlan(workers=max(1, n), gpus_per_worker=1.0, cpus_per_worker=1.0)
    # CPU actors: torch already runs several threads per process, so a few
    # actors with several cores each beat one actor per core. One core stays
    # free for Ray Data's own tasks (feeding blocks): an actor pool that holds
    # every CPU starves them and the pipeline never starts.
    spare = max(1, cpus - 1)
    n = workers if workers is not None else max(1, spare // 4)
    n = max(1, min(int(n), spare))
    return WorkerPlan(workers=n, gpus_per_worker=0.0, cpus_per_worker=float(max(1, spare // n)))


# ---------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------


class BackboneSource:
    """What each actor loads: a model name (loaded in the actor) or a ready Backbone.

    A model name is what a cluster should use: each actor loads the weights
    itself, on its own device. A Backbone object (e.g. a test's tiny model) is
    shipped to the actors and moved to their device.
    """

    def __init__(self, model: Any = None, *, backbone: Any = None, dtype: Any = None):
        self.model = None if model is None else str(model)
        self.backbone = backbone
        self.dtype = dtype

    def load(self, device: str | None):
        import torch

        if self.backbone is not None:
            bb = self.backbone
            if device is not None and torch.device(device) != bb.device:
                bb.model.to(device)
                bb.device = torch.device(device)
            return bb
        from nagindex.extraction.backbones import load_backbone

        return load_backbone(self.model, device=device, dtype=self.dtype)


FEATURE_PREFIX = "_nag_feature_"


class FeatureExtractor:
    """Ray Data callable class: one backbone per actor, features for each block.

    Takes an Arrow batch of documents (text column, `ROW`, any payload) and
    returns it with one fixed-size-list uint16 column per neuron type,
    computed by the local engine's `extract_texts` (so both engines run the
    same code on each document), and `token_num` filled where it was missing
    (counted with the backbone's tokenizer, so the driver needs no model).
    The actor checks that its backbone makes features of the index's `spec`.
    """

    def __init__(
        self,
        source: BackboneSource,
        *,
        device: str | None,
        threads: int,
        spec_json: str | None,
        neuron_types: Sequence[str],
        top_k: int,
        max_length: int,
        batch_size: int,
        text_column: str,
    ):
        if device == "cpu":
            import torch

            # Ray pins OMP_NUM_THREADS to the actor's CPUs; say it to torch too.
            torch.set_num_threads(max(1, int(threads)))
        backbone = source.load(device)
        if spec_json is not None:
            # the index's spec: the actor's backbone must make exactly its features
            self.extractor = Extractor(FeatureSpec.from_json(spec_json), model=backbone, what="the model's features")
        else:
            self.extractor = extractor_for(backbone, neuron_types=neuron_types, top_k=top_k, max_length=max_length)
        self.backbone = backbone
        self.spec = self.extractor.spec
        self.batch_size = int(batch_size)
        self.text_column = text_column

    def __call__(self, batch):
        import pyarrow as pa

        texts = batch.column(self.text_column).to_pylist()
        spec = self.spec
        feats = self.extractor.extract(["" if t is None else t for t in texts], batch_size=self.batch_size)
        if TOKEN_NUM in batch.column_names:
            batch = ingest.fill_token_num(batch, self.extractor.count_tokens, "documents")
        for t in spec.neuron_types:
            flat = pa.array(np.ascontiguousarray(feats[t], dtype=np.uint16).reshape(-1))
            batch = batch.append_column(
                FEATURE_PREFIX + t, pa.FixedSizeListArray.from_arrays(flat, spec.feature_length)
            )
        return batch


def split_features(table, neuron_types: Sequence[str]):
    """(documents without the feature columns, {type: uint16 (n, L*K)}) of an extractor output."""
    feats = {}
    for t in neuron_types:
        col = table.column(FEATURE_PREFIX + t).combine_chunks()
        width = col.type.list_size
        feats[t] = col.flatten().to_numpy(zero_copy_only=False).astype(np.uint16, copy=False).reshape(-1, width)
    drop = [FEATURE_PREFIX + t for t in neuron_types]
    return table.drop_columns(drop), feats


def unwrap_user_error(exc: BaseException) -> BaseException:
    """The NagError behind a Ray task/actor failure, if there is one, else `exc`.

    Ray wraps what a worker raised (RayTaskError, UserCodeException); users
    should see the same one-line error as with the local engine.
    """
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, NagError):
            return NagError(e.message)
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    # An actor that fails in __init__ reaches the driver as ActorDiedError,
    # which keeps the worker's traceback only as text.
    marker = "nagindex.errors.NagError: "
    text = str(exc)
    if marker in text:
        return NagError(text.rsplit(marker, 1)[1].splitlines()[0].strip())
    return exc


def extract_batches(
    documents: Iterable[Any],
    *,
    model: Any = None,
    spec: Any = None,
    neuron_types: Sequence[str] | None = None,
    top_k: int | None = None,
    max_length: int | None = None,
    dtype: Any = None,
    batch_size: int = 32,
    text_column: str = "doc",
    workers: int | None = None,
    use_gpus: bool | None = None,
    address: str | None = None,
):
    """Stream document tables through Ray extraction actors; yield (documents, features) in input order.

    The drop-in for the local engine's per-batch extraction in
    `Index.append`: same input (Arrow tables with the text column), same
    output (each table with ``{type: uint16 (n, L*K)}``), one actor pool for
    the whole stream (the model loads once per actor). The store then commits
    everything with its single manifest write, as with the local engine.
    `model`: a name/path for `load_backbone` (loaded in each actor) or a
    loaded Backbone (shipped to the actors). `spec`: the index's FeatureSpec;
    the actors refuse a model whose features would not match it.
    """
    import pyarrow as pa

    ray = connect(address)
    import ray.data

    if spec is not None:
        neuron_types, top_k, max_length = spec.neuron_types, spec.top_k, spec.max_length

    neuron_types = parse_neuron_types(neuron_types or (DEFAULT_NEURON_TYPE,))
    top_k = DEFAULT_TOP_K if top_k is None else int(top_k)
    max_length = DEFAULT_MAX_LENGTH if max_length is None else int(max_length)
    if _is_backbone(model):
        source = BackboneSource(backbone=model)
        if spec is not None:
            # a loaded backbone is checked here, before any actor starts
            Extractor(spec, model=model, what="the model's features")
    else:
        source = BackboneSource(model, dtype=dtype)
    plan = plan_workers(cluster_gpus(), cluster_cpus(), workers=workers, use_gpus=use_gpus)

    # The driver hands each table to the object store (Ray spills it to disk
    # when memory runs short) and keeps only references.
    refs, n = [], 0
    for table in documents:
        if table.num_rows == 0:
            continue
        if text_column not in table.column_names:
            raise NagError(f"documents have no {text_column!r} text column to extract features from")
        rows = pa.array(np.arange(n, n + table.num_rows, dtype=np.int64))
        refs.append(ray.put(table.append_column(ROW, rows)))
        n += table.num_rows
    if not refs:
        return
    ctx = ray.data.DataContext.get_current()
    # Blocks must come back in input order, so the index's rows are in the same
    # order as with the local engine (ROW checks it). A dataset takes the context
    # as it is when it is built: the order is asked for before that.
    old = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        yield from _ordered_features(ray, ctx, refs, n, source, plan, spec, neuron_types, top_k, max_length,
                                     batch_size, text_column)
    finally:
        ctx.execution_options.preserve_order = old


def _ordered_features(ray, ctx, refs, n, source, plan, spec, neuron_types, top_k, max_length, batch_size,
                      text_column):
    ds = ray.data.from_arrow_refs(refs).map_batches(
        FeatureExtractor,
        fn_constructor_kwargs=dict(
            source=source,
            device=plan.device,
            threads=int(plan.cpus_per_worker),
            spec_json=None if spec is None else spec.to_json(),
            neuron_types=neuron_types,
            top_k=top_k,
            max_length=max_length,
            batch_size=batch_size,
            text_column=text_column,
        ),
        batch_size=None,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.workers),
        num_gpus=plan.gpus_per_worker or None,
        num_cpus=plan.cpus_per_worker,
    )
    expected = 0
    try:
        for out in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            if out.num_rows == 0:
                continue
            rows = out.column(ROW).to_numpy()
            if rows[0] != expected or not np.array_equal(rows, np.arange(expected, expected + len(rows))):
                raise RuntimeError("ray extraction returned rows out of order")
            expected += len(rows)
            docs, feats = split_features(out.drop_columns([ROW]), neuron_types)
            if spec is not None:

                feats = ingest.check_features(feats, spec, docs.num_rows, "extracted features")
            yield docs, feats
    except Exception as exc:
        err = unwrap_user_error(exc)
        if err is exc:
            raise
        raise err from None
    if expected != n:
        raise RuntimeError(f"ray extraction returned {expected} of {n} rows")


def _is_backbone(model: Any) -> bool:
    from nagindex.extraction.backbones import Backbone

    return isinstance(model, Backbone)


def extract_features(
    texts: Sequence[str] | Any,
    *,
    model: Any = None,
    dtype: Any = None,
    neuron_types: Sequence[str] = (DEFAULT_NEURON_TYPE,),
    top_k: int = DEFAULT_TOP_K,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 32,
    rows_per_block: int | None = None,
    workers: int | None = None,
    use_gpus: bool | None = None,
    address: str | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """NAG features of `texts` computed on a Ray cluster; the same values as `extract_texts`.

    `model`: a name/path (loaded in each actor) or a loaded Backbone; None is
    the embedded default. Where the cluster has GPUs: one actor per GPU
    (``num_gpus=1``); otherwise CPU actors (`plan_workers`). Returns
    ``{neuron_type: uint16 (n, L*K)}`` in the order of `texts`; writes nothing.
    """
    import pyarrow as pa

    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = texts.to_pylist()
    texts = list(texts)
    n = len(texts)

    neuron_types = parse_neuron_types(neuron_types)
    # Blocks: big enough for length bucketing, several per actor (balance).
    if rows_per_block is None:
        rows_per_block = max(batch_size, min(batch_size * 64, math.ceil(n / 8) or 1))
    table = pa.table({"doc": pa.array(texts, pa.string())})
    blocks = (table.slice(i, rows_per_block) for i in range(0, n, rows_per_block))
    parts: dict[str, list[np.ndarray]] = {t: [] for t in neuron_types}
    stream = extract_batches(
        blocks, model=model, dtype=dtype, neuron_types=neuron_types, top_k=top_k, max_length=max_length,
        batch_size=batch_size, workers=workers, use_gpus=use_gpus, address=address,
    )
    from tqdm.auto import tqdm

    with tqdm(total=n, unit="doc", desc="extract (ray)", disable=not progress) as bar:
        for docs, feats in stream:
            for t in neuron_types:
                parts[t].append(feats[t])
            bar.update(docs.num_rows)
    if n == 0:
        return {t: np.zeros((0, 0), dtype=np.uint16) for t in neuron_types}
    return {t: np.concatenate(parts[t]) for t in neuron_types}


def remote_feature_spec(
    model: Any = None, *, neuron_types: Sequence[str] = (DEFAULT_NEURON_TYPE,), top_k: int = DEFAULT_TOP_K,
    max_length: int = DEFAULT_MAX_LENGTH, address: str | None = None,
):
    """The FeatureSpec that `model` makes, computed on the cluster (the driver loads no model).

    For `Index.build` with the ray engine: the index needs its spec before
    the first append. Loads the model on a CPU worker (the weights hash does
    not depend on device or dtype).
    """

    neuron_types = parse_neuron_types(neuron_types)
    if _is_backbone(model):
        from nagindex.extraction.features import feature_spec

        return feature_spec(model, neuron_types, top_k, max_length)
    ray = connect(address)

    @ray.remote(num_cpus=1, num_gpus=0)
    def _spec(model_name, types, k, length):
        from nagindex.extraction.backbones import load_backbone
        from nagindex.extraction.features import feature_spec

        return feature_spec(load_backbone(model_name, device="cpu"), types, k, length).to_json()

    try:
        text = ray.get(_spec.remote(None if model is None else str(model), tuple(neuron_types), int(top_k), int(max_length)))
    except Exception as exc:
        err = unwrap_user_error(exc)
        if err is exc:
            raise
        raise err from None
    return FeatureSpec.from_json(text)


# ---------------------------------------------------------------------------
# Ranking: per-block candidates (pure) and the distributed scan
# ---------------------------------------------------------------------------


def lance_uri(index) -> str:
    """The Lance dataset of the index's documents (the table its manifest pins)."""
    from pathlib import Path

    path = Path(index.path) / f"{index.manifest.lance_table}.lance"
    if not path.is_dir():
        raise NagError(f"index {index.path} is damaged: its Lance table {path.name} is missing")
    return str(path)


class _BlockScorer:
    """Ray Data function: one block of Lance rows -> its candidates for every profile."""

    def __init__(self, profiles, tops, budgets, dead: np.ndarray, feature_col: str, row_col: str, token_col: str):
        self.profiles, self.tops, self.budgets = profiles, tops, budgets
        self.dead = dead
        self.feature_col, self.row_col, self.token_col = feature_col, row_col, token_col

    def __call__(self, batch) -> dict[str, np.ndarray]:
        import pyarrow.compute as pc


        rows = batch.column(self.row_col).to_numpy()
        live = ~np.isin(rows, self.dead) if len(self.dead) else np.ones(len(rows), dtype=bool)
        col = batch.column(self.feature_col).combine_chunks()
        feats = col.flatten().to_numpy(zero_copy_only=False).reshape(len(rows), col.type.list_size)
        tokens = pc.fill_null(batch.column(self.token_col), 0).to_numpy().astype(np.int64)
        rows, feats, tokens = rows[live], feats[live], tokens[live]
        out_p, out_r, out_s = [], [], []
        for i, profile in enumerate(self.profiles):
            scores = scoring.score_features(feats, profile)
            keep = block_candidates(scores, tokens, top=self.tops[i], budget=self.budgets[i])
            out_p.append(np.full(len(keep), i, dtype=np.int32))
            out_r.append(rows[keep])
            out_s.append(scores[keep])
        return {
            "profile": np.concatenate(out_p) if out_p else np.zeros(0, np.int32),
            "row": np.concatenate(out_r) if out_r else np.zeros(0, np.int64),
            "score": np.concatenate(out_s) if out_s else np.zeros(0, np.int64),
        }


def scan_candidates(
    index,
    profiles: Sequence[Any],
    neuron_type: str,
    *,
    tops: Sequence[int | None] | None = None,
    budgets: Sequence[int | None] | None = None,
    blocks: int | None = None,
    address: str | None = None,
) -> list[Candidates]:
    """Score the index on the cluster; return each profile's candidate rows and exact scores.

    A Ray Data scan of the index's Lance table at the version its manifest
    pins (``ray.data.read_lance``): every block is scored for all profiles in
    one read with `scoring.score_features` and keeps only `block_candidates`.
    `tops[i]` / `budgets[i]` (a token budget, floor(T * fraction) over the
    live pool) say what target i selects; both None keeps every live row.
    Feed the result to the local engine's selection (`selection.top_selection`
    / `budget_selection` with the pool's total tokens): the docid tie-break
    and the cut happen there, over a superset of the answer, so the selection
    is exactly the local engine's.
    """

    m = len(profiles)
    tops = list(tops) if tops is not None else [None] * m
    budgets = list(budgets) if budgets is not None else [None] * m
    if len(tops) != m or len(budgets) != m:
        raise ValueError("tops and budgets need one entry per profile")
    index.spec.width(neuron_type)
    empty = [Candidates(np.zeros(0, np.int64), np.zeros(0, np.int64), {"blocks": 0}) for _ in range(m)]
    if index.num_rows == 0 or index.manifest.lance_version is None or m == 0:
        return empty
    ray = connect(address)
    import ray.data

    mask = index.live_mask()
    dead = np.zeros(0, np.int64) if mask is None else np.flatnonzero(~mask).astype(np.int64)
    if blocks is None:
        # a few blocks per core; each at most ~64k rows (~70 MB of L*K=560 features)
        blocks = max(cluster_cpus() * 2, math.ceil(index.num_rows / 65536))
    ds = ray.data.read_lance(
        lance_uri(index),
        version=index.manifest.lance_version,
        columns=[ROW_COL, feature_column(neuron_type), TOKEN_NUM],
        override_num_blocks=int(blocks),
    )
    scorer = _BlockScorer(list(profiles), tops, budgets, dead, feature_column(neuron_type), ROW_COL, TOKEN_NUM)
    ds = ds.map_batches(scorer, batch_format="pyarrow", batch_size=None)
    parts_p, parts_r, parts_s = [], [], []
    n_blocks = 0
    try:
        for out in ds.iter_batches(batch_format="numpy", batch_size=None):
            n_blocks += 1
            parts_p.append(out["profile"])
            parts_r.append(out["row"])
            parts_s.append(out["score"])
    except Exception as exc:
        err = unwrap_user_error(exc)
        if err is exc:
            raise
        raise err from None
    which = np.concatenate(parts_p) if parts_p else np.zeros(0, np.int32)
    rows = np.concatenate(parts_r) if parts_r else np.zeros(0, np.int64)
    scores = np.concatenate(parts_s) if parts_s else np.zeros(0, np.int64)
    result = []
    for i in range(m):
        sel = which == i
        r, s = rows[sel].astype(np.int64), scores[sel].astype(np.int64)
        order = np.argsort(r, kind="stable")
        result.append(Candidates(r[order], s[order], {"engine": "ray", "blocks": n_blocks, "candidates": int(len(r))}))
    return result


class RayEngine(Engine):
    """Extraction as Ray Data `map_batches` over actors, ranking as a distributed scan."""

    name = "ray"

    def __init__(self, address: str | None = None):
        self.address = address

    def feature_spec(self, model: Any, *, neuron_types: Sequence[str], top_k: int, max_length: int):
        return remote_feature_spec(model, neuron_types=neuron_types, top_k=top_k, max_length=max_length,
                                   address=self.address)

    def extract_batches(self, documents, *, model: ModelRef, spec, batch_size: int = 32):
        return extract_batches(documents, model=model.source, spec=spec, batch_size=batch_size, address=self.address)

    def candidates(self, index, profiles, neuron_type, request):

        # the cluster keeps a proven superset of each answer; the selection
        # (tie-break, cut) is the local one. The quality combination needs every row.
        keep_all = request.quality or getattr(request, "every_row", False)
        found = scan_candidates(index, profiles, neuron_type,
                                tops=[None if keep_all else t for t in request.tops],
                                budgets=[None if keep_all else b for b in request.budgets], address=self.address)
        return [PlannedCandidates(c, Plan(name, "ray", "distributed scan (--engine ray)", c.stats))
                for name, c in zip(request.names, found)]
