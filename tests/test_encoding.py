"""The encoder: real all-MiniLM-L6-v2 from its PyPI package, unit-norm float32, batching, offline loading."""

from __future__ import annotations

import numpy as np
import pytest

from dualpath.config import DEFAULT_ENCODER, EncoderConfig
from dualpath.encoding import Encoder, SentenceTransformerEncoder, load_encoder, resolve_model_path
from dualpath.errors import ConfigError

SENTENCES = [
    "The cat sat on the mat.",
    "A kitten was sitting on the rug.",
    "Stock markets fell sharply on Monday.",
    "Shares dropped steeply at the start of the week.",
    "Photosynthesis turns light into chemical energy.",
]


def test_default_encoder_gives_unit_norm_float32(text_encoder):
    assert isinstance(text_encoder, Encoder)
    assert text_encoder.name == DEFAULT_ENCODER and text_encoder.dim == 384
    vectors = text_encoder.encode(SENTENCES)
    assert vectors.dtype == np.float32 and vectors.shape == (5, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert text_encoder.encode([]).shape == (0, 384)


def test_paraphrases_are_closer_than_unrelated_sentences(text_encoder):
    v = text_encoder.encode(SENTENCES)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[2, 3] > sim[2, 4] + 0.3


def test_batching_does_not_change_the_vectors(text_encoder, monkeypatch):
    monkeypatch.setattr("dualpath.encoding.encoder.CHUNK", 8)  # several chunks without encoding thousands
    texts = [f"Sentence {i} is about topic {i % 7}." for i in range(50)]
    together = text_encoder.encode(texts)
    apart = np.concatenate([text_encoder.encode(texts[:3]), text_encoder.encode(texts[3:])])
    assert np.allclose(together, apart, atol=1e-5)


def test_a_local_model_path_works_and_is_recorded_as_its_path(text_encoder):
    path = resolve_model_path(DEFAULT_ENCODER)
    by_path = load_encoder(EncoderConfig(name=str(path), batch_size=8))
    assert isinstance(by_path, SentenceTransformerEncoder)
    assert by_path.name == str(path) and by_path.dim == 384
    assert np.allclose(by_path.encode(SENTENCES[:2]), text_encoder.encode(SENTENCES[:2]), atol=1e-5)


def test_unknown_encoder_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown encoder 'no-such-model'") as err:
        load_encoder(EncoderConfig(name="no-such-model"))
    assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="unknown encoder"):
        load_encoder(EncoderConfig(name=str(tmp_path / "empty")))
