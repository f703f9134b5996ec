"""`ScoringOptions`: how a query scores the pool, in one value that the query,
`explain`, `plot` and `deactivate` all take (docs/scoring.md has the formulas).

Two presets:
- ``default``: the configuration chosen by leave-one-target-out validation
  across 27 labelled target sets (docs/quality.md): the idf weighting with
  power 1/2, the document-side rank discount 1/log2(r+2), every K the index
  holds, and, where the index and the targets have embeddings, a calibrated
  sum (each score min-max scaled over the pool, half and half) with the mean
  cosine to the 10 nearest target items;
- ``paper``: the SPEC exactly (K = 20, the SPEC weighting c / (n*K), no
  discount, NAG alone), to compare with the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from nagindex.errors import NagError
from nagindex.extraction.embedder import DEFAULT_EMBEDDER
from nagindex.ranking.scoring import DISCOUNTS, WEIGHTINGS

MODES = ("auto", "nag", "embedding", "fusion")
EMBEDDING_SCORES = ("centroid", "nn")
FUSIONS = ("sum", "rrf")
PRESETS = ("default", "paper")
PAPER_TOP_K = 20
# Reciprocal-rank fusion's constant (Cormack et al. 2009): the usual 60.
RRF_K = 60


@dataclass(frozen=True)
class ScoringOptions:
    """Everything that decides a query's scores (not what it selects: fraction, top)."""

    weighting: str = "idf"
    power: float = 0.5
    discount: str = "log2"
    top_k: int | None = None  # ranks per layer used at query time; None: all the index holds
    layers: Any = "all"
    mode: str = "auto"  # auto: fusion where the index and targets have embeddings, else nag
    embedding_score: str = "nn"  # centroid: cosine to the mean target; nn: mean of the top neighbours
    neighbours: int = 10
    fusion: str = "sum"  # sum: min-max calibrated weighted sum; rrf: reciprocal-rank fusion
    nag_weight: float = 0.5  # NAG's share of the calibrated sum
    rrf_k: int = RRF_K
    preset: str = "default"

    @classmethod
    def paper(cls) -> "ScoringOptions":
        return cls(weighting="spec", power=1.0, discount="none", top_k=PAPER_TOP_K, mode="nag", preset="paper")

    @classmethod
    def from_preset(cls, name: str | None) -> "ScoringOptions":
        if name in (None, "default"):
            return cls()
        if name == "paper":
            return cls.paper()
        raise NagError(f"unknown preset {name!r}; use {' or '.join(PRESETS)}")

    def with_overrides(self, **changes) -> "ScoringOptions":
        """These options with every change that is not None applied (then checked)."""
        given = {k: v for k, v in changes.items() if v is not None}
        if "contrast" in given:  # the older spelling of the contrast weighting
            contrast = given.pop("contrast")
            if contrast not in ("none", "pool"):
                raise NagError(f"unknown contrast {contrast!r}; use none or pool")
            if contrast == "pool":
                given.setdefault("weighting", "contrast")
        opts = replace(self, **given) if given else self
        opts.check()
        return opts

    def check(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise NagError(f"unknown weighting {self.weighting!r}; use {', '.join(WEIGHTINGS)}")
        if self.discount not in DISCOUNTS:
            raise NagError(f"unknown rank discount {self.discount!r}; use {' or '.join(DISCOUNTS)}")
        power = float(self.power)
        if not np.isfinite(power) or power < 0:
            raise NagError(f"power must be a finite number >= 0, got {self.power}")
        if self.top_k is not None and int(self.top_k) < 1:
            raise NagError(f"--top-k must be at least 1, got {self.top_k}")
        if self.mode not in MODES:
            raise NagError(f"unknown mode {self.mode!r}; use {', '.join(MODES)}")
        if self.preset == "paper" and self.mode in ("embedding", "fusion"):
            raise NagError(f"--preset paper scores by the NAG alone (the SPEC); it does not combine with "
                           f"--mode {self.mode}: drop one of them")
        if self.embedding_score not in EMBEDDING_SCORES:
            raise NagError(f"unknown embedding score {self.embedding_score!r}; use {' or '.join(EMBEDDING_SCORES)}")
        if int(self.neighbours) < 1:
            raise NagError(f"--neighbours must be at least 1, got {self.neighbours}")
        if self.fusion not in FUSIONS:
            raise NagError(f"unknown fusion {self.fusion!r}; use {' or '.join(FUSIONS)}")
        weight = float(self.nag_weight)
        if not (0.0 <= weight <= 1.0):
            raise NagError(f"the NAG weight of the fusion must be between 0 and 1, got {self.nag_weight}")
        if int(self.rrf_k) < 0:
            raise NagError(f"the fusion constant must be >= 0, got {self.rrf_k}")

    def slots(self, index_top_k: int) -> int | None:
        """Ranks per layer to use on an index built with K = index_top_k (None: all).
        The paper preset takes K = 20, or every rank of an index built with fewer."""
        if self.top_k is None:
            return None
        k = int(self.top_k)
        if self.preset == "paper" and self.top_k == PAPER_TOP_K:
            k = min(k, index_top_k)
        if k > index_top_k:
            raise NagError(f"--top-k {k} at query time: this index was built with K={index_top_k}; "
                           f"rebuild with `nag index build --top-k {k}`")
        return None if k == index_top_k else k

    def nag_label(self) -> str:
        parts = [self.weighting, f"p={float(self.power):g}"]
        if self.discount != "none":
            parts.append(f"discount={self.discount}")
        if self.top_k is not None:
            parts.append(f"K={self.top_k}")
        if self.layers not in (None, "all"):
            parts.append(f"layers={self.layers}")
        return "NAG " + " ".join(parts)

    def fusion_label(self) -> str:
        if self.fusion == "rrf":
            return f"reciprocal-rank fusion (k={self.rrf_k})"
        return f"calibrated-sum fusion (NAG weight {float(self.nag_weight):g}, each score min-max scaled)"

    def describe(self, mode: str | None = None) -> str:
        """One line: what scored the selection."""
        mode = mode or self.mode
        emb = f"embedding {self.embedding_score}" + (f" (top {self.neighbours})" if self.embedding_score == "nn" else "")
        if mode == "nag":
            return self.nag_label()
        if mode == "embedding":
            return emb
        if mode == "fusion":
            return f"{self.fusion_label()} of {self.nag_label()} and {emb}"
        return f"{self.nag_label()}, fused with {emb} where the index has embeddings"


def build_settings(preset: str | None, top_k: int | None, embedder: str | None) -> tuple[int | None, str | None]:
    """(K, embedder) for `nag index build`: what is given, else the preset's. The default
    keeps K = 100 (None: 100, or the layer width where smaller) and embeds with
    all-MiniLM-L6-v2; the paper keeps K = 20 and no embedding. `embedder="none"` is none."""
    if preset not in (None, *PRESETS):
        raise NagError(f"unknown preset {preset!r}; use {' or '.join(PRESETS)}")
    paper = preset == "paper"
    if top_k is None and paper:
        top_k = PAPER_TOP_K
    if embedder is None:
        embedder = None if paper else DEFAULT_EMBEDDER
    if isinstance(embedder, str) and embedder.lower() == "none":
        embedder = None
    return top_k, embedder


DEFAULT = ScoringOptions()
PAPER = ScoringOptions.paper()
