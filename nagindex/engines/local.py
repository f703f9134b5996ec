"""The local engine: extraction and ranking in this process (the default)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import pyarrow as pa

from nagindex.engines.base import Engine, ModelRef
from nagindex.ranking.planner import local_candidates
from nagindex.schemas import FeatureSpec
from nagindex.store import ingest


class LocalEngine(Engine):
    name = "local"

    def feature_spec(self, model: Any, *, neuron_types: Sequence[str], top_k: int, max_length: int) -> FeatureSpec:
        # extraction imports torch (seconds): only the calls that extract load it, never a query
        from nagindex.extraction.backbones import Backbone, load_backbone
        from nagindex.extraction.features import feature_spec

        backbone = model if isinstance(model, Backbone) else load_backbone(model)
        return feature_spec(backbone, neuron_types, top_k, max_length)

    def extract_batches(self, documents: Iterable[pa.Table], *, model: ModelRef, spec: FeatureSpec, batch_size: int = 32):
        return ingest.extracted_batches(documents, model.load, spec, batch_size)

    def candidates(self, index, profiles, neuron_type, request):
        return local_candidates(index, profiles, neuron_type, request)
