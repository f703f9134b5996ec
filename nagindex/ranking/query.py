"""A query end to end: targets -> profiles -> candidates (an engine) -> selection -> output.

How the pool is scored is one `ScoringOptions` value (ranking/options.py):
NAG alone (its weighting, power, rank discount, K, layers), the embedding
alone, or their fusion (a calibrated sum, or reciprocal ranks); every score is an integer, so the
order is exact and ties go to the docid.

`run_query` reads as those steps. The candidate step is the engine's: by
default the local planner (`planner.local_candidates`: inverted lists where
they can prove the answer cheaply, else one scan), or an engine's such as
Ray's distributed scan; both return rows that provably hold the exact answer,
with exact integer scores, and the selection (tie-break by docid, token
budget or top N, mixture, quality combination) is the same code for all.
The local scan cuts each target's candidates as it scores (`scanned_candidates`),
and the output is made batch by batch (`output`): with NAG scores no step holds
more than one score per document of the pool (the embedding, the fusion and the
quality combination still rank every live row, with its docid).
"""


from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from nagindex.errors import NagError
from nagindex.heap import release_free_heap
from nagindex.ranking import embedding as emb
from nagindex.ranking import output, scoring, selection
from nagindex.ranking.options import ScoringOptions
from nagindex.ranking.planner import CandidateRequest, Plan, local_candidates
from nagindex.ranking.request import DEFAULT_FRACTION, QueryRequest
from nagindex.ranking.scan import pool_neuron_counts
from nagindex.ranking.targets import (
    Target,
    as_target,
    load_feature_target,
    load_text_target,
)
from nagindex.schemas import DATASET, DEFAULT_NEURON_TYPE
from nagindex.sources import is_table_like

__all__ = ["DEFAULT_FRACTION", "QueryRequest", "QueryResult", "Target", "run_query"]


class QueryResult:
    """A query's selection: `table` (the selected rows in rank order, made on first use),
    `write_parquet` (the same table streamed to a file, one batch in memory at a time),
    `summary` and the `plans` with `explain`."""

    def __init__(self, index, selection: output.Selection, *, with_text: bool, plans: list[Plan], summary: dict):
        self.index = index
        self.selection = selection
        self.with_text = with_text
        self.plans = plans
        self._summary = summary  # everything but what the output rows say
        self._dataset_counts: dict[str, int] | None = None

    @cached_property
    def table(self) -> pa.Table:
        return output.output_table(self.index, self.selection, with_text=self.with_text)

    def write_parquet(self, path) -> None:
        """Write the output table to `path` (parquet) batch by batch, atomically."""
        counts = output.write_parquet(self.index, self.selection, path, with_text=self.with_text)
        self._dataset_counts = self._dataset_counts or counts

    @property
    def summary(self) -> dict:
        if self._dataset_counts is None:
            table = self.__dict__.get("table")  # made already: count from it
            if table is not None:
                self._dataset_counts = output.add_dataset_counts({}, table.column(DATASET))
            else:
                self._dataset_counts = self._count_datasets()
        picked = output.selection_summary(self.selection, self._dataset_counts)
        order = ("selected_docs", "selected_tokens", "pool_docs", "pool_tokens", "distance_min", "distance_max",
                 "datasets")
        merged = {**self._summary, **picked}
        return {**{k: merged[k] for k in order}, **{k: v for k, v in merged.items() if k not in order}}

    def _count_datasets(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        if DATASET not in self.index.columns():
            return output.add_dataset_counts(counts, pa.nulls(len(self.selection), pa.string()))
        rows = self.selection.rows
        for lo in range(0, len(rows), output.OUTPUT_BATCH_ROWS):
            part = self.index.take(rows[lo : lo + output.OUTPUT_BATCH_ROWS], [DATASET]).column(DATASET)
            output.add_dataset_counts(counts, part)
        return counts

    def explain(self) -> str:
        return "\n".join(p.describe() for p in self.plans)


def _split_top(top: int, m: int) -> list[int]:
    base, extra = divmod(int(top), m)
    return [base + (1 if i < extra else 0) for i in range(m)]


def _check_quality_column(index, column: str) -> None:
    columns = index.columns()
    if column not in columns:
        raise NagError(f"quality column {column!r} is not in this index (it has {', '.join(columns)})")
    typ = index.take(np.zeros(0, dtype=np.int64), [column]).schema.field(column).type
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ)):
        raise NagError(f"quality column {column!r} is not numeric (it is {typ})")


