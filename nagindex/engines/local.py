"""The local engine: extraction and ranking in this process (the default)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import pyarrow as pa

from nagindex.engines.base import Engine, ModelRef
from nagindex.extraction.extractor import Extractor, extractor_for
from nagindex.ranking.planner import local_candidates
from nagindex.schemas import FeatureSpec
from nagindex.store import ingest


class LocalEngine(Engine):
    name = "local"

    def feature_spec(self, model: Any, *, neuron_types: Sequence[str], top_k: int, max_length: int) -> FeatureSpec:
        # extraction imports torch (seconds): only the calls that extract load it, never a query
        return extractor_for(model, neuron_types=neuron_types, top_k=top_k, max_length=max_length).spec

    def extract_batches(self, documents: Iterable[pa.Table], *, model: ModelRef, spec: FeatureSpec, batch_size: int = 32):
        """Features of each document batch, extracted with the backbone (checked against the index's spec)."""
        loaded = model.load()
        extractor = loaded if isinstance(loaded, Extractor) else Extractor(spec, model=loaded,
                                                                          what="the model's features")
        extractor.backbone()  # loaded and checked before the first batch is read
        for table, feats in extractor.batches(documents, batch_size=batch_size):
            yield table, ingest.check_features(feats, spec, table.num_rows, "extracted features")

    def candidates(self, index, profiles, neuron_type, request):
        return local_candidates(index, profiles, neuron_type, request)
