"""The planner: scan or inverted lists, per target, and why; and the local engine's
candidate step that carries the plan out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from nagindex.ranking import scoring
from nagindex.ranking import inverted as inv
from nagindex.ranking.scan import scan_scores

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
        return "scan", "the rank fusion ranks every row"
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
    """What each target of one query selects, for the candidate step of an engine."""

    names: list[str]
    live: np.ndarray  # live global rows, ascending
    tokens: np.ndarray  # int64 token counts of every global row
    tops: list[int | None]
    fractions: list[float | None]
    budgets: list[int | None]  # token budget per target (None with --top)
    plan: str = "auto"
    quality: bool = False  # the quality combination needs every live row's score
    progress: bool = False
    every_row: bool = False  # a rank fusion needs every live row's score too


@dataclass
class PlannedCandidates:
    candidates: inv.Candidates
    plan: Plan


def local_candidates(index, profiles: Sequence[scoring.Profile], neuron_type: str,
                     request: CandidateRequest) -> list[PlannedCandidates]:
    """The local engine: per target the planner's path (inverted lists where they can prove
    the answer cheaply), then one scan over the pool for every target left."""
    live = request.live
    found: dict[int, PlannedCandidates] = {}
    plans: dict[int, Plan] = {}
    for i, name in enumerate(request.names):
        top, fraction = request.tops[i], request.fractions[i]
        path, reason = choose_plan(request.plan, num_rows=index.num_rows, n_live=len(live), top=top,
                                   fraction=fraction, quality=request.quality, every_row=request.every_row)
        if path == "inverted" and not getattr(index, "has_postings", True):
            path, reason = "scan", "this index has no inverted lists (build with --postings to have them)"
        if path == "inverted" and not profiles[i].additive:
            # the lists record which documents hold a neuron, not at which rank
            path, reason = "scan", ("the rank discount or a K below the index's weighs neurons by rank, "
                                    "which the posting lists do not record")
        if path == "inverted" and request.plan == "auto":
            share = (top / max(len(live), 1)) if top is not None else fraction
            hopeless, why = inv.inverted_looks_hopeless(index, profiles[i], neuron_type, live, share=share,
                                                        max_postings_share=inv.INVERTED_AUTO_MAX_POSTINGS_SHARE)
            if hopeless:
                path, reason = "scan", why
        if path == "inverted":
            cap = inv.INVERTED_AUTO_MAX_POSTINGS_SHARE if request.plan == "auto" else inv.INVERTED_MAX_POSTINGS_SHARE
            res = inv.inverted_candidates(index, profiles[i], neuron_type, live, request.tokens, top=top,
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
        every_row_live = len(live) == index.num_rows  # then a view, not a copy of n scores
        for j, i in enumerate(to_scan):
            found[i] = PlannedCandidates(inv.Candidates(live, scores[j] if every_row_live else scores[j][live], {}),
                                         plans[i])
    return [found[i] for i in range(len(profiles))]
