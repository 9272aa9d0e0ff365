"""Built-in data sets: shapes, determinism, names that say "stand-in"; the autoencoder stand-in on a tiny
budget (the real one is slow-marked)."""

import random

import numpy as np
import pytest
import torch

from torchfpe.data import BUILTIN_NAMES, DatasetNotFoundError, load_embeddings, load_fashion_mnist
from torchfpe.data.idx import FASHION_MNIST_DIR
from torchfpe.data.standin import AutoencoderConfig, default_cache_dir, fashion_mnist_ae

from test_data_idx import write_fashion


def test_builtin_names():
    assert set(BUILTIN_NAMES) == {"digits", "mnist1d", "synthetic-100", "fashion-mnist-ae", "fortunes-minilm",
                                  "fashion-mnist-efficientnet", "font-chars-efficientnet"}


def test_digits():
    pytest.importorskip("sklearn")
    data = load_embeddings("digits", seed=0)
    assert data.x_train.shape == (1347, 64) and data.x_test.shape == (450, 64)
    assert data.num_classes == 10 and data.standin and "stand-in" in data.name
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0
    # stratified: every class has about a quarter of its examples in test
    counts = torch.bincount(data.y_test, minlength=10)
    assert counts.min() >= 44 and counts.max() <= 46
    again, other = load_embeddings("digits", seed=0), load_embeddings("digits", seed=1)
    assert torch.equal(again.x_test, data.x_test) and not torch.equal(other.y_test, data.y_test)


