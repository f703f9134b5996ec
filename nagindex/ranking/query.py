"""A query end to end: targets -> profiles -> candidates (an engine) -> selection -> table.

How the pool is scored is one `ScoringOptions` value (ranking/options.py):
NAG alone (its weighting, power, rank discount, K, layers), the embedding
alone, or their reciprocal-rank fusion; every score is an integer, so the
order is exact and ties go to the docid.

`run_query` reads as those steps. The candidate step is the engine's: by
default the local planner (`planner.local_candidates`: inverted lists where
they can prove the answer cheaply, else one scan), or an engine's such as
Ray's distributed scan; both return rows that provably hold the exact answer,
with exact integer scores, and the selection (tie-break by docid, token
budget or top N, mixture, quality combination) is the same code for all.
"""


from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nagindex.errors import NagError
from nagindex.ranking import embedding as emb
from nagindex.ranking import scoring, selection
from nagindex.ranking.options import ScoringOptions
from nagindex.ranking.planner import PLANS, CandidateRequest, Plan, local_candidates
from nagindex.ranking.scan import pool_neuron_counts
from nagindex.ranking.targets import (
    Target,
    as_target,
    load_feature_target,
    load_text_target,
)
from nagindex.schemas import (
    DATASET,
    DEFAULT_NEURON_TYPE,
    DOCID,
    EMBEDDING,
    TEXT,
    TOKEN_NUM,
    feature_column,
)
from nagindex.sources import is_table_like
from nagindex.store.index import live_rows

DEFAULT_FRACTION = 0.2


@dataclass
class QueryResult:
    table: pa.Table  # selected rows in rank order
    summary: dict
    plans: list[Plan]

    def explain(self) -> str:
        return "\n".join(p.describe() for p in self.plans)


def _split_top(top: int, m: int) -> list[int]:
    base, extra = divmod(int(top), m)
    return [base + (1 if i < extra else 0) for i in range(m)]


def _check_shares(fraction: float | None, top: int | None) -> tuple[float | None, int | None]:
    if top is not None and fraction is not None:
        raise NagError("give either --fraction or --top, not both")
    if top is not None:
        if int(top) < 1:
            raise NagError(f"--top must be at least 1, got {top}")
        return None, int(top)
    return selection.check_fraction(DEFAULT_FRACTION if fraction is None else fraction), None


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


