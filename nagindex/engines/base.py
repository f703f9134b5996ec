"""The one interface every engine implements: where features are extracted and a pool is scored.

An engine is chosen once, by name (`nagindex.engines.get_engine`), and the
callers (`nagindex.api.Index`) never ask which one runs. Every engine gives
the same answers: the same features for the same documents, and for a query
candidate rows that provably hold the exact answer with their exact integer
scores, so that the selection downstream is one piece of code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from nagindex.schemas import FeatureSpec

Features = dict[str, np.ndarray]


@dataclass(frozen=True)
class ModelRef:
    """The backbone of an extraction, as each engine needs it.

    `source` is what names it (a hub id, a local path, a loaded Backbone, or
    None for the embedded default): an engine that loads the model elsewhere
    ships this. `load` returns the Backbone in this process, checked against
    the index it extracts for: an engine that runs here calls it, once.
    """

    source: Any
    load: Callable[[], Any]


class Engine(ABC):
    name: str

    @abstractmethod
    def feature_spec(self, model: Any, *, neuron_types: Sequence[str], top_k: int, max_length: int) -> FeatureSpec:
        """The FeatureSpec that `model` (a name, path, Backbone or None) makes with these settings."""

    @abstractmethod
    def extract_batches(self, documents: Iterable[pa.Table], *, model: ModelRef, spec: FeatureSpec,
                        batch_size: int = 32) -> Iterator[tuple[pa.Table, Features]]:
        """Stream document tables (with text) to (the same table with token_num filled,
        {neuron type: uint16 (n, L*K)}) in input order."""

    @abstractmethod
    def candidates(self, index: Any, profiles: Sequence[Any], neuron_type: str, request: Any) -> list:
        """Per profile, `ranking.planner.PlannedCandidates`: rows that provably hold the
        answer `request` describes, with their exact scores, and how they were found."""
