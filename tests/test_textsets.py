"""Labelled text data (fortunes, a folder of .txt files, a CSV): readers, deterministic splits, one clear
line for every bad input."""

import re

import numpy as np
import pytest

from torchfpe.data.textsets import (FORTUNES_DIR, TextSetError, fortune_files, load_fortunes, load_text_set,
                                    read_fortunes, read_text_csv, read_text_folder, split_fortune_file)

needs_fortunes = pytest.mark.skipif(not FORTUNES_DIR.is_dir(), reason="Debian package fortunes not installed")


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