def run_query(
    index,
    targets: Sequence[Any] = (),
    *,
    target_features: Sequence[Any] | None = None,
    target_texts: Any = None,
    target_filter: str | Sequence[str | None] | None = None,
    target_filter_col: str = DATASET,
    fraction: float | None = None,
    top: int | None = None,
    scoring_options: ScoringOptions | None = None,
    preset: str | None = None,
    power: float | None = None,
    layers=None,
    weighting: str | None = None,
    discount: str | None = None,
    top_k: int | None = None,
    mode: str | None = None,
    embedding_score: str | None = None,
    neighbours: int | None = None,
    neuron_type: str = DEFAULT_NEURON_TYPE,
    dedupe: bool = False,
    quality_col: str | None = None,
    invert_quality: bool = False,
    with_text: bool = False,
    contrast: str | None = None,
    plan: str = "auto",
    engine: Any = None,
    fmt: str = "auto",
    batch_size: int = 32,
    progress: bool = False,
    each: bool = False,
) -> QueryResult:
    """Select from the index's pool for each target (SPEC 3) and mix them (SPEC 4).

    `targets`: raw text files, directories or globs (one target per item; a
    list of shards is one target), tables in memory (pyarrow, pandas, polars,
    `datasets`), `Target` objects or (n, L*K) feature arrays.
    `target_features`: precomputed feature files, one target per item.
    `target_texts`: target documents as strings: a list of strings is one
    target, a {name: [strings]} dict one target per name.
    `target_filter`: one value for every target, or a list with one value
    (or None) per target, in the order targets, target_features, target_texts.
    Selection is by token budget (`fraction`, default 0.2) or the best `top`
    rows; with M targets each gets fraction/M (or top/M, remainders to the
    first targets).
    `each`: every target selects on its own, its whole fraction (or top N),
    all of them from one pass over the pool; the output holds every selection
    with a `target` column, each equal to that target queried alone.
    Scoring: `scoring_options` (default `ScoringOptions()`, the measured best;
    `preset="paper"` is the SPEC exactly), and any of power, layers,
    weighting, discount, top_k (ranks per layer used), mode, embedding_score,
    neighbours, contrast given here override it.
    `engine`: where the pool is scored, an object with the `candidates` step
    of `nagindex.engines.base.Engine`; None scores it here (`local_candidates`).
    """
    # every cheap check first, before any target is extracted
    fraction, top = _check_shares(fraction, top)
    if each and dedupe:
        raise NagError("--dedupe mixes targets; with --each every target keeps its own selection")
    index.spec.width(neuron_type)
    if scoring_options is not None and preset is not None:
        raise NagError("give either scoring options or a preset, not both")
    base = scoring_options if scoring_options is not None else ScoringOptions.from_preset(preset)
    opts = base.with_overrides(power=power, layers=layers, weighting=weighting, discount=discount, top_k=top_k,
                               mode=mode, embedding_score=embedding_score, neighbours=neighbours, contrast=contrast)
    kept_layers = scoring.resolve_layers(opts.layers, index.spec.num_layers)
    slots = opts.slots(index.spec.top_k)
    if opts.mode in ("embedding", "fusion") and not _has_embeddings(index):
        raise NagError(f"--mode {opts.mode} needs an index with embeddings (nag index build --embedder ...)")
    if plan not in PLANS:
        raise NagError(f"unknown plan {plan!r}; use {', '.join(PLANS)}")
    if quality_col is not None:
        _check_quality_column(index, quality_col)

    loaded = load_targets(index, targets, target_features, target_texts=target_texts, neuron_type=neuron_type,
                          target_filter=target_filter,
                          target_filter_col=target_filter_col, fmt=fmt, batch_size=batch_size, progress=progress,
                          embed=opts.mode != "nag" and _has_embeddings(index))
    prefetch = getattr(index, "prefetch_payload_reader", None)
    if prefetch is not None:
        prefetch()  # the output's payload reader loads while the pool is scored (targets are good by now)
    mode = resolve_mode(opts.mode, index, loaded)
    live = live_rows(index)
    request = candidate_request(index, loaded, live, fraction=fraction, top=top, plan=plan, each=each,
                                quality=quality_col is not None, progress=progress)
    request.every_row = mode == "fusion"
    profiles = [None] * len(loaded)
    if mode != "embedding":
        profiles = target_profiles(index, loaded, neuron_type, live, power=opts.power, layers=kept_layers,
                                   weighting=opts.weighting, slots=slots, discount=opts.discount)
        candidate_step = local_candidates if engine is None else engine.candidates
        found = candidate_step(index, profiles, neuron_type, request)
        nag = [(f.candidates.rows, f.candidates.scores) for f in found]
        plans = [f.plan for f in found]
    else:
        nag = [None] * len(loaded)
        plans = [Plan(t.name, "embedding", "the embedding alone scores every row") for t in loaded]
    pool_vectors = index.embeddings(live) if mode != "nag" else None
    scored = [ranked_scores(index, live, nag[i], loaded[i], pool_vectors, opts, mode) for i in range(len(loaded))]

    picks = [
        select_one(index, scored[i], profiles[i], request, i, quality_col=quality_col,
                   invert_quality=invert_quality)
        for i in range(len(loaded))
    ]
    table = mixture_table(index, picks, [t.name for t in loaded], request.tokens, dedupe=dedupe, with_text=with_text,
                          name_targets=each or len(picks) > 1,
                          quality=quality_col is not None)
    missing_quality = picks[-1].missing_quality if picks else 0
    summary = _summary(table, live, int(request.tokens[live].sum()), plans, missing_quality, loaded)
    summary["scoring"] = opts.describe(mode)
    summary["mode"] = mode
    return QueryResult(table, summary, plans)


def _has_embeddings(index) -> bool:
    return bool(getattr(index, "has_embeddings", False))


