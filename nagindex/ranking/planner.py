"""The planner: scan or inverted lists, per target, and why; and the local engine's
candidate step that carries the plan out."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Sequence

import numpy as np

from nagindex.ranking import scoring
from nagindex.ranking import inverted as inv
from nagindex.ranking import selection
from nagindex.ranking.scan import scan_scores
from nagindex.store.index import live_rows

PLANS = ("auto", "scan", "inverted")

# Planner thresholds (see `choose_plan`): the inverted lists only pay off
# when the answer is a small share of a large pool.
INVERTED_MIN_ROWS = 50_000
INVERTED_MAX_SHARE = 0.01


@dataclass
class Plan:
    target: str
    path: str  # "scan" or "inverted"
    reason: str
    stats: dict = field(default_factory=dict)

    def describe(self) -> str:
        extra = ""
        if self.stats:
            extra = " (" + ", ".join(f"{k}={_fmt(v)}" for k, v in self.stats.items()) + ")"
        return f"{self.target}: {self.path} - {self.reason}{extra}"


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def choose_plan(plan: str, *, num_rows: int, n_live: int, top: int | None, fraction: float | None,
                quality: bool, every_row: bool = False) -> tuple[str, str]:
    """(path, reason). The inverted lists pay off only for answers that are a
    small share of a large pool; everything else scans."""
    if plan == "scan":
        return "scan", "asked for (--plan scan)"
    if quality:
        return "scan", "the quality combination normalises over every row's distance"
    if every_row:
        return "scan", "the fusion ranks every row"
    if plan == "inverted":
        return "inverted", "asked for (--plan inverted); falls back to a scan if the bound cannot prove the answer"
    if num_rows < INVERTED_MIN_ROWS:
        return "scan", f"small pool ({num_rows} rows < {INVERTED_MIN_ROWS}): one scan is cheapest"
    share = (top / max(n_live, 1)) if top is not None else fraction
    if share <= INVERTED_MAX_SHARE:
        what = f"--top {top}" if top is not None else f"fraction {fraction:g}"
        return "inverted", f"{what} is a small share of {n_live} rows: the heaviest lists can bound it"
    return "scan", f"the answer is {share:.1%} of the pool: scanning every row is cheaper than the lists"




@dataclass
class CandidateRequest:
    """What each target of one query selects, for the candidate step of an engine.

    The pool-sized arrays (`live` rows, `tokens` of every row, `live_mask`)
    are read from `index` on first use only: a scan that cuts its candidates
    as it goes never needs them."""

    names: list[str]
    tops: list[int | None]
    fractions: list[float | None]
    budgets: list[int | None]  # token budget per target (None with --top)
    index: Any = field(default=None, repr=False)
    plan: str = "auto"
    quality: bool = False  # the quality combination needs every live row's score
    progress: bool = False
    every_row: bool = False  # a fusion needs every live row's score too
    live_tokens: int = 0  # tokens of the live documents (the budget's T)

    @property
    def n_live(self) -> int:
        return int(self.index.num_documents)

    @cached_property
    def live_mask(self) -> np.ndarray | None:
        """False for replaced rows; None when every row is live."""
        return self.index.live_mask()

    @cached_property
    def live(self) -> np.ndarray:
        """Live global rows, ascending."""
        return live_rows(self.index)

    @cached_property
    def tokens(self) -> np.ndarray:
        """int64 token counts of every global row."""
        return np.asarray(self.index.token_num(), dtype=np.int64)


@dataclass
class PlannedCandidates:
    candidates: inv.Candidates
    plan: Plan


def local_candidates(index, profiles: Sequence[scoring.Profile], neuron_type: str,
                     request: CandidateRequest) -> list[PlannedCandidates]:
    """The local engine: per target the planner's path (inverted lists where they can prove
    the answer cheaply), then one scan over the pool for every target left."""
    found: dict[int, PlannedCandidates] = {}
    plans: dict[int, Plan] = {}
    n_live = request.n_live
    for i, name in enumerate(request.names):
        top, fraction = request.tops[i], request.fractions[i]
        path, reason = choose_plan(request.plan, num_rows=index.num_rows, n_live=n_live, top=top,
                                   fraction=fraction, quality=request.quality, every_row=request.every_row)
        if path == "inverted" and not getattr(index, "has_postings", True):
            path, reason = "scan", "this index has no inverted lists (build with --postings to have them)"
        if path == "inverted" and not profiles[i].additive:
            # the lists record which documents hold a neuron, not at which rank
            path, reason = "scan", ("the rank discount or a K below the index's weighs neurons by rank, "
                                    "which the posting lists do not record")
        if path == "inverted" and request.plan == "auto":
            share = (top / max(n_live, 1)) if top is not None else fraction
            hopeless, why = inv.inverted_looks_hopeless(index, profiles[i], neuron_type, request.live, share=share,
                                                        max_postings_share=inv.INVERTED_AUTO_MAX_POSTINGS_SHARE)
            if hopeless:
                path, reason = "scan", why
        if path == "inverted":
            cap = inv.INVERTED_AUTO_MAX_POSTINGS_SHARE if request.plan == "auto" else inv.INVERTED_MAX_POSTINGS_SHARE
            res = inv.inverted_candidates(index, profiles[i], neuron_type, request.live, request.tokens, top=top,
                                          budget=request.budgets[i], max_postings_share=cap)
            if res is None:
                path, reason = "scan", reason + "; the bound could not prove the answer cheaply, fell back to a scan"
            else:
                found[i] = PlannedCandidates(res, Plan(name, path, reason, res.stats))
                continue
        plans[i] = Plan(name, path, reason, {})
    to_scan = [i for i in range(len(profiles)) if i not in found]
    if to_scan:
        scores = scan_scores(index, [profiles[i] for i in to_scan], neuron_type, progress=request.progress)
        for j, i in enumerate(to_scan):
            found[i] = PlannedCandidates(scanned_candidates(index, scores[j], request, i), plans[i])
    return [found[i] for i in range(len(profiles))]


def scanned_candidates(index, scores: np.ndarray, request: CandidateRequest, i: int) -> inv.Candidates:
    """Target i's candidates from the scores of every global row: the live rows
    that can be in its selection (`selection.pool_leading_rows`), or every live
    row where the quality combination or a fusion needs them all."""
    if request.quality or request.every_row or (request.tops[i] is None and request.budgets[i] is None):
        mask = request.live_mask
        if mask is None:  # then a view, not a copy of n scores
            return inv.Candidates(request.live, scores, {})
        return inv.Candidates(request.live, scores[request.live], {})
    rows, kept, tokens = selection.pool_leading_rows(scores, index.token_blocks, live=request.live_mask,
                                                     budget=request.budgets[i], top=request.tops[i])
    return inv.Candidates(rows, kept, {}, tokens=tokens)
