"""The live rows of an index and a target's features, as the analysis commands read them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from nagindex.errors import NagError
from nagindex.ranking.query import load_feature_target, load_text_target, profile_for
from nagindex.ranking.scoring import build_profile
from nagindex.schemas import DATASET, DEFAULT_NEURON_TYPE
from nagindex.sources import is_table_like
from nagindex.store.index import live_rows


@dataclass
class PoolView:
    """The live rows of an index, as analysis needs them (row order = index order)."""

    features: np.ndarray  # uint16 (n, L*K)
    docids: np.ndarray  # object (n,)
    token_num: np.ndarray  # int64 (n,), missing counted as 0
    labels: np.ndarray  # object (n,), "(none)" where the dataset label is missing
    num_layers: int
    top_k: int
    width: int

    def __len__(self) -> int:
        return len(self.docids)

    def row_of(self, docid: str) -> int:
        hits = np.flatnonzero(self.docids == docid)
        if not len(hits):
            raise NagError(f"unknown docid {docid!r}: no live document of this index has it")
        return int(hits[0])


NO_LABEL = "(none)"


def pool_view(index: Any, neuron_type: str = DEFAULT_NEURON_TYPE, *, labels: bool = True) -> PoolView:
    """The live rows of an `Index`: features, docids, token counts and `dataset` labels."""

    spec = index.spec
    width = spec.width(neuron_type)
    segments = index.feature_segments(neuron_type)
    if len(segments) == 1:
        feats = segments[0][1]  # memory-mapped: read block by block, never copied whole
    elif segments:
        feats = np.concatenate([np.asarray(m) for _, m in segments])
    else:
        feats = np.zeros((0, spec.feature_length), dtype=np.uint16)
    docids = np.asarray(index.docids().to_pylist(), dtype=object)
    tokens = np.asarray(index.token_num(), dtype=np.int64)
    live = index.live_mask()
    rows = live_rows(index)
    if not len(rows):
        raise NagError("the index holds no documents")
    if labels and DATASET in index.columns():
        raw = index.take(rows, [DATASET]).column(DATASET).to_pylist()
        labs = np.array([NO_LABEL if v is None else str(v) for v in raw], dtype=object)
    else:
        labs = np.array([NO_LABEL] * len(rows), dtype=object)
    return PoolView(
        features=feats if live is None else feats[rows],
        docids=docids[rows],
        token_num=np.where(tokens[rows] < 0, 0, tokens[rows]),
        labels=labs,
        num_layers=spec.num_layers,
        top_k=spec.top_k,
        width=width,
    )


def target_features_for(
    index: Any,
    targets: Sequence[Any] | Any = (),
    *,
    target_features: str | os.PathLike | None = None,
    target_texts: Sequence[str] | None = None,
    neuron_type: str = DEFAULT_NEURON_TYPE,
    fmt: str = "auto",
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """The target's NAG features, from raw text (files, directories, globs, a table in
    memory, or `target_texts` strings; extracted with the index's backbone) or from a
    feature file made with the same backbone, L, K and max_length.

    The reading itself is `nagindex.ranking.query`'s, so every command takes its
    target exactly as `nag query` does.
    """

    if isinstance(targets, (str, os.PathLike)) or is_table_like(targets):
        targets = [targets]
    targets = [t if is_table_like(t) else str(t) for t in targets]
    given = [what for what, there in (("TARGET files", bool(targets)), ("--target-features", target_features is not None),
                                      ("target_texts", target_texts is not None)) if there]
    if len(given) > 1:
        raise NagError(f"give the target one way only, not as {' and '.join(given)}")
    if target_features is not None:
        feats = load_feature_target(index, str(target_features), neuron_type=neuron_type).features
    elif target_texts is not None:
        feats = load_text_target(index, None, texts=list(target_texts), neuron_type=neuron_type,
                                 batch_size=batch_size, progress=progress).features
    elif targets:
        source = targets[0] if len(targets) == 1 and is_table_like(targets[0]) else targets
        feats = load_text_target(
            index, source, neuron_type=neuron_type, fmt=fmt, batch_size=batch_size, progress=progress
        ).features
    else:
        raise NagError("no target given: pass TARGET files or --target-features FILE")
    feats = np.asarray(feats)
    if feats.ndim != 2 or len(feats) == 0:
        raise NagError("the target is empty: no target document has NAG features")
    if feats.shape[1] != index.spec.feature_length:
        raise NagError(
            f"target features have {feats.shape[1]} entries, this index expects L*K = {index.spec.feature_length}"
        )
    return feats


def target_profile(index: Any, target_features: np.ndarray, neuron_type: str = DEFAULT_NEURON_TYPE, power: float = 1.0,
                   options: Any = None):
    """The SPEC 2 profile (integer weights over all layers) of `target_features` for this index;
    with `options` (a `ranking.options.ScoringOptions`), the profile a query with them scores by."""
    if options is not None:
        return profile_for(index, target_features, options, neuron_type)
    spec = index.spec
    return build_profile(
        target_features, num_layers=spec.num_layers, top_k=spec.top_k, width=spec.width(neuron_type), power=power
    )

