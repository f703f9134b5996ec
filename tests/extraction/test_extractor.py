"""`Extractor`: the backbone loaded once, checked against the index's spec, used by every extraction."""

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from nagindex.api import Index
from nagindex.errors import NagError
from nagindex.extraction.extractor import Extractor, extractor_for
from nagindex.extraction.features import extract_texts, feature_spec

TEXTS = ["the cat sat", "stocks fell sharply today", "a kitten purrs softly"]


def test_extractor_extracts_what_extract_texts_does(tiny_llama):
    ex = extractor_for(tiny_llama, neuron_types=("fwd_up",), top_k=3, max_length=16)
    want = extract_texts(tiny_llama, TEXTS, top_k=3, max_length=16)["fwd_up"]
    assert np.array_equal(ex.extract(TEXTS)["fwd_up"], want)
    assert ex.backbone() is tiny_llama


def test_extractor_refuses_a_backbone_that_makes_other_features(tiny_llama):
    from nagindex.extraction.testing import tiny_backbone

    spec = feature_spec(tiny_llama, ("fwd_up",), 3, 16)
    with pytest.raises(NagError, match="has weights"):
        Extractor(spec, model=tiny_backbone("llama", seed=1))
    with pytest.raises(NagError, match="the model's features are incompatible"):
        Extractor(spec, model=tiny_backbone("llama", seed=1), what="the model's features")
    with pytest.raises(NagError, match="L=3 != 2"):
        Extractor(dataclasses.replace(spec, backbone_hash="", num_layers=2), model=tiny_llama)


def test_index_holds_one_extractor_for_every_text_query(tmp_path, tiny_llama):
    docs = pa.table({"docid": ["a", "b", "c"], "doc": TEXTS, "token_num": [3, 4, 4]})
    index = Index.build(tmp_path / "idx", docs, model=tiny_llama, top_k=3, max_length=16, progress=False, embedder=None)
    opened = Index.open(tmp_path / "idx", model=tiny_llama)
    first = opened.extractor()
    opened.query(target_texts=["a cat"], top=1)
    opened.query(target_texts=["the market"], top=1)
    assert opened.extractor() is first and first.loaded
    assert index.extractor().backbone() is tiny_llama  # the build's model stays loaded


def test_a_remembering_extractor_answers_a_repeat_without_the_model(tiny_llama, monkeypatch):
    from nagindex.extraction import features

    ex = extractor_for(tiny_llama, neuron_types=("fwd_up",), top_k=3, max_length=16).remember(2)
    calls = []
    real = features.extract_texts
    monkeypatch.setattr(features, "extract_texts", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    first = ex.extract(TEXTS)["fwd_up"]
    again = ex.extract(list(TEXTS))["fwd_up"]
    assert calls == [TEXTS] and again is first and not first.flags.writeable  # handed out, never changed
    assert np.array_equal(first, real(tiny_llama, TEXTS, top_k=3, max_length=16)["fwd_up"])
    ex.extract(TEXTS[::-1])  # other inputs (order counts: batches see the texts in order) run the model
    ex.extract(TEXTS[:1])
    ex.extract(TEXTS)  # the oldest of 2 remembered was dropped: runs again
    assert len(calls) == 4
    plain = extractor_for(tiny_llama, neuron_types=("fwd_up",), top_k=3, max_length=16)
    plain.extract(TEXTS), plain.extract(TEXTS)
    assert len(calls) == 6  # without `remember`, every call runs the model