def test_mnist1d_is_the_canonical_set_cached_and_leaves_global_rngs_alone(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d")
    monkeypatch.setenv("TORCHFPE_CACHE_DIR", str(tmp_path))
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    data = load_embeddings("mnist1d")
    assert (np.random.random(), random.random()) == (expected_np, expected_py)
    assert data.x_train.shape == (4000, 40) and data.x_test.shape == (1000, 40) and data.num_classes == 10
    assert data.standin and "stand-in" in data.name
    assert [p.name[:8] for p in tmp_path.iterdir()] == ["mnist1d-"]
    assert torch.equal(load_embeddings("mnist1d", seed=5).x_train, data.x_train)


def test_synthetic_100():
    data = load_embeddings("synthetic-100", seed=0)
    assert data.x_train.shape == (10000, 128) and data.x_test.shape == (5000, 128) and data.num_classes == 100
    assert "synthetic" in data.name and data.standin
    assert torch.bincount(data.y_train).tolist() == [100] * 100
    assert torch.equal(load_embeddings("synthetic-100", seed=0).x_train, data.x_train)
    assert not torch.equal(load_embeddings("synthetic-100", seed=1).x_train, data.x_train)
    # the superclass structure: classes of one superclass are closer to each other than to the rest
    means = torch.stack([data.x_train[data.y_train == c].mean(0) for c in range(100)])
    distance = torch.cdist(means, means)
    same = torch.arange(100)[:, None] // 5 == torch.arange(100)[None, :] // 5
    off_diagonal = ~torch.eye(100, dtype=torch.bool)
    assert distance[same & off_diagonal].mean() < 0.5 * distance[~same].mean()


TINY = AutoencoderConfig(dim=6, hidden=16, epochs=2, batch_size=8)


def test_standin_tiny_budget_is_cached_deterministic_and_label_free(tmp_path, monkeypatch):
    arrays = write_fashion(tmp_path / "fm", train=40, test=10)
    data = fashion_mnist_ae(0, data_dir=tmp_path / "fm", cache_dir=tmp_path / "cache", config=TINY)
    assert data.x_train.shape == (40, 6) and data.x_test.shape == (10, 6)
    assert data.y_test.tolist() == (np.arange(10) % 10).tolist() and data.class_names[9] == "Ankle boot"
    assert data.standin and "stand-in for CLIP" in data.name and "without labels" in data.note
    cached = list((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 1

    # a second call reuses the cache instead of training again
    import torchfpe.data.standin as standin

    monkeypatch.setattr(standin, "train_autoencoder", lambda *a, **k: pytest.fail("trained again"))
    again = fashion_mnist_ae(0, data_dir=tmp_path / "fm", cache_dir=tmp_path / "cache", config=TINY)
    assert torch.equal(again.x_train, data.x_train)
    monkeypatch.undo()

    # same seed, fresh cache: the same vectors; labels shuffled: still the same vectors (never seen)
    shuffled = tmp_path / "fm2"
    write_fashion(shuffled, train=40, test=10)
    from torchfpe.data import write_idx

    write_idx(shuffled / "train-labels-idx1-ubyte.gz", np.random.default_rng(1).permutation(arrays["train_labels"]))
    other = fashion_mnist_ae(0, data_dir=shuffled, cache_dir=tmp_path / "cache2", config=TINY)
    torch.testing.assert_close(other.x_train, data.x_train)
    different_seed = fashion_mnist_ae(1, data_dir=tmp_path / "fm", cache_dir=tmp_path / "cache", config=TINY)
    assert not torch.allclose(different_seed.x_train, data.x_train)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_standin_cache_follows_the_content_of_a_data_folder(tmp_path):
    """Issue 13 B4: the cache was keyed by the folder's path, so new images at the same path gave the old vectors."""
    write_fashion(tmp_path / "fm", train=40, test=10, seed=0)
    before = fashion_mnist_ae(0, data_dir=tmp_path / "fm", cache_dir=tmp_path / "cache", config=TINY)
    write_fashion(tmp_path / "fm", train=40, test=10, seed=5)  # other images, same folder
    after = fashion_mnist_ae(0, data_dir=tmp_path / "fm", cache_dir=tmp_path / "cache", config=TINY)
    assert not torch.allclose(after.x_train, before.x_train)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_standin_is_built_once_when_asked_for_at_the_same_time(tmp_path, monkeypatch):
    import threading

    import torchfpe.data.standin as standin

    write_fashion(tmp_path / "fm", train=40, test=10)
    calls, train = [], standin.train_autoencoder
    monkeypatch.setattr(standin, "train_autoencoder", lambda *a, **k: calls.append(1) or train(*a, **k))
    results = []

    def ask():
        results.append(fashion_mnist_ae(0, data_dir=tmp_path / "fm", cache_dir=tmp_path / "cache", config=TINY))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(results) == 3
    assert all(torch.equal(r.x_train, results[0].x_train) for r in results)


def test_standin_missing_data_writes_nothing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_embeddings("fashion-mnist-ae", data_dir=tmp_path / "none", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHFPE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TORCHFPE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "torchfpe"


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs apt-get install dataset-fashion-mnist")
def test_real_standin(tmp_path):
    images = load_fashion_mnist()
    assert images.x_train.shape == (60000, 28, 28) and images.x_test.shape == (10000, 28, 28)
    data = load_embeddings("fashion-mnist-ae", cache_dir=tmp_path)
    assert data.x_train.shape == (60000, 64) and data.x_test.shape == (10000, 64)
    # the frozen features carry the classes without having seen them: nearest class mean beats chance by far
    x_train, x_test = data.x_train, data.x_test
    means = torch.stack([x_train[data.y_train == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(x_test, means).argmin(1) == data.y_test).float().mean().item()
    assert accuracy > 0.5


@pytest.mark.slow
def test_synthetic_100_is_easy_for_a_linear_classifier_and_hard_for_a_narrow_head():
    """The regime it stands in for: 100 classes are linearly separable enough, but a head of 4 neurons
    must share each neuron among many classes and does much worse (seed 0: 0.84 against 0.23)."""
    data = load_embeddings("synthetic-100", seed=0)

    def accuracy(model):
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.uniform_(-0.1, 0.1, generator=generator)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
        for _ in range(60):  # full batch
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(data.x_train), data.y_train).backward()
            optimizer.step()
        with torch.no_grad():
            return (model(data.x_test).argmax(1) == data.y_test).float().mean().item()

    linear = accuracy(torch.nn.Linear(128, 100))
    narrow = accuracy(torch.nn.Sequential(torch.nn.Linear(128, 4), torch.nn.ReLU(), torch.nn.Linear(4, 100)))
    assert linear > 0.7 and narrow < linear - 0.3, (linear, narrow)
