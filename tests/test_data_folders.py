"""Image sets to the image-folder layout, and CIFAR-100 from a small archive the test writes."""

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

PIL = pytest.importorskip("PIL.Image")

from torchfpe.data import DataError, ImageSet  # noqa: E402
from torchfpe.data.extract import embedding_name, scan_image_folder  # noqa: E402
from torchfpe.data.folders import export_image_folder, read_cifar100  # noqa: E402


def tiny_set(channels=None):
    rng = np.random.default_rng(0)
    shape = (6, 5, 4) if channels is None else (6, 5, 4, channels)
    x = torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))
    return ImageSet(x_train=x, y_train=torch.tensor([2, 0, 1, 2, 0, 1]), x_test=x[:3], y_test=torch.tensor([1, 1, 0]),
                    class_names=["zebra", "T-shirt/top", "ant"], name="tiny")


@pytest.mark.parametrize("channels", [None, 3])
def test_export_round_trips_through_the_folder_scan(tmp_path, channels):
    images = tiny_set(channels)
    out = export_image_folder(images, tmp_path / "set")
    classes, train, test = scan_image_folder(out)
    assert classes == ["T-shirt-top", "ant", "zebra"]  # sorted folder names
    # labels are renumbered by folder order; the pixels of each file are the image of its label
    for split, source in ((train, images.x_train), (test, images.x_test)):
        for path, label in zip(split.paths, split.labels):
            index = int(path.stem)
            original = ["zebra", "T-shirt/top", "ant"][int((images.y_train if split is train else images.y_test)[index])]
            assert classes[label] == original.replace("/", "-")
            np.testing.assert_array_equal(np.asarray(PIL.open(path)), source[index].numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    with pytest.raises(DataError, match="already exists"):
        export_image_folder(images, out)


def test_bad_export_leaves_nothing(tmp_path):
    images = tiny_set()
    broken = ImageSet(x_train=images.x_train.float(), y_train=images.y_train, x_test=images.x_test,
                      y_test=images.y_test, class_names=images.class_names, name="broken")  # float: PIL refuses
    with pytest.raises(DataError, match="train images must be uint8"):
        export_image_folder(broken, tmp_path / "set")
    assert list(tmp_path.iterdir()) == []


def test_embedding_names_follow_the_papers_data_sets(tmp_path):
    assert embedding_name(tmp_path / "cifar100", "m") == "CLIP CIFAR-100"
    assert embedding_name(tmp_path / "Fashion-MNIST", "m") == "CLIP Fashion-MNIST"
    assert embedding_name(tmp_path / "imagenet_100", "m") == "CLIP ImageNet-100"
    assert embedding_name(tmp_path / "imagenet-1k", "m") == "CLIP ImageNet-1k"
    assert embedding_name(tmp_path / "my-photos", "openai/clip") == "CLIP (openai/clip) embeddings of my-photos"


def cifar_pickle(n, seed):
    rng = np.random.default_rng(seed)
    return pickle.dumps({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "fine_labels": list(rng.integers(0, 100, n)), "coarse_labels": [0] * n})


def write_cifar(path, members):
    with tarfile.open(path, "w:gz") as archive:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    return path


def test_read_cifar100_from_archive_and_folder(tmp_path):
    meta = pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["x"] * 20})
    members = {"train": cifar_pickle(8, 0), "test": cifar_pickle(4, 1), "meta": meta}
    data = read_cifar100(write_cifar(tmp_path / "cifar-100-python.tar.gz", members))
    assert data.x_train.shape == (8, 32, 32, 3) and data.x_test.shape == (4, 32, 32, 3)
    assert data.x_train.dtype == torch.uint8 and data.num_classes == 100 and data.class_names[3] == "c3"
    raw = pickle.loads(members["train"])
    # channel-first rows: the red plane is the first 1024 values
    np.testing.assert_array_equal(data.x_train[1, :, :, 0].numpy(), raw["data"][1, :1024].reshape(32, 32))
    assert data.y_train.tolist() == raw["fine_labels"]
    folder = tmp_path / "unpacked"
    folder.mkdir()
    for name, value in members.items():
        (folder / name).write_bytes(value)
    assert torch.equal(read_cifar100(folder).x_test, data.x_test)


def test_read_cifar100_refuses_bad_input(tmp_path):
    with pytest.raises(DataError, match="no such file or folder.*cifar.html"):
        read_cifar100(tmp_path / "missing.tar.gz")
    evil = pickle.dumps(print)  # a pickle that names a callable outside numpy
    meta = pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]})
    path = write_cifar(tmp_path / "evil.tar.gz", {"train": evil, "test": cifar_pickle(2, 0), "meta": meta})
    with pytest.raises(DataError, match="evil.tar.gz/train: not a CIFAR-100 pickle .*refusing to load builtins.print"):
        read_cifar100(path)
    path = write_cifar(tmp_path / "partial.tar.gz", {"train": cifar_pickle(2, 0), "meta": meta})
    with pytest.raises(DataError, match=r"partial.tar.gz: archive lacks \['test'\]"):
        read_cifar100(path)
    (tmp_path / "junk.tar.gz").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.tar.gz: not a readable cifar-100-python archive"):
        read_cifar100(tmp_path / "junk.tar.gz")
