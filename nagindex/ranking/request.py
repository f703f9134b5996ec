"""`QueryRequest`: everything one query asks, as one frozen value.

The CLI (`nag query`), the Python API (`Index.query`'s keywords) and the query
service (`nag serve`) each build one, once; `ranking.query.run_query` takes it
with the snapshot it reads. It holds the targets (text sources, feature files,
texts given as strings, or arrays), what is selected (fraction or top, each,
dedupe, quality combination) and how the pool is scored (`ScoringOptions`, or
a preset and overrides resolved against the index, whose build decides the
default preset). Every check that needs no index runs when it is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nagindex.errors import NagError
from nagindex.ranking import selection
from nagindex.ranking.options import ScoringOptions
from nagindex.ranking.planner import PLANS
from nagindex.schemas import DATASET, DEFAULT_NEURON_TYPE
from nagindex.sources import is_table_like

DEFAULT_FRACTION = 0.2

# the scoring options a request may override, in `ScoringOptions.with_overrides`'s names
SCORING_KEYS = ("power", "layers", "weighting", "discount", "top_k", "mode", "embedding_score", "neighbours",
                "fusion", "nag_weight", "contrast")


def check_shares(fraction: float | None, top: int | None) -> tuple[float | None, int | None]:
    """(fraction, top) with the default fraction where neither is given."""
    if top is not None and fraction is not None:
        raise NagError("give either fraction or top, not both", param="top",
                       cli="give either --fraction or --top, not both")
    if top is not None:
        if int(top) < 1:
            raise NagError.for_param("top", f"must be at least 1, got {top}")
        return None, int(top)
    return selection.check_fraction(DEFAULT_FRACTION if fraction is None else fraction), None


def _texts(target_texts: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """((name, texts), ...): a list of strings is one target `texts`, a dict one per key,
    a list of lists one per item (`texts0`, `texts1`, ...)."""
    if target_texts is None:
        return ()
    if isinstance(target_texts, str):
        raise NagError("target_texts takes a list of strings (one target) or {name: [strings]}, "
                       "not one string")
    if isinstance(target_texts, dict):
        return tuple((str(k), _strings(v, str(k))) for k, v in target_texts.items())
    items = list(target_texts)
    if items and not isinstance(items[0], str):
        return tuple((f"texts{i}", _strings(v, f"texts{i}")) for i, v in enumerate(items))
    return (("texts", _strings(items, "texts")),)


def _strings(values: Any, name: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise NagError(f"target_texts {name}: give a list of strings, not one string")
    out = tuple(values)
    if not all(isinstance(v, str) for v in out):
        raise NagError(f"target_texts {name}: every item must be a string")
    return out


def _sources(items: Any) -> tuple:
    if items is None:
        return ()
    if isinstance(items, (np.ndarray, str, os.PathLike)) or is_table_like(items) or not isinstance(items, (list, tuple)):
        return (items,)  # one target given bare
    return tuple(items)


@dataclass(frozen=True)
class QueryRequest:
    """One query: targets, selection and scoring. Build it with `QueryRequest.build`."""

    targets: tuple = ()  # text sources (paths, globs, tables), `Target`s or (n, L*K) arrays, one target each
    target_features: tuple = ()  # feature files (nagindex parquet or upstream JSONL), one target each
    target_texts: tuple = ()  # ((name, (text, ...)), ...)
    target_filter: Any = None  # one value for every target, or a tuple with one per target
    target_filter_col: str = DATASET
    fraction: float | None = DEFAULT_FRACTION
    top: int | None = None
    each: bool = False
    dedupe: bool = False
    quality_col: str | None = None
    invert_quality: bool = False
    scoring: ScoringOptions | None = None  # given whole; None: `preset` (or the index's) with `overrides`
    preset: str | None = None
    overrides: tuple = field(default=())  # ((name, value), ...) of SCORING_KEYS
    neuron_type: str = DEFAULT_NEURON_TYPE
    with_text: bool = False
    plan: str = "auto"
    fmt: str = "auto"
    batch_size: int = 32
    progress: bool = False

    @classmethod
    def build(
        cls,
        targets: Any = (),
        *,
        target_features: Any = None,
        target_texts: Any = None,
        target_filter: Any = None,
        target_filter_col: str = DATASET,
        fraction: float | None = None,
        top: int | None = None,
        each: bool = False,
        dedupe: bool = False,
        quality_col: str | None = None,
        invert_quality: bool = False,
        scoring_options: ScoringOptions | None = None,
        preset: str | None = None,
        neuron_type: str = DEFAULT_NEURON_TYPE,
        with_text: bool = False,
        plan: str = "auto",
        fmt: str = "auto",
        batch_size: int = 32,
        progress: bool = False,
        **scoring_overrides: Any,
    ) -> "QueryRequest":
        """The request these options make, checked as far as it can be without the index.

        `targets`: raw text files, directories, globs, tables in memory, `Target`s
        or (n, L*K) feature arrays (one target each); `target_features`: feature
        files; `target_texts`: a list of strings (one target) or {name: [strings]}.
        Scoring: `scoring_options` whole, or `preset` (default: the index's) with
        any of power, layers, weighting, discount, top_k, mode, embedding_score,
        neighbours, contrast over it.
        """
        unknown = sorted(set(scoring_overrides) - set(SCORING_KEYS))
        if unknown:
            raise TypeError(f"unknown query option(s): {', '.join(unknown)}")
        fraction, top = check_shares(fraction, top)
        if each and dedupe:
            raise NagError("dedupe mixes targets; with each every target keeps its own selection", param="dedupe",
                           cli="--dedupe mixes targets; with --each every target keeps its own selection")
        if scoring_options is not None and preset is not None:
            raise NagError("give either scoring options or a preset, not both")
        if plan not in PLANS:
            raise NagError(f"unknown plan {plan!r}; use {', '.join(PLANS)}")
        overrides = tuple((k, scoring_overrides[k]) for k in SCORING_KEYS if scoring_overrides.get(k) is not None)
        base = scoring_options if scoring_options is not None else ScoringOptions.from_preset(preset)
        base.with_overrides(**dict(overrides))  # every value checked now, before any target is read
        if isinstance(target_filter, (list, tuple)):
            target_filter = tuple(target_filter)
        request = cls(
            targets=_sources(targets), target_features=_sources(target_features),
            target_texts=_texts(target_texts), target_filter=target_filter, target_filter_col=target_filter_col,
            fraction=fraction, top=top, each=bool(each), dedupe=bool(dedupe), quality_col=quality_col,
            invert_quality=bool(invert_quality), scoring=scoring_options, preset=preset, overrides=overrides,
            neuron_type=neuron_type, with_text=bool(with_text), plan=plan, fmt=fmt, batch_size=int(batch_size),
            progress=bool(progress),
        )
        if not request.num_targets:
            raise NagError("no target given")
        return request

    @property
    def num_targets(self) -> int:
        return len(self.targets) + len(self.target_features) + len(self.target_texts)

    def scoring_options(self, default_preset: str | None = None) -> ScoringOptions:
        """The options this request scores by: as given, or its preset (else `default_preset`,
        the index's) with its overrides."""
        base = self.scoring if self.scoring is not None else ScoringOptions.from_preset(
            self.preset if self.preset is not None else default_preset)
        return base.with_overrides(**dict(self.overrides))