def _quality_values(index, rows: np.ndarray, column: str) -> np.ndarray:
    col = index.take(rows, [column]).column(column)
    values = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64)


def run_query(index, request: QueryRequest | Any = (), *, engine: Any = None, **options: Any) -> QueryResult:
    """Select from the index's pool for each target of `request` (SPEC 3) and mix them (SPEC 4).

    `request`: a `QueryRequest` (`ranking.request`), which says what is
    selected and how it is scored. As a convenience, targets with the keyword
    options of `QueryRequest.build` build one here.
    With M targets each gets fraction/M (or top/M, remainders to the first
    targets); with `each`, every target selects on its own, its whole
    fraction (or top N), all of them from one pass over the pool.
    `engine`: where the pool is scored, an object with the `candidates` step
    of `nagindex.engines.base.Engine`; None scores it here (`local_candidates`).
    """
    if not isinstance(request, QueryRequest):
        request = QueryRequest.build(options.pop("targets", request), **options)
    elif options:
        raise TypeError(f"run_query takes a QueryRequest or options, not both ({', '.join(sorted(options))})")
    req = request
    # every cheap check first, before any target is extracted
    fraction, top = req.fraction, req.top
    neuron_type, quality_col = req.neuron_type, req.quality_col
    index.spec.width(neuron_type)
    opts = req.scoring_options(default_preset_of(index))
    kept_layers = scoring.resolve_layers(opts.layers, index.spec.num_layers)
    slots = opts.slots(index.spec.top_k)
    if opts.mode in ("embedding", "fusion") and not _has_embeddings(index):
        raise NagError(f"--mode {opts.mode} needs an index with embeddings (nag index build --embedder ...)")
    if quality_col is not None:
        _check_quality_column(index, quality_col)

    loaded = load_targets(index, req, embed=_embeds(index, opts))
    prefetch = getattr(index, "prefetch_payload_reader", None)
    if prefetch is not None:
        prefetch()  # the output's payload reader loads while the pool is scored (targets are good by now)
    mode = resolve_mode(opts.mode, index, loaded)
    request = candidate_request(index, loaded, fraction=fraction, top=top, plan=req.plan, each=req.each,
                                quality=quality_col is not None, progress=req.progress)
    request.every_row = mode == "fusion"
    profiles = [None] * len(loaded)
    if mode != "embedding":
        profiles = target_profiles(index, loaded, neuron_type, request.live_mask, power=opts.power,
                                   layers=kept_layers, weighting=opts.weighting, slots=slots, discount=opts.discount)
        candidate_step = local_candidates if engine is None else engine.candidates
        found = candidate_step(index, profiles, neuron_type, request)
        nag = [(f.candidates.rows, f.candidates.scores, f.candidates.tokens) for f in found]
        plans = [f.plan for f in found]
        del found
        release_free_heap()  # the scan's temporaries: gone before the selection starts
    else:
        nag = [None] * len(loaded)
        plans = [Plan(t.name, "embedding", "the embedding alone scores every row") for t in loaded]
    live = request.live if mode != "nag" else None  # the embedding scores every live row
    pool_vectors = index.embeddings(live) if mode != "nag" else None
    picks = []
    for i in range(len(loaded)):
        scored = ranked_scores(index, live, nag[i], loaded[i], pool_vectors, opts, mode)
        nag[i] = None  # a target's candidates are not needed past its selection
        picks.append(select_one(index, scored, profiles[i], request, i, quality_col=quality_col,
                                invert_quality=req.invert_quality))
        del scored
    release_free_heap()
    chosen = mixture(index, picks, [t.name for t in loaded], dedupe=req.dedupe, name_targets=req.each or len(picks) > 1,
                     quality=quality_col is not None)
    summary = {
        "pool_docs": request.n_live,
        "pool_tokens": request.live_tokens,
        "targets": {t.name: int(len(t.features)) for t in loaded},
        "missing_quality": int(picks[-1].missing_quality if picks else 0),
        "plans": [p.describe() for p in plans],
        "scoring": opts.describe(mode),
        "mode": mode,
        "mode_reason": mode_reason(opts.mode, mode, index, loaded),
    }
    return QueryResult(index, chosen, with_text=req.with_text, plans=plans, summary=summary)


