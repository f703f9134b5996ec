"""The ray engine: extraction and ranking on a Ray cluster, same results as local.

Extraction is a Ray Data `map_batches` over a callable class: each actor loads
the backbone once (on its own GPU where the cluster has GPUs: one actor per
GPU, ``num_gpus=1``; otherwise CPU actors) and runs the local engine's
`extract_texts` on its blocks. Every row carries its position in the input, so
the driver puts the streamed results back in input order, whatever order the
blocks finish in; the caller then commits them to the index once, through the
store's own (atomic) append, so an index never holds a half-run.

Ranking is a parallel scan: the index's rows are cut into blocks; each Ray task
reads its block's features at the pinned index version, scores them with the
product's integer kernel (`scoring.score_features`) and returns only the rows
that can still be selected (its own top N, or its own prefix under the global
token budget, see `budget_candidates`). The driver merges the candidates with
the same exact order as the local engine (score descending, docid ascending)
and applies the same selection rule, so the selected docids, their order and
their distances are identical to the local engine's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import NagError

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
        from ..backbones import load_backbone

        return load_backbone(self.model, device=device, dtype=self.dtype)


class FeatureExtractor:
    """Ray Data callable class: one backbone per actor, features for each block.

    Takes an Arrow batch with the text column and `ROW`; returns `ROW` plus one
    ``(n, L*K)`` uint16 column per neuron type, computed by the local engine's
    `extract_texts` (so both engines run the same code on each document).
    """

    def __init__(
        self,
        source: BackboneSource,
        *,
        device: str | None,
        threads: int,
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
        self.backbone = source.load(device)
        self.neuron_types = tuple(neuron_types)
        self.top_k = int(top_k)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.text_column = text_column

    def __call__(self, batch) -> dict[str, np.ndarray]:
        from ..extraction import extract_texts

        texts = batch.column(self.text_column).to_pylist()
        feats = extract_texts(
            self.backbone,
            texts,
            neuron_types=self.neuron_types,
            top_k=self.top_k,
            max_length=self.max_length,
            batch_size=self.batch_size,
        )
        out = {ROW: batch.column(ROW).to_numpy()}
        for t in self.neuron_types:
            out[t] = np.ascontiguousarray(feats[t], dtype=np.uint16)
        return out


def scatter_rows(n: int, batches: Iterable[dict[str, np.ndarray]], neuron_types: Sequence[str]):
    """Put streamed result batches back in input order; check every row came back once.

    Pure: `batches` are dicts with `ROW` and one 2-D array per neuron type.
    """
    out: dict[str, np.ndarray] = {}
    seen = np.zeros(n, dtype=bool)
    for batch in batches:
        rows = np.asarray(batch[ROW], dtype=np.int64)
        if rows.size == 0:
            continue
        if seen[rows].any():
            raise RuntimeError("ray extraction returned a row twice")
        seen[rows] = True
        for t in neuron_types:
            block = np.asarray(batch[t])
            if block.dtype == object:  # ragged fallback: a column of 1-D arrays
                block = np.stack(list(block))
            if t not in out:
                out[t] = np.zeros((n, block.shape[1]), dtype=np.uint16)
            out[t][rows] = block
    if not seen.all():
        raise RuntimeError(f"ray extraction lost {int((~seen).sum())} of {n} rows")
    if n == 0:
        return {t: np.zeros((0, 0), dtype=np.uint16) for t in neuron_types}
    return out


def extract_features(
    texts: Sequence[str] | Any,
    *,
    model: Any = None,
    backbone: Any = None,
    dtype: Any = None,
    neuron_types: Sequence[str] = ("fwd_up",),
    top_k: int = 20,
    max_length: int = 120,
    batch_size: int = 32,
    workers: int | None = None,
    use_gpus: bool | None = None,
    rows_per_block: int | None = None,
    address: str | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """NAG features of `texts` computed on a Ray cluster; same values as `extract_texts`.

    `texts`: a sequence of strings (or an Arrow string array / chunked array).
    `model` (a name or path for `load_backbone`, loaded in each actor) or
    `backbone` (a loaded Backbone, shipped to the actors). Where the cluster
    has GPUs, one actor per GPU (``num_gpus=1``); otherwise CPU actors
    (`plan_workers`). Returns ``{neuron_type: uint16 (n, L*K)}`` in the order
    of `texts`. Nothing is written: the caller commits the features once.
    """
    import pyarrow as pa

    ray = connect(address)
    import ray.data

    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = texts.to_pylist()
    texts = list(texts)
    n = len(texts)
    neuron_types = tuple(neuron_types)
    if n == 0:
        return {t: np.zeros((0, 0), dtype=np.uint16) for t in neuron_types}
    if model is None and backbone is None:
        source = BackboneSource(None, dtype=dtype)  # the embedded default model
    else:
        source = BackboneSource(model, backbone=backbone, dtype=dtype)
    plan = plan_workers(cluster_gpus(), cluster_cpus(), workers=workers, use_gpus=use_gpus)
    # Blocks big enough for the extractor's length bucketing, small enough
    # that every actor gets several (load balance, progress).
    if rows_per_block is None:
        rows_per_block = max(batch_size, min(batch_size * 16, math.ceil(n / (4 * plan.workers))))
    table = pa.table({ROW: pa.array(np.arange(n, dtype=np.int64)), "text": pa.array(texts, pa.string())})
    # The driver cuts the blocks itself: no shuffle stage that would need
    # CPUs while the actor pool holds them.
    blocks = [table.slice(i, rows_per_block) for i in range(0, n, rows_per_block)]
    ds = ray.data.from_arrow(blocks).map_batches(
        FeatureExtractor,
        fn_constructor_kwargs=dict(
            source=source,
            device=plan.device,
            threads=int(plan.cpus_per_worker),
            neuron_types=neuron_types,
            top_k=top_k,
            max_length=max_length,
            batch_size=batch_size,
            text_column="text",
        ),
        batch_size=rows_per_block,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.workers),
        num_gpus=plan.gpus_per_worker or None,
        num_cpus=plan.cpus_per_worker,
    )
    batches = ds.iter_batches(batch_format="numpy", batch_size=None)
    if progress:
        from tqdm.auto import tqdm

        batches = _counting(batches, tqdm(total=n, desc="extract (ray)", unit="doc"))
    return scatter_rows(n, batches, neuron_types)


def _counting(batches, bar):
    with bar:
        for b in batches:
            bar.update(len(b[ROW]))
            yield b


# ---------------------------------------------------------------------------
# Ranking: pure functions for the exact distributed top-N / token budget
# ---------------------------------------------------------------------------


def exact_order(scores: np.ndarray, docids: np.ndarray) -> np.ndarray:
    """Positions sorted by (score descending, docid ascending): SPEC 3's order.

    Integer scores, so equal scores are exactly equal and the docid decides.
    Docids compare as Python strings (code point order, which is also UTF-8
    byte order), the same as the local engine.
    """
    scores = np.asarray(scores, dtype=np.int64)
    keys = np.asarray(docids).astype(str)
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    # lexsort: last key is primary. -score is safe: scores are >= 0.
    return np.lexsort((keys, -scores)).astype(np.int64)


def budget_candidates(order: np.ndarray, token_num: np.ndarray, budget: int) -> np.ndarray:
    """The rows of one block (in `order`) that can be in the global budget prefix.

    A row is selected globally only if every row ranked ahead of it is, so
    the tokens of the rows ahead of it *in its own block* are at most the
    budget: each block's own prefix with cumulative tokens <= budget holds
    every row of that block the global selection can take. The block's first
    row is always kept (the global "keep the first row" rule may need it).
    With a negative token_num the prefix argument fails, so the whole block
    is returned (still exact, just larger).
    """
    tok = np.nan_to_num(np.asarray(token_num, dtype=np.float64), nan=0.0)[order]
    if len(order) == 0:
        return order
    if (tok < 0).any():
        return order
    cum = np.cumsum(tok)
    keep = max(1, int(np.searchsorted(cum, budget, side="right")))
    return order[:keep]


def token_budget(total_tokens: int, fraction: float) -> int:
    """SPEC 3: budget = floor(T * fraction)."""
    return int(math.floor(total_tokens * fraction))


def select_prefix(order_tokens: np.ndarray, budget: int) -> int:
    """How many rows of a globally ordered list the token budget keeps (at least one)."""
    if len(order_tokens) == 0:
        return 0
    cum = np.cumsum(order_tokens)
    return max(1, int(np.searchsorted(cum, budget, side="right")))