def resolve_mode(mode: str, index, targets: Sequence[Target]) -> str:
    """The mode a query runs in: `auto` fuses where the index and every target have embeddings."""
    have = _has_embeddings(index) and all(t.embeddings is not None for t in targets)
    if mode == "auto":
        return "fusion" if have else "nag"
    if mode != "nag" and not have:
        missing = [t.name for t in targets if t.embeddings is None]
        raise NagError(f"--mode {mode} needs the targets' text to embed; {', '.join(missing)} came as features only")
    return mode


@dataclass
class Scored:
    """One target's candidate rows and the integer score that orders them (higher first),
    with the NAG and embedding scores it came from where they were computed."""

    rows: np.ndarray
    key: np.ndarray  # int64, higher is better
    nag: np.ndarray | None = None
    embedding: np.ndarray | None = None


def ranked_scores(index, live: np.ndarray, nag, target: Target, pool_vectors, opts: ScoringOptions,
                  mode: str) -> Scored:
    """The score each mode ranks by: NAG's, the embedding's, or the fusion of both orders."""
    if mode == "nag":
        rows, scores = nag
        return Scored(rows, scores, nag=scores)
    sims = emb.embedding_scores(pool_vectors, target.embeddings, how=opts.embedding_score,
                                neighbours=opts.neighbours)
    if mode == "embedding":
        return Scored(live, sims, embedding=sims)
    rows, scores = nag
    if not np.array_equal(rows, live):
        raise NagError("the rank fusion needs every live row's NAG score")  # an engine broke its contract
    ids = index.docids().take(pa.array(live))
    fused = emb.rrf_scores([scores, sims], ids, opts.rrf_k)
    return Scored(live, fused, nag=scores, embedding=sims)


def load_targets(index, targets, target_features, *, neuron_type: str, target_filter, target_filter_col: str,
                 fmt: str, batch_size: int, progress: bool, target_texts: Any = None,
                 embed: bool = False) -> list[Target]:
    """Every target of a query, from texts, feature files, tables or arrays, in the order given.

    Targets are named after their files (stem), or `texts`/the dict keys;
    a name that repeats gets ``#2``, ``#3``... With `embed`, text targets are
    also embedded with the index's embedder.
    """

    if isinstance(targets, (np.ndarray, Target, str, os.PathLike)) or is_table_like(targets):
        targets = [targets]  # one target given bare
    if isinstance(target_features, (str, os.PathLike)):
        target_features = [target_features]
    items = list(targets if targets is not None else []) + [("features", f) for f in (target_features or [])]
    if isinstance(target_texts, dict):
        items += [("texts", str(k), v) for k, v in target_texts.items()]
    elif target_texts is not None:
        if len(target_texts) and not isinstance(target_texts[0], str) and not isinstance(target_texts, str):
            items += [("texts", f"texts{i}", v) for i, v in enumerate(target_texts)]  # a list of lists
        else:
            items.append(("texts", "texts", target_texts))
    if not items:
        raise NagError("no target given")
    filters = _per_target(target_filter, len(items))
    loaded: list[Target] = []
    for i, item in enumerate(items):
        keep = dict(target_filter=filters[i], target_filter_col=target_filter_col)
        if isinstance(item, tuple) and len(item) == 2 and item[0] == "features":
            loaded.append(load_feature_target(index, item[1], neuron_type=neuron_type, **keep))
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


def target_profiles(index, targets: Sequence[Target], neuron_type: str, live: np.ndarray, *, power: float,
                    layers, contrast: str | None = None, weighting: str | None = None, slots: int | None = None,
                    discount: str | None = None) -> list[scoring.Profile]:
    """The integer profile of each target (SPEC 2, or weighted against the pool)."""
    spec = index.spec
    if contrast == "pool":
        weighting = "contrast"
    needs_pool = weighting in ("idf", "contrast")
    pool_counts = pool_neuron_counts(index, neuron_type, live, slots) if needs_pool else None
    return [
        scoring.build_profile(t.features, num_layers=spec.num_layers, top_k=spec.top_k, width=spec.width(neuron_type),
                              power=power, layers=layers, pool_counts=pool_counts, pool_size=len(live),
                              weighting=weighting, slots=slots, discount=discount)
        for t in targets
    ]