def default_preset_of(index) -> str | None:
    """The scoring preset a query of `index` takes when it names none (None: the default)."""
    return getattr(index, "query_preset", None)


def _has_embeddings(index) -> bool:
    return bool(getattr(index, "has_embeddings", False))


def _embeds(index, opts: ScoringOptions) -> bool:
    return opts.mode != "nag" and _has_embeddings(index)


def embeds(index, request: QueryRequest) -> bool:
    """Whether a query of `request` embeds its text targets (its mode may use embeddings and the
    index has them): `run_query`'s choice, for callers that load the targets themselves."""
    return _embeds(index, request.scoring_options(default_preset_of(index)))


def resolve_mode(mode: str, index, targets: Sequence[Target]) -> str:
    """The mode a query runs in: `auto` fuses where the index and every target have embeddings."""
    have = _has_embeddings(index) and all(t.embeddings is not None for t in targets)
    if mode == "auto":
        return "fusion" if have else "nag"
    if mode != "nag" and not have:
        missing = [t.name for t in targets if t.embeddings is None]
        raise NagError(f"--mode {mode} needs the targets' text to embed; {', '.join(missing)} came as features only")
    return mode


def mode_reason(asked: str, mode: str, index, targets: Sequence[Target]) -> str:
    """Why the query ran in `mode`: asked for, or what `auto` found."""
    if asked != "auto":
        return f"--mode {asked} was asked for"
    if mode == "fusion":
        return "the index and every target have embeddings"
    if not _has_embeddings(index):
        return "the index has no embeddings (built without --embedder)"
    missing = [t.name for t in targets if t.embeddings is None]
    return (f"{', '.join(missing)} came as features without embeddings (text targets, or features from "
            "`nag extract --embedder`, are fused with the embedding)")


@dataclass
class Scored:
    """One target's candidate rows and the integer score that orders them (higher first),
    with the NAG and embedding scores it came from where they were computed."""

    rows: np.ndarray
    key: np.ndarray  # int64, higher is better
    nag: np.ndarray | None = None
    embedding: np.ndarray | None = None
    tokens: np.ndarray | None = None  # token counts of `rows`, where the candidate step read them


def ranked_scores(index, live: np.ndarray, nag, target: Target, pool_vectors, opts: ScoringOptions,
                  mode: str) -> Scored:
    """The score each mode ranks by: NAG's, the embedding's, or their fusion (`opts.fusion`)."""
    if mode == "nag":
        rows, scores, tokens = nag
        return Scored(rows, scores, nag=scores, tokens=tokens)
    sims = emb.embedding_scores(pool_vectors, target.embeddings, how=opts.embedding_score,
                                neighbours=opts.neighbours)
    if mode == "embedding":
        return Scored(live, sims, embedding=sims)
    rows, scores, _ = nag
    if not np.array_equal(rows, live):
        raise NagError("the fusion needs every live row's NAG score")  # an engine broke its contract
    if opts.fusion == "rrf":  # ranks break ties by docid
        ids = index.docids() if len(live) == index.num_rows else index.docids_at(live)
        fused = emb.rrf_scores([scores, sims], ids, opts.rrf_k)
    else:
        fused = emb.calibrated_sum(scores, sims, opts.nag_weight)
    return Scored(live, fused, nag=scores, embedding=sims)


