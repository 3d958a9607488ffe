"""The indexer's memory of embedded texts: the same vectors as the model, fewer model calls."""

import numpy as np

from indexer.vector_cache import CachingEmbedder


class CountingEmbedder:
    """A deterministic stand-in for the ONNX model (a text's vector from its characters)."""

    def __init__(self):
        self.embedded: list[str] = []

    def embed(self, texts):
        self.embedded.extend(texts)
        out = np.zeros((len(texts), 4), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = [len(text), sum(map(ord, text)) % 97, text.count(" "), ord(text[0]) if text else 0]
        return out


def test_repeated_texts_get_the_models_vectors_without_the_model():
    model = CountingEmbedder()
    cached = CachingEmbedder(model, size=100)
    first = ["Patient: Jones, female, born 1960", "Potassium 6.6 mmol/L", "Patient: Jones, female, born 1960"]
    vectors = cached.embed(first)
    assert model.embedded == first[:2]  # a repeat within one call is embedded once
    np.testing.assert_array_equal(vectors, CountingEmbedder().embed(first))
    again = cached.embed(["Sodium 140 mmol/L", "Potassium 6.6 mmol/L"])
    assert model.embedded[2:] == ["Sodium 140 mmol/L"]
    np.testing.assert_array_equal(
        again, CountingEmbedder().embed(["Sodium 140 mmol/L", "Potassium 6.6 mmol/L"])
    )
    assert (cached.hits, cached.misses) == (2, 3)


def test_the_least_recently_used_text_is_forgotten_first():
    model = CountingEmbedder()
    cached = CachingEmbedder(model, size=2)
    cached.embed(["a one", "b two"])
    cached.embed(["a one"])  # a is now the most recent
    cached.embed(["c three"])  # b goes
    model.embedded.clear()
    cached.embed(["a one", "b two", "c three"])
    assert model.embedded == ["b two"]


def test_size_zero_remembers_nothing_and_nothing_to_embed_is_empty():
    model = CountingEmbedder()
    cached = CachingEmbedder(model, size=0)
    cached.embed(["x"])
    cached.embed(["x"])
    assert model.embedded == ["x", "x"]
    assert cached.embed([]).shape == (0, 4)


def test_a_remembered_vector_is_not_a_view_of_the_callers_array():
    cached = CachingEmbedder(CountingEmbedder(), size=10)
    vectors = cached.embed(["kept"])
    vectors[0, 0] = -1.0
    assert cached.embed(["kept"])[0, 0] == len("kept")