def profile_for(index, target_features: np.ndarray, options: ScoringOptions | None = None,
                neuron_type: str = DEFAULT_NEURON_TYPE) -> scoring.Profile:
    """The integer profile a query with `options` scores by (for `explain`, `plot`,
    `deactivate`: the same weights, discount and K as the selection)."""
    opts = options or ScoringOptions()
    spec = index.spec
    live = live_rows(index)
    return target_profiles(index, [Target("target", np.asarray(target_features))], neuron_type, live,
                           power=opts.power, layers=scoring.resolve_layers(opts.layers, spec.num_layers),
                           weighting=opts.weighting, slots=opts.slots(spec.top_k), discount=opts.discount)[0]


def candidate_request(index, targets: Sequence[Target], live: np.ndarray, *, fraction: float | None,
                      top: int | None, plan: str, quality: bool, progress: bool, each: bool = False) -> CandidateRequest:
    """What each of M targets selects: top/M rows (remainders to the first) or fraction/M of the tokens;
    with `each`, every target its own top N or fraction."""
    m = len(targets)
    if each:
        tops = [top] * m
        fractions = [None if top is not None else fraction] * m
        tokens = np.asarray(index.token_num(), dtype=np.int64)
        live_tokens = int(tokens[live].sum())
        budgets = [None if top is not None else selection.token_budget(live_tokens, fraction)] * m
        return CandidateRequest(names=[t.name for t in targets], live=live, tokens=tokens, tops=tops,
                                fractions=fractions, budgets=budgets, plan=plan, quality=quality, progress=progress)
    tokens = np.asarray(index.token_num(), dtype=np.int64)
    live_tokens = int(tokens[live].sum())
    tops = _split_top(top, m) if top is not None else [None] * m
    fractions = [None] * m if top is not None else [fraction / m] * m
    budgets = [None if tops[i] is not None else selection.token_budget(live_tokens, fractions[i]) for i in range(m)]
    return CandidateRequest(names=[t.name for t in targets], live=live, tokens=tokens, tops=tops,
                            fractions=fractions, budgets=budgets, plan=plan, quality=quality, progress=progress)


@dataclass
class Pick:
    """One target's selection: rows in rank order with their distances (and combined scores)."""

    rows: np.ndarray
    distance: np.ndarray
    combined: np.ndarray | None = None
    missing_quality: int = 0
    embedding: np.ndarray | None = None  # cosine (centroid) or mean top-k cosine, where used
    fused: np.ndarray | None = None  # the reciprocal-rank fusion score, where used


def select_one(index, scored: Scored, profile: scoring.Profile | None, request: CandidateRequest, i: int, *,
               quality_col: str | None, invert_quality: bool) -> Pick:
    """Target i's selection from its candidates: exact order (score, then docid), then the cut."""
    docids = index.docids()
    tokens = request.tokens
    rows, scores = scored.rows, scored.key
    nag, sims = scored.nag, scored.embedding
    combined, missing = None, 0
    keys = -scores
    total = int(tokens[request.live].sum())
    if quality_col is not None:
        q = quality_combination_for(index, rows, scores, profile, quality_col, invert_quality)
        missing = q.missing
        rows, scores, combined = rows[q.kept], scores[q.kept], q.combined
        nag = nag[q.kept] if nag is not None else None
        sims = sims[q.kept] if sims is not None else None
        keys = combined
        total = int(tokens[rows].sum())
    # every row live and in order: no need to copy the docids
    all_rows = len(rows) == len(docids) and (len(rows) == 0 or (rows[0] == 0 and rows[-1] == len(rows) - 1))
    ids = docids if all_rows else docids.take(pa.array(rows))
    if request.tops[i] is not None:
        picked = selection.top_selection(keys, ids, request.tops[i])
    else:
        row_tokens = tokens if all_rows else tokens[rows]  # every row: no copy
        picked = selection.budget_selection(keys, row_tokens, ids, request.fractions[i], total_tokens=total)
    distance = scoring.nag_distance(nag[picked], profile) if nag is not None else np.full(len(picked), np.nan)
    fused = scores[picked] / emb.RRF_ONE if (nag is not None and sims is not None) else None
    return Pick(rows[picked], distance, combined[picked] if combined is not None else None, missing,
                embedding=sims[picked] / emb.COSINE_ONE if sims is not None else None, fused=fused)


