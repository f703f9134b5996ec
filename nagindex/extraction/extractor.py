"""`Extractor`: the backbone (and the embedder) loaded once, checked against a feature spec.

Everything that turns text into features for an index goes through one:
appends and builds (the local and Ray engines), text targets of a query,
`nag extract`, the demo and the query service. It loads the backbone where
the spec says it is (or the model the caller names), checks its weights hash
and the features it makes (L, K, widths, max_length) against the spec once,
and then extracts, counts tokens and embeds with the same settings every
time. Loading is lazy: an extractor costs nothing until text arrives.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Sequence

import numpy as np

from nagindex.errors import NagError
from nagindex.extraction.embedder import load_embedder
from nagindex.schemas import UNKNOWN_HASH, FeatureSpec

Features = dict[str, np.ndarray]


def backbone_source(spec: FeatureSpec):
    """What `load_backbone` needs to reload the backbone of a spec: its recorded
    location (absolute path, ``org/name@rev``, None for the embedded default);
    the name as typed for indexes older than locations."""
    from nagindex.extraction import backbones

    location = spec.backbone_location
    if location:
        return None if location == backbones.EMBEDDED_LOCATION else location
    if spec.backbone_hash == UNKNOWN_HASH:
        raise NagError(
            f"this index was built from upstream features without a backbone (L={spec.num_layers}, "
            f"K={spec.top_k}); text targets need a loadable backbone: pass --model NAME|PATH of the model "
            "that made the features, or give the targets as features (--target-features)"
        )
    return None if spec.backbone == backbones.EMBEDDED_NAME else spec.backbone


class Extractor:
    """Text -> features (and embeddings) exactly as an index made with `spec` holds them.

    `model`: a loaded `Backbone`, a name or path for `load_backbone`, or None
    for the location `spec` records. `embedder`: a name for `load_embedder`
    or a loaded `Embedder` (None: no embeddings), with `embedding_dim` the
    width the index expects. `device` and `dtype` place a backbone this loads.
    """

    def __init__(self, spec: FeatureSpec, *, model: Any = None, embedder: Any = None,
                 embedding_dim: int | None = None, device: str | None = None, dtype: Any = None,
                 what: str | None = None):
        self.spec = spec
        self._model = model
        self._embedder_ref = embedder
        self._embedding_dim = embedding_dim
        self._device, self._dtype = device, dtype
        self._what = what
        self._backbone = None
        self._embedder = None
        # one extraction at a time: the forward hooks of a capture belong to the model (a service's
        # threads share one extractor)
        self._lock = threading.RLock()
        self._memo: OrderedDict | None = None  # `remember`: the last results, by their exact inputs
        self._memo_size = 0
        if _is_backbone(model):
            self._backbone = self._checked(model)

    # -- loading ------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._backbone is not None

    def backbone(self):
        """The backbone (loaded on first use, from `model` or else the recorded location),
        its weights and features checked against the spec."""
        if self._backbone is not None:
            return self._backbone
        with self._lock:
            return self._load_backbone()

    def _load_backbone(self):
        if self._backbone is None:
            from nagindex.extraction.backbones import load_backbone

            spec = self.spec
            named_by_index = self._model is None
            source = backbone_source(spec) if named_by_index else self._model
            try:
                with _hub_offline(named_by_index and source is not None):
                    backbone = load_backbone(source, device=self._device, dtype=self._dtype,
                                             allow_download=not named_by_index)
            except NagError as exc:
                if not named_by_index or "does not download" in str(exc):
                    raise
                raise NagError(f"the index's backbone {spec.backbone} cannot be loaded ({exc}); pass --model "
                               "with the same weights (a local directory, .gguf file or hub id)") from None
            self._backbone = self._checked(backbone)
            if named_by_index and source is not None:
                # a downloaded index decided which model runs here: say which, and from where. Only once it
                # loaded: a failure is already one line that names both.
                print(f"nagindex: loaded the index's backbone {spec.backbone} from {source}", file=sys.stderr)
        return self._backbone

    def _checked(self, backbone):
        from nagindex.extraction.features import feature_spec

        spec = self.spec
        # the index's own backbone says which weights differ; features checked for an engine say it as they always did
        if self._what is None and spec.backbone_hash != UNKNOWN_HASH and backbone.weights_hash != spec.backbone_hash:
            raise NagError(
                f"the backbone {backbone.name} has weights {backbone.weights_hash[:12]}, "
                f"the index {spec.backbone} was built with {spec.backbone_hash[:12]}"
            )
        spec.check_compatible(feature_spec(backbone, spec.neuron_types, spec.top_k, spec.max_length),
                              what=self._what or f"the features of the backbone {backbone.name}")
        return backbone

    @property
    def source(self):
        """What names the backbone for an engine that loads it elsewhere: the loaded one,
        else the model given, else the location the spec records."""
        if self._backbone is not None:
            return self._backbone
        return self._model if self._model is not None else backbone_source(self.spec)

    @property
    def has_embedder(self) -> bool:
        return self._embedder_ref is not None

    def embedder(self):
        """The embedder (loaded on first use), checked to make vectors of the expected width."""
        if self._embedder_ref is None:
            raise NagError("this index has no embeddings; build it with --embedder")
        with self._lock:
            return self._load_embedder()

    def _load_embedder(self):
        if self._embedder is None:
            embedder = load_embedder(self._embedder_ref)
            if self._embedding_dim is not None and embedder.dim != self._embedding_dim:
                raise NagError(f"the embedder {embedder.name} makes vectors of {embedder.dim}, "
                               f"the index holds {self._embedding_dim}")
            self._embedder = embedder
        return self._embedder

    def use(self, *, backbone: Any = None, embedder: Any = None) -> "Extractor":
        """Take models loaded elsewhere (a build's backbone, a create's embedder), checked as if loaded here."""
        if backbone is not None:
            self._backbone = self._checked(backbone)
        if embedder is not None:
            if self._embedding_dim is not None and embedder.dim != self._embedding_dim:
                raise NagError(f"the embedder {embedder.name} makes vectors of {embedder.dim}, "
                               f"the index holds {self._embedding_dim}")
            self._embedder_ref = self._embedder = embedder
        return self

    def remember(self, results: int) -> "Extractor":
        """Keep the last `results` extractions and embeddings, each by its exact inputs (texts in
        order, neuron types, batch size), and answer a repeat from them: a service asked again for
        the same target set gives it back without running the models. The answer is the one the
        models gave for those inputs (read-only arrays). 0 keeps none."""
        with self._lock:
            self._memo_size = max(0, int(results))
            self._memo = OrderedDict() if self._memo_size else None
        return self

    def _recall(self, key, compute):
        if self._memo is None:
            return compute()
        with self._lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                return self._memo[key]
            value = _read_only(compute())
            self._memo[key] = value
            while len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)
            return value

    # -- work ---------------------------------------------------------------------
    def extract(self, texts: Sequence[str], *, neuron_types: Sequence[str] | None = None, batch_size: int = 32,
                progress: bool = False) -> Features:
        """{neuron type: uint16 (n, L*K)} of `texts`, with the spec's K and max_length."""
        from nagindex.extraction.features import extract_texts

        spec = self.spec
        texts = list(texts)
        types = tuple(neuron_types or spec.neuron_types)

        def run():
            with self._lock:
                return extract_texts(self.backbone(), texts, neuron_types=types, top_k=spec.top_k,
                                     max_length=spec.max_length, batch_size=batch_size, progress=progress)

        return self._recall(("extract", tuple(texts), types, int(batch_size)), run)

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """int64 token counts of `texts` with the backbone's tokenizer (no truncation)."""
        from nagindex.extraction.features import count_tokens

        return count_tokens(self.backbone().tokenizer, list(texts))

    def embed(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """(n, dim) float32 unit vectors of `texts`."""
        texts = list(texts)

        def run():
            with self._lock:
                return self.embedder().encode(texts, batch_size=batch_size, progress=progress)

        return self._recall(("embed", tuple(texts), int(batch_size)), run)

    def batches(self, documents, *, text_column: str = "doc", batch_size: int = 32):
        """(table, features) for each table of `documents`, in order."""
        for table in documents:
            yield table, self.extract(table.column(text_column).to_pylist(), batch_size=batch_size)


@contextmanager
def _hub_offline(offline: bool):
    """HF_HUB_OFFLINE=1 while a model that an index named loads: the hub client too (not only
    transformers' local_files_only) sends no request because a downloaded index named a model.
    Restored afterwards, so that a later load the user asked for may download."""
    if not offline or "HF_HUB_OFFLINE" in os.environ:
        yield
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        os.environ.pop("HF_HUB_OFFLINE", None)


def _read_only(value):
    """`value` (an array, or a dict of arrays) with every array made read-only: a remembered
    result is handed to many callers."""
    arrays = value.values() if isinstance(value, dict) else [value]
    for a in arrays:
        if isinstance(a, np.ndarray):
            a.setflags(write=False)
    return value


def _is_backbone(model: Any) -> bool:
    """Whether `model` is a loaded Backbone (without importing torch to find out: where the
    backbones module is not imported yet, nothing can be one)."""
    backbones = sys.modules.get("nagindex.extraction.backbones")
    return backbones is not None and isinstance(model, backbones.Backbone)


def extractor_for(model: Any, *, neuron_types, top_k: int, max_length: int, device: str | None = None,
                  dtype: Any = None, embedder: Any = None) -> Extractor:
    """An extractor for new features: `model` (a Backbone, name, path or None for the
    embedded default) loaded now, the spec made from it with these settings."""
    from nagindex.extraction.backbones import load_backbone
    from nagindex.extraction.features import feature_spec

    backbone = model if _is_backbone(model) else load_backbone(model, device=device, dtype=dtype)
    return Extractor(feature_spec(backbone, neuron_types, top_k, max_length), model=backbone, embedder=embedder)
