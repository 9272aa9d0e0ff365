"""The offline pretrained text encoder all-MiniLM-L6-v2: unpacked once and atomically, loaded without the
network, sentence embeddings as sentence-transformers computes them."""

import importlib.util

import numpy as np
import pytest
import torch

from torchfpe.data.minilm import MINILM_DIM, MiniLMError, encode_texts, minilm_dir, minilm_encoder, model_zip

if importlib.util.find_spec("all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None:
    pytest.skip("the minilm extra is not installed (pip install 'torchfpe[minilm]')", allow_module_level=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def encoder(cache):
    return minilm_encoder(cache_dir=cache)


def test_unpacks_once_atomically(cache):
    folder = minilm_dir(cache)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert minilm_dir(cache) == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".partial")]


def test_architecture(encoder):
    config = encoder.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.hidden_act) == (
        6, 384, 1536, "gelu")
    assert not any(p.requires_grad for p in encoder.model.parameters()) and not encoder.model.training


def test_embeddings_are_unit_vectors_and_similar_sentences_are_closer(encoder):
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]
    vectors = encode_texts(texts, encoder=encoder)
    assert vectors.shape == (3, MINILM_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > 0.5 > unrelated + 0.3


def test_padding_and_order_do_not_change_a_row(encoder):
    texts = ["short", "a much longer sentence, with many more tokens than the first one has", "medium length text"]
    one_by_one = encode_texts(texts, batch_size=1, encoder=encoder)
    together = encode_texts(texts, batch_size=3, encoder=encoder)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    np.testing.assert_allclose(encode_texts(texts[::-1], encoder=encoder), together[::-1], atol=1e-5)


def test_same_as_sentence_transformers(encoder, cache):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = ["Fixed parameter expansion splits neurons.", "Cats sleep most of the day."]
    reference = sentence_transformers.SentenceTransformer(str(minilm_dir(cache)), device="cpu")
    expected = reference.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    np.testing.assert_allclose(encode_texts(texts, encoder=encoder), expected, atol=1e-5)


def test_truncates_at_max_length(cache):
    long_text = "word " * 400
    short = minilm_encoder(cache_dir=cache, max_length=8)
    vectors = encode_texts([long_text, "word " * 6], encoder=short)
    # 8 tokens are [CLS], six words and [SEP]: the long text is cut to the same input
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)


def test_bad_input_is_one_clear_line(encoder, cache):
    with pytest.raises(MiniLMError, match="texts must be a list of strings"):
        encode_texts("just one string", encoder=encoder)
    with pytest.raises(MiniLMError, match=r"texts\[1\] is a int"):
        encode_texts(["fine", 3], encoder=encoder)
    with pytest.raises(ValueError, match="'batch_size' parameter of encode_texts"):
        encode_texts(["fine"], batch_size=0, encoder=encoder)
    with pytest.raises(ValueError, match="'max_length' parameter of minilm_encoder must be an int in"):
        minilm_encoder(cache_dir=cache, max_length=1000)
    assert encode_texts([], encoder=encoder).shape == (0, MINILM_DIM)


def test_missing_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(MiniLMError) as error:
        model_zip()
    assert "torchfpe[minilm]" in str(error.value) and "\n" not in str(error.value)


def test_unwritable_cache_is_one_clear_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(MiniLMError, match="TORCHFPE_CACHE_DIR"):
        minilm_dir(blocker)


def test_inference_leaves_grad_mode_alone(encoder):
    encode_texts(["hello"], encoder=encoder)
    assert torch.is_grad_enabled()