def mixture_table(index, picks: Sequence[Pick], names: Sequence[str], tokens: np.ndarray, *, dedupe: bool,
                  with_text: bool, quality: bool, name_targets: bool | None = None) -> pa.Table:
    """The selections of every target, concatenated (SPEC 4 mixture) as the output table."""
    keep = selection.mixture_positions([p.rows for p in picks], index.docids(), dedupe=dedupe)
    rows = np.concatenate([p.rows for p in picks])[keep] if picks else np.zeros(0, np.int64)
    distance = np.concatenate([p.distance for p in picks])[keep] if picks else np.zeros(0)
    combined = np.concatenate([p.combined for p in picks])[keep] if quality and picks else None
    which = np.concatenate([np.full(len(p.rows), i, dtype=np.int64) for i, p in enumerate(picks)])[keep] if picks else []
    if name_targets is None:
        name_targets = len(picks) > 1
    target_names = [names[w] for w in which] if name_targets else None
    extra = {}
    for col, attr in (("embedding_similarity", "embedding"), ("fusion_score", "fused")):
        if picks and all(getattr(p, attr) is not None for p in picks):
            extra[col] = np.concatenate([getattr(p, attr) for p in picks])[keep]
    return _output_table(index, rows, distance, combined, target_names, tokens, with_text, extra)


def quality_combination_for(index, rows, scores, profile, column, invert) -> selection.QualityCombination:
    quality = _quality_values(index, rows, column)
    # min-max of the integer score is the min-max of the distance, computed exactly
    return selection.quality_combination(-scores.astype(np.float64), quality, invert)


def _output_table(index, rows, distance, combined, target_names, tokens, with_text, extra=None) -> pa.Table:
    hidden = {DOCID, TOKEN_NUM, "_row", EMBEDDING} | {feature_column(t) for t in index.spec.neuron_types}
    if not with_text:
        hidden.add(TEXT)
    payload_cols = [c for c in index.columns() if c not in hidden]
    payload = index.take(rows, payload_cols)
    cols: dict[str, pa.Array] = {
        DOCID: index.docids().take(pa.array(rows, type=pa.int64())),
        TOKEN_NUM: pa.array(tokens[rows], type=pa.int64()),
        DATASET: payload.column(DATASET) if DATASET in payload.column_names else pa.nulls(len(rows), pa.string()),
        # null where the NAG did not score (--mode embedding)
        "nag_distance": pa.array(distance, type=pa.float64(), mask=np.isnan(np.asarray(distance, dtype=np.float64))),
    }
    for name, values in (extra or {}).items():
        cols[name] = pa.array(values, type=pa.float64())
    if combined is not None:
        cols["combined_score"] = pa.array(combined, type=pa.float64())
    if target_names is not None:
        cols["target"] = pa.array(target_names, type=pa.string())
    for c in payload.column_names:
        if c not in cols:
            cols[c] = payload.column(c)
    return pa.table(cols)


def _summary(table: pa.Table, live, live_tokens, plans, missing_quality, targets) -> dict:
    dist = table.column("nag_distance").to_numpy(zero_copy_only=False) if table.num_rows else np.zeros(0)
    dist = np.asarray(dist, dtype=np.float64)
    counts: dict[str, int] = {}
    for item in pc.value_counts(table.column(DATASET).cast(pa.string())).to_pylist():
        key = "(none)" if item["values"] is None else str(item["values"])
        counts[key] = counts.get(key, 0) + int(item["counts"])
    tokens = int(np.asarray(table.column(TOKEN_NUM).to_numpy()).sum()) if table.num_rows else 0
    return {
        "selected_docs": table.num_rows,
        "selected_tokens": tokens,
        "pool_docs": int(len(live)),
        "pool_tokens": int(live_tokens),
        "distance_min": float(np.nanmin(dist)) if len(dist) and not np.isnan(dist).all() else None,
        "distance_max": float(np.nanmax(dist)) if len(dist) and not np.isnan(dist).all() else None,
        "datasets": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "targets": {t.name: int(len(t.features)) for t in targets},
        "missing_quality": int(missing_quality),
        "plans": [p.describe() for p in plans],
    }