def load_targets(index, request: QueryRequest, *, embed: bool = False) -> list[Target]:
    """Every target of a query, from texts, feature files, tables or arrays, in the order
    targets, target_features, target_texts.

    Targets are named after their files (stem), or `texts`/the dict keys;
    a name that repeats gets ``#2``, ``#3``... With `embed`, text targets are
    also embedded with the index's embedder.
    """
    items = (list(request.targets) + [("features", f) for f in request.target_features]
             + [("texts", name, list(texts)) for name, texts in request.target_texts])
    if not items:
        raise NagError("no target given")
    neuron_type, fmt = request.neuron_type, request.fmt
    batch_size, progress, target_filter_col = request.batch_size, request.progress, request.target_filter_col
    target_filter = list(request.target_filter) if isinstance(request.target_filter, tuple) else request.target_filter
    filters = _per_target(target_filter, len(items))
    loaded: list[Target] = []
    for i, item in enumerate(items):
        keep = dict(target_filter=filters[i], target_filter_col=target_filter_col)
        if isinstance(item, tuple) and len(item) == 2 and item[0] == "features":
            loaded.append(load_feature_target(index, item[1], neuron_type=neuron_type, embed=embed, **keep))
        elif isinstance(item, tuple) and len(item) == 3 and item[0] == "texts":
            loaded.append(load_text_target(index, None, texts=item[2], name=item[1], neuron_type=neuron_type,
                                           batch_size=batch_size, progress=progress, embed=embed, **keep))
        elif (isinstance(item, (str, os.PathLike)) or is_table_like(item)
              or (isinstance(item, list) and item and isinstance(item[0], (str, os.PathLike)))):
            loaded.append(load_text_target(index, item, neuron_type=neuron_type, fmt=fmt,
                                           batch_size=batch_size, progress=progress, embed=embed, **keep))
        else:
            loaded.append(as_target(index, item, i, neuron_type))
    seen: dict[str, int] = {}
    for t in loaded:
        seen[t.name] = seen.get(t.name, 0) + 1
        if seen[t.name] > 1:
            t.name = f"{t.name}#{seen[t.name]}"
    return loaded


def _per_target(target_filter, m: int) -> list:
    """One filter value per target: a single value applies to all."""
    if target_filter is None or isinstance(target_filter, (str, int, float)):
        return [target_filter] * m
    values = list(target_filter)
    if len(values) == 1:
        return values * m
    if len(values) != m:
        raise NagError(f"{len(values)} target filters for {m} targets: give one, or one per target")
    return values


def target_profiles(index, targets: Sequence[Target], neuron_type: str, live_mask: np.ndarray | None, *,
                    power: float, layers, contrast: str | None = None, weighting: str | None = None,
                    slots: int | None = None, discount: str | None = None) -> list[scoring.Profile]:
    """The integer profile of each target (SPEC 2, or weighted against the live pool:
    `live_mask` False for replaced rows, None when every row is live)."""
    spec = index.spec
    if contrast == "pool":
        weighting = "contrast"
    needs_pool = weighting in ("idf", "contrast")
    pool_counts = pool_neuron_counts(index, neuron_type, live_mask, slots) if needs_pool else None
    return [
        scoring.build_profile(t.features, num_layers=spec.num_layers, top_k=spec.top_k, width=spec.width(neuron_type),
                              power=power, layers=layers, pool_counts=pool_counts, pool_size=index.num_documents,
                              weighting=weighting, slots=slots, discount=discount)
        for t in targets
    ]


def profile_for(index, target_features: np.ndarray, options: ScoringOptions | None = None,
                neuron_type: str = DEFAULT_NEURON_TYPE) -> scoring.Profile:
    """The integer profile a query with `options` scores by (for `explain`, `plot`,
    `deactivate`: the same weights, discount and K as the selection)."""
    opts = options or ScoringOptions()
    spec = index.spec
    return target_profiles(index, [Target("target", np.asarray(target_features))], neuron_type, index.live_mask(),
                           power=opts.power, layers=scoring.resolve_layers(opts.layers, spec.num_layers),
                           weighting=opts.weighting, slots=opts.slots(spec.top_k), discount=opts.discount)[0]


def candidate_request(index, targets: Sequence[Target], *, fraction: float | None, top: int | None, plan: str,
                      quality: bool, progress: bool, each: bool = False) -> CandidateRequest:
    """What each of M targets selects: top/M rows (remainders to the first) or fraction/M of the tokens;
    with `each`, every target its own top N or fraction."""
    m = len(targets)
    live_tokens = index.live_tokens()
    if each:
        tops = [top] * m
        fractions = [None if top is not None else fraction] * m
    else:
        tops = _split_top(top, m) if top is not None else [None] * m
        fractions = [None] * m if top is not None else [fraction / m] * m
    budgets = [None if tops[i] is not None else selection.token_budget(live_tokens, fractions[i]) for i in range(m)]
    return CandidateRequest(names=[t.name for t in targets], tops=tops, fractions=fractions, budgets=budgets,
                            index=index, plan=plan, quality=quality, progress=progress, live_tokens=live_tokens)


