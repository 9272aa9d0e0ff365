"""The IDX reader on small files the tests write, and Fashion-MNIST's loader on a fake folder."""

import gzip

import numpy as np
import pytest
import torch

from torchfpe.data import DatasetNotFoundError, IdxFileError, load_fashion_mnist, read_idx, write_idx
from torchfpe.data.idx import FASHION_MNIST_FILES


def test_read_idx_by_hand(tmp_path):
    # magic 0x00000803 (uint8, 3 dims), dims 2 x 2 x 3, then 12 bytes
    raw = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(12))
    (tmp_path / "plain").write_bytes(raw)
    (tmp_path / "zipped.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "zipped-without-suffix").write_bytes(gzip.compress(raw))
    for name in ("plain", "zipped.gz", "zipped-without-suffix"):
        array = read_idx(tmp_path / name)
        assert array.dtype == np.uint8 and array.shape == (2, 2, 3)
        assert array[1, 0, 2] == 8
    # int32 big-endian values come back in native order
    raw = bytes([0, 0, 0x0C, 1]) + (2).to_bytes(4, "big") + (1).to_bytes(4, "big") + (-70000).to_bytes(4, "big", signed=True)
    (tmp_path / "ints").write_bytes(raw)
    assert read_idx(tmp_path / "ints").tolist() == [1, -70000]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_write_read_round_trip(tmp_path, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    path = write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(path), array)
    assert read_idx(path).dtype == np.dtype(dtype)


def test_bad_idx_files_are_named(tmp_path):
    cases = {
        "empty": b"",
        "text": b"hello world",
        "badtype": bytes([0, 0, 0x07, 1]) + (1).to_bytes(4, "big") + b"\x00",
        "short": bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"\x00\x01",
        "long": bytes([0, 0, 8, 1]) + (1).to_bytes(4, "big") + b"\x00\x01",
        "header": bytes([0, 0, 8, 3]) + (1).to_bytes(4, "big"),
    }
    messages = {"empty": "bad magic number empty file", "text": "bad magic number 68656c6c", "badtype": "type code 0x07",
                "short": r"shape \(5,\) \(5 bytes of data\) but the file holds 2 bytes", "long": "holds 2 bytes",
                "header": "header is truncated"}
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(IdxFileError, match=f"{name}: .*{messages[name]}"):
            read_idx(tmp_path / name)
    (tmp_path / "broken.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(IdxFileError, match="broken.gz: cannot read IDX file"):
        read_idx(tmp_path / "broken.gz")


def write_fashion(folder, train=12, test=5, seed=0, gz=True):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = {
        "train_images": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(test) % 10).astype(np.uint8),
    }
    for key, array in arrays.items():
        write_idx(folder / (FASHION_MNIST_FILES[key] + suffix), array)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_mnist_from_a_folder(tmp_path, gz):
    arrays = write_fashion(tmp_path / "fm", gz=gz)
    data = load_fashion_mnist(tmp_path / "fm")
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape == (12, 28, 28)
    assert data.y_train.dtype == torch.int64 and data.y_test.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(data.x_test.numpy(), arrays["test_images"])
    assert data.class_names[0] == "T-shirt/top" and data.num_classes == 10 and data.name == "Fashion-MNIST"


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist.*--data DIR"):
        load_fashion_mnist(tmp_path / "nowhere")
    write_fashion(tmp_path / "fm")
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"missing t10k-labels-idx1-ubyte\).*apt-get install"):
        load_fashion_mnist(tmp_path / "fm")
    assert issubclass(DatasetNotFoundError, FileNotFoundError) and issubclass(DatasetNotFoundError, ValueError)


def test_mismatched_fashion_mnist_files(tmp_path):
    write_fashion(tmp_path / "fm")
    write_idx(tmp_path / "fm" / "train-labels-idx1-ubyte.gz", np.zeros(11, np.uint8))
    with pytest.raises(IdxFileError, match="train-labels-idx1-ubyte.gz: 11 labels but .* holds 12 images"):
        load_fashion_mnist(tmp_path / "fm")
    write_idx(tmp_path / "fm" / "train-labels-idx1-ubyte.gz", np.full(12, 10, np.uint8))
    with pytest.raises(IdxFileError, match="label 10 outside 0..9"):
        load_fashion_mnist(tmp_path / "fm")
    write_idx(tmp_path / "fm" / "train-images-idx3-ubyte.gz", np.zeros((12, 32, 32), np.uint8))
    with pytest.raises(IdxFileError, match=r"train-images-idx3-ubyte.gz: expected uint8 images of shape \(N, 28, 28\)"):
        load_fashion_mnist(tmp_path / "fm")