@dataclass
class Pick:
    """One target's selection: rows in rank order with their token counts and distances (and combined scores)."""

    rows: np.ndarray
    tokens: np.ndarray
    distance: np.ndarray
    combined: np.ndarray | None = None
    missing_quality: int = 0
    embedding: np.ndarray | None = None  # cosine (centroid) or mean top-k cosine, where used
    fused: np.ndarray | None = None  # the fusion score, where used


def select_one(index, scored: Scored, profile: scoring.Profile | None, request: CandidateRequest, i: int, *,
               quality_col: str | None, invert_quality: bool) -> Pick:
    """Target i's selection from its candidates: exact order (score, then docid), then the cut."""
    rows, scores = scored.rows, scored.key
    nag, sims = scored.nag, scored.embedding
    # every row live and in order: the pool's own arrays, no copies
    all_rows = len(rows) == index.num_rows and (len(rows) == 0 or (rows[0] == 0 and rows[-1] == len(rows) - 1))
    if scored.tokens is not None:
        row_tokens = scored.tokens
    else:
        row_tokens = request.tokens if all_rows else request.tokens[rows]
    combined, missing = None, 0
    keys = -scores
    total = request.live_tokens
    if quality_col is not None:
        q = quality_combination_for(index, rows, scores, profile, quality_col, invert_quality)
        missing = q.missing
        rows, scores, combined = rows[q.kept], scores[q.kept], q.combined
        row_tokens = row_tokens[q.kept]
        nag = nag[q.kept] if nag is not None else None
        sims = sims[q.kept] if sims is not None else None
        keys = combined
        total = int(row_tokens.sum())
        all_rows = False
    # the selection reads the docids of the rows whose order it decides, no more
    ids = index.docids() if all_rows else (lambda positions: index.docids_at(rows[positions]))
    if request.tops[i] is not None:
        picked = selection.top_selection(keys, ids, request.tops[i])
    else:
        picked = selection.budget_selection(keys, row_tokens, ids, request.fractions[i], total_tokens=total)
    distance = scoring.nag_distance(nag[picked], profile) if nag is not None else np.full(len(picked), np.nan)
    fused = scores[picked] / emb.FUSED_ONE if (nag is not None and sims is not None) else None
    return Pick(rows[picked], np.asarray(row_tokens[picked], dtype=np.int64), distance,
                combined[picked] if combined is not None else None, missing,
                embedding=sims[picked] / emb.COSINE_ONE if sims is not None else None, fused=fused)


def mixture(index, picks: Sequence[Pick], names: Sequence[str], *, dedupe: bool, quality: bool,
            name_targets: bool | None = None) -> output.Selection:
    """The selections of every target, concatenated (SPEC 4 mixture): the output's rows."""
    keep = selection.mixture_positions([p.rows for p in picks], index.docids(), dedupe=True) if dedupe else None

    def joined(attr: str) -> np.ndarray:
        values = [getattr(p, attr) for p in picks]
        values = values[0] if len(values) == 1 else np.concatenate(values)
        return values if keep is None else values[keep]

    if name_targets is None:
        name_targets = len(picks) > 1
    target = None
    if name_targets and picks:
        target = np.concatenate([np.full(len(p.rows), i, dtype=np.int32) for i, p in enumerate(picks)])
        target = target if keep is None else target[keep]
    extra = {}
    for col, attr in (("embedding_similarity", "embedding"), ("fusion_score", "fused")):
        if picks and all(getattr(p, attr) is not None for p in picks):
            extra[col] = joined(attr)
    return output.Selection(
        rows=joined("rows") if picks else np.zeros(0, np.int64),
        tokens=joined("tokens") if picks else np.zeros(0, np.int64),
        distance=joined("distance") if picks else np.zeros(0),
        combined=joined("combined") if quality and picks else None,
        target=target,
        target_names=list(names),
        extra=extra,
    )


def quality_combination_for(index, rows, scores, profile, column, invert) -> selection.QualityCombination:
    quality = _quality_values(index, rows, column)
    # min-max of the integer score is the min-max of the distance, computed exactly
    return selection.quality_combination(-scores.astype(np.float64), quality, invert)
